"""Discovery of the scans to use: an ADNI download plus its collection CSV, or a plain folder of NIfTI files.

The dissertation (4.1) used ADNI's T1-weighted MPRAGE scans of AD and CN subjects only. An ADNI download lays images
out as ``ADNI/<subject>/<description>/<date_time>/I<image id>/*.dcm`` and comes with a collection CSV (``"Image Data
ID","Subject","Group",...``). Discovery joins the two by image id, keeps MPRAGE series of AD and CN subjects, and
records every row it leaves out as a :class:`Skipped` with a reason (not MPRAGE, MCI, no usable label, folder missing
from the download, folder without a CSV row, duplicate, ...), so that the cohort's size can be explained rather than
guessed: every input row ends up as a :class:`Scan` or a :class:`Skipped`.

Real exports vary: quotes may be missing, columns added or reordered, image ids may lack their leading ``I``, tables
may be Latin-1, fields unreadable (see :mod:`preprocessing.tables`), and subject ids hand-mangled (``AD_109_S_1192``,
see :mod:`preprocessing.subject_ids`): such rows are read around, with a :class:`DiscoveryWarning`. Some collections
give ``Group = Patient`` for every row; a label table by subject (ADNIMERGE's ``PTID``/``DX_bl``, or a plain
``subject,label`` CSV) then supplies the diagnosis and overrides ``Group``. Processed IDA exports (``MPR; GradWarp;
B1 Correction``, ``MT1; N3m``, ...) are selected with the ``adni-processed`` entry of :data:`SERIES_PRESETS`.

Discovery keeps the diagnoses of a class list (``CN,AD`` by default, or ``CN,MCI,AD`` with EMCI/LMCI as MCI; see
:func:`parse_classes`); other cohorts (BIDS, OASIS) are read by :mod:`preprocessing.cohorts` into the same records.

The package's modules: :mod:`.series` (series selection), :mod:`.records` (what discovery produces),
:mod:`.collection` (the collection CSV, joined with the download's folders as matched by :mod:`.folders`),
:mod:`.nifti` (a folder of NIfTI files) and :mod:`.report` (summary, hints and the report file).
"""

from preprocessing.adni.collection import discover_adni
from preprocessing.adni.nifti import discover_nifti
from preprocessing.adni.records import (
    DEFAULT_CLASSES,
    EXCLUDED_GROUPS,
    LABELS,
    MCI_GROUPS,
    NIFTI_SUFFIXES,
    STAGE_ORDER,
    ClassListError,
    Discovery,
    Scan,
    Skipped,
    class_of,
    parse_classes,
)
from preprocessing.adni.report import discovery_hints, discovery_summary, warning_lines, write_discovery_report
from preprocessing.adni.series import (
    ADNI_PROCESSED_PATTERNS,
    ANY_MPRAGE_PATTERNS,
    DEFAULT_EXCLUDE_PATTERNS,
    DEFAULT_MPRAGE_PATTERNS,
    DEFAULT_SERIES,
    SERIES_PRESETS,
    select_description,
    series_patterns,
)
from preprocessing.subject_ids import normalize_subject_id
from preprocessing.tables import (
    TWO_DIGIT_YEAR_PIVOT,
    DiscoveryWarning,
    LabelTable,
    TableColumnError,
    TableError,
    canonical_image_id,
    load_label_table,
    normalize_group,
    parse_acq_date,
)

__all__ = [
    "ADNI_PROCESSED_PATTERNS", "ANY_MPRAGE_PATTERNS", "DEFAULT_CLASSES", "DEFAULT_EXCLUDE_PATTERNS",
    "DEFAULT_MPRAGE_PATTERNS", "DEFAULT_SERIES", "EXCLUDED_GROUPS", "LABELS", "MCI_GROUPS", "NIFTI_SUFFIXES",
    "SERIES_PRESETS", "STAGE_ORDER", "TWO_DIGIT_YEAR_PIVOT", "ClassListError", "Discovery", "DiscoveryWarning",
    "LabelTable", "Scan", "Skipped", "TableColumnError", "TableError", "canonical_image_id", "class_of",
    "discover_adni", "discover_nifti", "discovery_hints", "discovery_summary",
    "load_label_table", "normalize_group", "normalize_subject_id", "parse_acq_date", "parse_classes",
    "select_description",
    "series_patterns", "warning_lines", "write_discovery_report",
]  # fmt: skip

#: Description patterns (case-insensitive ``re.search``) for the T1w MPRAGE series the dissertation used:
