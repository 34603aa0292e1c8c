"""The bundle's inference (``configs/inference.json``) as a MONAI Label classification task.

MONAI Label's ``BundleInferTask`` takes the task type from the bundle folder's name (``bundle`` reads as
segmentation), appends a restore-to-image step meant for masks, loads the weights without strict checking and
lower-cases the label names. This task builds on ``BasicInferTask`` instead and takes every step from the bundle's own
config, parsed with MONAI's ``ConfigParser``:

- ``preprocessing``: the bundle's guarded chain (``scripts.inference_io.GuardedPreprocessing``) with the settings of
  the model's plan (``<model_dir>/plan.json``) and its quality control, on the raw T1 scan;
- ``network_def`` with the weights read and checked by ``scripts.checkpoints.load_model_weights``;
- ``inferer`` and ``postprocessing`` (softmax);
- the class names of the model (``class_names``: its plan's class list, else CN/AD or CN/MCI/AD by head size).

So a scan gets the probabilities that ``python -m monai.bundle run --config_file configs/inference.json`` writes to
``predictions.csv``. A scan the bundle would not predict (unreadable, or refused by QC) answers HTTP 422 with the
reason, the same ``status``/``qc_reasons``/``error`` the bundle's table gives; ``force_qc`` predicts a QC failure
anyway, like the bundle's ``--force_qc True``.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from monai.transforms import Compose
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

logger = logging.getLogger(__name__)

INFERENCE_CONFIG = Path("configs") / "inference.json"
METADATA = Path("configs") / "metadata.json"
#: HTTP status of a scan the bundle does not predict (its request was understood; the scan cannot be judged).
UNPROCESSABLE = 422


def as_bool(value: Any) -> bool:
    """A request flag: a JSON boolean, or a string such as "true"/"1"/"yes" (clients may send config values as text)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def refused(detail: Mapping[str, Any]) -> HTTPException:
    """The HTTP error of a scan that is not predicted; FastAPI answers ``{"detail": {...}}``."""
    return HTTPException(status_code=UNPROCESSABLE, detail=dict(detail))


class BundleScan:
    """Pre-transform: the bundle's guarded preprocessing on the request's image; raises when it is not predicted.

    ``GuardedPreprocessing`` takes a dataset item (``file``, ``image_id``) and returns the model-ready item, or a
    placeholder whose ``status`` says why not (``failed``: unreadable or the chain failed; ``qc_failed``: refused by
    quality control). Here the request keeps its own keys, and a placeholder becomes HTTP 422 naming the reason.
    """

    def __init__(self, guard: Callable[[Mapping[str, Any]], dict], image_key: str = "image") -> None:
        self.guard, self.image_key = guard, image_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        from scripts.inference_io import image_id_of

        path = data.get(self.image_key)
        if not isinstance(path, str) or not path or not os.path.exists(path):
            where = f"{path} does not exist" if isinstance(path, str) and path else "the image id is not in the studies"
            raise refused(
                {
                    "status": "failed",
                    "error": f"no scan to classify: {where}. Give the id of a scan in the studies folder "
                    f"(GET /datastore/?output=all lists them), or upload the scan as 'file'.",
                }
            )
        item = self.guard({"image": path, "file": path, "image_id": image_id_of(path)})
        summary = {key: item.get(key, "") for key in ("image_id", "status", "qc_status", "qc_reasons")}
        name = Path(path).name
        if item["status"] == "qc_failed":
            raise refused(
                {
                    **summary,
                    "error": f"{name}: refused by quality control ({item['qc_reasons']}). It was not predicted; "
                    f'send the parameter "force_qc": true to predict it anyway.',
                }
            )
        if item["status"] != "ok":
            raise refused({**summary, "error": f"{name}: preprocessing failed ({item['error']})"})
        return {**data, **item}


