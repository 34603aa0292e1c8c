"""Several models on the same folds (``python -m analysis compare-models``): the table, DeLong and the verdict from
hand-written predictions, resumption with a fake bundle and a fake volumetric baseline, the report's section, and
one real run on tiny folds."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from analysis import compare_models
from analysis.__main__ import main
from analysis.compare_models_measure import benchmark_command, network_parameters
from analysis.compare_models_output import write_comparison
from analysis.compare_models_table import summarize_comparison
from analysis.metrics import delong_test, per_subject, read_predictions

FOLDS = (0, 1)
NETWORKS = ("r3d_18", "mc3_18", "r2plus1d_18", "resnet18_2d")


def write_predictions(eval_dir: Path, fold: int, noise: float, seed: int, subjects: int = 20) -> None:
    """Two scans per subject, alternating CN/AD; prob_AD = label shifted by Gaussian noise (more noise, lower AUC).
    Scan and subject ids are the same for every model, so the paired tests can align them."""
    rng = np.random.default_rng(seed)
    eval_dir.mkdir(parents=True, exist_ok=True)
    with (eval_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "subject", "label", "prob_CN", "prob_AD", "prediction"])
        for s in range(subjects):
            label = s % 2
            for visit in range(2):
                p = float(np.clip(0.5 + (label - 0.5) * 0.6 + rng.normal(0, noise), 0.001, 0.999))
                writer.writerow([f"F{fold}S{s}V{visit}", f"F{fold}S{s}", label, 1 - p, p, int(p >= 0.5)])
    (eval_dir / "metrics.json").write_text("{}")


def hand_written(out: Path, noises: dict[str, float]) -> dict[str, dict]:
    runs = {}
    for index, (name, noise) in enumerate(noises.items()):
        for k in FOLDS:
            write_predictions(out / name / f"fold_{k}" / "eval", k, noise, seed=100 * index + k)
        parameters = {"total": 33_000_000 - index, "trainable": 1000}
        runs[name] = {"kind": "network", "dir": str(out / name), "parameters": parameters}
    return runs


def test_table_delong_figure_and_verdict_from_hand_written_predictions(tmp_path):
    runs = hand_written(tmp_path, {"r3d_18": 0.15, "mc3_18": 0.3, "r2plus1d_18": 0.45, "resnet18_2d": 0.8})
    measured = {"status": "ok", "s_per_step": 0.25, "peak_mem_mib": 400.0}
    runs["r3d_18"]["benchmark"] = {
        "32": {"device_name": "test CPU", "bf16": False, "train": measured},
        "128": {"train": {"status": "oom", "error": "CUDA out of memory"}},
    }
    summary = summarize_comparison(runs, FOLDS, "r3d_18", n_resamples=200, seed=1)
    summary["benchmark_sizes"] = [32, 128]
    entries = {e["model"]: e for e in summary["models"]}
    pooled = {name: read_predictions_of(tmp_path / name) for name in runs}

    r3d, mc3 = entries["r3d_18"], entries["mc3_18"]
    fold_aucs = [roc_auc_score(p.label, p.prob) for p in (fold_pred(tmp_path / "r3d_18", k) for k in FOLDS)]
    assert [f["roc_auc"] for f in r3d["folds"]] == pytest.approx(fold_aucs)
    assert r3d["mean_std"]["roc_auc"]["mean"] == pytest.approx(np.mean(fold_aucs))
    assert r3d["mean_std"]["roc_auc"]["std"] == pytest.approx(np.std(fold_aucs, ddof=1))
    pooled_auc = roc_auc_score(pooled["r3d_18"].label, pooled["r3d_18"].prob)
    auc = r3d["pooled"]["roc_auc"]
    assert auc["value"] == pytest.approx(pooled_auc) and auc["ci_low"] <= pooled_auc <= auc["ci_high"]
    assert r3d["pooled"]["n"] == 80 and r3d["pooled"]["n_subjects"] == 40
    # DeLong on the per-subject pooled predictions, model against reference.
    a, b = per_subject(pooled["mc3_18"]), per_subject(pooled["r3d_18"])
    assert mc3["vs_reference"]["delong"]["p_value"] == pytest.approx(delong_test(a.label, a.prob, b.prob)["p_value"])
    assert mc3["delta_auc"] == pytest.approx(mc3["pooled"]["roc_auc"]["value"] - pooled_auc)
    assert "vs_reference" not in r3d

    verdict = summary["verdict"]
    assert verdict["winner"] == "r3d_18" and verdict["runner_up"] == "mc3_18"
    assert verdict["more_2d_worse"]["holds"] and verdict["more_2d_worse"]["models"] == list(NETWORKS)
    assert len(verdict["more_2d_worse"]["pairs"]) == 3
    assert verdict["lines"][0].startswith("Winner: r3d_18 (the reference) has the highest pooled AUC per scan")
    assert '"The more 2D, the worse" (r3d_18 > mc3_18 > r2plus1d_18 > resnet18_2d) holds here' in verdict["lines"][1]

    paths = write_comparison(summary, tmp_path)
    assert [p.name for p in paths] == ["comparison.json", "comparison.csv", "comparison.md", "model_comparison.png"]
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(paths[1].open()))
    assert [r["model"] for r in rows] == list(NETWORKS)
    assert float(rows[0]["pooled_auc"]) == pytest.approx(pooled_auc)
    assert (rows[0]["train_s_per_step_32"], rows[0]["status_128"]) == ("0.25", "oom")
    assert rows[1]["status_32"] == "not measured"
    md = paths[2].read_text()
    assert md.startswith("| Model | Parameters (trainable) | Accuracy (mean ± SD) |")
    r3d_row = next(line for line in md.splitlines() if line.startswith("| r3d_18 |"))
    assert "| 33.00 M (1,000) |" in r3d_row and "| reference |" in r3d_row and "| 0.25 | 400 | OOM | OOM |" in r3d_row
    assert verdict["lines"][1] in md and "test CPU (fp32)" in md
    assert json.loads(paths[0].read_text())["verdict"]["winner"] == "r3d_18"


def fold_pred(model_dir: Path, k: int):
    return read_predictions(model_dir / f"fold_{k}" / "eval" / "predictions.csv")


def read_predictions_of(model_dir: Path):
    from analysis.metrics import concat_predictions

    return concat_predictions(fold_pred(model_dir, k) for k in FOLDS)


def test_verdict_names_a_significant_winner_and_a_broken_order(tmp_path):
    runs = hand_written(tmp_path, {"r3d_18": 0.9, "mc3_18": 0.05, "resnet18_2d": 0.6})
    summary = summarize_comparison(runs, FOLDS, "r3d_18", n_resamples=200)
    verdict = summary["verdict"]
    assert verdict["winner"] == "mc3_18" and verdict["significant"]
    assert "the reference r3d_18 has" in verdict["lines"][0] and "the difference is significant" in verdict["lines"][0]
    assert not verdict["more_2d_worse"]["holds"] and "does not hold here" in verdict["lines"][1]
    assert verdict["more_2d_worse"]["models"] == ["r3d_18", "mc3_18", "resnet18_2d"]
    # Without two models of the order the claim is not tested, and says so.
    alone = summarize_comparison({"r3d_18": runs["r3d_18"]}, FOLDS, "r3d_18", n_resamples=50)
    assert not alone["verdict"]["more_2d_worse"]["tested"] and "not tested" in alone["verdict"]["lines"][1]
    # A model with the reference's very predictions ties with it: the reference is named, and no order is claimed.
    shutil.copytree(tmp_path / "r3d_18", tmp_path / "twin")
    runs["r2plus1d_18"] = {**runs["r3d_18"], "dir": str(tmp_path / "twin")}
    tie = summarize_comparison(
        {n: runs[n] for n in ("mc3_18", "r3d_18", "r2plus1d_18")}, FOLDS, "r3d_18", n_resamples=50
    )
    assert tie["verdict"]["winner"] == "mc3_18"
    assert " = r2plus1d_18 " in tie["verdict"]["lines"][1] and "does not hold" in tie["verdict"]["lines"][1]
    both = summarize_comparison({n: runs[n] for n in ("r3d_18", "r2plus1d_18")}, FOLDS, "r3d_18", n_resamples=50)
    assert both["verdict"]["winner"] == "r3d_18" and both["verdict"]["tied"] == ["r2plus1d_18"]
    assert (
        both["verdict"]["lines"][0].startswith("Winner: r3d_18 (the reference)")
        and "tied with r2plus1d_18" in (both["verdict"]["lines"][0])
    )


class FakeBundle:
    """Records (model, fold or benchmark, stage) and writes what the bundle would write."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, command, cwd, log_path) -> int:
        stage = command[4]
        output = Path(command[command.index("--output_dir") + 1])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"{stage}\n")
        arch = command[command.index("--arch") + 1]
        if stage == "benchmarking":
            self.calls.append((arch, output.name, stage))
            output.mkdir(parents=True, exist_ok=True)
            train = {"status": "ok", "s_per_step": 0.5, "peak_mem_mib": 100.0}
            (output / "benchmark.json").write_text(json.dumps({"device_name": "fake", "bf16": False, "train": train}))
            return 0
        fold_dir = output.parent
        self.calls.append((arch, fold_dir.name, stage))
        if stage == "evaluating":
            k = int(fold_dir.name.split("_")[1])
            write_predictions(output, k, 0.2 + 0.1 * NETWORKS.index(arch), seed=k)
        return 0


