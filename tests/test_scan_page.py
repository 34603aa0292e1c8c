"""The one-scan page (``python -m analysis scan-report``) and the relevance figures it shares with the test-set command.

A random-weights r3d_18 stands in for a trained model: the page's job is to preprocess a raw scan exactly as the
model's plan says, predict, explain and show it, which needs no skill. Its plan is the demo's grid (2 mm, 32³) with
``skull_stripper none``, so the raw scans are skull-stripped MNI152 brains and no stripper network runs; the QC
thresholds are the defaults, which such a brain passes and a noise cube fails.

Template regions: ``regions.template_regions_on_grid`` registers MNI152 in a worker process that first loads the
generator's template (about a minute on a busy 2-core machine), so the pages here get the generator's MNI ellipsoids
instead -- exact for these MNI152 brains. ``SCAN_PAGE_REAL_REGIONS=1`` runs them with the real registration.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from analysis.explain import figures
from preprocessing.dicom_writer import write_series_from_affine

CHROMIUM = Path("/usr/bin/chromium")
REAL_REGIONS = os.environ.get("SCAN_PAGE_REAL_REGIONS") == "1"
# The demo's grid; a short N4 (a plan setting the page must obey like any other) and no template QC keep it quick.
PLAN_SETTINGS = {
    "skull_stripper": "none",
    "spacing": 2.0,
    "spatial_size": 32,
    "n4_convergence": {"iters": [10, 10], "tol": 1e-4},
}
PLAN_QC = {"template_check": False}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The test machine's 2 cores are shared with other jobs; torch's two threads then wait on each other (a forward
    # pass of r3d_18 took 4 times as long as with one thread).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ figures


def _labels_on(shape: tuple[int, int, int]) -> np.ndarray:
    """Label blobs at known places: 1 in the low-x half, 2 in the high-x half, 5 in the middle."""
    labels = np.zeros(shape, np.int16)
    x, y, z = (n // 2 for n in shape)
    labels[x // 2 - 2 : x // 2 + 2, y - 2 : y + 2, z - 3 : z - 1] = 1
    labels[x + x // 2 - 2 : x + x // 2 + 2, y - 2 : y + 2, z - 3 : z - 1] = 2
    labels[x - 3 : x + 3, y - 4 : y + 4, z + 1 : z + 4] = 5
    return labels


def _ball(shape: tuple[int, int, int]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    return np.where(radius < 0.85, 0.5 + 0.5 * (radius < 0.5), 0.0).astype(np.float32)


def _assert_picture(path_or_bytes, min_size: tuple[int, int] = (300, 200)) -> None:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    image = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
    assert image.shape[1] >= min_size[0] and image.shape[0] >= min_size[1], image.shape
    assert image.std() > 10, "blank picture"


def test_hippocampus_centres_are_label_centroids():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[2:5, 4:7, 6:9] = 1  # centroid (3, 5, 7)
    labels[10:14, 10:12, 0:2] = 2  # centroid (11.5, 10.5, 0.5): rounded half to even
    assert figures.hippocampus_centres(labels) == {"left": (3, 5, 7), "right": (12, 10, 0)}
    labels[labels == 2] = 0
    assert figures.hippocampus_centres(labels) == {"left": (3, 5, 7)}
    assert figures.hippocampus_centres(np.zeros((4, 4, 4))) == {}


def test_panels_are_neurological_whatever_the_storage_order():
    # Stored L<-R (x flipped), axes permuted: a mark in the subject's left must still be drawn on the viewer's left.
    shape = (10, 12, 8)  # stored axes: world -x, z, y
    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 2.5, -15], [0, 3.0, 0, -12], [0, 0, 0, 1]])
    grid = figures._RasVolume(shape, affine)
    assert "".join(grid.codes) == "RAS" and grid.ras_shape == (10, 8, 12)
    assert grid.edges("coronal") == ("L", "R", "S", "I") and grid.edges("axial") == ("L", "R", "A", "P")
    assert grid.edges("sagittal") == ("P", "A", "S", "I")
    assert grid.pixel_mm("coronal") == (3.0, 2.0)
    volume = np.zeros(shape, np.float32)
    volume[8, 6, 4] = 1.0  # stored index 8 of a flipped x axis: world x = 10 - 16 = -6 mm, the subject's left
    ras = grid.array(volume)
    centre = grid.to_ras((8, 6, 4))
    assert ras[centre] == 1.0
    coronal = figures._cut(ras, "coronal", centre[1])
    assert np.argwhere(coronal == 1.0)[0][1] < coronal.shape[1] / 2  # left half of the picture


@pytest.mark.parametrize(
    ("shape", "affine"),
    [((32, 32, 32), np.diag([1.8, 2.4, 3.1, 1.0])),  # the model grid, anisotropic
     ((90, 110, 110), np.diag([-2.3, 2.3, 2.3, 1.0]))],  # a native grid, stored LAS
    ids=["model_grid", "native_grid"],
)  # fmt: skip
def test_figures_are_written_with_their_content(tmp_path, shape, affine):
    image = _ball(shape)
    labels = _labels_on(shape)
    relevance = np.where(labels == 1, 1.0, 0.0).astype(np.float32) + 0.01 * image
    maps = {"gradcam": relevance, "integrated_gradients": relevance - 0.5 * (labels == 5)}
    overlay = figures.overlay_figure(image, relevance, labels, affine, tmp_path / "o.png", title="overlay")
    montage = figures.montage_figure(image, relevance, tmp_path / "m.png", axis=1, n_slices=6, affine=affine)
    methods = figures.methods_figure(image, maps, labels, affine, tmp_path / "x.png")
    for path in (overlay, montage, methods):
        _assert_picture(path, (600, 300))
    # two rows (one per hippocampus) make the overlay taller than a one-row figure without labels
    one_row = figures.overlay_figure(image, relevance, None, affine, tmp_path / "o1.png")
    assert Image.open(overlay).size[1] > Image.open(one_row).size[1]
    with pytest.raises(ValueError, match="grid"):
        figures.overlay_figure(image, relevance[:-1], labels, affine, tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------------ the page


def _brain(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped MNI152 brain (nilearn's template) at 2 mm, with a little noise per seed."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=2)
    mask = np.asarray(load_mni152_brain_mask(resolution=2).get_fdata()) > 0
    rng = np.random.default_rng(seed)
    data = np.asarray(template.get_fdata(), dtype=np.float32) * 1000
    data = (data + rng.normal(0, 10, data.shape).astype(np.float32)) * mask
    return np.clip(data, 0, None), template.affine


def _save_model(path: Path, seed: int) -> None:
    from scripts.network import VideoResNetClassifier

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(VideoResNetClassifier(weights=None).state_dict(), path)


def _quick_template_regions(image: nib.Nifti1Image, brain_mask=None, syn: bool = False, seed: int = 0) -> np.ndarray:
    """Labels 1-5 from the generator's MNI ellipsoids and ventricle box at the voxel centres of ``image``."""
    from preprocessing.synthetic import HIPPOCAMPI, MEDIAL_TEMPORAL_LOBES, VENTRICLE_BOX

    shape = image.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    world = ijk @ image.affine[:3, :3].T + image.affine[:3, 3]
    labels = np.zeros(shape, np.int16)
    (x0, x1), (y0, y1), (z0, z1) = VENTRICLE_BOX
    x, y, z = np.moveaxis(world, -1, 0)
    dark = np.asarray(image.dataobj) < 0.3 * np.percentile(np.asarray(image.dataobj), 99)
    inside = brain_mask if brain_mask is not None else np.ones(shape, bool)
    labels[(x0 <= abs(x)) & (abs(x) <= x1) & (y0 <= y) & (y <= y1) & (z0 <= z) & (z <= z1) & dark & inside] = 5
    for side, value in (("left", 3), ("right", 4)):
        labels[MEDIAL_TEMPORAL_LOBES[side].radius(world) < 1] = value
    for side, value in (("left", 1), ("right", 2)):
        labels[HIPPOCAMPI[side].radius(world) < 1] = value
    return labels


