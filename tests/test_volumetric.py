"""The volumetric baseline (analysis.volumetric): hippocampal and ventricular volumes over brain volume, logistic
regression per fold, on hand-made phantoms (24³) with a planted AD difference; the template registration is faked
except in one slow test that registers the MNI152 template."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import analysis.explain.regions as regions
from analysis import volumetric as V
from analysis import volumetric_features as F
from analysis.__main__ import main

HIPPOCAMPI = {1: (-25.0, -20.0, -15.0), 2: (25.0, -20.0, -15.0)}  # label: centre (mm)
HIPPOCAMPUS_AXES = (8.0, 16.0, 7.0)
VENTRICLES = ((-10.0, 0.0, 12.0), (10.0, 0.0, 12.0))
VENTRICLE_AXES = (6.0, 22.0, 10.0)
BRAIN_AXES = (62.0, 76.0, 58.0)


def _inside(points: np.ndarray, centre, axes, scale: float = 1.0) -> np.ndarray:
    return (((points - np.asarray(centre)) / (np.asarray(axes) * scale)) ** 2).sum(-1) <= 1.0


def _points(shape, affine) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    return index @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def _grid(head: float, shape=(24, 24, 24)) -> np.ndarray:
    """The chain's model grid: the brain's box (plus a margin) resized to ``shape``, so voxels differ per axis."""
    extent = 2 * (np.asarray(BRAIN_AXES) * head + 6.0)
    affine = np.diag([*(extent / np.asarray(shape)), 1.0])
    affine[:3, 3] = -extent / 2 + affine.diagonal()[:3] / 2
    return affine


def phantom(affine, shape=(24, 24, 24), head: float = 1.0, ventricles: float = 1.0, seed: int = 0):
    """A skull-stripped T1-like brain (white matter 0.9, a grey cortex 0.6, dark CSF ventricles 0.1, zero background;
    5.7 mm voxels at 24³, as the demo's 32³ model grid) and the template's
    region labels on its grid (hippocampi 1-2 and ventricles 5 at their nominal size, scaled with the head, as an
    affine registration places them)."""
    points = _points(shape, affine) / head
    brain = _inside(points, (0.0, 0.0, 0.0), BRAIN_AXES)
    csf = np.zeros(shape, dtype=bool)
    labels = np.zeros(shape, dtype=np.int16)
    for centre in VENTRICLES:
        csf |= _inside(points, centre, VENTRICLE_AXES, ventricles)
        labels[_inside(points, centre, VENTRICLE_AXES)] = 5
    for label, centre in HIPPOCAMPI.items():
        labels[_inside(points, centre, HIPPOCAMPUS_AXES)] = label
    noise = np.random.default_rng(seed).normal(0.0, 0.03, shape)
    cortex = ~_inside(points, (0.0, 0.0, 0.0), BRAIN_AXES, 0.85)
    image = np.where(brain, np.where(csf, 0.1, np.where(cortex, 0.6, 0.9)) + noise, 0.0).astype(np.float32)
    return image, np.where(brain, labels, 0).astype(np.int16)


def _fake_registration(monkeypatch, calls: list | None = None) -> None:
    """The template labels straight from the phantom (head size read back from the grid), no ANTs."""

    def registered(image, brain_mask=None, syn=False, seed=0):
        if calls is not None:
            calls.append(image.shape)
        affine = image.affine
        head = float(np.round((affine[0, 0] * image.shape[0] / 2 - 6.0) / BRAIN_AXES[0], 6))
        return phantom(affine, image.shape, head=head)[1]

    monkeypatch.setattr(regions, "template_regions_on_grid", registered)


def cohort(root: Path, n: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """``n`` phantoms (alternately CN and AD; head sizes 0.85-1.15; AD: hippocampi 25 % smaller, ventricles 1.6x
    per axis), their truth JSONs and a datalist; returns (datalist, truth_dir)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    truth_dir = root / "truth"
    truth_dir.mkdir()
    entries = []
    for i in range(n):
        label, head = i % 2, float(rng.uniform(0.85, 1.15))
        affine = _grid(head)
        image, _ = phantom(affine, head=head, ventricles=1.6 if label else 1.0, seed=i)
        subject, image_id = f"S{i:03d}", f"I{i:03d}"
        nib.save(nib.Nifti1Image(image, affine), str(root / "images" / f"{subject}_{image_id}.nii.gz"))
        hippocampus = 4 / 3 * np.pi * np.prod(HIPPOCAMPUS_AXES) * head**3 * (0.75 if label else 1.0)
        ventricle = 4 / 3 * np.pi * np.prod(VENTRICLE_AXES) * head**3 * (1.6**3 if label else 1.0)
        volumes = {"hippocampi": 2 * hippocampus * rng.normal(1, 0.03), "lateral_ventricles": 2 * ventricle}
        (truth_dir / f"{subject}_{image_id}_truth.json").write_text(json.dumps({"volumes_mm3": volumes}))
        entries.append({"image": f"images/{subject}_{image_id}.nii.gz", "label": label, "subject": subject,
                        "image_id": image_id})  # fmt: skip
    cut, val = n * 7 // 12, n * 8 // 12  # 24 scans: 14 training, 2 validation, 8 test
    datalist = {"training": entries[:cut], "validation": entries[cut:val], "test": entries[val:]}
    path = root / "fold_0.json"
    path.write_text(json.dumps(datalist))
    return path, truth_dir


def test_truth_volumes_recover_the_planted_difference(tmp_path) -> None:
    datalist, truth_dir = cohort(tmp_path / "data")
    out = V.run_volumetric_fold(datalist, tmp_path / "data", tmp_path / "out", regions="truth", truth_dir=truth_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["classes"] == ["CN", "AD"] and metrics["roc_auc"] >= 0.9
    model = json.loads((out / "volumetric_model.json").read_text())
    assert model["coefficients"]["hippocampi"] < 0 < model["coefficients"]["lateral_ventricles"]
    assert model["n_coefficients"] == 3 and model["n_training_scans"] == 16
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image_id", "subject", "label", "prob_CN", "prob_AD", "prediction"]
    assert all(int(r["prediction"]) == (float(r["prob_AD"]) >= 0.5) for r in rows)
    with open(out / "features.csv", newline="") as handle:
        features = list(csv.DictReader(handle))
    assert len(features) == 24 and {r["brain_source"] for r in features} == {"nonzero"}


def test_template_features_find_the_enlarged_ventricles(tmp_path, monkeypatch) -> None:
    """Affine-placed template hippocampi follow head size only; the CSF around the ventricle region carries AD."""
    _fake_registration(monkeypatch)
    datalist, _ = cohort(tmp_path / "data")
    out = V.run_volumetric_fold(datalist, tmp_path / "data", tmp_path / "out")
    assert json.loads((out / "metrics.json").read_text())["roc_auc"] >= 0.9
    model = json.loads((out / "volumetric_model.json").read_text())
    assert model["method"] == "template_affine_seed0" and model["coefficients"]["lateral_ventricles"] > 0
    with open(out / "features.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ad = np.mean([float(r["lateral_ventricles_ratio"]) for r in rows if r["label"] == "1"])
    cn = np.mean([float(r["lateral_ventricles_ratio"]) for r in rows if r["label"] == "0"])
    assert ad > 2 * cn


def test_features_are_ratios_that_do_not_depend_on_the_voxel_size(tmp_path, monkeypatch) -> None:
    _fake_registration(monkeypatch)
    records = {}
    for name, shape in (("coarse", (24, 24, 24)), ("fine", (40, 36, 32))):
        affine = _grid(1.0, shape)
        image, _ = phantom(affine, shape)
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(path))
        records[name] = F.measure(F.Scan(path, None, "S", name, 0, "test"), "template")
    coarse, fine = records["coarse"], records["fine"]
    assert coarse["brain_ml"] == pytest.approx(4 / 3 * np.pi * np.prod(BRAIN_AXES) / 1000, rel=0.1)
    assert fine["brain_ml"] == pytest.approx(coarse["brain_ml"], rel=0.05)
    for name in F.FEATURES:  # the same anatomy on another grid: the same fractions, up to the discretisation
        assert fine["features"][name] == pytest.approx(coarse["features"][name], rel=0.2), name
    # The same voxels with voxels of another size and shape: every volume scales, the fractions stay.
    image = nib.load(str(tmp_path / "coarse.nii.gz"))
    stretched = tmp_path / "stretched.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine @ np.diag([1.5, 0.8, 1.2, 1.0])), str(stretched))
    labels = phantom(image.affine)[1]
    monkeypatch.setattr(regions, "template_regions_on_grid", lambda *args, **kwargs: labels)  # the same voxels
    monkeypatch.setattr(F, "VENTRICLE_MARGIN_MM", 0.0)  # a margin in mm covers other voxels on another grid
    same = F.measure(F.Scan(stretched, None, "S", "s", 0, "test"), "template")
    plain = F.measure(F.Scan(tmp_path / "coarse.nii.gz", None, "S", "c", 0, "test"), "template")
    assert same["brain_ml"] == pytest.approx(plain["brain_ml"] * 1.44)
    assert same["features"] == pytest.approx(plain["features"])


def test_a_finished_fold_and_a_measured_scan_are_not_redone(tmp_path, monkeypatch) -> None:
    calls: list = []
    _fake_registration(monkeypatch, calls)
    datalist, _ = cohort(tmp_path / "data", n=12)
    data = json.loads(datalist.read_text())
    out = tmp_path / "cv"
    V.run_volumetric_fold(datalist, tmp_path / "data", out / "fold_0" / "eval", progress=False)
    assert len(calls) == 12 and len(list((out / "scans").glob("*_template_affine_seed0.json"))) == 12
    assert len(list((out / "scans").glob("*_regions.nii.gz"))) == 12
    first = (out / "fold_0" / "eval" / "predictions.csv").read_text()
    V.run_volumetric_fold(datalist, tmp_path / "data", out / "fold_0" / "eval")  # finished: nothing read
    assert len(calls) == 12 and (out / "fold_0" / "eval" / "predictions.csv").read_text() == first
    # Another fold of the same scans registers none of them again; a scan whose bytes changed is measured anew.
    other = {"training": data["training"][2:] + data["test"][:2], "validation": [], "test": data["training"][:2]}
    other_path = tmp_path / "fold_1.json"
    other_path.write_text(json.dumps(other))
    changed = tmp_path / "data" / data["test"][0]["image"]
    image = nib.load(str(changed))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 1.01, image.affine), str(changed))
    V.run_volumetric_fold(other_path, tmp_path / "data", out / "fold_1" / "eval", progress=False)
    assert len(calls) == 13


