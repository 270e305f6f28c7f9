"""``pretrain``: start a run on one process or many (torchrun, SLURM, ``devices=N``).

Rank 0 opens the run directory (chooses, creates and locks it; see :mod:`twinview.run.directory`)
and tells the other processes its path; with ``devices=N`` on one node, this process holds the
lock while its N children train. The loop itself is :class:`twinview.train.trainer._Run`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from twinview.config import PretrainConfig, config_from_args, run_name
from twinview.config.checks import check_batch_split
from twinview.run.directory import RunDirectory
from twinview.train.setup import ProcessInfo, cleanup, init_distributed, launch_env, spawn
from twinview.train.trainer import _Run


def pretrain(config: str | Path | PretrainConfig | None = None, **overrides: Any) -> dict:
    """Pretrain a backbone; ``pretrain(method="byol", data="./images", epochs=100)`` does what
    ``twinview pretrain method=byol data=./images epochs=100`` does. Returns the run summary."""
    cfg = config_from_args(config, overrides)
    if launch_env() is None and cfg.train.devices > 1:
        started = time.time()
        with _open_run_dir(cfg) as directory:  # this process holds the lock for its children
            spawn(_train, (cfg, str(directory.path)), nprocs=cfg.train.devices)
        summary = directory.path / "summary.json"
        if summary.is_file() and summary.stat().st_mtime >= started:
            return json.loads(summary.read_text())
        return {"status": "interrupted", "run_dir": str(directory.path)}
    return _train(cfg, None)


def _open_run_dir(cfg: PretrainConfig) -> RunDirectory:
    return RunDirectory.open(cfg.output.dir, run_name(cfg), resume=cfg.output.resume)


def _shared_run_dir(info: ProcessInfo, cfg: PretrainConfig) -> RunDirectory | None:
    """Rank 0 opens (chooses, creates and locks) the run directory; the others learn its path,
    or rank 0's error, so that every process stops together on a refused start."""
    opened, error = None, None
    if info.is_main:
        try:
            opened = _open_run_dir(cfg)
        except Exception as err:
            if info.world_size == 1:
                raise
            error = err
    holder = [str(opened.path) if opened else None, repr(error) if error else None]
    if info.world_size > 1:
        dist.broadcast_object_list(holder, src=0)
    if error is not None:
        raise error
    if holder[1] is not None:
        raise RuntimeError(f"rank 0 could not open the run directory: {holder[1]}")
    return opened or RunDirectory(Path(holder[0]), None)  # type: ignore[arg-type]


def _train(cfg: PretrainConfig, run_dir_arg: str | None) -> dict:
    env = launch_env() or (0, 1, 0)
    info = init_distributed(cfg.train.device, *env)
    directory = None
    try:
        check_batch_split(cfg, info.world_size)  # torchrun / srun may start != train.devices
        if run_dir_arg is not None:  # spawned: the parent process holds the lock
            directory = RunDirectory(Path(run_dir_arg), None)
        else:
            directory = _shared_run_dir(info, cfg)
        return _Run(cfg, info, directory).fit()
    finally:
        if directory is not None:
            directory.close()
        cleanup()
