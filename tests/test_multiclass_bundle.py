"""The k-class path (issue 14): a class list carried by the datalist and the plan, balancing and splitting per class,
the head sized from it, k-class metrics and predictions, and the refusals when classes disagree. The end-to-end
tests run the real ``python -m monai.bundle`` CLI on tiny 32³ volumes of three classes (CN, MCI, AD)."""

from __future__ import annotations

import csv
import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bundle_cli
from sklearn import metrics as skm
from tiny_data import write_tiny_dataset

from scripts import plan as plan_mod
from scripts.checkpoints import check_model_classes, model_classes
from scripts.cohort import balance_cohort, kfold_datalists, split_subjects, split_summary, write_datalist
from scripts.data import BundleInputError, datalist_classes, validate_datalist
from scripts.evaluation import PredictionWriter, multiclass_metrics

THREE = ["CN", "MCI", "AD"]
TRAIN = "configs/train.json"
EVALUATE = "['configs/train.json','configs/evaluate.json']"
PLAN_SETTINGS = {"skull_stripper": "none", "spacing": 2.0, "spatial_size": 32}


def cohort(sizes: dict[str, tuple[int, int]]) -> list[dict]:
    """Scans from ``{subject: (label, number of scans)}``."""
    return [
        {"image": f"/data/{s}/{v}.nii.gz", "label": label, "subject": s, "image_id": f"{s}-{v}"}
        for s, (label, count) in sizes.items()
        for v in range(count)
    ]


def per_class(scans: list[dict]) -> dict[int, int]:
    return dict(sorted(Counter(scan["label"] for scan in scans).items()))


# ---------------------------------------------------------------------------------------------------------------------
# Cohort: balancing, splits and datalists for three classes


def test_three_classes_balance_to_the_reference_class_kept_whole():
    sizes = {f"cn{i}": (0, 3) for i in range(6)} | {f"mci{i}": (1, 2) for i in range(4)}
    sizes |= {f"ad{i}": (2, 1) for i in range(5)}  # 18 CN, 8 MCI, 5 AD scans
    balanced = balance_cohort(cohort(sizes), seed=3, classes=THREE)
    assert per_class(balanced) == {0: 5, 1: 5, 2: 5}
    assert {s["image_id"] for s in balanced if s["label"] == 2} == {f"ad{i}-0" for i in range(5)}
    # Round-robin over subjects: 5 CN scans from 5 different people, 5 MCI scans from all 4 MCI people.
    assert len({s["subject"] for s in balanced if s["label"] == 0}) == 5
    assert len({s["subject"] for s in balanced if s["label"] == 1}) == 4
    # The binary default refuses label 2: the class list has to be given.
    with pytest.raises(ValueError, match=r"label 2; expected 0 \(CN\) or 1 \(AD\)"):
        balance_cohort(cohort(sizes))


def test_a_class_smaller_than_the_reference_is_kept_whole_with_a_warning():
    sizes = {f"cn{i}": (0, 2) for i in range(4)} | {"mci0": (1, 1)} | {f"ad{i}": (2, 1) for i in range(3)}
    with pytest.warns(UserWarning, match="Only 1 MCI scans for 3 AD scans"):
        balanced = balance_cohort(cohort(sizes), classes=THREE)
    assert per_class(balanced) == {0: 3, 1: 1, 2: 3}
    with pytest.raises(ValueError, match="No AD scans among 8 scans"):
        balance_cohort(cohort({f"cn{i}": (0, 2) for i in range(4)}), classes=THREE)


