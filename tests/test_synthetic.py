"""The synthetic ADNI-like cohort: an ADNI download the pipeline can read, with truth files that match the volumes.

Scans are rendered with 2-3 mm voxels here (``voxel_size``) to keep the tests fast; the geometry of the real defaults
(1.0-1.25 mm, whole-head sagittal field of view) is checked without rendering.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from preprocessing import adni, synthetic
from preprocessing.__main__ import main
from preprocessing.convert import convert_series
from preprocessing.dicom_writer import ORIENTATIONS, series_geometry_from_affine, write_series_from_affine

COARSE = (2.0, 2.4)  # voxel sizes (mm) of the test cohort
COHORT = {"n_subjects": 4, "visits": (1, 2), "seed": 7, "voxel_size": COARSE}


@pytest.fixture(scope="module")
def template() -> synthetic.Template:
    return synthetic.load_template()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, template) -> synthetic.CohortInfo:
    """Four subjects (two AD, two CN), one or two visits each, with the broken extras."""
    return synthetic.generate_cohort(tmp_path_factory.mktemp("cohort"), broken=True, workers=1, **COHORT)


@pytest.fixture(scope="module")
def cohort_json(cohort) -> dict:
    return json.loads((cohort.truth_dir / "cohort.json").read_text())


def _scans(cohort_json: dict) -> list[dict]:
    """Every good scan of cohort.json, with its subject and group."""
    return [dict(scan, subject=s["subject"], group=s["group"]) for s in cohort_json["subjects"] for scan in s["scans"]]


def _truth(cohort: synthetic.CohortInfo, subject: str, image_id: str) -> tuple[dict, nib.Nifti1Image]:
    truth = json.loads((cohort.truth_dir / f"{subject}_{image_id}_truth.json").read_text())
    return truth, nib.load(cohort.truth_dir / truth["regions_nifti"])


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------- plan and geometry (no rendering)


def test_plan_has_adni_like_identifiers_demographics_and_visits():
    plans = synthetic.plan_cohort(n_subjects=40, seed=3)
    assert plans == synthetic.plan_cohort(n_subjects=40, seed=3)
    assert plans != synthetic.plan_cohort(n_subjects=40, seed=4)
    assert sum(p.group == "AD" for p in plans) == 20
    assert {p.sex for p in plans} == {"M", "F"}
    assert len({p.subject for p in plans}) == 40
    assert all(re.fullmatch(r"\d{3}_S_\d{4}", p.subject) for p in plans)
    visits = [v for p in plans for v in p.visits]
    assert len({v.image_id for v in visits}) == len(visits)
    assert all(re.fullmatch(r"I\d+", v.image_id) for v in visits)
    assert {len(p.visits) for p in plans} == {1, 2, 3, 4}
    for plan in plans:
        assert [v.visit for v in plan.visits] == ["sc", "m06", "m12", "m24"][: len(plan.visits)]
        dates = [v.date for v in plan.visits]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        assert all(60 <= v.age <= 90 for v in plan.visits)
        assert 1.0 <= plan.in_plane_mm <= 1.25 and 1.0 <= plan.slice_mm <= 1.25
        losses = [v.hippocampus_loss for v in plan.visits]
        assert losses == sorted(losses)  # atrophy never reverses across visits
        if plan.group == "AD":
            assert 0.15 <= losses[0] <= 0.4
        else:
            assert losses[-1] < 0.1


def test_ventricle_ratio_scales_only_the_ad_ventricular_growth():
    default = synthetic.plan_cohort(n_subjects=20, seed=5)
    stronger = synthetic.plan_cohort(n_subjects=20, seed=5, ventricle_ratio=3.0)
    for plan, strong in zip(default, stronger, strict=True):
        for visit, strong_visit in zip(plan.visits, strong.visits, strict=True):
            assert strong_visit.hippocampus_loss == visit.hippocampus_loss  # the hippocampi are not touched
            age_part = 1.0 + 0.005 * max(visit.age - 60.0, 0.0)
            disease = 1.0 - (1.0 - visit.hippocampus_loss) / (1.0 - 0.0025 * max(visit.age - 60.0, 0.0))
            if plan.group == "AD":
                assert strong_visit.ventricle_growth == pytest.approx(age_part * (1 + 3.0 * disease) - 1, abs=1e-4)
                assert strong_visit.ventricle_growth > visit.ventricle_growth + 1.2 * disease > visit.ventricle_growth
            else:
                assert strong_visit.ventricle_growth == visit.ventricle_growth  # CN: age-related growth only
    with pytest.raises(ValueError, match="ventricle_ratio"):
        synthetic.plan_cohort(n_subjects=2, ventricle_ratio=5.0)


def test_default_geometry_is_a_sagittal_non_ras_whole_head_acquisition(template):
    # The scalp's outer surface (at most 17 mm from the brain) above the neck, in MNI mm.
    surface = np.argwhere((template.distance > 13.0) & (template.distance <= 17.0))[::7]
    surface = surface * template.distance_step + template.distance_origin
    surface = np.c_[surface[surface[:, 2] > -75], np.ones(len(surface[surface[:, 2] > -75]))].T
    for plan in synthetic.plan_cohort(n_subjects=40, seed=0):
        for index in range(len(plan.visits)):
            geometry = synthetic.acquisition_geometry(plan, index)
            ni, nj, nk = geometry.shape
            assert 150 <= nk <= 192 and 190 <= ni <= 240 and 200 <= nj <= 256  # moderate matrices
            assert all(1.0 <= s <= 1.25 for s in geometry.spacing)
            assert nib.aff2axcodes(geometry.affine) == ("P", "I", "R")  # stored non-RAS
            spacing, cosines, _, _ = series_geometry_from_affine(geometry.affine)
            assert cosines == ORIENTATIONS["sagittal"]
            shape, affine, _ = geometry.nifti()
            assert nib.aff2axcodes(affine) == ("L", "A", "S") and shape == (nk, ni, nj)
            # The whole head lies inside the field of view at every visit.
            voxels = (np.linalg.inv(geometry.affine) @ synthetic.head_pose(plan, index) @ surface)[:3].T
            assert np.all(voxels >= 0) and np.all(voxels <= np.array(geometry.shape) - 1)


def test_template_regions_have_plausible_sizes(template):
    volumes = template.volumes_mm3
    assert 2500 <= volumes[1] <= 4500 and 2500 <= volumes[2] <= 4500  # hippocampi, MNI space
    assert volumes[3] > 2 * volumes[1] and volumes[4] > 2 * volumes[2]
    assert 10000 <= volumes[5] <= 30000  # lateral ventricles
    assert volumes[6] > 1000
    t1, labels = template.t1, template.labels
    # Ventricles are CSF-dark, hippocampi grey matter, reference region white matter.
    assert t1[labels == 5].mean() < 0.4 < t1[labels == 1].mean() < 0.8 < t1[labels == 6].mean()


# ---------------------------------------------------------------- the written cohort


def test_discovery_finds_every_scan_with_its_group(cohort, cohort_json):
    scans = _scans(cohort_json)
    discovery = adni.discover_adni(cohort.collection_csv, cohort.adni_dir)
    found = {s.image_id: s for s in discovery.scans}
    broken = {b["image_id"]: b for b in cohort_json["broken"]}
    assert set(found) == {s["image_id"] for s in scans} | {i for i, b in broken.items() if b["kind"] != "localizer"}
    for scan in scans:
        assert found[scan["image_id"]].group == scan["group"]
        assert found[scan["image_id"]].subject == scan["subject"]
        assert found[scan["image_id"]].dicom_dir is not None
        # The AD atrophy strength of the scan (0 for CN) travels with it for stage-stratified metrics.
        assert found[scan["image_id"]].atrophy == scan["nominal"]["disease_hippocampus_loss"]
        assert (found[scan["image_id"]].atrophy > 0) == (scan["group"] == "AD")
    assert [(s.category, s.image_id) for s in discovery.skipped] == [
        ("not_mprage", next(i for i, b in broken.items() if b["kind"] == "localizer"))
    ]
    for group in ("AD", "CN"):
        members = [s for s in scans if s["group"] == group]
        assert cohort.groups[group] == {"subjects": 2, "scans": len(members)}


def test_dicom_headers_are_a_proper_mprage_series(cohort, cohort_json):
    scan = _scans(cohort_json)[0]
    folder = next(cohort.adni_dir.glob(f"{scan['subject']}/MPRAGE/*/{scan['image_id']}"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    assert {h.Modality for h in headers} == {"MR"}
    assert {h.SeriesDescription for h in headers} == {"MPRAGE"}
    assert {h.PatientID for h in headers} == {scan["subject"]}
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert headers[0].StudyDate == scan["acq_date"].replace("-", "")
    other = _scans(cohort_json)[1]
    other_folder = next(cohort.adni_dir.glob(f"{other['subject']}/MPRAGE/*/{other['image_id']}"))
    other_header = pydicom.dcmread(next(other_folder.iterdir()), stop_before_pixels=True)
    assert other_header.SeriesInstanceUID != headers[0].SeriesInstanceUID


def test_converted_series_has_the_truth_geometry_and_overlays_it(cohort, cohort_json, tmp_path):
    scan = _scans(cohort_json)[0]
    folder = next(cohort.adni_dir.glob(f"{scan['subject']}/MPRAGE/*/{scan['image_id']}"))
    result = convert_series(folder, tmp_path, scan["subject"], scan["image_id"])
    assert result.ok, result.reason
    truth, regions = _truth(cohort, scan["subject"], scan["image_id"])
    image = nib.load(result.output_path)
    assert image.shape == regions.shape == tuple(truth["geometry"]["nifti_shape"])
    np.testing.assert_allclose(image.header.get_zooms()[:3], truth["geometry"]["voxel_mm"], atol=1e-4)
    np.testing.assert_allclose(image.affine, regions.affine, atol=1e-3)
    assert nib.aff2axcodes(image.affine) == nib.aff2axcodes(regions.affine) == ("L", "A", "S")
    # The truth overlays the anatomy: ventricles are dark CSF, the reference region bright white matter, and the left
    # hippocampus lies on the left (negative x) of the right one.
    data, labels = np.asarray(image.dataobj, dtype=float), np.asarray(regions.dataobj)
    assert data[labels == 5].mean() < 0.6 * data[labels == 6].mean()
    left = (regions.affine @ np.r_[np.argwhere(labels == 1).mean(axis=0), 1])[0]
    right = (regions.affine @ np.r_[np.argwhere(labels == 2).mean(axis=0), 1])[0]
    assert left < -10 < 10 < right


def test_truth_volumes_agree_with_the_label_maps_and_an_unatrophied_render(cohort, cohort_json, template):
    scans = _scans(cohort_json)
    for scan in scans:
        truth, regions = _truth(cohort, scan["subject"], scan["image_id"])
        labels = np.asarray(regions.dataobj)
        voxel = float(np.prod(regions.header.get_zooms()[:3]))
        for label, name in synthetic.REGION_LABELS.items():
            assert truth["volumes_mm3"][name] == pytest.approx(np.count_nonzero(labels == label) * voxel, rel=1e-6)
            expected = 100 * (truth["volumes_mm3"][name] / truth["reference_volumes_mm3"][name] - 1)
            assert truth["percent_change"][name] == pytest.approx(expected, abs=1e-3)
        # The measured hippocampal change follows the nominal loss (coarse voxels: a few points of slack).
        assert truth["percent_change"]["hippocampi"] == pytest.approx(
            -100 * truth["nominal"]["hippocampus_loss"], abs=5
        )
        assert abs(truth["percent_change"]["reference_white_matter"]) < 2

    # The reference is the same subject without atrophy: render it so and measure it from its own labels.
    ad = next(s for s in scans if s["group"] == "AD")
    plans = synthetic.plan_cohort(COHORT["n_subjects"], visits=COHORT["visits"], seed=COHORT["seed"], broken=True,
                                  voxel_size=COARSE)  # fmt: skip
    plan = next(p for p in plans if p.subject == ad["subject"])
    index = next(i for i, v in enumerate(plan.visits) if v.image_id == ad["image_id"])
    no_atrophy = replace(plan.visits[index], hippocampus_loss=0.0, mtl_loss=0.0, ventricle_growth=0.0)
    visits = plan.visits[:index] + (no_atrophy,) + plan.visits[index + 1 :]
    unatrophied = synthetic.render_scan(replace(plan, visits=visits), index, template)
    voxel = float(np.prod(unatrophied.geometry.spacing))
    truth, _ = _truth(cohort, ad["subject"], ad["image_id"])
    hippocampi = np.isin(unatrophied.labels, (1, 2)).sum() * voxel
    assert hippocampi == pytest.approx(truth["reference_volumes_mm3"]["hippocampi"], rel=0.01)
    assert truth["volumes_mm3"]["hippocampi"] < hippocampi * (1 + truth["percent_change"]["hippocampi"] / 100 + 0.01)
    assert truth["volumes_mm3"]["hippocampi"] > hippocampi * (1 + truth["percent_change"]["hippocampi"] / 100 - 0.01)


def test_cohort_json_records_every_plan_setting_with_its_default(cohort_json):
    parameters = cohort_json["parameters"]
    assert parameters["n_subjects"] == 4 and parameters["seed"] == 7 and parameters["broken"] is True
    assert parameters["visits"] == [1, 2] and parameters["voxel_size"] == list(COARSE)
    assert parameters["atrophy"] == synthetic.DEFAULT_ATROPHY
    assert parameters["ventricle_ratio"] == synthetic.DEFAULT_VENTRICLE_RATIO


def test_ad_lose_more_hippocampus_and_gain_more_ventricle_than_cn(cohort_json):
    scans = _scans(cohort_json)
    by_group = {g: [s["percent_change"] for s in scans if s["group"] == g] for g in ("AD", "CN")}
    assert max(c["hippocampi"] for c in by_group["AD"]) < -12 < -8 < min(c["hippocampi"] for c in by_group["CN"])
    assert min(c["lateral_ventricles"] for c in by_group["AD"]) > max(c["lateral_ventricles"] for c in by_group["CN"])
    assert max(c["medial_temporal_lobes"] for c in by_group["AD"]) < min(c["medial_temporal_lobes"] for c in
                                                                          by_group["CN"])  # fmt: skip


def test_atrophy_progresses_across_an_ad_subjects_visits(template):
    plan = next(p for p in synthetic.plan_cohort(8, visits=(4, 4), seed=2, voxel_size=(1.6, 1.6)) if p.group == "AD")
    first, last = (synthetic.render_scan(plan, index, template) for index in (0, 3))

    def change(scan: synthetic.RenderedScan, labels: tuple[int, ...]) -> float:
        volume = sum(scan.volumes_mm3[label] for label in labels)
        return 100 * (volume / sum(scan.reference_volumes_mm3[label] for label in labels) - 1)

    assert change(last, (1, 2)) < change(first, (1, 2)) - 2
    assert change(last, (5,)) > change(first, (5,)) + 4
    # Same subject: its unatrophied hippocampi agree across visits although the head was repositioned.
    reference = [sum(s.reference_volumes_mm3[label] for label in (1, 2)) for s in (first, last)]
    assert reference[0] == pytest.approx(reference[1], rel=0.03)


def test_intensities_carry_no_group_shortcut(template):
    """The same subject rendered as AD and, without atrophy, as CN: outside the deformed regions the images agree."""
    plan = next(p for p in synthetic.plan_cohort(6, seed=5, voxel_size=(2.0, 2.0)) if p.group == "AD")
    as_ad = synthetic.render_scan(plan, 0, template)
    healthy = replace(plan.visits[0], hippocampus_loss=0.0, mtl_loss=0.0, ventricle_growth=0.0)
    as_cn = synthetic.render_scan(replace(plan, group="CN", visits=(healthy,)), 0, template)
    white_matter = as_ad.labels == 6
    assert np.isin(as_cn.labels[white_matter], (6,)).mean() > 0.95
    ad_mean, cn_mean = as_ad.volume[white_matter].mean(), as_cn.volume[white_matter].mean()
    assert abs(ad_mean / cn_mean - 1) < 0.02
    # Far from the hippocampi and ventricles (the scalp, the background) the two scans are the same image.
    far = np.zeros(as_ad.volume.shape, dtype=bool)
    far[:, :, :8] = far[:, :, -8:] = True
    np.testing.assert_array_equal(as_ad.volume[far], as_cn.volume[far])
    assert as_ad.volumes_mm3[1] < 0.9 * as_cn.volumes_mm3[1]  # while the anatomy does differ


def test_broken_scans_are_broken_as_intended(cohort, cohort_json, tmp_path):
    broken = {b["kind"]: b for b in cohort_json["broken"]}
    assert set(broken) == set(synthetic.BROKEN_KINDS)
    rows = cohort.collection_csv.read_text()
    reasons = {}
    for kind, item in broken.items():
        assert f'"{item["image_id"]}"' in rows  # listed in the CSV, so that the pipeline reports it
        folder = cohort.out / item["dicom_dir"]
        reasons[kind] = convert_series(folder, tmp_path, item["subject"], item["image_id"]).reason
    assert "missing slice" in reasons["missing_slice"]
    assert "not DICOM: 'notes.txt'" in reasons["non_dicom_file"]
    assert "pixel data" in reasons["truncated_file"]
    assert "localizer" in reasons["localizer"]
    # The localizer: three planes of one series.
    headers = [pydicom.dcmread(p) for p in (cohort.out / broken["localizer"]["dicom_dir"]).iterdir()]
    assert len(headers) == 3 and len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({tuple(h.ImageOrientationPatient) for h in headers}) == 3
    assert {h.SeriesDescription for h in headers} == {"Localizer"}


def test_same_seed_same_files_whatever_the_workers(tmp_path):
    small = {"n_subjects": 2, "visits": (1, 1), "voxel_size": (3.0, 3.0)}
    first = synthetic.generate_cohort(tmp_path / "a", seed=11, workers=1, **small)
    second = synthetic.generate_cohort(tmp_path / "b", seed=11, workers=2, **small)
    other = synthetic.generate_cohort(tmp_path / "c", seed=12, workers=1, **small)
    hashes = _hashes(first.out)
    assert len([name for name in hashes if name.endswith(".dcm")]) > 100
    assert hashes == _hashes(second.out)
    assert set(hashes.values()).isdisjoint(_hashes(other.out).values())
    discovery = adni.discover_adni(first.collection_csv, first.adni_dir)
    assert len(discovery.scans) == first.n_scans == 2 and not discovery.skipped  # nothing skipped when not broken
    with pytest.raises(FileExistsError):
        synthetic.generate_cohort(tmp_path / "a", seed=11, workers=1, **small)


def test_cli_writes_a_cohort_and_says_where(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path), "--subjects", "1", "--max-visits", "1", "--voxel-size", "3", "3"]
    assert main([*argv, "--workers", "1", "--seed", "1"]) == 0
    output = capsys.readouterr().out
    assert f"ADNI folder:    {tmp_path / 'ADNI'}" in output
    assert f"Collection CSV: {tmp_path / 'collection.csv'}" in output
    assert "1 scans of 1 subjects" in output
    with pytest.raises(SystemExit, match="already holds a cohort"):
        main([*argv, "--workers", "1"])


# ---------------------------------------------------------------- the DICOM writer


def test_float_volume_written_from_a_ras_affine_survives_conversion(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.uniform(-3.0, 250.0, (10, 12, 7)).astype(np.float32)  # rows A->P, columns S->I, slices L->R
    affine = np.array([[0, 0, 1.2, -40.0], [-1.1, 0, 0, 60.0], [0, -1.05, 0, 70.0], [0, 0, 0, 1]])
    write_series_from_affine(tmp_path / "dicom", volume, affine, uid_seed="writer-test")
    result = convert_series(tmp_path / "dicom", tmp_path / "out", "002_S_0295", "I1")
    assert result.ok, result.reason
    image = nib.load(result.output_path)
    expected = nib.orientations.apply_orientation(
        volume,
        nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt(("L", "A", "S"))),
    )
    data = np.asarray(image.dataobj, dtype=float)
    slope = (250.0 + 3.0) / 65535
    np.testing.assert_allclose(data, expected, atol=slope)
    np.testing.assert_allclose(nib.as_closest_canonical(image).affine, nib.as_closest_canonical(
        nib.Nifti1Image(volume, affine)).affine, atol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="not orthogonal"):
        series_geometry_from_affine(np.array([[1, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
