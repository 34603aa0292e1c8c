"""The scans that ``python -m analysis explain`` explains: a datalist partition (with labels, subjects and the
manifest's native scan and brain mask) or a folder of model-ready volumes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def _stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _manifest(dataset_dir: Path) -> dict[str, dict[str, str]]:
    path = dataset_dir / "manifest.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["output"] and Path(row["output"]).name: row for row in csv.DictReader(handle) if row.get("output")}


def collect_items(datalist: Path | None = None, partition: str = "test", images: Path | None = None) -> list[dict]:
    """The scans to explain: a datalist partition (labels, subjects, the manifest's native file and mask) or a folder
    of model-ready volumes (no labels; the brain mask is the non-zero part of the skull-stripped volume)."""
    if (datalist is None) == (images is None):
        raise SystemExit("explain: give either --datalist (with --partition) or --images, not both.")
    if images is not None:
        from scripts.inference_io import list_volumes

        found = list_volumes(images)
        if not found:
            raise SystemExit(f"explain: no volumes (.nii, .nii.gz, .mgz) in {images}.")
        return [
            {"image": f["file"], "label": None, "subject": _stem(f["file"]), "image_id": _stem(f["file"])}
            for f in found
        ]
    try:
        data = json.loads(Path(datalist).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(
            f"explain: cannot read the datalist {datalist}: {error}. Pass the datalist.json split wrote."
        ) from None
    if not data.get(partition):
        raise SystemExit(
            f"explain: {datalist} has no '{partition}' partition (it has {sorted(data)}); use --partition."
        )
    root = Path(datalist).parent
    manifest = _manifest(root)
    items = []
    for entry in data[partition]:
        image = Path(entry["image"]) if Path(entry["image"]).is_absolute() else root / entry["image"]
        row = manifest.get(image.name, {})
        items.append(
            {
                "image": str(image),
                "label": int(entry["label"]),
                "subject": str(entry.get("subject") or _stem(image)),
                "image_id": str(entry.get("image_id") or _stem(image)),
                "native": row.get("input") or None,
                "mask": row.get("mask") or None,
            }
        )
    return items
