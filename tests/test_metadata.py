"""The bundle's metadata: valid against the local schema through MONAI's own CLI, and in step with what is installed.

``python -m monai.bundle verify_metadata`` downloads the schema named in the metadata only when ``--filepath`` does
not exist yet, so pointing it at ``docs/metadata_schema.json`` (kept in the bundle) makes it work offline.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata as importlib_metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
META_FILE = BUNDLE_ROOT / "configs" / "metadata.json"
SCHEMA_FILE = BUNDLE_ROOT / "docs" / "metadata_schema.json"
LOGGING_FILE = BUNDLE_ROOT / "configs" / "logging.conf"
REQUIREMENTS_FILE = REPO_ROOT / "requirements.txt"

# verify_metadata warns that the schema has no hash to check; the schema is a file of this repository.
pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning")

CLI_TIMEOUT_S = 300
# Package keys whose entries must be installed at exactly the stated version.
REQUIRED_PACKAGE_KEYS = ("required_packages_version", "preprocessing_packages_version")
# Opt-in extras: checked only where installed (requirements.txt does not install them).
OPTIONAL_PACKAGE_KEYS = ("optional_dependencies_version",)
# Covered by monai_version / pytorch_version / numpy_version rather than by a package list.
BASE_DISTRIBUTIONS = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
FIRST_PARTY_MODULES = {"scripts", "preprocessing"}


def _load_metadata() -> dict:
    with META_FILE.open() as f:
        return json.load(f)


def _normalise(name: str) -> str:
    """Distribution name in its canonical form (PEP 503), so 'PyYAML' and 'pyyaml' compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(distribution: str) -> str:
    """Installed version without a local build tag: torch's '2.14.1+cu130' reads as '2.14.1'."""
    return importlib_metadata.version(distribution).split("+")[0]


def _verify_cli(meta_file: Path | str) -> subprocess.CompletedProcess:
    """Run MONAI's verify_metadata command line from the bundle root, as a user would."""
    assert SCHEMA_FILE.is_file(), "without the local schema verify_metadata would try to download it"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_metadata",
        "--meta_file",
        str(meta_file),
        "--filepath",
        "docs/metadata_schema.json",
    ]
    return subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def _verify_in_process(meta_file: Path) -> None:
    """The function that the CLI dispatches to (same arguments), without paying for a new interpreter each time."""
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA_FILE))


def _write(tmp_path: Path, metadata: dict) -> Path:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(metadata, indent=4))
    return path


# ---------------------------------------------------------------- validation through MONAI


def test_cli_verifies_metadata_offline():
    result = _verify_cli("configs/metadata.json")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "metadata is verified with no error" in output
    # The local schema was used: nothing was fetched from the 'schema' URL.
    assert "skipped downloading" in output


def test_cli_rejects_a_wrong_type(tmp_path):
    metadata = _load_metadata()
    metadata["network_data_format"]["inputs"]["image"]["num_channels"] = "one"
    result = _verify_cli(_write(tmp_path, metadata))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "metadata is verified with no error" not in output
    assert "Failed validating" in output


def _drop(path: tuple[str, ...]):
    def edit(metadata: dict) -> None:
        node = metadata
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def _set(path: tuple[str, ...], value):
    def edit(metadata: dict) -> None:
        node = metadata
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