@pytest.fixture(scope="module")
def quick_regions():
    if REAL_REGIONS:
        yield
        return
    from analysis.explain import regions

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(regions, "template_regions_on_grid", _quick_template_regions)
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, quick_regions):
    """<run>/models (model.pt, plan.json), <run>/eval/metrics.json, <run>/cv/fold_<k>/models, and raw scans."""
    from scripts import plan as plan_mod
    from scripts.evaluation import classification_metrics

    root = tmp_path_factory.mktemp("scan_page")
    plan = plan_mod.build_plan(PLAN_SETTINGS, qc_thresholds=PLAN_QC)
    _save_model(root / "run" / "models" / "model.pt", seed=0)
    plan_mod.write_plan(plan, root / "run" / "models")
    for k in (0, 1):
        plan_mod.write_plan(plan, root / "cv" / f"fold_{k}" / "models")
    # Fold 0 is the main model itself (a link, not another 130 MB write); fold 1 has its own weights.
    (root / "cv" / "fold_0" / "models" / "model.pt").hardlink_to(root / "run" / "models" / "model.pt")
    _save_model(root / "cv" / "fold_1" / "models" / "model.pt", seed=1)
    labels = [0] * 10 + [1] * 10
    probs = [0.2] * 8 + [0.7] * 2 + [0.8] * 9 + [0.3]  # TN 8, FP 2, TP 9, FN 1
    metrics = {**classification_metrics(labels, probs), "n_subjects": 20}
    (root / "run" / "eval").mkdir()
    (root / "run" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    data, affine = _brain(0)
    nib.save(nib.Nifti1Image(data, affine), str(root / "brain.nii.gz"))
    return root


@pytest.fixture(scope="module")
def nifti_page(run_dir):
    from analysis.explain.maps import MapSettings
    from analysis.explain.scan_page import build_scan_page

    out = run_dir / "page_nifti"
    page = build_scan_page(run_dir / "brain.nii.gz", run_dir / "run" / "models", out, crossval_dir=run_dir / "cv",
                           settings=MapSettings(ig_steps=8))  # fmt: skip
    return page, json.loads((out / "scan_report.json").read_text())


def _assert_images(page_html: str, expected: int) -> None:
    sources = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page_html)
    assert len(sources) == len(re.findall(r"<img ", page_html)) == expected  # all embedded, nothing external
    for data in sources:
        _assert_picture(base64.b64decode(data), (500, 250))


