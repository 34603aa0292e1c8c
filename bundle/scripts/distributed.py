"""Training and evaluating on several processes (``torchrun``): one process per GPU, or CPU processes with gloo.

``configs/multi_gpu_train.json`` and ``configs/multi_gpu_evaluate.json`` call these helpers. The collectives
(:func:`any_process`, :func:`broadcast_from_rank0`, :func:`gather_ints`, :func:`gather_objects`) act as for one
process when torch.distributed is not initialised, so the training handlers use them unconditionally and a
single-process run behaves exactly as before.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process;
:func:`init_process_group` reads them (the ``env://`` method).

What only one process may do is switched by one entry of ``configs/train.json``, ``is_main_process`` (true there,
``rank == 0`` in multi_gpu_train.json): the epoch log and W&B handlers are ``_disabled_`` without it, and the
training steps copy the plan and attach the per-epoch and best-model checkpoint savers only with it. Everything
else runs on every process: the trainer and validator, the non-finite guard, early stopping and resuming, whose
agreement the handlers ensure with the collectives here. The checkpoints hold the network without its
DistributedDataParallel wrapper (ignite's Checkpoint saves and loads ``module``), so single-process evaluation and
inference read them unchanged.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine

from .data import BundleInputError
from .evaluation import PredictionWriter

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when torch.distributed is initialised (under torchrun, after :func:`init_process_group`)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 when torch.distributed is not initialised."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, set by torchrun); 0 without it."""
    return int(os.environ.get("LOCAL_RANK", 0))


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, otherwise the CPU (the processes then talk through gloo)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise BundleInputError(
            f"process with LOCAL_RANK {index} has no GPU of its own: this node has {count} visible GPU(s). Start at "
            f"most {count} processes per node (torchrun --nproc_per_node {count})."
        )
    return torch.device("cuda", index)


def backend_for(device: torch.device) -> str:
    """NCCL for GPUs, gloo for CPU processes."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def ddp_device_ids(device: torch.device) -> list[torch.device] | None:
    """``device_ids`` for DistributedDataParallel: the process's GPU, or None for a CPU module."""
    device = torch.device(device)
    return [device] if device.type == "cuda" else None


def init_process_group(device: torch.device, timeout_minutes: float = 30) -> None:
    """Join the process group that torchrun set up (NCCL on GPUs, gloo on CPUs); select the process's GPU first."""
    device = torch.device(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise BundleInputError(
            "the multi-GPU configs must be started by torchrun (RANK and WORLD_SIZE are not set), e.g. torchrun "
            "--nproc_per_node <GPUs> -m monai.bundle run training --config_file "
            "\"['configs/train.json','configs/multi_gpu_train.json']\" ..."
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend=backend_for(device), timeout=datetime.timedelta(minutes=timeout_minutes))
    logger.info(f"Process {rank()} of {world_size()} ({dist.get_backend()}) runs on {device}.")


def destroy_process_group() -> None:
    """Wait for every process, then leave the process group (a no-op when it is not initialised)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def quiet_other_ranks(*targets: Engine | str) -> None:
    """Keep the progress logs to rank 0: on other ranks the engines' loggers and the loggers named in ``targets``
    (e.g. ``"monai.handlers.StatsHandler"``, the logger of MONAI's StatsHandler) show warnings and errors only."""
    if rank() == 0:
        return
    for target in targets:
        log = logging.getLogger(target) if isinstance(target, str) else target.logger
        log.setLevel(logging.WARNING)


def log_stop(trainer: Engine) -> None:
    """One line per process saying where its training stopped (the processes must agree)."""
    state = trainer.state
    logger.info(
        f"Rank {rank()} of {world_size()} stopped training at epoch {state.epoch} (iteration {state.iteration})."
    )


# ---------------------------------------------------------------------------------------------------- collectives


def _collective_device() -> torch.device:
    """Where collective tensors live: NCCL needs the process's GPU, gloo the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is True on at least one of them (the flag itself without torchrun)."""
    if not is_distributed() or world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_from_rank0(values: Sequence[float]) -> list[float]:
    """Rank 0's ``values`` on every process, so that all of them take the same decision from the same numbers."""
    if not is_distributed() or world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


def gather_ints(value: int) -> list[int]:
    """Every process's ``value``, indexed by rank (``[value]`` without torchrun)."""
    if not is_distributed() or world_size() == 1:
        return [int(value)]
    mine = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    gathered = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    return [int(t.item()) for t in gathered]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's (picklable) ``obj``, indexed by rank (``[obj]`` without torchrun)."""
    if not is_distributed() or world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def round_robin(shards: Sequence[Sequence[Any]]) -> list[Any]:
    """Undo a non-shuffling DistributedSampler with ``even_divisible=False``: rank r held items r, r+N, r+2N...

    ``shards[r]`` is rank r's list in its own order; the result is the dataset's order.
    """
    merged = []
    for index in range(max((len(s) for s in shards), default=0)):
        merged.extend(shard[index] for shard in shards if index < len(shard))
    return merged


class DistributedPredictionWriter(PredictionWriter):
    """:class:`~scripts.evaluation.PredictionWriter` for several processes: the test scans are split between them
    (a DistributedSampler with ``shuffle=False`` and ``even_divisible=False``), so every process sends its rows to
    rank 0, which writes ``predictions.csv`` and ``metrics.json`` over all scans, in the datalist's order.
    Without torchrun it is the plain PredictionWriter.
    """

    def _write(self, engine: Engine) -> None:
        if not is_distributed():
            super()._write(engine)
            return
        shards = gather_objects(self.rows)
        if rank() != 0:
            return
        self.rows = round_robin(shards)
        super()._write(engine)


__all__ = [
    "DistributedPredictionWriter",
    "any_process",
    "backend_for",
    "broadcast_from_rank0",
    "ddp_device_ids",
    "destroy_process_group",
    "gather_ints",
    "gather_objects",
    "init_process_group",
    "is_distributed",
    "local_device",
    "local_rank",
    "log_stop",
    "quiet_other_ranks",
    "rank",
    "round_robin",
    "world_size",
]