class BundleClassificationInfer(BasicInferTask):
    """Classification infer task of this project's bundle: class names and softmax probabilities of one T1 scan.

    Args:
        bundle_dir: the bundle folder (``configs/`` and ``scripts/``).
        model_dir: the folder holding ``model.pt`` and its ``plan.json`` (``ckpt_dir``; default ``<bundle>/models``).
        preload: load the network on every device when the server starts.
    """

    def __init__(self, bundle_dir: str | Path, model_dir: str | Path | None = None, preload: bool = False) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        _use_bundle_scripts(self.bundle_dir)
        self.bundle_config = ConfigParser()
        self.bundle_config.read_config(str(self.bundle_dir / INFERENCE_CONFIG))
        self.bundle_config.read_meta(str(self.bundle_dir / METADATA))
        self.bundle_config["bundle_root"] = str(self.bundle_dir)
        if model_dir is not None:
            self.bundle_config["ckpt_dir"] = str(Path(model_dir).resolve())
        self.model_file = Path(self.bundle_config.get_parsed_content("model_file"))

        meta = self.bundle_config.get("_meta_", {})
        self.key_image = next(iter(meta["network_data_format"]["inputs"]))
        self.key_pred = next(iter(meta["network_data_format"]["outputs"]))
        # The model's classes (its plan, else its head size), as the bundle's inference names its columns; the
        # channel_def of metadata.json describes the default two-class model only.
        self.class_names = list(self.bundle_config.get_parsed_content("class_names"))
        self.version = meta.get("version")
        self._preprocessing: Compose | None = None
        self._preprocessing_stamp: tuple[float | None, ...] = ()
        super().__init__(
            path=str(self.model_file),
            network=self.bundle_config.get_parsed_content("network_def"),
            type=InferType.CLASSIFICATION,
            labels={name: index for index, name in enumerate(self.class_names)},
            dimension=3,
            description=f"{meta.get('name', 'bundle')} {self.version}: {meta.get('task', '')}".strip(),
            input_key=self.key_image,
            output_label_key=self.key_pred,
            config={"force_qc": False},
            load_strict=True,
            preload=preload and self.model_file.is_file(),
        )
        if self.model_file.is_file():
            self._guard(startup=True)  # a plan that cannot be followed stops the server now, not at the first scan
        else:
            logger.warning(f"No model at {self.model_file}: the classification task is not offered (--conf model_dir)")

    # ---------------------------------------------------------------------------------------------- MONAI Label API

    def is_valid(self) -> bool:
        return self.model_file.is_file()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "version": self.version}

    def __call__(self, request, callbacks=None):
        if not self.model_file.is_file():  # MONAI Label runs a task it does not list (is_valid) when asked by name
            raise HTTPException(
                status_code=503,
                detail={"status": "failed", "error": f"no trained model at {self.model_file} (see --conf model_dir)"},
            )
        try:
            return super().__call__(request, callbacks)
        except SystemExit as error:  # the bundle's PlanError/BundleInputError: a named problem, not an interpreter exit
            message = getattr(error, "message", None) or str(error)
            raise HTTPException(status_code=500, detail={"status": "failed", "error": message}) from None

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        guard = copy.copy(self._guard())
        guard.force_qc = as_bool((data or {}).get("force_qc", False))
        return [BundleScan(guard, self.key_image)]

    def inferer(self, data=None) -> Inferer:
        return self.bundle_config.get_parsed_content("inferer")

    def post_transforms(self, data=None) -> Sequence[Callable]:
        post = self.bundle_config.get_parsed_content("postprocessing")
        return list(post.transforms) if isinstance(post, Compose) else list(post)

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[None, dict[str, Any]]:
        probs = torch.as_tensor(data[self.key_pred]).detach().float().cpu().flatten().tolist()
        if len(probs) != len(self.class_names):
            raise HTTPException(
                status_code=500,
                detail={"status": "failed", "error": f"{len(probs)} outputs for classes {self.class_names}"},
            )
        best = max(range(len(probs)), key=probs.__getitem__)
        forced = as_bool(data.get("force_qc")) and data.get("qc_status") == "fail"
        return None, {
            "image_id": data.get("image_id", ""),
            "status": "ok",
            "class_names": list(self.class_names),
            "probabilities": dict(zip(self.class_names, probs, strict=True)),
            "predicted_class": self.class_names[best],
            # MONAI Label's ClassificationWriter layout, with the bundle's class names and the probabilities
            "prediction": [
                {"idx": i, "label": name, "score": p}
                for i, (name, p) in enumerate(zip(self.class_names, probs, strict=True))
            ],
            "qc_status": data.get("qc_status", ""),
            "qc_reasons": data.get("qc_reasons", ""),
            "forced_qc": forced,
            "model_version": self.version,
        }

    def _get_network(self, device, data):
        """The bundle's network with the weights of ``model.pt``, read and checked as the bundle's loader does
        (``torch.load(weights_only=True)``, strict, a named error for a foreign file); reloaded when it changes."""
        from scripts.checkpoints import load_model_weights

        stamp = self.model_file.stat().st_mtime if self.model_file.is_file() else None
        cached = self._networks.get(device)
        if cached is not None and cached[1] == stamp:
            return cached[0]
        network = copy.deepcopy(self.network).to(torch.device(device))
        network.load_state_dict(load_model_weights(self.model_file, network, map_location=device))
        network.eval()
        self._networks[device] = (network, stamp)
        logger.info(f"Loaded {self.model_file} on {device}")
        return network

    # ---------------------------------------------------------------------------------------------- internals

    def _model_stamp(self) -> tuple[float | None, ...]:
        """When ``model.pt`` and its ``plan.json`` last changed (None: missing)."""
        from scripts.plan import PLAN_NAME

        files = (self.model_file, self.model_file.parent / PLAN_NAME)
        return tuple(f.stat().st_mtime if f.is_file() else None for f in files)

    def _guard(self, startup: bool = False):
        """The bundle's ``GuardedPreprocessing``: the chain of the model's plan and its QC thresholds, built again
        (the whole config re-parsed, so the plan is read again) when the model or its plan is replaced."""
        stamp = self._model_stamp()
        if self._preprocessing is None or stamp != self._preprocessing_stamp:
            try:
                rebuilt = self.bundle_config.get_parsed_content("preprocessing", lazy=self._preprocessing is None)
            except SystemExit as error:  # PlanError: the plan and the overrides disagree, or the plan is unreadable
                if startup:
                    raise RuntimeError(f"{self.model_file}: {error}") from None
                raise HTTPException(status_code=500, detail={"status": "failed", "error": str(error)}) from None
            self._preprocessing, self._preprocessing_stamp = rebuilt, stamp
        transforms = self._preprocessing.transforms
        if len(transforms) != 1:
            raise RuntimeError(f"expected one GuardedPreprocessing in the bundle's preprocessing, got {transforms}")
        return transforms[0]


def _use_bundle_scripts(bundle_dir: Path) -> None:
    """Load the bundle's ``scripts`` package from ``bundle_dir`` with the project's own loader (as ``monai.bundle
    run`` does from the bundle folder, without editing ``sys.path``); it refuses another bundle's ``scripts`` that is
    already imported in this process."""
    os.environ["AD_BUNDLE_ROOT"] = str(bundle_dir)  # read when ``preprocessing`` is first imported, just below
    from preprocessing import bundle_scripts

    bundle_scripts.load_bundle_scripts()