def test_page_from_a_nifti_scan_shows_probability_post_test_and_regions(nifti_page):
    page, summary = nifti_page
    text = page.read_text()
    assert page.name == "scan_report.html"
    assert text.index("Research software, not a medical device") < text.index("<h1>")
    p = summary["prob_AD"]
    assert 0 <= p <= 1 and f"AD probability (model): {p:.3f}" in text
    t = summary["post_test"]
    assert t["counts"] == {"tp": 9, "fn": 1, "tn": 8, "fp": 2} and t["prevalence"]["value"] == 0.461
    assert t["post_test"]["ci_low"] < t["post_test"]["median"] < t["post_test"]["ci_high"]
    assert f"{100 * t['post_test']['median']:.1f}% (95% credible interval {100 * t['post_test']['ci_low']:.1f}%" in text
    # a positive result is followed by the PPV, a negative one by 1 - NPV; at 46% both are far from 50/50 here
    assert (t["post_test"]["median"] > 0.6) if t["positive"] else (t["post_test"]["median"] < 0.2)
    probs = [f["prob_AD"] for f in summary["folds"]]
    assert len(probs) == 2 and probs[0] == pytest.approx(p, abs=1e-6) and f"mean {np.mean(probs):.3f}" in text
    for region in ("Left hippocampus", "Right hippocampus", "Lateral ventricles", "Outside the brain"):
        assert region in text
    assert "Density gain" in text and "approximate" in text
    assert set(summary["regions"]) == {"gradcam", "integrated_gradients"}
    assert set(summary["hippocampus_centres_native"]) == {"left", "right"}  # template regions found both
    assert "QC failed" not in text and summary["qc_status"] in ("pass", "warn")
    _assert_images(text, expected=4)  # QC picture, two overlays, the methods figure
    assert (page.parent / "maps" / "gradcam_native.nii.gz").is_file()
    assert nib.load(page.parent / "maps" / "gradcam_native.nii.gz").shape == (99, 117, 95)  # the scan's own grid


