"""MONAI Label app serving this project's bundle as a classification model (AD vs CN from a raw T1 scan).

    python -m monailabel.main start_server --app monailabel_app --studies <folder of NIfTI T1 scans> \\
        --conf models ad_cn_classification [--conf model_dir <folder with model.pt and plan.json>]

(``make label LABEL_STUDIES=<folder>`` runs it from the environment ``make label-env`` builds.) ``--conf`` keys:

- ``models``: the models to serve, comma-separated, or ``all`` (the default); the one here: ``ad_cn_classification``.
- ``bundle``: the bundle folder; default ``$AD_BUNDLE_ROOT``, else the ``bundle`` folder beside this app.
- ``model_dir``: the trained model (``model.pt`` with its ``plan.json``); default ``<bundle>/models``.
- ``preload``: ``true`` to load the network when the server starts.

``POST /infer/ad_cn_classification?image=<id>`` answers the class names and their probabilities (see
``lib/infers.py``), or HTTP 422 naming why a scan is not predicted (unreadable, or refused by quality control).
"""

from __future__ import annotations

import os
from pathlib import Path

from lib.infers import BundleClassificationInfer, as_bool
from monailabel.interfaces.app import MONAILabelApp

MODEL_NAME = "ad_cn_classification"
BUNDLE_ENV_VAR = "AD_BUNDLE_ROOT"


class ADClassificationApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        default_bundle = os.environ.get(BUNDLE_ENV_VAR) or Path(app_dir).resolve().parent / "bundle"
        self.bundle_dir = Path(conf.get("bundle") or default_bundle).expanduser().resolve()
        if not (self.bundle_dir / "configs" / "inference.json").is_file():
            raise ValueError(
                f"{self.bundle_dir} is not this project's bundle folder (no configs/inference.json); "
                f"pass --conf bundle <folder> or set {BUNDLE_ENV_VAR}"
            )
        self.model_dir = Path(conf["model_dir"]).expanduser().resolve() if conf.get("model_dir") else None
        wanted = [name.strip() for name in conf.get("models", "all").split(",") if name.strip()]
        unknown = sorted(set(wanted) - {"all", MODEL_NAME})
        if unknown:
            raise ValueError(f"unknown model(s) {unknown} in --conf models; this app serves: {MODEL_NAME} (or all)")
        self.wanted = wanted
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="AD vs CN T1 MRI classification",
            description="Alzheimer's disease vs cognitively normal from a raw T1 scan: the bundle's preprocessing, "
            "quality control and video-pretrained r3d_18 (research use only, not a medical device)",
        )

    def init_infers(self):
        if not self.wanted:
            return {}
        task = BundleClassificationInfer(self.bundle_dir, self.model_dir, preload=as_bool(self.conf.get("preload")))
        return {MODEL_NAME: task}  # listed by /info/ only while task.is_valid(): model.pt exists
