"""External validation refuses to test a model on its own training data: the same person under another id spelling,
or the same image under another name, id and subject (scripts.external)."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_bundle_workflows import EVALUATE, TRAIN, bundle_cli, run_args
from tiny_data import write_tiny_dataset

from scripts import external
from scripts.data import BundleInputError
from scripts.external import (
    RECORD_NAME,
    check_disjoint,
    check_no_training_overlap,
    check_test_not_in_training,
    volume_hash,
    write_training_record,
)


def save(volume: np.ndarray, path: Path, description: bytes = b"") -> Path:
    image = nib.Nifti1Image(volume, np.eye(4))
    image.header["descrip"] = description
    nib.save(image, str(path))
    return path


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "data"
    datalist = write_tiny_dataset(root, {"training": 4, "validation": 2, "test": 2}, size=16)
    return root, json.loads(datalist.read_text())


def absolute(root: Path, entries: list[dict]) -> list[dict]:
    return [dict(entry, image=str(root / entry["image"])) for entry in entries]


def recorded_model(tmp_path: Path, root: Path, datalist: dict) -> Path:
    """A model folder whose record lists the dataset's training and validation scans."""
    models = tmp_path / "models"
    write_training_record(models, root / "datalist.json", absolute(root, datalist["training"] + datalist["validation"]))
    return models


def test_volume_hash_counts_voxel_values_and_shape_only(tmp_path):
    volume = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)
    reference = volume_hash(save(volume, tmp_path / "a.nii.gz"))
    assert volume_hash(save(volume, tmp_path / "other_name.nii")) == reference
    assert volume_hash(save(volume, tmp_path / "b.nii.gz", description=b"re-exported by another cohort")) == reference
    with gzip.open(tmp_path / "a.nii.gz") as f, (tmp_path / "unzipped.nii").open("wb") as out:
        shutil.copyfileobj(f, out)
    assert volume_hash(tmp_path / "unzipped.nii") == reference
    changed = volume.copy()
    changed[4, 4, 4] += 1e-3
    assert volume_hash(save(changed, tmp_path / "c.nii.gz")) != reference
    assert volume_hash(save(volume.reshape(9, 8, 10), tmp_path / "d.nii.gz")) != reference  # same bytes, other shape
    assert len(reference) == 64 and int(reference, 16) >= 0  # sha256 hex digest


def test_training_record_lists_subject_keys_and_hashes(tmp_path, dataset):
    root, datalist = dataset
    models = recorded_model(tmp_path, root, datalist)
    record = json.loads((models / RECORD_NAME).read_text())
    train = datalist["training"] + datalist["validation"]
    assert record["format"] == 1 and record["datalist"] == str((root / "datalist.json").resolve())
    assert record["subjects"] == sorted({e["subject"].upper() for e in train}) and len(record["subjects"]) == 6
    assert sorted(record["images"].values()) == sorted(e["image_id"] for e in train)
    assert volume_hash(root / train[0]["image"]) in record["images"]
    assert [p.name for p in models.iterdir()] == [RECORD_NAME]  # written atomically: no temporary file left


def test_rerun_with_other_data_keeps_both_while_checkpoints_remain(tmp_path, dataset, caplog):
    root, datalist = dataset
    models = recorded_model(tmp_path, root, datalist)
    first = json.loads((models / RECORD_NAME).read_text())
    (models / "checkpoint_epoch=1.pt").write_bytes(b"")
    fewer = absolute(root, datalist["training"][:2])
    with caplog.at_level(logging.WARNING):
        write_training_record(models, tmp_path / "other.json", fewer, resume=True)
    merged = json.loads((models / RECORD_NAME).read_text())
    assert merged["images"] == first["images"] and merged["subjects"] == first["subjects"]  # the union
    assert merged["earlier_datalists"] == [first["datalist"]]
    assert "0 scan(s) new, 4 gone" in caplog.text and "keeps both" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        write_training_record(models, tmp_path / "other.json", fewer, resume=False)
    assert len(json.loads((models / RECORD_NAME).read_text())["images"]) == 2
    assert "now records this run's data only" in caplog.text
    (models / RECORD_NAME).write_text("{broken")  # e.g. a disk that filled up: training goes on, with a new record
    write_training_record(models, tmp_path / "other.json", fewer, resume=True)
    assert len(json.loads((models / RECORD_NAME).read_text())["images"]) == 2 and "replaced by this run" in caplog.text


