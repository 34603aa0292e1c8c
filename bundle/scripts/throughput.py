"""Training throughput of the bundle's own network, for ``configs/benchmark.json`` (the ``benchmarking`` workflows).

Volumes per second for inference (forward under ``torch.inference_mode``) and for a training step (forward, loss,
backward, optimizer step, as SupervisedTrainer does it) on synthetic volumes, with warm-up steps excluded and the
median over repeats; peak memory (CUDA max allocated on a GPU, growth of the process's peak resident set on a CPU);
options for bf16 autocast, the ``channels_last_3d`` memory format and ``torch.compile``. With a real training
data loader it also times one epoch through it against one epoch over as many preloaded batches: the share of an
epoch spent waiting for data.

A configuration that runs out of memory is recorded (``"status": "oom"``), so a sweep (benchmarks/) keeps going.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

MIB = 1024**2
# Data loading should cost at most this share of a training epoch (issue 13).
LOADING_SHARE_TARGET = 0.05
OPTIONS = ("bf16", "channels_last", "compile", "cudnn_benchmark", "activation_checkpointing")


def set_cpu_threads(threads: int) -> int:
    """Use ``threads`` intra-op CPU threads (0 or less: keep torch's default, one per core); returns the count.

    On a CPU shared with other work, OpenMP threads that outnumber the free cores spin at every barrier and a
    training step can become several times slower than with one thread (README, "Training speed").
    """
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of the code run inside ``with``: CUDA max allocated, or on a CPU the rise of the process's peak RSS
    above its RSS at entry (the kernel's high-water mark is reset at entry where Linux allows it; elsewhere the
    lifetime peak from getrusage is used, which can only overstate)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_growth"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:  # "5" resets VmHWM (Documentation/filesystems/proc.rst)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self._rss_kib = _proc_status_kib("VmRSS") or 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / MIB
            return
        peak_kib = _proc_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mib = max(0, peak_kib - self._rss_kib) / 1024


def time_steps(
    step: Callable[[], object], device: torch.device, warmup: int = 2, steps: int = 5, repeats: int = 3
) -> dict[str, float]:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` x ``steps`` times; median seconds per step.

    ``cpu_s_per_step`` is this process's CPU time per step: on a loaded machine it moves less than wall time, and
    far above wall time (x threads) it shows threads spinning rather than working.
    """
    if steps < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1, repeats >= 1 and warmup >= 0, got {steps}, {repeats}, {warmup}.")
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        _sync(device)
        wall.append((time.perf_counter() - w0) / steps)
        cpu.append((time.process_time() - c0) / steps)
    return {"s_per_step": statistics.median(wall), "cpu_s_per_step": statistics.median(cpu), "warmup_s": warmup_s}


def synthetic_batch(
    batch_size: int, size: int, num_classes: int, device: torch.device, channels_last: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(B, 1, S, S, S)`` volume batch and labels, already on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 1, size, size, size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last_3d)
    return images, labels.to(device)


def make_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_function: nn.Module, device: torch.device, bf16: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One SupervisedTrainer iteration: zero grads (to None), forward and loss under autocast, backward, step.

    bf16 needs no GradScaler (its exponent range is float32's), as MONAI's trainer also does without one for bf16.
    """

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            loss = loss_function(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return train_step


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _measure(
    phase: Callable[[], object], device: torch.device, batch_size: int, warmup: int, steps: int, repeats: int
) -> dict[str, Any]:
    memory = PeakMemory(device)
    try:
        with memory:
            timing = time_steps(phase, device, warmup=warmup, steps=steps, repeats=repeats)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not _is_oom(err):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"status": "oom", "error": str(err).splitlines()[0][:300]}
    return {
        "status": "ok",
        "vol_per_s": batch_size / timing["s_per_step"],
        **timing,
        "peak_mem_mib": memory.mib,
        "peak_mem_kind": memory.kind,
    }


def benchmark_model(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: nn.Module,
    device: torch.device | str,
    size: int = 128,
    batch_size: int = 2,
    num_classes: int = 2,
    warmup: int = 2,
    steps: int = 5,
    repeats: int = 3,
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
) -> dict[str, Any]:
    """Forward (inference) and training-step throughput of ``network`` on synthetic ``size``³ volumes."""
    device = torch.device(device)
    if channels_last:
        network.to(memory_format=torch.channels_last_3d)
    model = torch.compile(network) if compile else network
    images, labels = synthetic_batch(batch_size, size, num_classes, device, channels_last)
    train_step = make_train_step(model, optimizer, loss_function, device, bf16)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, bf16):
            return model(images)

    results: dict[str, Any] = {}
    network.eval()
    results["forward"] = _measure(forward, device, batch_size, warmup, steps, repeats)
    network.train()
    results["train"] = _measure(lambda: train_step(images, labels), device, batch_size, warmup, steps, repeats)
    return results


def _image_tensor(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> torch.Tensor:
    images = batch["image"]
    images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last_3d) if channels_last else images


def dataloader_share(
    loader: Iterable[Mapping[str, Any]],
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: nn.Module,
    device: torch.device | str,
    bf16: bool = False,
    channels_last: bool = False,
    warmup: int = 2,
) -> dict[str, Any]:
    """One training epoch through ``loader`` against one epoch over as many preloaded batches of the same shape.

    ``loading_share`` = 1 - preloaded / loader epoch time: the part of an epoch the network waits for data (reading,
    transforms, collation, host-to-device copy). Both epochs run the same training step on plain tensors, so the
    difference is the data path alone. The model is warmed up on the data's shape first.
    """
    device = torch.device(device)
    train_step = make_train_step(network, optimizer, loss_function, device, bf16)
    network.train()
    shapes: list[tuple[int, ...]] = []
    warmed = False
    _sync(device)
    start = time.perf_counter()
    for batch in loader:
        images = _image_tensor(batch, device, channels_last)
        labels = torch.as_tensor(batch["label"]).long().to(device, non_blocking=True)
        if not warmed:  # untimed: the first step pays for allocator and kernel set-up, not for data
            _sync(device)
            paused = time.perf_counter()
            for _ in range(warmup):
                train_step(images, labels)
            _sync(device)
            start += time.perf_counter() - paused
            warmed = True
        train_step(images, labels)
        shapes.append(tuple(images.shape))
    _sync(device)
    loader_s = time.perf_counter() - start
    if not shapes:
        raise ValueError("The training data loader gave no batch.")

    # As many batches of the same shapes, made and moved to the device before the clock starts. A handful of
    # distinct tensors is enough: the network's time does not depend on the values.
    generator = torch.Generator().manual_seed(0)
    distinct = {}
    for shape in set(shapes):
        images = torch.randn(shape, generator=generator).to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        distinct[shape] = (images, torch.randint(0, 2, (shape[0],), generator=generator).to(device))
    preloaded = [distinct[shape] for shape in shapes]
    _sync(device)
    start = time.perf_counter()
    for images, labels in preloaded:
        train_step(images, labels)
    _sync(device)
    preloaded_s = time.perf_counter() - start
    return {
        "batches": len(shapes),
        "volumes": sum(s[0] for s in shapes),
        "image_shape": list(shapes[0][1:]),
        "loader_epoch_s": loader_s,
        "preloaded_epoch_s": preloaded_s,
        "loader_to_preloaded_ratio": loader_s / preloaded_s,
        "loading_share": max(0.0, 1.0 - preloaded_s / loader_s),
        "loading_share_target": LOADING_SHARE_TARGET,
    }


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def run_benchmark(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: nn.Module,
    device: torch.device | str,
    output_file: str | Path,
    size: int = 128,
    batch_size: int = 2,
    warmup: int = 2,
    steps: int = 5,
    repeats: int = 3,
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    cudnn_benchmark: bool = False,
    num_classes: int = 2,
    arch: str = "",
    trainable: str = "",
    activation_checkpointing: bool = False,
    loader: Iterable[Mapping[str, Any]] | None = None,
    loader_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole benchmark: model throughput, and the data-loader share when ``loader`` is given.

    Prints a table and writes the results as JSON to ``output_file``; returns them. ``cudnn_benchmark`` lets cuDNN
    pick the fastest convolution algorithms; training runs without it (MONAI's set_determinism turns it off and makes
    cuDNN deterministic), so it only shows what determinism costs.
    """
    device = torch.device(device)
    if cudnn_benchmark:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    # The model's settings, recorded as given and handed on as they are recorded.
    model_settings = {
        "size": int(size), "batch_size": int(batch_size), "warmup": int(warmup), "steps": int(steps),
        "repeats": int(repeats), "bf16": bool(bf16), "channels_last": bool(channels_last), "compile": bool(compile),
    }  # fmt: skip
    results: dict[str, Any] = {
        "device": device.type,
        "device_name": _describe_device(device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "arch": arch,
        "trainable": trainable,
        **model_settings,
        "cudnn_benchmark": bool(cudnn_benchmark),
        # Set on the network by scripts.network.configure (benchmark.json's initialize); recorded here.
        "activation_checkpointing": bool(activation_checkpointing),
    }
    results.update(
        benchmark_model(network, optimizer, loss_function, device, num_classes=num_classes, **model_settings)
    )
    results["dataloader"] = None
    if loader is not None:
        if channels_last:
            network.to(memory_format=torch.channels_last_3d)
        share = dataloader_share(loader, network, optimizer, loss_function, device, bf16, channels_last, warmup)
        results["dataloader"] = {**share, **dict(loader_settings or {})}
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results), flush=True)
    logger.info(f"Benchmark results written to {output_file}")
    return results


def _phase_row(name: str, phase: Mapping[str, Any]) -> str:
    if phase.get("status") != "ok":
        return f"{name:<10} {'out of memory':>34}"
    memory = phase["peak_mem_mib"]
    return (
        f"{name:<10} {phase['vol_per_s']:>9.2f} {1000 * phase['s_per_step']:>11.1f} "
        f"{1000 * phase['cpu_s_per_step']:>11.1f} {memory:>12.0f}"
    )


def format_table(results: Mapping[str, Any]) -> str:
    """The results as a plain-text table."""
    options = [name for name in OPTIONS if results.get(name)] or ["fp32"]
    lines = [
        f"{results['arch']} trainable={results['trainable']} on {results['device']} ({results['device_name']}), "
        f"{results['size']}^3, batch {results['batch_size']}, {'+'.join(options)}; median of {results['repeats']} x "
        f"{results['steps']} steps after {results['warmup']} warm-up",
        f"{'phase':<10} {'vol/s':>9} {'ms/step':>11} {'cpu ms/step':>11} {'peak MiB':>12}",
        _phase_row("forward", results["forward"]),
        _phase_row("train", results["train"]),
    ]
    memory_kind = results["train"].get("peak_mem_kind") or results["forward"].get("peak_mem_kind")
    if memory_kind:
        lines.append(f"(peak memory: {memory_kind.replace('_', ' ')})")
    loader = results.get("dataloader")
    if loader:
        verdict = "ok" if loader["loading_share"] <= loader["loading_share_target"] else "above target"
        lines.append(
            f"data loader: epoch of {loader['batches']} batches {loader['loader_epoch_s']:.2f} s vs "
            f"{loader['preloaded_epoch_s']:.2f} s preloaded (ratio {loader['loader_to_preloaded_ratio']:.3f}); "
            f"data loading {100 * loader['loading_share']:.1f}% of the epoch "
            f"({verdict}: target <= {100 * loader['loading_share_target']:.0f}%)"
        )
    return "\n".join(lines)