@pytest.fixture
def folds_dir(tmp_path) -> Path:
    folds = tmp_path / "folds"
    folds.mkdir()
    for k in FOLDS:
        (folds / f"fold_{k}.json").write_text("{}")
    return folds


def fake_volumetric(calls: list):
    def fit(datalist, dataset_dir, out_dir, regions="template", truth_dir=None, seed=0):
        calls.append((Path(datalist).name, regions))
        write_predictions(Path(out_dir), int(Path(datalist).stem.split("_")[1]), 0.35, seed=7)
        (Path(out_dir) / "model.json").write_text(
            json.dumps({"features": ["hippocampus", "ventricles"], "coefficients": [[0.5, -0.3]], "intercept": [0.1]})
        )
        return Path(out_dir)

    return fit


def test_comparison_resumes_without_redoing_a_finished_model_or_fold(folds_dir, tmp_path):
    out, bundle, fits = tmp_path / "cmp", FakeBundle(), []
    settings = {
        "models": ["r3d_18", "mc3_18", "volumetric"],
        "overrides": ["--trainable", "all", "--weights", "none"],
        "runner": bundle,
        "volumetric_fold": fake_volumetric(fits),
        "n_resamples": 100,
        "log": lambda _: None,
    }
    summary = compare_models.run_comparison(folds_dir, tmp_path, out, **settings)
    expected = [(a, f"fold_{k}", s) for a in ("r3d_18", "mc3_18") for k in FOLDS for s in ("training", "evaluating")]
    assert [c for c in bundle.calls if c[2] != "benchmarking"] == expected
    # No readable volume: the run size is unknown, so only 128³ is benchmarked.
    benchmarks = [c for c in bundle.calls if c[2] == "benchmarking"]
    assert benchmarks == [(a, "benchmark_128", "benchmarking") for a in ("r3d_18", "mc3_18")]
    assert fits == [("fold_0.json", "template"), ("fold_1.json", "template")]
    entries = {e["model"]: e for e in summary["models"]}
    assert entries["volumetric"]["parameters"] == {"total": 3, "trainable": 3}  # 2 coefficients + intercept
    assert entries["r3d_18"]["parameters"]["trainable"] == entries["r3d_18"]["parameters"]["total"]  # --trainable all
    assert (out / "volumetric" / "crossval.json").is_file() and (out / "mc3_18" / "crossval.json").is_file()

    # Again: nothing is trained, evaluated, fitted or benchmarked, and the table is the same.
    bundle.calls.clear()
    again = compare_models.run_comparison(folds_dir, tmp_path, out, **settings)
    assert bundle.calls == [] and len(fits) == 2
    assert again["models"] == summary["models"]
    # Lost results are redone alone: one network evaluation, one volumetric fold, one benchmark.
    (out / "mc3_18" / "fold_1" / "eval" / "metrics.json").unlink()
    (out / "volumetric" / "fold_0" / "eval" / "metrics.json").unlink()
    (out / "r3d_18" / "benchmark_128" / "benchmark.json").unlink()
    compare_models.run_comparison(folds_dir, tmp_path, out, **settings)
    assert bundle.calls == [("r3d_18", "benchmark_128", "benchmarking"), ("mc3_18", "fold_1", "evaluating")]
    assert fits[2:] == [("fold_0.json", "template")]

    # The report of the comparison folder: its reference's cross-validation plus the comparison section.
    argv = ["report", "--comparison-dir", str(out), "--out", str(tmp_path / "report"), "--resamples", "50"]
    assert main([*argv, "--draws", "500"]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert '<h2 id="comparison">Model comparison</h2>' in html
    assert "<td>volumetric</td>" in html and "Winner: " in html and 'alt="model_comparison.png"' in html
    assert str(out / "r3d_18") in html  # the rest of the report is the reference's cross-validation
    with pytest.raises(SystemExit, match="give --eval-dir, --crossval-dir or --comparison-dir"):
        main(["report", "--out", str(tmp_path / "report")])
    with pytest.raises(SystemExit, match="no .*comparison.json; run 'compare-models --out' there first"):
        main(["report", "--comparison-dir", str(tmp_path), "--out", str(tmp_path / "report")])

    # --folds: only the chosen folds are run and tabled.
    bundle.calls.clear()
    one = compare_models.run_comparison(folds_dir, tmp_path, tmp_path / "one", **{**settings, "folds": [1]})
    assert [c[1] for c in bundle.calls if c[2] != "benchmarking"] == ["fold_1"] * 4 and one["folds"] == [1]


def test_parameter_counts_and_benchmark_command(tmp_path):
    from scripts.network import VideoResNetClassifier

    fold = tmp_path / "fold_0.json"
    fold.write_text("{}")
    counts = network_parameters("mc3_18", fold, ["--trainable", "fc", "--weights", "none"])
    expected = VideoResNetClassifier("mc3_18", weights="none", trainable="fc").parameter_counts()
    assert counts == {"total": expected["total"], "trainable": expected["trainable"]} and counts["trainable"] == 1026
    overrides = ["--trainable", "all", "--weights", "kinetics400", "--train#trainer#max_epochs", "1"]
    command = benchmark_command("mc3_18", 128, fold, tmp_path, tmp_path / "b", overrides, python="py")
    assert command[:7] == ["py", "-m", "monai.bundle", "run", "benchmarking", "--config_file", compare_models_config()]
    pairs = dict(zip(command[7::2], command[8::2], strict=True))
    assert pairs["--arch"] == "mc3_18" and pairs["--bench_size"] == "128" and pairs["--trainable"] == "all"
    assert pairs["--weights"] == "none" and pairs["--bench_bf16"] == "$@amp" and pairs["--datalist"] == str(fold)


def compare_models_config() -> str:
    return "['configs/train.json','configs/benchmark.json']"


def test_failed_benchmark_is_recorded_and_bad_inputs_are_one_line(folds_dir, tmp_path, capsys):
    def killed(command, cwd, log_path):
        return -9  # what the kernel's OOM killer leaves

    fold = folds_dir / "fold_0.json"
    results = compare_models.run_benchmarks("r3d_18", [128], fold, tmp_path, tmp_path / "m", [], killed, "py", print)
    assert results["128"]["status"] == "oom" and "killed" in results["128"]["error"]
    # Recorded: a rerun reports it without running the benchmark again.
    again = compare_models.run_benchmarks("r3d_18", [128], fold, tmp_path, tmp_path / "m", [], None, "py", print)
    assert again == results
    argv = ["compare-models", "--folds-dir", str(folds_dir), "--dataset-dir", str(tmp_path), "--out", str(tmp_path)]
    cases = {
        ("--models", "mc3_18,volumetric"): "--reference r3d_18 is not among --models",
        ("--models", "r3d_18,r3d_18"): "--models names r3d_18 more than once",
        ("--models", "r3d_18", "--arch", "mc3_18"): "--arch is set per model and fold by compare-models",
        ("--models", "r3d_18,nonet"): "model nonet (--models) cannot be built: Unknown architecture 'nonet'",
        ("--models", "r3d_18", "--folds", "0,5"): "no fold_<k>.json for fold(s) [5]",
    }
    for extra, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *extra, "--no-benchmark"])
        assert str(exit_info.value).startswith("error: ") and message in str(exit_info.value), exit_info.value
        assert "\n" not in str(exit_info.value)