def test_three_class_split_and_folds_are_per_class_and_subject_level():
    sizes = {f"s{i:02d}": (i % 3, 1 + i % 2) for i in range(30)}
    scans = cohort(sizes)
    split = split_subjects(scans, fractions=(0.6, 0.2, 0.2), seed=1, classes=THREE)
    for partition, items in split.items():
        assert set(per_class(items)) == {0, 1, 2}, partition  # every class in every partition
    owners = {s["subject"]: p for p, items in split.items() for s in items}
    assert len(owners) == 30 and sum(map(len, split.values())) == len(scans)
    summary = split_summary(split, fractions=(0.6, 0.2, 0.2), classes=THREE)
    assert [line for line in summary.splitlines() if line.startswith("Condition")] == [
        "Condition: AD", "Condition: MCI", "Condition: CN"
    ]  # fmt: skip
    folds = kfold_datalists(scans, k=3, seed=1, classes=THREE)
    tested = Counter(s["image_id"] for fold in folds for s in fold["test"])
    assert set(tested.values()) == {1} and len(tested) == len(scans)
    assert all(set(per_class(fold["test"])) == {0, 1, 2} for fold in folds)


def test_subject_with_two_classes_is_refused_naming_them():
    scans = cohort({"a": (1, 1), "b": (0, 1)}) + [{"image": "/x", "label": 2, "subject": "a", "image_id": "a-9"}]
    with pytest.raises(ValueError, match=r"more than one class: a \(MCI, AD\)"):
        split_subjects(scans, classes=THREE)


def test_write_datalist_records_classes_and_clinical_measures(tmp_path):
    split = split_subjects(cohort({"a": (0, 1), "b": (1, 1), "c": (2, 1)}), fractions=(1, 0, 0), classes=THREE)
    clinical = {"a-0": {"cdr": "0", "mmse": "30", "atrophy": ""}, "b-0": {"cdr": None}, "c-0": {"cdr": 1.0}}
    path = write_datalist(split, tmp_path / "d.json", classes=THREE, clinical=clinical)
    written = json.loads(path.read_text())
    assert list(written) == ["classes", "training", "validation", "test", "clinical"]
    assert written["classes"] == THREE and datalist_classes(path) == THREE
    assert written["clinical"] == {"a-0": {"cdr": 0.0, "mmse": 30.0}, "c-0": {"cdr": 1.0}}
    assert all(set(e) == {"image", "label", "subject", "image_id"} for e in written["training"])
    with pytest.raises(ValueError, match=r"label 2; expected 0 \(CN\) or 1 \(AD\)"):
        write_datalist(split, tmp_path / "binary.json", classes=["CN", "AD"])
    assert not (tmp_path / "binary.json").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Datalist, plan and model classes


def test_datalist_labels_are_checked_against_its_classes(tmp_path):
    root = tmp_path / "data"
    path = write_tiny_dataset(root, {"training": 3, "validation": 3, "test": 3}, size=16, classes=THREE)
    assert len(validate_datalist(path, root, num_classes=3)["training"]) == 3
    with pytest.raises(BundleInputError, match=r"lists 3 classes \(0=CN, 1=MCI, 2=AD\) but num_classes is 2; drop"):
        validate_datalist(path, root, num_classes=2)  # e.g. --num_classes 2 on the command line
    binary = json.loads(path.read_text()) | {"classes": ["CN", "AD"]}
    (tmp_path / "binary.json").write_text(json.dumps(binary))
    with pytest.raises(BundleInputError, match=r"has label 2; labels are 0=CN, 1=AD\."):
        validate_datalist(tmp_path / "binary.json", root, num_classes=2)
    (tmp_path / "bad.json").write_text(json.dumps(binary | {"classes": ["CN", "CN"]}))
    with pytest.raises(BundleInputError, match="names a class twice"):
        datalist_classes(tmp_path / "bad.json")
    assert datalist_classes(tmp_path / "absent.json") == ["CN", "AD"]  # validate_datalist reports a missing file


