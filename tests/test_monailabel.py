"""MONAI Label serves the bundle as a classification model (``monailabel_app/``): a real server, started from the
environment ``make label-env`` builds (``.venv-label``), answers the class probabilities the bundle's own inference
(``python -m monai.bundle run --config_file configs/inference.json``) writes for the same raw scan, and refuses a scan
that fails the bundle's quality control with the bundle's reasons.

The model is a random-weights r3d_18 (as in test_scan_page.py) whose head is scaled up so that its probabilities move
with the input; its plan is the demo's grid (2 mm, 32³) with ``skull_stripper none``, a short N4 and no template QC.
The good scan is a skull-stripped MNI152 brain, the bad one a noise cube (tests/bad_inputs.py). The server and the
bundle CLI start at the same time (each spends most of its time importing torch and MONAI).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_inputs import write_noise_cube
from conftest import BUNDLE_ROOT, REPO_ROOT

pytestmark = pytest.mark.slow

LABEL_PYTHON = REPO_ROOT / ".venv-label" / "bin" / "python"
MODEL = "ad_cn_classification"
PLAN_SETTINGS = {
    "skull_stripper": "none",
    "spacing": 2.0,
    "spatial_size": 32,
    "n4_convergence": {"iters": [10, 10], "tol": 1e-4},
}
PLAN_QC = {"template_check": False}
HEAD_SCALE = 5.0  # random heads give ~0.5 for anything; scaled logits make a preprocessing difference visible
SERVER_START_S = 300
# What pip prints when the package registry cannot be reached (only then, and never under CI, is the test skipped).
REGISTRY_UNREACHABLE = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
)


def _make_label_env() -> Path:
    """``make label-env`` (a no-op when .venv-label is up to date); skip only when the registry is unreachable."""
    result = subprocess.run(["make", "-s", "label-env"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        log = result.stdout + result.stderr
        if not os.environ.get("CI") and any(text in log for text in REGISTRY_UNREACHABLE):
            pytest.skip(f"make label-env could not reach the package registry: {log.strip().splitlines()[-1]}")
        pytest.fail(f"make label-env failed ({result.returncode}):\n{log[-5000:]}")
    assert LABEL_PYTHON.exists(), "make label-env did not create .venv-label"
    return LABEL_PYTHON


def _save_model(models: Path) -> None:
    from scripts import plan as plan_mod
    from scripts.network import VideoResNetClassifier

    torch.manual_seed(0)
    state = VideoResNetClassifier(weights=None).state_dict()
    state["net.fc.weight"] *= HEAD_SCALE
    models.mkdir(parents=True)
    torch.save(state, models / "model.pt")
    plan_mod.write_plan(plan_mod.build_plan(PLAN_SETTINGS, qc_thresholds=PLAN_QC), models)


def _write_brain(path: Path) -> None:
    """A raw-ish T1: the skull-stripped MNI152 brain (nilearn's template) at 2 mm."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=2)
    mask = np.asarray(load_mni152_brain_mask(resolution=2).get_fdata()) > 0
    data = np.asarray(template.get_fdata(), dtype=np.float32) * 1000 * mask
    nib.save(nib.Nifti1Image(data, template.affine), str(path))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, params: dict | None = None, timeout: float = 300) -> tuple[int, dict]:
    """GET (no params) or POST ``params`` as MONAI Label's ``params`` form field; the status and the JSON body."""
    data = None if params is None else urllib.parse.urlencode({"params": json.dumps(params)}).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and anything it started
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    _make_label_env()
    root = tmp_path_factory.mktemp("monailabel")
    models, studies = root / "models", root / "studies"
    _save_model(models)
    studies.mkdir()
    _write_brain(studies / "brain.nii.gz")
    write_noise_cube(studies / "noise.nii.gz")
    # The app folder is copied: the server writes logs/, model/ and bin/ into it.
    app = shutil.copytree(REPO_ROOT / "monailabel_app", root / "app",
                          ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))  # fmt: skip

    bundle_log, server_log = (root / "bundle_cli.log").open("w"), (root / "server.log").open("w")
    bundle_cli = server = None
    try:
        bundle_cli = subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
             "--dataset_dir", str(studies), "--ckpt_dir", str(models), "--output_dir", str(root / "bundle_out"),
             "--num_workers", "0"],
            cwd=BUNDLE_ROOT, env={**os.environ, "WANDB_MODE": "disabled"}, stdout=bundle_log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        port = _free_port()
        server = subprocess.Popen(  # the README's command; the app is a copy, the bundle is the repository's
            ["make", "-s", "-C", str(REPO_ROOT), "label", f"LABEL_APP={app}", f"LABEL_STUDIES={studies}",
             f"LABEL_BUNDLE={BUNDLE_ROOT}", f"LABEL_MODEL_DIR={models}", "LABEL_HOST=127.0.0.1", f"LABEL_PORT={port}"],
            cwd=root, env={**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}, stdout=server_log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline, info = time.monotonic() + SERVER_START_S, None
        while info is None:
            if server.poll() is not None:
                pytest.fail(f"the server exited ({server.returncode}):\n{(root / 'server.log').read_text()[-5000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no /info/ after {SERVER_START_S} s:\n{(root / 'server.log').read_text()[-5000:]}")
            try:
                status, body = _request(f"{url}/info/", timeout=5)
                info = body if status == 200 else None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        yield SimpleNamespace(url=url, info=info, root=root, bundle_cli=bundle_cli)
    finally:
        _stop(server)
        _stop(bundle_cli)
        bundle_log.close()
        server_log.close()


@pytest.fixture(scope="module")
def bundle_rows(served) -> dict[str, dict[str, str]]:
    """The bundle's own predictions.csv for the studies folder, by image id."""
    returncode = served.bundle_cli.wait(timeout=600)
    log = (served.root / "bundle_cli.log").read_text()
    assert returncode == 0, f"bundle inference failed ({returncode}):\n{log[-5000:]}"
    with (served.root / "bundle_out" / "predictions.csv").open() as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}


