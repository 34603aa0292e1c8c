"""Tests of the skull-stripping module: SynthStrip network layout, weight loading, geometry, mask logic, transform.

No real SynthStrip weights are needed: random weights are saved in the official format, and the end-to-end transform
test swaps the network's forward for the analytic signed distance of a sphere. Only one real (64^3) forward runs.
"""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.spatial.transform import Rotation

from scripts import skull_strip as ss
from scripts.skull_strip import (
    SkullStripd,
    SynthStripNet,
    conform_grid,
    load_synthstrip_model,
    mask_from_distance,
    resample_to_grid,
)

# The state-dict table of shared/spec/synthstrip.md (official synthstrip.1.pt), in order.
_CONV = (3, 3, 3)
SPEC_STATE_DICT = [
    ("encoder.0.0", 16, 1),
    ("encoder.0.1", 16, 16),
    ("encoder.1.0", 32, 16),
    ("encoder.1.1", 32, 32),
    ("encoder.2.0", 64, 32),
    ("encoder.2.1", 64, 64),
    ("encoder.3.0", 64, 64),
    ("encoder.3.1", 64, 64),
    ("encoder.4.0", 64, 64),
    ("encoder.4.1", 64, 64),
    ("encoder.5.0", 64, 64),
    ("encoder.5.1", 64, 64),
    ("decoder.0.0", 64, 64),
    ("decoder.0.1", 64, 64),
    ("decoder.1.0", 64, 128),
    ("decoder.1.1", 64, 64),
    ("decoder.2.0", 64, 128),
    ("decoder.2.1", 64, 64),
    ("decoder.3.0", 64, 128),
    ("decoder.3.1", 64, 64),
    ("decoder.4.0", 64, 128),
    ("decoder.4.1", 64, 64),
    ("decoder.5.0", 32, 96),
    ("decoder.5.1", 32, 32),
    ("remaining.0", 16, 48),
    ("remaining.1", 16, 16),
    ("remaining.2", 1, 16),
]
SPEC_SHAPES = {}
for _name, _out, _in in SPEC_STATE_DICT:
    SPEC_SHAPES[f"{_name}.conv.weight"] = (_out, _in, *_CONV)
    SPEC_SHAPES[f"{_name}.conv.bias"] = (_out,)


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) * 0.01 for k, shape in SPEC_SHAPES.items()}


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, shape (*shape, 3)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _non_ras_affine() -> np.ndarray:
    """Anisotropic, permuted, flipped and slightly oblique: voxel axes ~ (Inferior, Left, Anterior)."""
    base = np.array([[0.0, -1.5, 0.0], [0.0, 0.0, 1.2], [-1.8, 0.0, 0.0]])  # columns: I*1.8, L*1.5, A*1.2 mm
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [6, -4, 3], degrees=True).as_matrix() @ base
    affine[:3, 3] = [40.0, -30.0, 45.0]
    return affine


# --------------------------------------------------------------------------------------------------------------------
# Network and weights
# --------------------------------------------------------------------------------------------------------------------
def test_parameter_count_and_state_dict_match_spec() -> None:
    model = SynthStripNet()
    assert sum(p.numel() for p in model.parameters()) == 2_566_561
    state = model.state_dict()
    assert list(state) == list(SPEC_SHAPES)
    assert {k: tuple(v.shape) for k, v in state.items()} == SPEC_SHAPES


def test_forward_shape_and_divisibility() -> None:
    model = SynthStripNet().eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 1, 64, 64, 64))
        assert out.shape == (1, 1, 64, 64, 64)
        with pytest.raises(ValueError, match="divisible by 64"):
            model(torch.rand(1, 1, 64, 64, 96))


def test_load_official_format_explicit_path(tmp_path) -> None:
    saved = _random_state_dict()
    path = tmp_path / "synthstrip.1.pt"
    torch.save({"model_state_dict": saved}, path)
    model = load_synthstrip_model(path)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_load_from_freesurfer_home(tmp_path, monkeypatch) -> None:
    saved = _random_state_dict(seed=1)
    (tmp_path / "models").mkdir()
    torch.save({"model_state_dict": saved}, tmp_path / "models" / "synthstrip.1.pt")
    monkeypatch.setenv("FREESURFER_HOME", str(tmp_path))
    loaded = load_synthstrip_model().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