def test_same_subject_under_another_spelling_is_refused(tmp_path):
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    rng = np.random.default_rng(1)
    paths = [save(rng.normal(size=(6, 6, 6)).astype(np.float32), volumes / f"v{i}.nii.gz") for i in range(4)]
    train = [{"image": str(paths[0]), "subject": "109_S_1192", "image_id": "I1"},
             {"image": str(paths[1]), "subject": "sub-OAS30001", "image_id": "I2"}]  # fmt: skip
    write_training_record(tmp_path / "models", tmp_path / "datalist.json", train)
    test = [{"image": str(paths[2]), "subject": "AD_109_S_1192", "image_id": "T1"},
            {"image": str(paths[3]), "subject": "OAS30001_MR_d0129", "image_id": "T2"}]  # fmt: skip
    with pytest.raises(BundleInputError) as refused:
        check_no_training_overlap(test, tmp_path / "models", "the external test datalist")
    message = str(refused.value)
    assert message.startswith("error: 2 test scan(s) in the external test datalist") and "\n" not in message
    assert "T1 (subject AD_109_S_1192 = training subject 109_S_1192 (scans I1))" in message
    assert "T2 (subject OAS30001_MR_d0129 = training subject OAS30001 (scans I2))" in message
    assert "Fix: remove these scans from the external test datalist" in message
    # A different person is not confused with them.
    check_no_training_overlap([dict(test[0], subject="109_S_1193")], tmp_path / "models")


def test_same_image_under_another_id_and_subject_is_refused(tmp_path, dataset):
    root, datalist = dataset
    models = recorded_model(tmp_path, root, datalist)
    source = datalist["training"][1]
    copy = tmp_path / "external" / "renamed_scan.nii"  # recompressed: .nii.gz -> .nii, another name
    copy.parent.mkdir()
    nib.save(nib.load(str(root / source["image"])), str(copy))
    test = absolute(root, datalist["test"]) + [{"image": str(copy), "subject": "EXT-999", "image_id": "X1", "label": 0}]
    with pytest.raises(BundleInputError) as refused:
        check_no_training_overlap(test, models, "ext.json")
    message = str(refused.value)
    assert message.startswith("error: 1 test scan(s) in ext.json")
    assert f"X1 (same image as training scan {source['image_id']})" in message


def test_datalists_are_compared_before_any_model_exists(tmp_path, dataset):
    root, datalist = dataset
    training = absolute(root, datalist["training"] + datalist["validation"])
    check_disjoint(training, absolute(root, datalist["test"]), "fold 0")
    other_image = str(save(np.zeros((4, 4, 4), np.float32), tmp_path / "other.nii"))
    leaked = dict(training[3], subject="sub-" + training[3]["subject"], image_id="L1", image=other_image)
    with pytest.raises(
        BundleInputError, match=r"^error: 1 test scan\(s\) in fold 0 .*L1 \(subject sub-S003 = training"
    ):
        check_disjoint(training, [leaked], "fold 0")


def test_refusal_names_five_scans_and_counts_the_rest(tmp_path, dataset):
    root, datalist = dataset
    models = recorded_model(tmp_path, root, datalist)
    test = [dict(entry, image_id=f"again{i}") for i, entry in enumerate(absolute(root, datalist["training"] * 2))]
    with pytest.raises(BundleInputError) as refused:
        check_no_training_overlap(test, models)
    message = str(refused.value)
    assert message.startswith("error: 8 test scan(s)") and "; and 3 more." in message
    assert "again4 (" in message and "again5 (" not in message