def test_plan_records_classes_and_refuses_other_classes(tmp_path):
    plan = plan_mod.build_plan(PLAN_SETTINGS, classes=THREE)
    assert plan["classes"] == THREE and plan_mod.plan_classes(plan) == THREE
    assert plan_mod.plan_classes(None) == ["CN", "AD"] and plan_mod.build_plan(PLAN_SETTINGS)["classes"] == ["CN", "AD"]
    plan_mod.write_plan(plan, tmp_path)
    with pytest.raises(plan_mod.PlanError, match="labelled with the classes CN, MCI, AD .* not CN, AD"):
        plan_mod.write_plan(plan_mod.build_plan(PLAN_SETTINGS), tmp_path)

    ckpt = tmp_path / "models"
    with pytest.raises(plan_mod.PlanError, match="the datalist's classes CN, AD are not those of .*CN, MCI, AD"):
        plan_mod.PlanState(tmp_path, ckpt, ["CN", "AD"]).copy_to_ckpt_dir()
    plan_mod.PlanState(tmp_path, ckpt, THREE).copy_to_ckpt_dir()
    assert plan_mod.read_plan(ckpt)["classes"] == THREE
    # A plan written before plans named classes gets the datalist's classes in the model's copy.
    old = tmp_path / "old"
    plan_mod.write_plan({k: v for k, v in plan.items() if k != "classes"}, old)
    plan_mod.PlanState(old, old / "models", ["CN", "AD"]).copy_to_ckpt_dir()
    assert plan_mod.read_plan(old / "models")["classes"] == ["CN", "AD"]


def test_model_classes_come_from_the_plan_else_the_head(tmp_path):
    from scripts.network import VideoResNetClassifier

    model = tmp_path / "model.pt"
    torch.save({"net.fc.weight": torch.zeros(3, 512), "net.fc.bias": torch.zeros(3)}, model)
    assert model_classes(model) == THREE  # no plan: the head size names them
    assert model_classes(tmp_path / "absent.pt") == ["CN", "AD"]
    torch.save(VideoResNetClassifier(weights=None, num_classes=2).state_dict(), model)
    with pytest.raises(BundleInputError, match=r"trained for the classes CN, AD, but the datalist d.json holds CN"):
        check_model_classes(model, "d.json", THREE)
    plan_mod.write_plan(plan_mod.build_plan(PLAN_SETTINGS, classes=["NC", "AD"]), tmp_path)
    assert model_classes(model) == ["NC", "AD"]


# ---------------------------------------------------------------------------------------------------------------------
# k-class metrics and predictions


