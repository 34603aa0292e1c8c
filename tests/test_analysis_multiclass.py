"""k-class metrics (``analysis.multiclass``) against scikit-learn, the AD-vs-rest view of a k-class predictions.csv,
the ``metrics`` and ``bayes`` commands on k classes, and the k-class report."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from analysis import metrics as m
from analysis import multiclass as mc
from analysis import report
from analysis.__main__ import main

CLASSES3 = ("CN", "MCI", "AD")
FAST = {"n_resamples": 200, "n_draws": 2000}


def write_class_eval_dir(
    path: Path,
    classes: Sequence[str] = CLASSES3,
    n_subjects: int = 36,
    seed: int = 0,
    prefix: str = "",
    skill: float = 1.5,
    stage_effect: float = 12.0,
) -> dict[str, dict[str, float]]:
    """An evaluation folder in the interfaces' format (prob_<class> per class, label = class index, prediction) and
    the clinical table of its scans: AD scans have atrophy, CDR and MMSE, and a higher prob_AD the more atrophy
    (``stage_effect``). Returns the clinical table (image_id -> cdr, mmse, atrophy)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    k, ad = len(classes), list(classes).index("AD")
    clinical = {}
    with (path / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "subject", "label", *(f"prob_{c}" for c in classes), "prediction"])
        for s in range(n_subjects):
            label = s % k
            for v in range(1 + s % 2):
                image_id = f"{prefix}I{s:03d}_{v}"
                logits = rng.normal(0.0, 1.0, k)
                logits[label] += skill
                if label == ad:
                    atrophy = float(rng.uniform(0.05, 0.35))
                    logits[ad] += stage_effect * (atrophy - 0.2)
                    cdr = 0.5 if atrophy < 0.15 else (1.0 if atrophy < 0.25 else 2.0)
                    clinical[image_id] = {"atrophy": atrophy, "cdr": cdr, "mmse": float(round(30 - 60 * atrophy))}
                elif label == 0:
                    clinical[image_id] = {"cdr": 0.0, "mmse": float(rng.integers(27, 31)), "atrophy": 0.0}
                else:
                    clinical[image_id] = {"cdr": 0.5, "mmse": float(rng.integers(22, 29))}
                prob = np.exp(logits) / np.exp(logits).sum()
                predicted = int(prob[ad] >= 0.5) * ad if k == 2 else int(np.argmax(prob))
                writer.writerow([image_id, f"{prefix}S{s:03d}", label, *(f"{p:.6f}" for p in prob), predicted])
    (path / "metrics.json").write_text(json.dumps({"classes": list(classes)}))
    return clinical


def write_datalist(path: Path, clinical: dict, classes: Sequence[str] = CLASSES3) -> Path:
    items = [
        {"image": "x.nii.gz", "label": i % len(classes), "subject": f"T{i}", "image_id": f"T{i}"} for i in range(6)
    ]

    data = {"classes": list(classes), "training": items[:4], "validation": items[4:], "test": [], "clinical": clinical}
    path.write_text(json.dumps(data))
    return path


def test_k_class_file_reads_as_ad_vs_rest_and_old_files_as_before(tmp_path):
    write_class_eval_dir(tmp_path / "k3")
    rows = list(csv.DictReader((tmp_path / "k3" / "predictions.csv").open()))
    pred = m.read_predictions(tmp_path / "k3" / "predictions.csv")
    assert pred.classes == CLASSES3 and pred.contrast == "AD vs CN+MCI"
    assert pred.label.tolist() == [int(r["label"] == "2") for r in rows]
    assert pred.prob.tolist() == [float(r["prob_AD"]) for r in rows]
    assert m.per_subject(pred).classes == CLASSES3
    # A file from before the class list (prob_AD only) and a binary file of today give the same binary predictions.
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    old.write_text("image_id,subject,label,prob_AD,prediction\na,s1,1,0.8,1\nb,s2,0,0.3,0\n")
    new.write_text("image_id,subject,label,prob_CN,prob_AD,prediction\na,s1,1,0.2,0.8,1\nb,s2,0,0.7,0.3,0\n")
    for path in (old, new):
        binary = m.read_predictions(path)
        assert binary.classes == ("CN", "AD") and binary.contrast == "AD vs CN"
        assert binary.label.tolist() == [1, 0] and binary.prob.tolist() == [0.8, 0.3]
        view = mc.read_class_predictions(path)
        assert np.allclose(view.probs, [[0.2, 0.8], [0.7, 0.3]])