_TRIPPED: list[str] = []


def _trip(note: str) -> None:
    """Runs only if a weights file is unpickled in full (what weights_only=False would do)."""
    _TRIPPED.append(note)


class _Tripwire:
    """Pickles as a call of :func:`_trip`: a file holding it runs code when loaded in full."""

    def __reduce__(self):
        return (_trip, ("executed",))


class _Payload:
    """An arbitrary custom object next to the weights."""


def test_unsafe_weights_are_refused_and_state_dicts_still_load(tmp_path) -> None:
    from scripts.data import BundleInputError

    saved = _random_state_dict(seed=2)
    for name, extra, global_name in (("callable.pt", _Tripwire(), "_trip"), ("object.pt", _Payload(), "_Payload")):
        path = tmp_path / name
        torch.save({"model_state_dict": saved, "extra": extra}, path)
        with pytest.raises(BundleInputError) as error:
            load_synthstrip_model(path)
        message = error.value.message
        assert str(path) in message and global_name in message  # the file, and what in it is refused
        assert "weights_only=True" in message and "re-save" in message and "model_state_dict" in message  # the fix
        assert "weights_only=False" not in message  # never the advice to run the file's code
    assert _TRIPPED == []  # refused without running anything, and no full load as a fallback

    # Plain checkpoints still load: a bare state dict, and the official layout. The official file's size (30,851,709
    # bytes, three times the 2.57 M float32 parameters) says it holds an Adam state next to model_state_dict, as here:
    # tensors and plain containers, which weights_only=True accepts.
    model = SynthStripNet()
    model.load_state_dict(saved)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # fills exp_avg / exp_avg_sq / step
    checkpoints = {
        "bare.pt": saved,
        "official.pt": {"epoch": 10, "model_state_dict": saved, "optimizer_state_dict": optimizer.state_dict()},
    }
    for name, checkpoint in checkpoints.items():
        torch.save(checkpoint, tmp_path / name)
        loaded = load_synthstrip_model(tmp_path / name).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in saved.items()), name


def _assert_helpful(message: str) -> None:
    assert "weights" in message  # fix 1: pass the path
    assert "FREESURFER_HOME" in message and "FreeSurfer" in message  # fix 2: install FreeSurfer
    assert "deepbet" in message and "method='deepbet'" in message  # offline alternative, selectable by name


def test_missing_weights_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    with pytest.raises(FileNotFoundError) as error:
        load_synthstrip_model()
    _assert_helpful(str(error.value))
    with pytest.raises(FileNotFoundError) as error:
        load_synthstrip_model(tmp_path / "nope.pt")
    _assert_helpful(str(error.value))
    assert "nope.pt" in str(error.value)
    monkeypatch.setenv("FREESURFER_HOME", str(tmp_path))  # set, but no models/synthstrip.1.pt inside
    with pytest.raises(FileNotFoundError) as error:
        load_synthstrip_model()
    _assert_helpful(str(error.value))
    # The transform only needs the weights when it first runs.
    transform = SkullStripd()
    image = MetaTensor(torch.ones(1, 8, 8, 8), affine=torch.eye(4))
    with pytest.raises(FileNotFoundError):
        transform({"image": image})


# --------------------------------------------------------------------------------------------------------------------
# Mask logic and geometry
# --------------------------------------------------------------------------------------------------------------------
def test_mask_from_distance_two_spheres_and_hole() -> None:
    grid = np.stack(np.meshgrid(*[np.arange(64.0)] * 3, indexing="ij"), axis=-1)
    big_centre, small_centre = np.array([28.0, 32.0, 32.0]), np.array([56.0, 8.0, 10.0])
    r_big, r_small, r_hole = 16.0, 5.0, 4.0
    to_big = np.linalg.norm(grid - big_centre, axis=-1)
    # Signed distance of (big sphere minus a hole at its centre) united with a separate small sphere.
    distance = np.minimum(
        np.maximum(to_big - r_big, r_hole - to_big), np.linalg.norm(grid - small_centre, axis=-1) - r_small
    )
    assert (distance < 0)[tuple(small_centre.astype(int))] and not (distance < 0)[tuple(big_centre.astype(int))]
    for border in (0.0, 1.0, 2.5, -1.5):
        mask = mask_from_distance(distance, border=border)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, to_big - r_big < border, err_msg=f"border={border}")


