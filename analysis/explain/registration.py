"""The MNI152 template's region labels registered onto a scan with ANTs, in a worker process.

:func:`analysis.explain.regions.template_regions_on_grid` sends each scan here through :func:`_in_worker`. ITK reads
its thread count once per process and ANTs' sums depend on it, so registration runs in one single-threaded child
interpreter (:func:`_serve`) that keeps the template between calls.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from scipy import ndimage

# Registration at 4 mm (finer scans are brought down to it): on 128^3 synthetic scans 2 mm gave the same hippocampal
# Dice against the truth (0.79, affine) for 3-10x the time. ANTs treats seed 0 as "use the clock", hence seed + 1.
_REGISTRATION_MM = 4.0
_SEED_OFFSET = 1


_WORKER: tuple[subprocess.Popen, Connection] | None = None
_WORKER_LOCK = threading.Lock()  # one request at a time on the pipe


def _start_worker() -> tuple[subprocess.Popen, Connection]:
    """A child interpreter that registers scans and keeps the template between calls. ITK reads its thread count
    once per process, when first used, and ANTs' sums depend on it (2 and 16 cores register differently), so this
    needs a fresh interpreter started single-threaded; a subprocess, not multiprocessing's spawn, so that callers'
    scripts need no ``__main__`` guard."""
    ours, theirs = multiprocessing.Pipe()
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    code = f"from analysis.explain.registration import _serve; _serve({theirs.fileno()})"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, pass_fds=(theirs.fileno(),))
    theirs.close()
    atexit.register(_stop_worker, process, ours)
    return process, ours


def _stop_worker(process: subprocess.Popen, connection: Connection, kill: bool = False) -> None:
    connection.close()  # the worker reads end-of-file and exits
    if kill:
        process.kill()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _serve(fd: int) -> None:
    """The worker's loop: :func:`_register_labels` arguments in, ``("ok", labels)`` or ``("error", text)`` out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    connection = Connection(fd)
    while True:
        try:
            args = connection.recv()
        except EOFError:
            return
        try:
            connection.send(("ok", _register_labels(*args)))
        except Exception:  # the caller raises it, with this traceback
            connection.send(("error", traceback.format_exc()))


def _in_worker(*args: Any) -> np.ndarray:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None or _WORKER[0].poll() is not None:
            _WORKER = _start_worker()
        try:
            _WORKER[1].send(args)
            status, value = _WORKER[1].recv()
        except BaseException:  # died, or interrupted with a reply still to come: the next call starts afresh
            _stop_worker(*_WORKER, kill=True)
            _WORKER = None
            raise
    if status != "ok":
        raise RuntimeError(f"template registration failed in the worker:\n{value}")
    return value


@lru_cache(maxsize=1)
def _mni_labels() -> tuple[np.ndarray, np.ndarray]:
    """The generator's MNI152 labels and affine, built as load_template builds them (~2 s; load_template also fits
    the renderer's fields, ~20 s, which registration does not need). The slow test checks both give the same."""
    from nilearn import datasets

    from preprocessing.synthetic import _region_labels

    t1 = datasets.load_mni152_template(resolution=1)
    gm, wm = datasets.load_mni152_gm_template(resolution=1), datasets.load_mni152_wm_template(resolution=1)
    brain = ndimage.binary_fill_holes(np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0)
    arrays = [np.asarray(image.get_fdata(dtype=np.float32)) for image in (t1, gm, wm)]
    affine = np.asarray(t1.affine, dtype=float)
    return _region_labels(*arrays, brain, affine[:3, 3]), affine


def _register_labels(data: np.ndarray, affine: np.ndarray, syn: bool, seed: int) -> np.ndarray:
    import ants
    import ants.config

    from scripts.preprocess import to_ants
    from scripts.quality import _template

    template_brain = _template(_REGISTRATION_MM)[2]  # the QC's MNI152 brain, zero background, 4 mm (shared cache)
    fixed = to_ants(data, affine)
    target = fixed
    if min(fixed.spacing) < _REGISTRATION_MM:
        target = ants.resample_image(fixed, (_REGISTRATION_MM,) * 3, use_voxels=False, interp_type=0)
    ants.config._random_seed = int(seed) + _SEED_OFFSET  # read by ants.registration; this process is ours
    with tempfile.TemporaryDirectory(prefix="regions-ants-") as scratch:
        # Global correlation as in the QC: indifferent to the intensity scale, and repeatable when seeded.
        transforms = ants.registration(
            target, template_brain, type_of_transform="Affine", outprefix=f"{scratch}/affine_",
            aff_metric="GC", aff_random_sampling_rate=1.0, aff_iterations=(100, 50, 25),
            aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
        )["fwdtransforms"]  # fmt: skip
        if syn:  # 8 and 4 mm: hippocampal Dice 0.79 -> 0.82, ventricles 0.60 -> 0.81 (2 mm: 0.85, 4x the time)
            transforms = ants.registration(
                target, template_brain, type_of_transform="SyNOnly", initial_transform=transforms,
                outprefix=f"{scratch}/syn_", syn_metric="CC", syn_sampling=2, reg_iterations=(40, 20),
            )["fwdtransforms"]  # fmt: skip
        labels, labels_affine = _mni_labels()
        moving = to_ants(labels.astype(np.float32), labels_affine)
        warped = ants.apply_transforms(fixed, moving, transforms, interpolator="genericLabel")
        return np.rint(warped.numpy()).astype(np.int16)