def test_bad_files_are_refused_naming_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,subject,label,prob_CN,prob_MCI,prob_AD,prediction\na,s1,3,0.2,0.2,0.6,2\n")
    with pytest.raises(ValueError, match=r"bad.csv: labels \['3'\] are not class indices"):
        m.read_predictions(bad)
    no_ad = tmp_path / "no_ad.csv"
    no_ad.write_text("image_id,subject,label,prob_CN,prob_MCI,prediction\na,s1,1,0.2,0.8,1\n")
    with pytest.raises(ValueError, match="no_ad.csv has no prob_AD column"):
        m.read_predictions(no_ad)


def test_k_class_metrics_equal_scikit_learn(tmp_path):
    write_class_eval_dir(tmp_path)
    pred = mc.read_class_predictions(tmp_path / "predictions.csv")
    result = mc.evaluate_class_level(pred, n_resamples=200)
    y, predicted = pred.label, np.argmax(pred.probs, axis=1)
    assert mc.confusion_counts(result) == skm.confusion_matrix(y, predicted, labels=[0, 1, 2]).tolist()
    assert result["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert result["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, predicted))
    auc = skm.roc_auc_score(y, pred.probs, multi_class="ovr", average="macro")
    assert result["macro_auc"]["value"] == pytest.approx(auc)
    recall = skm.recall_score(y, predicted, average=None)
    for i, c in enumerate(CLASSES3):
        entry = result["per_class"][c]
        assert entry["sensitivity"]["value"] == pytest.approx(recall[i])
        not_c = y != i
        assert entry["specificity"]["value"] == pytest.approx(np.mean(predicted[not_c] != i))
        assert entry["ovr_auc"]["value"] == pytest.approx(skm.roc_auc_score(y == i, pred.probs[:, i]))
        assert entry["sensitivity"]["ci_low"] <= entry["sensitivity"]["value"] <= entry["sensitivity"]["ci_high"]
        assert entry["n"] == int((y == i).sum())
    cell = result["confusion_matrix"]["rows_true_cols_pred"][2][2]
    assert cell["ci_low"] <= cell["value"] <= cell["ci_high"]


def test_bootstrap_weights_equal_metrics_on_repeated_scans(tmp_path):
    write_class_eval_dir(tmp_path, n_subjects=12)
    pred = mc.read_class_predictions(tmp_path / "predictions.csv")
    counts = np.random.default_rng(1).integers(0, 3, size=len(pred))
    counts[:3] = 1  # every class keeps a scan
    weighted = mc.weighted_class_metrics(counts, pred.label, pred.predicted(), pred.probs)
    index = np.repeat(np.arange(len(pred)), counts)
    y, p = pred.label[index], pred.probs[index]
    predicted = np.argmax(p, axis=1)
    assert weighted["confusion"][0].tolist() == skm.confusion_matrix(y, predicted, labels=[0, 1, 2]).tolist()
    assert weighted["macro_auc"][0] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert weighted["balanced_accuracy"][0] == pytest.approx(skm.balanced_accuracy_score(y, predicted))


def test_binary_file_gives_the_binary_numbers_in_the_class_view(tmp_path):
    write_class_eval_dir(tmp_path, classes=("CN", "AD"))
    path = tmp_path / "predictions.csv"
    binary = m.evaluate_level(m.read_predictions(path), n_resamples=200)["metrics"]
    view = mc.evaluate_class_level(mc.read_class_predictions(path), n_resamples=200)
    assert view["per_class"]["AD"]["sensitivity"] == binary["sensitivity"]
    assert view["per_class"]["AD"]["specificity"] == binary["specificity"]
    assert view["per_class"]["AD"]["ovr_auc"]["value"] == pytest.approx(binary["roc_auc"]["value"])
    assert view["accuracy"]["value"] == pytest.approx(binary["accuracy"]["value"])


