"""The training benchmark (``configs/benchmark.json``), run through the real ``python -m monai.bundle`` CLI at 16³."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE_ROOT
from tiny_data import write_tiny_dataset

from scripts import throughput

CONFIGS = "['configs/train.json','configs/benchmark.json']"
TINY = ["--bench_size", "16", "--bench_batch_size", "2", "--bench_warmup", "1", "--bench_steps", "1",
        "--bench_repeats", "2", "--weights", "none", "--device", "cpu", "--use_wandb", "False"]  # fmt: skip


def benchmark_cli(run_id: str, output_dir: Path, *extra: str) -> dict:
    """Run ``python -m monai.bundle run <run_id>`` from the bundle folder; returns the JSON it wrote."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    args = ["run", run_id, "--config_file", CONFIGS, *TINY, "--output_dir", str(output_dir), *extra]
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "vol/s" in result.stdout  # the table
    return json.loads((output_dir / "benchmark.json").read_text())


def check_phase(phase: dict) -> None:
    assert phase["status"] == "ok"
    assert phase["vol_per_s"] > 0 and phase["s_per_step"] > 0
    assert phase["vol_per_s"] == pytest.approx(2 / phase["s_per_step"])
    assert phase["peak_mem_mib"] >= 0 and phase["peak_mem_kind"] == "cpu_peak_rss_growth"


@pytest.mark.slow
def test_benchmark_without_dataset(tmp_path):
    # No dataset_dir exists: the synthetic benchmark must not read the datalist (train.json's items and loss do).
    results = benchmark_cli("benchmarking", tmp_path, "--dataset_dir", str(tmp_path / "no_data"), "--cpu_threads", "1")
    assert {"device", "torch", "cpu_threads", "arch", "trainable", "size", "batch_size", "bf16", "channels_last",
            "compile", "forward", "train", "dataloader"} <= set(results)  # fmt: skip
    assert (results["size"], results["batch_size"], results["device"]) == (16, 2, "cpu")
    assert (results["arch"], results["trainable"], results["cpu_threads"]) == ("r3d_18", "layer4+fc", 1)
    assert (results["bf16"], results["channels_last"], results["compile"]) == (False, False, False)
    check_phase(results["forward"])
    check_phase(results["train"])
    assert results["dataloader"] is None


@pytest.mark.slow
def test_benchmark_with_data_loader_bf16_channels_last(tmp_path):
    write_tiny_dataset(tmp_path / "data", {"training": 6, "validation": 2}, size=16)
    results = benchmark_cli(
        "benchmarking_data", tmp_path / "out", "--dataset_dir", str(tmp_path / "data"), "--bench_bf16", "True",
        "--bench_channels_last", "True", "--trainable", "fc", "--num_workers", "0", "--cache_rate", "1.0",
    )  # fmt: skip
    assert (results["bf16"], results["channels_last"], results["trainable"]) == (True, True, "fc")
    check_phase(results["forward"])
    check_phase(results["train"])
    loader = results["dataloader"]
    assert (loader["batches"], loader["volumes"], loader["image_shape"]) == (3, 6, [1, 16, 16, 16])
    assert (loader["num_workers"], loader["cache_rate"], loader["batch_size"]) == (0, 1.0, 2)
    assert loader["loader_epoch_s"] > 0 and loader["preloaded_epoch_s"] > 0
    assert 0.0 <= loader["loading_share"] < 1.0
    assert loader["loader_to_preloaded_ratio"] == pytest.approx(loader["loader_epoch_s"] / loader["preloaded_epoch_s"])


def test_out_of_memory_is_recorded_not_raised():
    def exhausted() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    phase = throughput._measure(exhausted, torch.device("cpu"), batch_size=32, warmup=0, steps=1, repeats=1)
    assert phase["status"] == "oom" and "out of memory" in phase["error"]
    assert "out of memory" in throughput._phase_row("train", phase)


def test_other_errors_are_not_taken_for_out_of_memory():
    def broken() -> None:
        raise RuntimeError("Given groups=1, weight of size [64, 1, 3, 7, 7], expected input to have 1 channels")

    with pytest.raises(RuntimeError, match="expected input"):
        throughput._measure(broken, torch.device("cpu"), batch_size=2, warmup=0, steps=1, repeats=1)


def test_time_steps_counts_warmup_and_timed_steps():
    calls = []
    timing = throughput.time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=2, steps=3, repeats=4)
    assert len(calls) == 2 + 3 * 4
    assert timing["s_per_step"] >= 0 and timing["cpu_s_per_step"] >= 0
    with pytest.raises(ValueError, match="steps >= 1"):
        throughput.time_steps(lambda: None, torch.device("cpu"), steps=0)


def test_set_cpu_threads_keeps_default_for_zero():
    before = torch.get_num_threads()
    try:
        assert throughput.set_cpu_threads(0) == before
        assert throughput.set_cpu_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_non_finite_loss_guard_skips_the_update_under_a_grad_scaler():
    # With amp (the CUDA default) MONAI's trainer steps through a GradScaler, which refuses an optimizer without
    # gradients: the guard must leave gradients that make the scaler skip the step instead of removing them.
    from types import SimpleNamespace

    from scripts.handlers import NonFiniteLossGuard

    network = torch.nn.Linear(4, 2)
    before = [p.detach().clone() for p in network.parameters()]
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.1, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    loss = torch.nn.functional.cross_entropy(network(torch.full((2, 4), float("nan"))), torch.tensor([0, 1]))
    scaler.scale(loss).backward()
    state = SimpleNamespace(output={"loss": loss}, batch={"image_id": ["I1", "I2"]}, epoch=1, iteration=1)
    NonFiniteLossGuard(max_consecutive=3)(SimpleNamespace(state=state, optimizer=optimizer, scaler=scaler))
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))
    assert scaler.get_scale() < 65536.0  # the scaler saw the non-finite gradients


@pytest.mark.slow
def test_gpu_sweep_script_runs_tiny_on_a_cpu_and_summarises_each_configuration(tmp_path):
    """benchmarks/gpu_training.sh (README "Training speed"), narrowed to two configurations at 16³ on the CPU."""
    env = {
        **os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "BENCH_TINY": "1", "BENCH_TRAINABLE": "all",
        "BENCH_VARIANTS": "0",
    }  # fmt: skip
    script = BUNDLE_ROOT.parent / "benchmarks" / "gpu_training.sh"
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = sorted(p.name for p in tmp_path.glob("r3d18_*.json"))
    assert written == ["r3d18_all_b2_bf16.json", "r3d18_all_b2_fp32.json"]
    for name in written:
        record = json.loads((tmp_path / name).read_text())
        assert record["size"] == 16 and record["batch_size"] == 2 and record["trainable"] == "all"
        check_phase(record["train"])
    assert json.loads((tmp_path / "r3d18_all_b2_bf16.json").read_text())["bf16"] is True
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[0].split()[0] == "configuration" and len(summary) == 3
