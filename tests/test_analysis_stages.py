"""Accuracy by disease stage (``analysis.stages``): the bins, hand-computed per-bin numbers, a planted effect (higher
prob_AD with more atrophy) that shows as rising sensitivity, the ``stages`` command and the report section."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_analysis_multiclass import FAST, write_class_eval_dir, write_datalist

from analysis import report, stages
from analysis.__main__ import main
from analysis.multiclass import ClassPredictions, read_class_predictions


def test_default_bins_and_their_labels():
    cdr = stages.make_bins("cdr", stages.DEFAULT_CDR_CUTS)
    assert cdr.labels == ("0", "0.5", "1", "\u22652")
    assert cdr.assign(np.array([0, 0.5, 1, 2, 3, np.nan])).tolist() == [0, 1, 2, 3, 3, -1]
    mmse = stages.make_bins("mmse", stages.DEFAULT_MMSE_CUTS)
    assert mmse.labels == ("30\u201327", "26\u201321", "20\u201310", "<10")
    assert mmse.assign(np.array([30, 27, 26, 21, 20, 10, 9, 0])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    atrophy = stages.make_bins("atrophy", (0.1, 0.2))
    assert atrophy.labels == ("<0.1", "0.1 to <0.2", "\u22650.2")
    tertiles = stages.make_bins("atrophy", stages.TERTILES, np.arange(1.0, 10.0))
    assert tertiles.cuts == pytest.approx((11 / 3, 19 / 3)) and tertiles.rule.startswith("tertiles")
    assert stages.parse_cuts("1, 2") == (1.0, 2.0) and stages.parse_cuts("Tertiles", True) == "tertiles"
    with pytest.raises(stages.StageError, match="descending"):
        stages.make_bins("mmse", (10, 21, 27))
    with pytest.raises(stages.StageError, match="comma-separated"):
        stages.parse_cuts("tertiles")


def test_per_bin_numbers_by_hand():
    # CN: c1 (called AD), c2. AD: a1 CDR 0.5 missed, a2 CDR 0.5 called, a3 and a4 CDR 1 called (one subject).
    ids = ["c1", "c2", "a1", "a2", "a3", "a4"]
    prob_ad = np.array([0.6, 0.2, 0.4, 0.7, 0.9, 0.8])
    pred = ClassPredictions(
        np.array(ids), np.array(["C1", "C2", "A1", "A2", "A3", "A3"]), np.array([0, 0, 1, 1, 1, 1]),
        np.column_stack([1 - prob_ad, prob_ad]), ("CN", "AD"),
    )  # fmt: skip
    clinical = {"c1": {"cdr": 0}, "a1": {"cdr": 0.5}, "a2": {"cdr": 0.5}, "a3": {"cdr": 1}, "a4": {"cdr": 1}}
    result = stages.stage_analysis(pred, clinical, n_resamples=200)
    assert set(result["variables"]) == {"cdr"}
    assert result["reference"]["n_scans"] == 2 and result["reference"]["specificity"]["value"] == 0.5
    bins = {row["label"]: row for row in result["variables"]["cdr"]["bins"]}
    assert bins["0"]["n_scans"] == 0 and bins["0"]["sensitivity"]["value"] is None  # CN scans are not staged
    assert bins["0.5"]["n_scans"] == 2 and bins["0.5"]["sensitivity"]["value"] == 0.5
    assert bins["1"]["n_scans"] == 2 and bins["1"]["n_subjects"] == 1 and bins["1"]["sensitivity"]["value"] == 1.0
    # AUC of the bin's AD scans against all CN: CDR 0.5 {0.4, 0.7} vs CN {0.6, 0.2} = 3 of 4 pairs.
    assert bins["0.5"]["auc"]["value"] == pytest.approx(0.75) and bins["1"]["auc"]["value"] == 1.0
    # Trend: slope of called-AD (0, 1 | 1, 1) on the bin number (1, 1 | 2, 2) = 0.125 / 0.25.
    trend = result["variables"]["cdr"]["trend"]
    assert (trend["from"], trend["to"], trend["value"]) == ("0.5", "1", pytest.approx(0.5))


def test_planted_atrophy_effect_shows_as_rising_sensitivity(tmp_path):
    clinical = write_class_eval_dir(tmp_path, classes=("CN", "AD"), n_subjects=120, stage_effect=30.0, skill=0.0)
    pred = read_class_predictions(tmp_path / "predictions.csv")
    result = stages.stage_analysis(pred, clinical, n_resamples=300)
    atrophy = result["variables"]["atrophy"]
    assert atrophy["rule"].startswith("tertiles") and len(atrophy["bins"]) == 3
    assert [row["n_scans"] for row in atrophy["bins"]] == [40, 40, 40]  # 120 AD scans in thirds
    sensitivity = [row["sensitivity"]["value"] for row in atrophy["bins"]]
    assert sensitivity[0] < sensitivity[1] < sensitivity[2]
    assert atrophy["trend"]["value"] > 0.2 and atrophy["trend"]["ci_low"] > 0  # sensitivity gained per bin
    auc = [row["auc"]["value"] for row in atrophy["bins"]]
    assert auc[0] < auc[2]
    cdr = [row["sensitivity"]["value"] for row in result["variables"]["cdr"]["bins"][1:]]
    assert cdr == sorted(cdr)  # CDR follows atrophy in the planted data
    assert result["reference"]["n_scans"] == 60
    # Without the effect, no such trend.
    flat = write_class_eval_dir(tmp_path / "flat", classes=("CN", "AD"), n_subjects=120, stage_effect=0.0)
    pred = read_class_predictions(tmp_path / "flat" / "predictions.csv")
    trend = stages.stage_analysis(pred, flat, n_resamples=300)["variables"]["atrophy"]["trend"]
    assert trend["ci_low"] < 0 < trend["ci_high"]


def test_three_classes_add_the_correct_class_share(tmp_path, capsys):
    clinical = write_class_eval_dir(tmp_path)
    datalist = write_datalist(tmp_path / "datalist.json", clinical)
    argv = ["stages", "--predictions", str(tmp_path / "predictions.csv"), "--datalist", str(datalist)]
    assert main([*argv, "--resamples", "200", "--mmse-bins", "25,15", "--out", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "Reference: 18 CN scans of 12 subjects" in printed and "correct class" in printed
    assert "MMSE (fixed cut points" in printed and "30\u201325" in printed and "<15" in printed
    data = json.loads((tmp_path / "s.json").read_text())
    cdr_half = data["variables"]["cdr"]["bins"][1]
    assert cdr_half["label"] == "0.5" and cdr_half["n_per_class"]["MCI"] == 18  # every MCI scan has CDR 0.5
    assert cdr_half["correct"]["value"] is not None and "atrophy" in data["variables"]
    assert data["variables"]["atrophy"]["n_staged_without_value"] == 18  # MCI scans have no atrophy value
    with pytest.raises(SystemExit):
        main([*argv, "--cdr-bins", "x"])
    assert "argument --cdr-bins: stage bins must be comma-separated numbers" in capsys.readouterr().err


def test_report_has_the_stage_section_and_figure(tmp_path):
    clinical = write_class_eval_dir(tmp_path / "eval", classes=("CN", "AD"))
    datalist = write_datalist(tmp_path / "datalist.json", clinical, classes=("CN", "AD"))
    out = tmp_path / "report"
    html = report.write_report(out, eval_dir=tmp_path / "eval", datalist=datalist, **FAST).read_text()
    assert "Accuracy by disease stage</h2>" in html and "all CN test scans form one reference group" in html
    assert "Atrophy strength (synthetic cohort)" in html and "Sensitivity for AD (95% CI)" in html
    assert "Correct class" not in html  # two classes: the same as sensitivity
    assert (out / "accuracy_by_stage.png").is_file() and "accuracy_by_stage.png" in html
    assert json.loads((out / "report.json").read_text())["stages"]["variables"]["cdr"]["bins"][0]["label"] == "0"
    # Without a clinical table there is no stage section.
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"training": [], "validation": [], "test": []}))
    html = report.write_report(tmp_path / "r2", eval_dir=tmp_path / "eval", datalist=plain, **FAST).read_text()
    assert "Accuracy by disease stage" not in html