def test_per_subject_class_view_averages_probabilities_and_refuses_mixed_classes():
    pred = mc.ClassPredictions(
        np.array(["a", "b", "c"]), np.array(["s1", "s1", "s2"]), np.array([2, 2, 0]),
        np.array([[0.1, 0.2, 0.7], [0.3, 0.4, 0.3], [0.8, 0.1, 0.1]]), CLASSES3,
    )  # fmt: skip
    subject = mc.class_per_subject(pred)
    assert subject.label.tolist() == [2, 0] and subject.probs[0].tolist() == pytest.approx([0.2, 0.3, 0.5])
    mixed = mc.ClassPredictions(pred.image_id, pred.subject, np.array([2, 1, 0]), pred.probs, CLASSES3)
    with pytest.raises(ValueError, match="different classes.*s1"):
        mc.class_per_subject(mixed)


def test_metrics_and_bayes_commands_on_three_classes(tmp_path, capsys):
    write_class_eval_dir(tmp_path)
    path = tmp_path / "predictions.csv"
    assert main(["metrics", str(path), "--resamples", "200", "--out", str(tmp_path / "m.json")]) == 0
    assert main(["bayes", "--predictions", str(path), "--draws", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "3 classes, per scan (54 scans: CN 18, MCI 18, AD 18; 95% CI)" in printed
    assert "Macro ROC-AUC" in printed and "MCI: sensitivity" in printed and "confusion matrix" in printed
    assert "AD vs CN+MCI (AD against all other classes" in printed
    assert "Contrast: AD vs CN+MCI (per subject)" in printed
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["contrast"] == "AD vs CN+MCI" and data["multiclass"]["classes"] == list(CLASSES3)
    assert data["scan"]["n_AD"] == 18 and data["scan"]["n_CN"] == 36  # AD against the rest


def test_three_class_report(tmp_path):
    clinical = write_class_eval_dir(tmp_path / "eval")
    datalist = write_datalist(tmp_path / "datalist.json", clinical)
    html = report.write_report(tmp_path / "report", eval_dir=tmp_path / "eval", datalist=datalist, **FAST).read_text()
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["classes"] == list(CLASSES3) and data["contrast"] == "AD vs CN+MCI"
    assert data["cohort"]["test"] == {
        "scans": 54, "subjects": 36, "AD_scans": 18, "MCI_scans": 18, "CN_scans": 18,
        "AD_subjects": 12, "MCI_subjects": 12, "CN_subjects": 12,
    }  # fmt: skip
    assert data["cohort"]["datalist"]["partitions"]["training"]["MCI_scans"] == 1
    assert data["multiclass"]["scan"]["confusion_matrix"]["labels"] == list(CLASSES3)
    assert "CN/MCI/AD classification: evaluation report" in html
    for text in ("Macro ROC-AUC", "One-vs-rest ROC-AUC", "Predicted MCI", "MCI scans", "Contrast: AD vs CN+MCI"):
        assert text in html, text
    assert "3-class confusion matrices" in html and "ROC curve of AD vs CN+MCI" in html
    assert "Accuracy by disease stage</h2>" in html  # the datalist's clinical table
    # The study design's prevalence of AD is 1 in 3 with three balanced classes, not 50/50.
    design = [row["prevalence"] for row in data["bayes"]["by_prevalence"] if row["prevalence"]["key"] == "study_design"]
    assert design[0]["value"] == pytest.approx(1 / 3) and "Test set (1/3)" in html and "True CN+MCI (TN)" in html
    from PIL import Image

    with Image.open(tmp_path / "report" / "confusion_matrix.png") as image:
        assert image.size[0] > image.size[1] * 1.8  # two panels side by side


def test_explanations_refuse_a_three_class_model(tmp_path):
    # The maps and probabilities of explain and scan-report are those of output 1, which is MCI in a CN/MCI/AD model.
    import torch

    from analysis.explain.maps import load_trained_model

    path = tmp_path / "model.pt"
    torch.save({"net.fc.weight": torch.zeros(3, 512), "net.fc.bias": torch.zeros(3)}, path)
    with pytest.raises(SystemExit, match="has 3 outputs; explain and scan-report support CN/AD models"):
        load_trained_model(path)