IMAGE = ("network_data_format", "inputs", "image")
PRED = ("network_data_format", "outputs", "pred")
TOP_LEVEL_REQUIRED = (
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
TENSOR_REQUIRED = (
    "type",
    "format",
    "modality",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
)
BROKEN = {
    **{f"missing {key}": _drop((key,)) for key in TOP_LEVEL_REQUIRED},
    **{f"input missing {key}": _drop((*IMAGE, key)) for key in TENSOR_REQUIRED},
    **{f"output missing {key}": _drop((*PRED, key)) for key in TENSOR_REQUIRED},
    "missing inputs": _drop(("network_data_format", "inputs")),
    "missing outputs": _drop(("network_data_format", "outputs")),
    "num_channels as text": _set((*IMAGE, "num_channels"), "one"),
    "num_channels zero": _set((*PRED, "num_channels"), 0),
    "spatial_shape as text": _set((*IMAGE, "spatial_shape"), "128x128x128"),
    "spatial_shape with a zero": _set((*IMAGE, "spatial_shape"), [0, 128, 128]),
    "spatial_shape with a fraction": _set((*IMAGE, "spatial_shape"), [128.5, 128, 128]),
    "spatial_shape of four dimensions": _set((*IMAGE, "spatial_shape"), [1, 128, 128, 128]),
    "value_range of one number": _set((*PRED, "value_range"), [0]),
    "value_range as text": _set((*PRED, "value_range"), ["0", "1"]),
    "is_patch_data as text": _set((*IMAGE, "is_patch_data"), "false"),
    "unknown dtype": _set((*IMAGE, "dtype"), "float"),
    "channel_def as list": _set((*PRED, "channel_def"), ["CN", "AD"]),
    "channel_def with a non-index key": _set((*PRED, "channel_def"), {"CN": "0"}),
    "version not semantic": _set(("version",), "1"),
    "version as number": _set(("version",), 0.1),
    "monai_version as number": _set(("monai_version",), 1.6),
    "required_packages_version as list": _set(("required_packages_version",), ["torchvision"]),
    "package version as number": _set(("required_packages_version", "torchvision"), 0.29),
    "references as text": _set(("references",), "Alexander 2025"),
    "authors as list": _set(("authors",), ["Rhys W. Alexander"]),
}


@pytest.mark.parametrize("edit", BROKEN.values(), ids=BROKEN.keys())
def test_broken_metadata_fails_verification(tmp_path, edit):
    metadata = copy.deepcopy(_load_metadata())
    edit(metadata)
    # Without 'schema' MONAI stops before validating (it needs the URL); every other case fails the schema.
    with pytest.raises(ValueError, match="Failed validating|must provide the `schema` field"):
        _verify_in_process(_write(tmp_path, metadata))


def test_unchanged_copy_passes_in_process(tmp_path):
    """Control for the cases above: they fail because of their edit, not because of the copy or the path."""
    _verify_in_process(_write(tmp_path, _load_metadata()))


# ---------------------------------------------------------------- versions in step with the environment


def test_base_versions_are_the_installed_ones():
    metadata = _load_metadata()
    for distribution, key in BASE_DISTRIBUTIONS.items():
        assert metadata[key] == _installed_version(distribution), f"{key} differs from the installed {distribution}"


@pytest.mark.parametrize("key", REQUIRED_PACKAGE_KEYS + OPTIONAL_PACKAGE_KEYS)
def test_package_versions_are_the_installed_ones(key):
    packages = _load_metadata().get(key, {})
    if key == "required_packages_version":
        assert packages, "required_packages_version is empty"
    for distribution, version in packages.items():
        try:
            installed = _installed_version(distribution)
        except importlib_metadata.PackageNotFoundError:
            if key in OPTIONAL_PACKAGE_KEYS:
                continue
            pytest.fail(f"{distribution} ({key}) is not installed")
        assert version == installed, f"{key}: {distribution} {version} in metadata.json, {installed} installed"


def _requirements() -> dict[str, Requirement]:
    requirements = {}
    for line in REQUIREMENTS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        requirements[_normalise(requirement.name)] = requirement
    return requirements


def test_versions_satisfy_requirements_txt():
    metadata = _load_metadata()
    stated = {distribution: metadata[key] for distribution, key in BASE_DISTRIBUTIONS.items()}
    for key in REQUIRED_PACKAGE_KEYS:
        stated.update(metadata.get(key, {}))
    requirements = _requirements()
    for distribution, version in stated.items():
        requirement = requirements.get(_normalise(distribution))
        assert requirement is not None, f"{distribution} is in metadata.json but not in requirements.txt"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{distribution} {version} in metadata.json does not satisfy requirements.txt '{requirement}'"
        )


def _imported_modules(root: Path) -> set[str]:
    """Top-level modules that the Python files and JSON/YAML configs under ``root`` import or instantiate."""
    modules: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    config_patterns = (
        r"\$\s*import\s+([A-Za-z_]\w*)",
        r"\$\s*from\s+([A-Za-z_]\w*)",
        r"""["']?_target_["']?\s*:\s*["']([A-Za-z_]\w*)\.""",
    )
    for suffix in ("*.json", "*.yaml", "*.yml"):
        for path in root.rglob(suffix):
            text = path.read_text()
            for pattern in config_patterns:
                modules.update(re.findall(pattern, text))
    return modules


def _undeclared(modules: set[str], declared: set[str]) -> list[str]:
    distributions_of = importlib_metadata.packages_distributions()
    missing = []
    for module in sorted(modules):
        if module in sys.stdlib_module_names or module in FIRST_PARTY_MODULES or module == "__future__":
            continue
        candidates = {_normalise(module), *(_normalise(d) for d in distributions_of.get(module, []))}
        if not candidates & declared:
            missing.append(f"{module} (distribution {sorted(distributions_of.get(module, [])) or 'not installed'})")
    return missing