def test_info_lists_the_bundle_as_a_classification_model(served):
    model = served.info["models"][MODEL]
    assert model["type"] == "classification"
    assert model["labels"] == {"CN": 0, "AD": 1}
    assert model["config"]["force_qc"] is False
    assert served.info["datastore"]["total"] == 2


def test_probabilities_equal_the_bundle_inference(served, bundle_rows):
    status, result = _request(f"{served.url}/infer/{MODEL}?image=brain", params={})
    assert status == 200, result
    row = bundle_rows["brain"]
    assert row["status"] == "ok" and result["status"] == "ok"
    assert result["class_names"] == ["CN", "AD"]
    expected = [float(row["prob_CN"]), float(row["prob_AD"])]  # written with 6 decimals
    assert np.allclose([result["probabilities"]["CN"], result["probabilities"]["AD"]], expected, atol=1e-5, rtol=0)
    assert [p["score"] for p in result["prediction"]] == [result["probabilities"][n] for n in ("CN", "AD")]
    assert [p["label"] for p in result["prediction"]] == ["CN", "AD"]
    assert result["predicted_class"] == row["prediction"]
    assert abs(expected[1] - 0.5) > 0.1  # the scaled head: not a coin toss
    assert result["qc_status"] == row["qc_status"] and result["forced_qc"] is False


def test_a_scan_failing_quality_control_is_refused_with_the_bundle_reasons(served, bundle_rows):
    status, body = _request(f"{served.url}/infer/{MODEL}?image=noise", params={})
    assert status == 422, body
    detail, row = body["detail"], bundle_rows["noise"]
    assert row["status"] == detail["status"] == "qc_failed"
    assert detail["qc_status"] == "fail" and detail["qc_reasons"] == row["qc_reasons"]
    assert "brain volume" in detail["qc_reasons"]
    assert detail["error"].startswith(f"noise.nii.gz: refused by quality control ({row['qc_reasons']})")
    assert '"force_qc": true' in detail["error"]

    status, forced = _request(f"{served.url}/infer/{MODEL}?image=noise", params={"force_qc": True})
    assert status == 200, forced
    assert forced["forced_qc"] is True and forced["qc_status"] == "fail" and forced["qc_reasons"] == row["qc_reasons"]
    assert sum(forced["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    status, missing = _request(f"{served.url}/infer/{MODEL}?image=not_a_scan", params={})
    assert status == 422 and "not in the studies" in missing["detail"]["error"]