def test_mask_from_distance_empty() -> None:
    assert not mask_from_distance(np.full((8, 8, 8), 5.0)).any()


def test_conform_grid_shapes_orientation_and_centre() -> None:
    # RAS 1 mm volume whose non-zero box is 300 (x) by 200 (y) by 100 (z) voxels: LIA axes are (x, z, y).
    volume = np.zeros((310, 210, 110), np.float32)
    volume[5:305, 5:205, 5:105] = 1.0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    shape, grid_affine = conform_grid(volume, affine)
    assert shape == (320, 192, 256)
    assert nib.aff2axcodes(grid_affine) == ("L", "I", "A")
    np.testing.assert_allclose(np.linalg.norm(grid_affine[:3, :3], axis=0), 1.0)
    centre = grid_affine[:3, :3] @ ((np.array(shape) - 1) / 2) + grid_affine[:3, 3]
    np.testing.assert_allclose(centre, [154.5, 104.5, 54.5])  # centre of the non-zero box
    # Anisotropic, non-RAS input: the sizes follow the world extent in mm, clipped to 192..320 and multiples of 64.
    small = np.ones((40, 50, 60), np.float32)
    assert conform_grid(small, _non_ras_affine())[0] == (192, 192, 192)
    huge = np.ones((200, 300, 100), np.float32)
    for size in conform_grid(huge, np.diag([2.0, 1.0, 3.0, 1.0]))[0]:
        assert size % 64 == 0 and 192 <= size <= 320


def test_distance_round_trip_on_non_ras_grid() -> None:
    """A world-space sphere distance sampled on the network grid, resampled back, masks the right input voxels."""
    affine = _non_ras_affine()
    shape = (36, 40, 44)
    volume = np.ones(shape, np.float32)
    grid_shape, grid_affine = conform_grid(volume, affine)
    world_in = _world(shape, affine)
    centre = world_in[14, 18, 25] + [1.3, -0.7, 0.4]  # off-centre and between voxels
    radius, border = 17.0, 1.0
    net_distance = np.linalg.norm(_world(grid_shape, grid_affine) - centre, axis=-1) - radius
    back = resample_to_grid(net_distance, grid_affine, shape, affine, order=1, fill=100.0)
    exact = np.linalg.norm(world_in - centre, axis=-1) - radius
    # Linear interpolation of a distance field is near exact away from its kink at the sphere's centre.
    away = exact + radius > 5.0
    np.testing.assert_allclose(back[away], exact[away], atol=0.05)
    mask = mask_from_distance(back, border=border)
    clear = np.abs(exact - border) > 0.05
    np.testing.assert_array_equal(mask[clear], (exact < border)[clear])
    assert clear.mean() > 0.99 and 1000 < mask.sum() < mask.size
    # Input voxels outside the network field of view get the fill value.
    far = np.eye(4)
    far[:3, 3] = grid_affine[:3, 3] + 1000
    assert (resample_to_grid(net_distance, grid_affine, (2, 2, 2), far, fill=100.0) == 100.0).all()