def test_multiclass_metrics_per_class_ovr_and_confusion():
    labels = [0, 0, 1, 1, 2, 2]
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.1, 0.2, 0.7], [0, 0, 1]])
    m = multiclass_metrics(labels, probs, THREE)
    assert m["classes"] == THREE and m["n"] == 6 and m["n_per_class"] == {"CN": 2, "MCI": 2, "AD": 2}
    assert m["confusion_matrix"] == {"labels": THREE, "rows_true_cols_pred": [[1, 1, 0], [0, 1, 1], [0, 0, 2]]}
    assert m["accuracy"] == pytest.approx(4 / 6) and m["balanced_accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["AD"] == {"sensitivity": 1.0, "specificity": 0.75, "n": 2}
    assert m["per_class"]["CN"] == {"sensitivity": 0.5, "specificity": 1.0, "n": 2}
    expected = skm.roc_auc_score(labels, probs, multi_class="ovr", labels=[0, 1, 2])
    assert m["macro_auc"] == pytest.approx(expected)
    assert m["macro_auc"] == pytest.approx(np.mean(list(m["ovr_auc"].values())))
    assert m["ad_vs_rest"]["n_AD"] == 2 and m["ad_vs_rest"]["roc_auc"] == pytest.approx(1.0)
    # A class absent from the test set: its sensitivity and AUC, and the macro AUC, are undefined (None).
    m = multiclass_metrics([0, 2, 2], probs[[0, 4, 5]], THREE)
    assert m["per_class"]["MCI"]["sensitivity"] is None and m["ovr_auc"]["MCI"] is None and m["macro_auc"] is None


def test_binary_prediction_writer_keeps_its_keys_and_adds_classes(tmp_path):
    writer = PredictionWriter(tmp_path)
    writer.rows = [
        {"image_id": f"I{i}", "subject": f"S{i}", "label": i % 2, "prob_CN": 1 - p, "prob_AD": p, "prediction": 0}
        for i, p in enumerate([0.2, 0.9, 0.6, 0.7])
    ]
    writer._write(None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["classes"] == ["CN", "AD"] and metrics["roc_auc"] == 1.0 and metrics["n_AD"] == 2
    header = (tmp_path / "predictions.csv").read_text().splitlines()[0]
    assert header == "image_id,subject,label,prob_CN,prob_AD,prediction"


# ---------------------------------------------------------------------------------------------------------------------
# End to end through the bundle CLI: three classes


def common(data: Path, models: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset_dir", str(data), "--ckpt_dir", str(models), "--output_dir", str(out), "--num_workers", "0", *extra,
    ]  # fmt: skip


def last_line(result: subprocess.CompletedProcess) -> str:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def three_class(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-class tiny dataset with its plan (classes CN, MCI, AD), trained for 2 epochs through the CLI."""
    data = tmp_path_factory.mktemp("three_class")
    write_tiny_dataset(data, {"training": 6, "validation": 3, "test": 3}, size=32, classes=THREE)
    plan_mod.write_plan(plan_mod.build_plan(PLAN_SETTINGS, classes=THREE), data)
    run_dir = tmp_path_factory.mktemp("three_class_run")
    extra = ("--weights", "none", "--use_wandb", "False", "--train#trainer#max_epochs", "2")
    bundle_cli("run", "training", "--config_file", TRAIN, *common(data, run_dir / "models", run_dir, *extra))
    return data, run_dir


@pytest.mark.slow
def test_three_class_training_evaluation_and_inference(three_class):
    data, run_dir = three_class
    models = run_dir / "models"
    assert torch.load(models / "model.pt", weights_only=True)["net.fc.weight"].shape == (3, 512)
    assert plan_mod.read_plan(models)["classes"] == THREE

    out = run_dir / "test"
    bundle_cli("run", "evaluating", "--config_file", EVALUATE, *common(data, models, out))
    with (out / "predictions.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["image_id", "subject", "label", "prob_CN", "prob_MCI", "prob_AD", "prediction"]
    assert [int(r["label"]) for r in rows] == [0, 1, 2]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in THREE]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and int(row["prediction"]) == int(np.argmax(probs))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == THREE and metrics["n_per_class"] == {"CN": 1, "MCI": 1, "AD": 1}
    assert np.array(metrics["confusion_matrix"]["rows_true_cols_pred"]).shape == (3, 3)
    assert set(metrics["per_class"]) == set(THREE) and metrics["ad_vs_rest"]["n"] == 3

    infer = run_dir / "infer"
    folder = common(data / "images", models, infer, "--raw_input", "False")
    bundle_cli("run", "--config_file", "configs/inference.json", *folder)
    with (infer / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for row in rows:
        probs = {c: float(row[f"prob_{c}"]) for c in THREE}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and row["prediction"] == max(probs, key=probs.get)


@pytest.mark.slow
def test_evaluating_a_two_class_model_on_a_three_class_datalist_is_refused(three_class, tmp_path):
    from scripts.network import VideoResNetClassifier

    data, _ = three_class
    torch.save(VideoResNetClassifier(weights=None).state_dict(), tmp_path / "model.pt")  # CN/AD head, no plan
    result = bundle_cli(
        "run", "evaluating", "--config_file", EVALUATE, *common(data, tmp_path, tmp_path / "out"), check=False
    )
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: the model {tmp_path / 'model.pt'} was trained for the classes CN, AD, but the datalist "
        f"{data / 'datalist.json'} holds CN, MCI, AD: evaluate it on a datalist made with its classes, or pass the "
        f"--ckpt_dir of a model trained for CN, MCI, AD."
    )
    assert "Traceback" not in result.stdout + result.stderr