def test_command_line_runs_every_fold_and_pools(tmp_path, capsys) -> None:
    datalist, truth_dir = cohort(tmp_path / "data")
    folds = tmp_path / "folds"
    folds.mkdir()
    data = json.loads(datalist.read_text())
    everyone = data["training"] + data["validation"] + data["test"]
    for k in range(2):  # two folds with disjoint test halves
        test = everyone[12 * k : 12 * k + 12]
        training = [e for e in everyone if e not in test]
        (folds / f"fold_{k}.json").write_text(json.dumps({"training": training, "validation": [], "test": test}))
    argv = ["volumetric", "--folds-dir", str(folds), "--dataset-dir", str(tmp_path / "data"), "--out"]
    assert main([*argv, str(tmp_path / "out"), "--regions", "truth", "--truth-dir", str(truth_dir)]) == 0
    text = capsys.readouterr().out
    assert "fold 0: 12 scans" in text and "Pooled out-of-fold predictions (24 scans" in text
    summary = json.loads((tmp_path / "out" / "crossval.json").read_text())
    assert summary["k"] == 2 and summary["pooled"]["n_scans"] == 24 and summary["method"] == "truth"
    assert (tmp_path / "out" / "fold_1" / "eval" / "metrics.json").is_file()
    with pytest.raises(SystemExit, match="error: --regions truth needs --truth-dir"):
        main([*argv, str(tmp_path / "again"), "--regions", "truth"])