def write_truth(datalist: Path, truth_dir: Path) -> None:
    """Truth files as ``preprocessing synth`` writes them, for the tiny scans: AD subjects with smaller hippocampi
    and larger ventricles (a planted difference the volumetric baseline must find)."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    for scan in json.loads(datalist.read_text())["all"]:
        ad = scan["label"] == 1
        volumes = {
            "hippocampi": 7000 - 1500 * ad + 10 * int(scan["image_id"][1:]),
            "lateral_ventricles": 20000 + 9000 * ad,
        }
        stem = Path(scan["image"]).name.removesuffix(".nii.gz")
        (truth_dir / f"{stem}_truth.json").write_text(json.dumps({"volumes_mm3": volumes}))


@pytest.mark.slow
def test_real_comparison_of_a_network_and_the_volumetric_baseline_on_tiny_folds(tmp_path, monkeypatch):
    from test_analysis_crossval import BUNDLE_ARGS, write_folds

    monkeypatch.setenv("WANDB_MODE", "disabled")
    dataset = tmp_path / "data"
    folds_dir = write_folds(dataset, size=32)
    write_truth(dataset / "datalist.json", tmp_path / "truth")
    out = tmp_path / "cmp"
    argv = ["compare-models", "--folds-dir", str(folds_dir), "--dataset-dir", str(dataset), "--out", str(out),
            "--models", "r3d_18,volumetric_truth", "--truth-dir", str(tmp_path / "truth"), "--epochs", "1",
            "--benchmark-128", "false", "--resamples", "200", "--bench-repeats", "1", *BUNDLE_ARGS,
            "--cpu_threads", "1"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "comparison.json").read_text())
    r3d, volumetric = summary["models"]
    assert (r3d["model"], volumetric["model"], summary["run_size"]) == ("r3d_18", "volumetric_truth", 32)
    for entry in summary["models"]:
        assert len(entry["folds"]) == 2 and entry["pooled"]["n"] == 16
    # The network's benchmark ran at the run's size through the bundle, fp32 on the CPU ($@amp is false there).
    bench = r3d["benchmark"]["32"]
    assert (bench["arch"], bench["size"], bench["bf16"], bench["train"]["status"]) == ("r3d_18", 32, False, "ok")
    assert "benchmark" not in volumetric and volumetric["parameters"] == {"total": 3, "trainable": 3}
    assert volumetric["pooled"]["roc_auc"]["value"] == 1.0  # the planted volume difference
    assert "p_value" in volumetric["vs_reference"]["delong"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/fold_*/*/*.*")}
    assert len(list(out.glob("r3d_18/fold_*/models/*.pt"))) >= 4
    assert main(argv) == 0  # resumed: nothing is retrained, refitted or measured again
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/fold_*/*/*.*")} == mtimes
    md = (out / "comparison.md").read_text()
    assert "| volumetric_truth | 3 (3) |" in md and "| r3d_18 | 33.15 M (24.91 M) |" in md