def test_clean_external_and_internal_test_data_pass(tmp_path, dataset, caplog):
    root, datalist = dataset
    models = recorded_model(tmp_path, root, datalist)
    with caplog.at_level(logging.INFO):
        check_test_not_in_training(root / "datalist.json", root, models / "model.pt")  # the model's own test split
    assert "no subject or image of the model's training data" in caplog.text
    other = tmp_path / "other"
    write_tiny_dataset(other, {"test": 3}, size=16, seed=7)
    external_list = json.loads((other / "datalist.json").read_text())
    for entry in external_list["test"]:
        entry["subject"] = "sub-" + entry["subject"].replace("S", "X")  # another cohort's ids
    (other / "datalist.json").write_text(json.dumps(external_list))
    check_test_not_in_training(other / "datalist.json", other, models / "model.pt")


def test_model_without_record_warns_and_does_not_check(tmp_path, dataset, caplog):
    root, datalist = dataset
    (tmp_path / "models").mkdir()
    with caplog.at_level(logging.WARNING):
        check_test_not_in_training(root / "datalist.json", root, tmp_path / "models" / "model.pt")
    assert f"No {RECORD_NAME} in {tmp_path / 'models'}" in caplog.text and "cannot check" in caplog.text


def test_unreadable_record_is_refused(tmp_path, dataset):
    root, datalist = dataset
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / RECORD_NAME).write_text("{not json")
    with pytest.raises(BundleInputError, match=r"^error: .*training_data\.json is not a training-data record"):
        check_test_not_in_training(root / "datalist.json", root, tmp_path / "models" / "model.pt")


def test_long_lists_log_their_progress(tmp_path, dataset, caplog, monkeypatch):
    root, datalist = dataset
    monkeypatch.setattr(external, "PROGRESS_FROM", 3)
    with caplog.at_level(logging.INFO):
        recorded_model(tmp_path, root, datalist)
    assert "Hashing 6 volumes of the training and validation data" in caplog.text
    assert "Hashed 6/6 volumes" in caplog.text


@pytest.mark.slow
def test_bundle_evaluation_refuses_a_training_image_in_an_external_datalist(tmp_path):
    dataset = tmp_path / "internal"
    datalist = json.loads(write_tiny_dataset(dataset, {"training": 4, "validation": 2, "test": 2}).read_text())
    run_dir = tmp_path / "run"
    bundle_cli(
        "run", "training", "--config_file", TRAIN, *run_args(dataset, run_dir, "--train#trainer#max_epochs", "1")
    )
    assert (run_dir / "models" / RECORD_NAME).is_file()

    cohort = tmp_path / "external"
    clean = json.loads(write_tiny_dataset(cohort, {"test": 2}, seed=5).read_text())["test"]
    for entry in clean:
        entry["subject"] = "EXT_" + entry["subject"]
    source = datalist["training"][2]
    nib.save(nib.load(str(dataset / source["image"])), str(cohort / "images" / "site2_0042.nii"))
    copied = {"image": "images/site2_0042.nii", "label": source["label"], "subject": "EXT_0042", "image_id": "X42"}
    (cohort / "with_copy.json").write_text(json.dumps({"test": [*clean, copied]}))
    (cohort / "clean.json").write_text(json.dumps({"test": clean}))

    def evaluate(name: str, check: bool):
        args = run_args(cohort, run_dir, "--datalist", str(cohort / name))  # writes into run_dir / "eval"
        return bundle_cli("run", "evaluating", "--config_file", EVALUATE, *args, check=check)

    refused = evaluate("with_copy.json", check=False)
    assert refused.returncode != 0
    last_line = (refused.stdout + refused.stderr).strip().splitlines()[-1]
    assert last_line.startswith("error: 1 test scan(s)")
    assert f"X42 (same image as training scan {source['image_id']})" in last_line
    assert not (run_dir / "eval" / "metrics.json").exists()
    evaluate("clean.json", check=True)
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["n"] == 2