def test_every_third_party_import_is_declared():
    """An import added to the bundle (or to the preprocessing package) must come with a version in metadata.json."""
    metadata = _load_metadata()
    base = {_normalise(d) for d in BASE_DISTRIBUTIONS}
    bundle_declared = base | {_normalise(d) for d in metadata["required_packages_version"]}
    bundle_declared |= {_normalise(d) for key in OPTIONAL_PACKAGE_KEYS for d in metadata.get(key, {})}
    missing = _undeclared(_imported_modules(BUNDLE_ROOT), bundle_declared)
    assert not missing, f"imported by bundle/ but not in required_packages_version: {missing}"

    preprocessing_declared = bundle_declared | {
        _normalise(d) for d in metadata.get("preprocessing_packages_version", {})
    }
    missing = _undeclared(_imported_modules(REPO_ROOT / "preprocessing"), preprocessing_declared)
    assert not missing, f"imported by preprocessing/ but not in metadata.json's package versions: {missing}"


def test_no_deprecated_package_key():
    """MONAI renames 'optional_packages_version' to 'required_packages_version' on reading, overwriting that."""
    assert "optional_packages_version" not in _load_metadata()


# ---------------------------------------------------------------- content


def test_version_has_a_changelog_entry():
    metadata = _load_metadata()
    assert metadata["version"] in metadata["changelog"]


def test_input_is_one_channel_128_cube_float32():
    image = _load_metadata()["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1
    assert image["spatial_shape"] == [128, 128, 128]
    assert image["dtype"] == "float32"
    assert image["modality"] == "MR"
    assert image["channel_def"] == {"0": "T1w"}
    assert image["is_patch_data"] is False


def test_output_channels_are_cn_then_ad():
    from scripts.data import CLASS_NAMES  # label 0 and label 1 as the datalists use them

    data_format = _load_metadata()["network_data_format"]
    expected = {str(index): name for index, name in enumerate(CLASS_NAMES)}
    assert expected == {"0": "CN", "1": "AD"}
    for group in ("outputs", "post_processed_outputs"):
        pred = data_format[group]["pred"]
        assert pred["channel_def"] == expected, group
        assert pred["num_channels"] == len(expected), group
        assert pred["dtype"] == "float32", group
        # (B, 2): the two classes are the channel dimension and nothing follows it.
        assert pred["spatial_shape"] == [], group
    assert data_format["post_processed_outputs"]["pred"]["value_range"] == [0, 1]


def test_network_output_matches_metadata(tmp_path):
    """MONAI's verify_net_in_out on the real classifier: it compares output.shape[1] with the output's num_channels
    and the output dtype, and never reads the output's spatial_shape. The input is shrunk to 32^3 to keep this
    quick on CPU; r3d_18 pools globally, so the (B, 2) logits do not depend on the input size."""
    from monai.bundle import verify_net_in_out

    config = {"network_def": {"_target_": "scripts.network.VideoResNetClassifier", "weights": None}}
    config_file = tmp_path / "network.json"
    config_file.write_text(json.dumps(config))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(META_FILE),
        config_file=str(config_file),
        device="cpu",
        **{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 32]},
    )

    metadata = _load_metadata()
    metadata["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(_write(tmp_path, metadata)),
            config_file=str(config_file),
            device="cpu",
            **{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 32]},
        )


def test_eval_metrics_claim_nothing_as_measured_here():
    """No number may pass for this bundle's own result until one has been measured."""
    eval_metrics = _load_metadata()["eval_metrics"]
    assert all(isinstance(value, str) for value in eval_metrics.values())
    assert "not reproduced" in eval_metrics["dissertation_reported_accuracy"]


def test_intended_use_rules_out_clinical_use():
    intended_use = _load_metadata()["intended_use"].lower()
    assert "research only" in intended_use
    assert "not a medical device" in intended_use
    assert "clinical diagnosis" in intended_use


# ---------------------------------------------------------------- logging.conf


def test_logging_conf_passes_monais_checks():
    from monai.bundle.workflows import _reject_executable_logging_config

    _reject_executable_logging_config(str(LOGGING_FILE))


def test_logging_conf_logs_info_with_a_timestamp_to_stdout():
    code = (
        "import logging, logging.config, sys; "
        "logging.config.fileConfig(sys.argv[1], disable_existing_loggers=False); "
        "logging.getLogger('bundle.test').info('hello'); logging.getLogger('bundle.test').debug('hidden')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(LOGGING_FILE)], capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - bundle\.test - INFO - hello\n", result.stdout), result.stdout
