"""Process setup: device choice, torch.distributed initialisation, spawning on one node.

Launch modes, all ending in the same :func:`init_distributed` call:
- one process (default): nothing to initialise;
- ``torchrun`` (one or many nodes): RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR are set;
- SLURM (``srun``): SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, with MASTER_ADDR / MASTER_PORT
  exported by the job script (the first node of the allocation);
- ``train.devices=N`` on one node: :func:`spawn` starts N processes with a free local port.
The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from twinview.devices import pick_device


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun or SLURM variables, or None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return None


def init_distributed(device_name: str, rank: int = 0, world_size: int = 1, local_rank: int = 0):
    """Initialise the default process group when ``world_size > 1``; return a ProcessInfo."""
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    if device.type == "cpu" and world_size > 1:
        # Share the cores between the processes of this node instead of oversubscribing.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return ProcessInfo(rank, world_size, local_rank, device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    fn(*args)


class SpawnedProcessError(ValueError):
    """A spawned training process stopped on an error a user can act on (its message kept)."""


_USER_ERROR = re.compile(
    r"^[\w.]*(ConfigError|CheckpointError|RunLocked|TrainingDiverged|ValueError|"
    r"FileNotFoundError|PermissionError|OSError): ",
    re.M,
)


def spawn(fn: Callable[..., Any], args: tuple, nprocs: int) -> None:
    """Run ``fn(*args)`` in ``nprocs`` local processes that see torchrun-style variables.

    A child that fails on a user's mistake (a refused resume, a missing dataset, ...) is
    re-raised here as a ``ValueError`` with its message, not as the child's whole traceback.
    """
    try:
        mp.spawn(_spawned, args=(nprocs, free_port(), fn, args), nprocs=nprocs, join=True)
    except mp.ProcessRaisedException as err:
        found = list(_USER_ERROR.finditer(str(err)))
        if not found:
            raise
        message = str(err)[found[-1].end() :].strip()
        raise SpawnedProcessError(f"process {err.error_index}: {message}") from None


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ddp_wrap(method: nn.Module, info: ProcessInfo) -> nn.Module:
    """DDP over the trainable parts only: momentum copies and the queue are ignored, so DDP never
    synchronises them (every process computes the same EMA and enqueues the same gathered keys)."""
    ignored = []
    for prefix in [*method.momentum_modules(), "queue"]:  # type: ignore[operator]
        sub = getattr(method, prefix, None)
        if sub is None:
            continue
        ignored += [f"{prefix}.{n}" for n, _ in sub.named_parameters()]
        ignored += [f"{prefix}.{n}" for n, _ in sub.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(method, ignored)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # BN buffers are not broadcast each forward: SyncBN keeps them equal, and the ignored
    # momentum/queue buffers are identical on every process by construction.
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return DDP(method, device_ids=device_ids, forward_sync_buffers=False)
    return DDP(method, device_ids=device_ids, broadcast_buffers=False)
