"""Matching an ADNI download's image folders (``ADNI/<subject>/<description>/<date_time>/I<image id>``) to the
collection CSV's rows: by the image id in the folder or file names, else by subject, description and date.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from preprocessing.adni.records import Discovery, Skipped
from preprocessing.subject_ids import normalize_subject_id, subject_key
from preprocessing.tables import canonical_image_id, parse_acq_date

_SERIES_FOLDER = re.compile(r"[Ss]\d+")
_IMAGE_ID_IN_FILENAME = re.compile(r"_I(\d+)\.dcm$", re.IGNORECASE)


@dataclass(frozen=True)
class _Folder:
    path: Path
    subject: str
    description: str
    date: str | None
    image_id: str | None


def _resolve_adni_root(root: Path) -> Path:
    """Accept either the ``ADNI`` folder itself or the folder that contains it."""
    if not root.is_dir():
        raise FileNotFoundError(f"ADNI download folder not found: {root}")
    nested = root / "ADNI"
    return nested if nested.is_dir() else root


def _scan_download(root: Path) -> list[_Folder]:
    """Image folders at ``<subject>/<description>/<date_time>/<I...|S...>`` under the download root."""
    folders = []
    for leaf in sorted(p for p in root.glob("*/*/*/*") if p.is_dir()):
        date_folder = leaf.parent.name
        try:
            date = parse_acq_date(date_folder[:10])
        except ValueError:
            date = None
        folders.append(
            _Folder(
                path=leaf,
                subject=leaf.parents[2].name,
                description=leaf.parents[1].name,
                date=date,
                image_id=_folder_image_id(leaf),
            )
        )
    return folders


def _folder_image_id(leaf: Path) -> str | None:
    """``I45108`` from the folder name, or for an ``S<series>`` folder from ADNI's file names (``..._I45108.dcm``)."""
    if re.fullmatch(r"[Ii]\d+", leaf.name):
        return canonical_image_id(leaf.name)
    if _SERIES_FOLDER.fullmatch(leaf.name):
        for child in sorted(leaf.iterdir()):
            match = _IMAGE_ID_IN_FILENAME.search(child.name)
            if match:
                return f"I{int(match.group(1))}"
    return None


def _description_key(description: str) -> str:
    """ADNI folder names replace spaces and punctuation with ``_``: compare descriptions on letters and digits."""
    return re.sub(r"[^a-z0-9]+", "", description.lower())


def _download_folders(
    adni_root: Path, ordered: Sequence[tuple[str, int, dict[str, str]]], get: Callable, discovery: Discovery
) -> dict[str, _Folder]:
    """The download's image folders by image id; duplicates and folders no row explains are reported."""
    skip = discovery.skipped.append
    folders: dict[str, _Folder] = {}
    unresolved: list[_Folder] = []
    for folder in _scan_download(_resolve_adni_root(adni_root)):
        if folder.image_id is None:
            unresolved.append(folder)
        elif folder.image_id in folders:
            reason = f"image {folder.image_id} downloaded twice; using {folders[folder.image_id].path}"
            skip(
                Skipped("duplicate_folder", reason, folder.image_id, normalize_subject_id(folder.subject), folder.path)
            )
        else:
            folders[folder.image_id] = folder
    for folder in unresolved:
        match = _match_by_visit(folder, ordered, folders, get)
        if match is None:
            reason = (
                f"cannot tell which image folder {folder.path.name} holds (no I<id> in its name or file names, and "
                "no single CSV row with its subject, description and date)"
            )
            skip(Skipped("unmatched_folder", reason, None, normalize_subject_id(folder.subject), folder.path))
        else:
            folders[match] = folder
    return folders


def _match_by_visit(
    folder: _Folder,
    ordered: Sequence[tuple[str, int, dict[str, str]]],
    taken: dict[str, _Folder],
    get: Callable[[dict[str, str], str], str],
) -> str | None:
    """The image id of the one CSV row with this folder's subject, description and date, not already on disk."""
    if folder.date is None:
        return None
    candidates = []
    for image_id, _, row in ordered:
        if image_id in taken or subject_key(get(row, "Subject")) != subject_key(folder.subject):
            continue
        if _description_key(get(row, "Description")) != _description_key(folder.description):
            continue
        try:
            if parse_acq_date(get(row, "Acq Date")) != folder.date:
                continue
        except ValueError:
            continue
        candidates.append(image_id)
    return candidates[0] if len(candidates) == 1 else None
