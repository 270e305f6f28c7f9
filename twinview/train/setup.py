"""Process setup: device choice, torch.distributed initialisation, spawning on one node.

Launch modes, all ending in the same :func:`init_distributed` call:
- one process (default): nothing to initialise;
- ``torchrun`` (one or many nodes): RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR are set;
- SLURM (one ``srun`` task per process): SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, with
  MASTER_ADDR (and optionally MASTER_PORT) exported by the job script: the first node of the
  allocation. torchrun's variables win, so ``srun ... torchrun ...`` works too;
- ``train.devices=N`` on one node: :func:`spawn` starts N processes with a free local port.
The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
from collections.abc import Callable, Mapping
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


class LaunchError(ValueError):
    """The launcher's environment is incomplete (a SLURM job without MASTER_ADDR, ...)."""


def launch_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun or SLURM variables, or None (one process)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    return slurm_env(env)


def slurm_env(env: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) of an ``srun`` task of a step with several tasks, or None.

    Only a task that srun started counts (SLURM_STEP_ID is set): a batch script itself also
    sees SLURM_PROCID=0 and the job's SLURM_NTASKS, and trains one process (or ``devices=N``).
    The step's own task count (SLURM_STEP_NUM_TASKS) is preferred to SLURM_NTASKS, which
    ``srun --preserve-env`` leaves at the job's count. Raises :class:`LaunchError` naming
    MASTER_ADDR when the job script did not export it (the process group needs it).
    """
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return None
    world_size = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if world_size <= 1:
        return None
    rank = int(env["SLURM_PROCID"])
    if not env.get("MASTER_ADDR"):
        raise LaunchError(
            f"SLURM task {rank} of {world_size} (SLURM_PROCID / SLURM_NTASKS), but MASTER_ADDR "
            "is not set. Export it in the job script before srun, e.g. "
            'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) '
            "(and optionally MASTER_PORT, default 29500)"
        )
    return rank, world_size, int(env.get("SLURM_LOCALID", 0))


def local_world_size(env: Mapping[str, str], world_size: int) -> int:
    """Processes on this node: LOCAL_WORLD_SIZE (torchrun), else this node's entry of the srun
    step's SLURM_STEP_TASKS_PER_NODE (``"4(x2),3"``), else SLURM_NTASKS_PER_NODE, else
    ``world_size``. The CPU threads of a node are shared among its processes."""
    if "LOCAL_WORLD_SIZE" in env:
        return int(env["LOCAL_WORLD_SIZE"])
    counts = _expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", ""))
    node = int(env.get("SLURM_NODEID", 0))
    if node < len(counts):
        return counts[node]
    if "SLURM_NTASKS_PER_NODE" in env:
        return int(env["SLURM_NTASKS_PER_NODE"])
    return world_size


def _expand_tasks_per_node(value: str) -> list[int]:
    """SLURM's compressed task counts per node: ``"4(x2),3"`` -> ``[4, 4, 3]``; ``[]`` for an
    empty or unreadable value."""
    counts: list[int] = []
    for part in value.split(",") if value else []:
        found = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if found is None:
            return []
        counts += [int(found[1])] * int(found[2] or 1)
    return counts


def init_distributed(device_name: str, rank: int = 0, world_size: int = 1, local_rank: int = 0):
    """Initialise the default process group when ``world_size > 1``; return a ProcessInfo."""
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    if device.type == "cpu" and world_size > 1:
        # Share the cores between the processes of this node instead of oversubscribing.
        local = local_world_size(os.environ, world_size)
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