def test_bad_inputs_are_refused_with_the_fix(tmp_path) -> None:
    datalist, truth_dir = cohort(tmp_path / "data", n=12)
    data = json.loads(datalist.read_text())
    three = tmp_path / "three.json"
    three.write_text(json.dumps({**data, "classes": ["CN", "MCI", "AD"]}))
    with pytest.raises(SystemExit, match="binary"):
        V.run_volumetric_fold(three, tmp_path / "data", tmp_path / "a", regions="truth", truth_dir=truth_dir)
    with pytest.raises(SystemExit, match="check --dataset-dir"):
        V.run_volumetric_fold(datalist, tmp_path, tmp_path / "b", regions="truth", truth_dir=truth_dir)
    with pytest.raises(SystemExit, match="no truth file"):
        V.run_volumetric_fold(datalist, tmp_path / "data", tmp_path / "c", regions="truth", truth_dir=tmp_path)
    one_class = tmp_path / "one.json"
    one_class.write_text(json.dumps({**data, "training": data["training"][::2], "validation": []}))
    with pytest.raises(SystemExit, match="one class only"):
        V.run_volumetric_fold(one_class, tmp_path / "data", tmp_path / "d", regions="truth", truth_dir=truth_dir)


@pytest.mark.slow
def test_template_registration_finds_enlarged_ventricles_on_the_mni_brain(tmp_path) -> None:
    """The real ANTs path on the MNI152 brain at about the demo's model grid (32³, 5-6 mm voxels): the registered
    hippocampi hold about the template's share of the brain, and darkening the voxels next to the ventricles (an
    enlargement) raises the ventricle feature."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from analysis.explain.regions import _mni_labels, _resample

    t1, mask = load_mni152_template(resolution=2), load_mni152_brain_mask(resolution=2)
    labels, labels_affine = _mni_labels()
    affine = np.diag([5.6, 6.6, 5.4, 1.0])
    affine[:3, 3] = [-88.0, -122.0, -70.0]
    shape = (32, 32, 32)
    brain = _resample(np.asarray(mask.dataobj) > 0, mask.affine, shape, affine, 0) > 0
    image = np.where(brain, _resample(np.asarray(t1.get_fdata(), np.float32), t1.affine, shape, affine, 1), 0)
    image = np.clip(image / np.percentile(image[brain], 99.5), 0, 1).astype(np.float32)
    region = _resample(labels, labels_affine, shape, affine, 0)
    enlarged = ndimage.binary_dilation(region == 5) & brain
    records = {}
    for name, volume in (("CN", image), ("AD", np.where(enlarged, np.float32(0.02), image))):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(path))
        records[name] = F.measure(F.Scan(path, None, name, name, 0, "test"), "template", seed=1)
    expected = np.isin(region, (1, 2)).sum() / brain.sum()
    assert records["CN"]["features"]["hippocampi"] == pytest.approx(expected, rel=0.15)  # measured: 3.5 % off
    assert records["AD"]["features"]["lateral_ventricles"] > 2 * records["CN"]["features"]["lateral_ventricles"]
