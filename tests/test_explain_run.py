"""`python -m analysis explain` on a tiny dataset with truth regions, and the profile/channel helpers it uses."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from analysis.__main__ import main as analysis_main
from analysis.explain import profiles

SIZE = 16


def test_depth_profile_is_a_share_per_slice_that_peaks_where_the_relevance_is():
    relevance = np.zeros((SIZE, SIZE, SIZE), dtype=np.float32)
    relevance[3, 5:9, 5:9] = 2.0
    relevance[10, 5:7, 5:7] = 1.0
    relevance[12] = -5.0  # negative relevance is evidence against AD: not counted
    profile = profiles.depth_profile(relevance, axis=0)
    assert profile.shape == (SIZE,)
    assert profile.sum() == pytest.approx(1.0)
    assert int(np.argmax(profile)) == 3
    assert profile[10] == pytest.approx(4.0 / 36.0)
    assert profile[12] == 0
    assert np.isnan(profiles.depth_profile(np.zeros((4, 4, 4)), axis=1)).all()


def test_axis_names_follow_the_affine():
    assert profiles.axis_names(np.eye(4)) == ["left to right", "posterior to anterior", "inferior to superior"]
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    assert profiles.axis_names(flipped)[0] == "right to left"


def test_channel_differences_finds_the_planted_channel_and_where_it_peaks():
    rng = np.random.default_rng(0)
    labels = [0, 1] * 4
    regions = np.zeros((SIZE, SIZE, SIZE), dtype=np.int16)
    regions[:4, :4, :4] = 1  # "left hippocampus" in a corner
    activations = []
    for label in labels:
        a = rng.normal(0, 0.1, size=(6, 4, 4, 4)).astype(np.float32)
        if label == 1:
            a[4, 0, 0, 0] += 5.0  # channel 4 fires in the corner for AD only
        activations.append(a)
    channels = profiles.channel_differences(
        activations, labels, [regions] * len(labels), {1: "left_hippocampus"}, top=2
    )
    assert channels[0]["channel"] == 4
    assert channels[0]["cohens_d"] > 3
    assert channels[0]["peak_region"] == "left_hippocampus"
    assert len(channels[0]["depth_profile"]["AD"]) == 4
    assert profiles.channel_differences(activations[:1], labels[:1], [regions], {}) == []


def test_class_mean_maps_and_difference():
    maps = [np.full((2, 2, 2), v, dtype=np.float32) for v in (1.0, 3.0, 2.0, 5.0)]
    means = profiles.class_mean_maps(maps, [0, 1, 0, 1])
    assert means["CN"][0, 0, 0] == pytest.approx(1.5)
    assert means["AD"][0, 0, 0] == pytest.approx(4.0)
    assert means["AD_minus_CN"][0, 0, 0] == pytest.approx(2.5)


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """A random r3d_18 model and four labelled 16^3 scans with truth regions, explained with two methods."""
    from scripts.network import VideoResNetClassifier

    root = tmp_path_factory.mktemp("explain")
    (root / "data" / "images").mkdir(parents=True)
    (root / "truth").mkdir()
    (root / "models").mkdir()
    torch.manual_seed(0)
    model = VideoResNetClassifier(weights=None, trainable="all")
    torch.save(model.state_dict(), root / "models" / "model.pt")
    rng = np.random.default_rng(0)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -32.0
    entries = []
    for index in range(4):
        stem = f"S{index:03d}_I{index}"
        volume = rng.uniform(0.2, 1.0, size=(SIZE,) * 3).astype(np.float32)
        volume[:2], volume[-2:] = 0.0, 0.0  # background outside the "brain"
        nib.save(nib.Nifti1Image(volume, affine), root / "data" / "images" / f"{stem}.nii.gz")
        labels = np.zeros((SIZE,) * 3, dtype=np.int16)
        labels[4:7, 6:9, 5:8], labels[9:12, 6:9, 5:8], labels[6:10, 9:12, 8:11] = 1, 2, 5
        nib.save(nib.Nifti1Image(labels, affine), root / "truth" / f"{stem}_regions.nii.gz")
        truth = {"percent_change": {"hippocampi": -5.0 * index}}
        (root / "truth" / f"{stem}_truth.json").write_text(json.dumps(truth))
        entries.append(
            {"image": f"images/{stem}.nii.gz", "label": index % 2, "subject": f"S{index:03d}", "image_id": f"I{index}"}
        )
    (root / "data" / "datalist.json").write_text(json.dumps({"training": [], "test": entries}))
    argv = [
        "explain",
        "--model-dir",
        str(root / "models"),
        "--datalist",
        str(root / "data" / "datalist.json"),
        "--out",
        str(root / "out"),
        "--truth-dir",
        str(root / "truth"),
        "--methods",
        "gradcam",
        "integrated_gradients",
        "--ig-steps",
        "4",
        "--randomisation-scans",
        "2",
        "--resamples",
        "50",
        "--figure-scans",
        "1",
    ]
    assert analysis_main(argv) == 0
    return root


def test_explain_writes_maps_on_the_model_grid_and_rows_per_scan_and_method(explained, capsys):
    out = explained / "out"
    for stem in ("S000_I0", "S003_I3"):
        for method in ("gradcam", "integrated_gradients"):
            image = nib.load(out / "maps" / f"{stem}_{method}.nii.gz")
            assert image.shape == (SIZE,) * 3
            assert np.allclose(image.affine, nib.load(explained / "data" / "images" / f"{stem}.nii.gz").affine)
    with open(out / "per_scan.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 2
    from analysis.explain.regions import REGIONS

    for row in rows:
        total = sum(float(row[f"{region}_fraction"]) for region in REGIONS)
        assert total == pytest.approx(1.0, abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scans"] == 4
    assert set(summary["randomisation"]["methods"]) == {"gradcam", "integrated_gradients"}
    assert summary["settings"]["regions"] == ["truth"]
    assert "against" in summary["correlation"] and "true hippocampal" in summary["correlation"]["against"]
    assert (out / "class_means" / "gradcam_AD_minus_CN.nii.gz").exists()
    assert (out / "figures" / "depth_profile_gradcam.png").stat().st_size > 5000
    assert (out / "figures" / "S000_I0_overlay.png").exists() and not (out / "figures" / "S002_I2_overlay.png").exists()
    assert len(summary["channels"]) == 5
    assert summary["verdict"]["text"]


def test_explain_summary_goes_into_the_report(explained, tmp_path):
    from analysis.explain.summary import read_summary, summary_html, summary_text

    summary = read_summary(explained / "out")
    text = summary_text(summary)
    assert "randomisation check" in text and "Grad-CAM" in text
    page = summary_html(summary, explained / "out")
    assert page.count("<img") >= 3 and "density gain" in page


def test_explain_refuses_a_missing_partition_naming_it(explained):
    with pytest.raises(SystemExit, match="no 'validation' partition"):
        analysis_main(
            [
                "explain",
                "--model-dir",
                str(explained / "models"),
                "--datalist",
                str(explained / "data" / "datalist.json"),
                "--partition",
                "validation",
                "--out",
                str(explained / "x"),
            ]
        )


def test_explain_a_folder_of_volumes_without_labels(explained):
    out = explained / "folder"
    argv = [
        "explain", "--model-dir", str(explained / "models"), "--images", str(explained / "data" / "images"),
        "--out", str(out), "--truth-dir", str(explained / "truth"), "--methods", "gradcam",
        "--randomisation-scans", "0", "--resamples", "20",
    ]  # fmt: skip
    assert analysis_main(argv) == 0
    with open(out / "per_scan.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {row["group"] for row in rows} == {"unlabelled"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["randomisation"] is None and not summary.get("channels")  # no classes: nothing to compare
    assert {entry["group"] for entry in summary["regions"]} == {"unlabelled", "all"}