def test_page_from_a_dicom_series_through_the_command_line(run_dir, nifti_page, capsys):
    from analysis.explain import scan_page

    data, affine = _brain(0)
    series = run_dir / "dicom" / "I1234"
    write_series_from_affine(series, data, affine, patient_id="S1", series_description="MPRAGE", uid_seed="page",
                             extra_tags={"MRAcquisitionType": "3D"})  # fmt: skip
    parser = argparse.ArgumentParser()
    scan_page.add_arguments(parser)
    out = run_dir / "page_dicom"
    args = parser.parse_args(["--scan", str(series), "--model-dir", str(run_dir / "run" / "models"), "--out",
                              str(out), "--prevalence", "0.2", "--methods", "gradcam"])  # fmt: skip
    assert scan_page.main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "scan_report.json").read_text())
    assert f"Scan report: {out / 'scan_report.html'}" in printed
    assert f"AD probability {summary['prob_AD']:.3f}" in printed and "prevalence of 20.0% (User-given)" in printed
    text = (out / "scan_report.html").read_text()
    assert "DICOM series" in text and "User-specified prevalence 0.2" in text
    _assert_images(text, expected=3)
    # the same brain through DICOM storage and conversion: the same model input, up to 16-bit quantisation
    assert abs(summary["prob_AD"] - nifti_page[1]["prob_AD"]) < 0.02


def test_a_scan_failing_qc_is_refused_unless_forced(run_dir, tmp_path):
    from analysis.explain.scan_page import FORCED_BANNER, build_scan_page

    rng = np.random.default_rng(0)
    noise = tmp_path / "noise_cube.nii.gz"
    nib.save(nib.Nifti1Image(rng.uniform(1, 1000, (64, 64, 64)).astype(np.float32), np.diag([2.0] * 3 + [1])),
             str(noise))  # fmt: skip
    models = tmp_path / "models"  # the same model without an evaluation beside it
    models.mkdir()
    (models / "model.pt").symlink_to(run_dir / "run" / "models" / "model.pt")
    shutil.copy(run_dir / "run" / "models" / "plan.json", models)
    with pytest.raises(SystemExit, match=r"noise_cube\.nii\.gz: refused by quality control \(.*brain volume") as err:
        build_scan_page(noise, models, tmp_path / "refused")
    assert "--force-qc" in str(err.value) and not (tmp_path / "refused" / "scan_report.html").exists()
    page = build_scan_page(noise, models, tmp_path / "forced", force_qc=True, methods=("gradcam",))
    text = page.read_text()
    assert FORCED_BANNER in text and "brain volume" in text
    assert "No post-test probability" in text and "--eval-dir" in text
    assert text.index(FORCED_BANNER) < text.index("<h1>")


def test_unusable_inputs_are_named(run_dir, tmp_path):
    from analysis.explain.scan_page import build_scan_page

    models = run_dir / "run" / "models"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(SystemExit, match=r"broken\.nii\.gz: preprocessing failed .*readable 3D"):
        build_scan_page(broken, models, tmp_path / "o")
    with pytest.raises(SystemExit, match=r"scan\.txt: unsupported format"):
        (tmp_path / "scan.txt").write_text("x")
        build_scan_page(tmp_path / "scan.txt", models, tmp_path / "o")
    with pytest.raises(SystemExit, match=r"model\.pt: no trained model"):
        build_scan_page(run_dir / "brain.nii.gz", tmp_path, tmp_path / "o")
    with pytest.raises(SystemExit, match=r"no fold_<k>/models/model\.pt"):
        build_scan_page(run_dir / "brain.nii.gz", models, tmp_path / "o", crossval_dir=tmp_path)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium is not installed at /usr/bin/chromium")
def test_the_page_renders_in_a_browser(nifti_page, tmp_path):
    page, _ = nifti_page
    shot = tmp_path / "page.png"
    profile = tmp_path / "profile"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                    f"--screenshot={shot}", "--window-size=1200,4000", "--hide-scrollbars",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=180)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (4000, 1200)
    for half in (pixels[:2000], pixels[2000:]):
        assert half.std() > 10 and (half < 200).mean() > 0.02  # text and pictures, not an empty page
    shutil.copy(shot, page.parent / "screenshot.png")  # kept beside the page for a look by eye