# --------------------------------------------------------------------------------------------------------------------
# Transform
# --------------------------------------------------------------------------------------------------------------------
def _head(shape: tuple[int, int, int], affine: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic head: brain sphere (r 15 mm), CSF gap, skull shell; returns the volume and exact brain distance."""
    distance = np.linalg.norm(_world(shape, affine) - centre, axis=-1) - 15.0
    rng = np.random.default_rng(0)
    volume = np.where(distance < 0, 100.0 + rng.normal(0, 3, shape), 0.0)
    volume[(distance > 3) & (distance < 6)] = 60.0  # "skull", must be stripped
    return volume.astype(np.float32), distance


def test_skullstripd_with_analytic_network(monkeypatch) -> None:
    affine = _non_ras_affine()
    shape = (30, 34, 40)
    centre = _world(shape, affine)[15, 17, 20]
    volume, exact = _head(shape, affine, centre)
    grid_shape, grid_affine = conform_grid(volume, affine)
    grid_world = torch.from_numpy(_world(grid_shape, grid_affine)).float()
    seen: list[torch.Tensor] = []

    def analytic_forward(self, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return (torch.linalg.vector_norm(grid_world - torch.from_numpy(centre).float(), dim=-1) - 15.0)[None, None]

    loads: list[object] = []

    def fake_loader(weights=None, device="cpu") -> SynthStripNet:
        loads.append(weights)
        return SynthStripNet().eval()

    monkeypatch.setattr(SynthStripNet, "forward", analytic_forward)
    monkeypatch.setattr(ss, "load_synthstrip_model", fake_loader)
    transform = SkullStripd(keys="image", weights="/some/synthstrip.1.pt", border=1.0)
    assert loads == []  # lazy: nothing loaded at construction
    image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.from_numpy(affine))
    out = transform({"image": image, "label": 1})
    out2 = transform({"image": image.clone(), "label": 0})
    assert loads == ["/some/synthstrip.1.pt"]  # loaded once per instance, not per call
    assert out["skull_stripper"] == "synthstrip" and out["label"] == 1

    # What the network saw: the conformed grid, SynthStrip-normalised, the brain bright where the sphere is.
    x = seen[0]
    assert tuple(x.shape) == (1, 1, *grid_shape)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    net_distance = torch.linalg.vector_norm(grid_world - torch.from_numpy(centre).float(), dim=-1)
    inside = x[0, 0][net_distance < 12]  # nearest-neighbour conform: 1.3 mm margin for the input's voxel size
    assert float(inside.min()) > 0.5 and float(inside.mean()) > 0.7
    assert float(x[0, 0][(net_distance > 23) & (net_distance < 40)].max()) == 0.0

    mask = out["brain_mask"]
    assert isinstance(mask, MetaTensor) and tuple(mask.shape) == (1, *shape)
    torch.testing.assert_close(mask.affine.double(), image.affine.double())
    expected = exact < 1.0
    clear = np.abs(exact - 1.0) > 0.05
    got = mask[0].numpy() > 0.5
    np.testing.assert_array_equal(got[clear], expected[clear])
    stripped = out["image"][0].numpy()
    np.testing.assert_array_equal(stripped[~got], 0.0)  # background and skull zeroed
    np.testing.assert_array_equal(stripped[got], volume[got])  # brain untouched
    assert not (stripped == 60.0).any()
    torch.testing.assert_close(out2["brain_mask"].as_tensor(), mask.as_tensor())


def test_skullstripd_rejects_plain_arrays_and_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        SkullStripd(method="bet")
    with pytest.raises(TypeError, match="MetaTensor"):
        SkullStripd()({"image": np.zeros((1, 4, 4, 4))})


def test_deepbet_missing_package_message(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "deepbet", None)  # makes `import deepbet` raise ImportError
    transform = SkullStripd(method="deepbet")
    with pytest.raises(ImportError, match="pip install deepbet"):
        transform({"image": MetaTensor(torch.ones(1, 8, 8, 8), affine=torch.eye(4))})


def test_deepbet_on_synthetic_head() -> None:
    pytest.importorskip("deepbet")
    # 2 mm, permuted and flipped axes (PSL-like), ellipsoidal head: brain, CSF, bright skull.
    affine = np.array([[0, 0, -2.0, 80], [-2.0, 0, 0, 95], [0, 2.0, 0, -80], [0, 0, 0, 1]])
    shape = (96, 80, 80)
    world = _world(shape, affine)
    radius = np.sqrt((world[..., 0] / 65) ** 2 + (world[..., 1] / 85) ** 2 + (world[..., 2] / 65) ** 2)
    rng = np.random.default_rng(0)
    volume = np.zeros(shape, np.float32)
    volume[radius < 1] = 80 + 10 * rng.standard_normal(int((radius < 1).sum()))
    volume[radius < 0.6] = 110 + 5 * rng.standard_normal(int((radius < 0.6).sum()))
    volume[(radius > 1.08) & (radius < 1.2)] = 30
    volume[(radius > 1.2) & (radius < 1.3)] = 150
    image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.from_numpy(affine))
    out = SkullStripd(method="deepbet")({"image": image})
    assert out["skull_stripper"] == "deepbet"
    mask = out["brain_mask"][0].numpy() > 0.5
    brain = radius < 1
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.9, dice
    assert not (out["image"][0].numpy() == 150).any()
