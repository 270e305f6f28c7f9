"""What a pretraining checkpoint holds, and putting it back for an exact resume.

A checkpoint is a plain dict (read with ``weights_only=True``): the method's weights with its
momentum copies and queue, the optimizer and gradient-scaler buffers, the step and the position
in the epoch, every process's RNG states, the online probe, the monitors' buffers, the run's
seconds so far (training and in all) and, with ``train.budget``, its planned step count and the
measurement behind it (:mod:`twinview.train.budget`), the backbone spec, and the run's config as
YAML, which a resume compares with the new command
(:func:`twinview.run.resume.check_resume`) before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from twinview.config import ConfigError, PretrainConfig, config_from_yaml, to_yaml
from twinview.run.reader import CONFIG
from twinview.run.resume import check_resume
from twinview.train.rng import capture_rng_state, restore_rng_state


def capture(run: Any, loader_state: dict) -> dict:
    """The run's state; collective (every process sends its RNG state to every other)."""
    rng = capture_rng_state()
    states: list[Any] = [rng]
    loaders: list[Any] = [loader_state]  # a shard stream's progress differs per process
    if run.info.world_size > 1:
        states = [None] * run.info.world_size
        dist.all_gather_object(states, rng)
        loaders = [None] * run.info.world_size
        dist.all_gather_object(loaders, loader_state)
    return {
        "method": run.method.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "step": run.step,
        "epoch": run.epoch,
        "loader": loader_state,
        "loader_per_process": loaders,
        "rng": states,
        "probe": run.probe.state_dict() if run.probe is not None else None,
        "monitors": run.monitors.state_dict(),  # the epoch's health buffers (mid-epoch resume)
        "timing": run.timing.state_dict(),  # train_seconds, run_seconds: summed across resumes
        "budget": run.budget.state_dict() if run.budget is not None else None,
        "backbone_spec": run.spec,
        "method_name": run.cfg.method.name,
        "config": to_yaml(run.cfg),
        "world_size": run.info.world_size,
    }


def saved_config(state: dict, run_dir: Path) -> PretrainConfig | None:
    """The config a checkpoint was trained with: its own copy, else the run's config.yaml."""
    if isinstance(state.get("config"), str):
        return config_from_yaml(state["config"], f"the checkpoint of {run_dir}")
    path = run_dir / CONFIG
    return config_from_yaml(path.read_text(), str(path)) if path.is_file() else None


def check_compatible(state: dict, cfg: PretrainConfig, run_dir: Path) -> list[str]:
    """Refuse a resume with settings that would mix two runs; returns the changed keys that may
    change (see :data:`twinview.run.resume.RESUMABLE`)."""
    saved = saved_config(state, run_dir)
    mid_epoch = int(state.get("loader", {}).get("position", 0)) > 0
    if saved is not None:
        return check_resume(saved, cfg, run_dir=str(run_dir), mid_epoch=mid_epoch)
    was = state.get("method_name", cfg.method.name)  # a checkpoint without config: method only
    if was != cfg.method.name:
        raise ConfigError(
            f"{run_dir} was trained with method.name={was}, this command asks for "
            f"method.name={cfg.method.name}; resume with method={was}, or start a new run with "
            "resume=false or another name=..."
        )
    return []


def restore(run: Any, state: dict) -> None:
    """Put ``state`` back into the run (weights, optimizer, step, loader position, RNG, ...).

    The optimizer's buffers come from the checkpoint; its hyperparameters (lr, weight decay)
    from this command's config. With ``train.budget``, the step count is the saved plan's
    (:meth:`twinview.train.budget.RunBudget.resume`).
    """
    run.method.load_state_dict(state["method"])
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in run.optimizer.param_groups]
    run.optimizer.load_state_dict(state["optimizer"])
    for group, hyper in zip(run.optimizer.param_groups, fresh):
        group.update(hyper)
    run.scaler.load_state_dict(state["scaler"])
    if run.probe is not None and state.get("probe") is not None:
        run.probe.load_state_dict(state["probe"])
    if state.get("monitors") is not None:
        run.monitors.load_state_dict(state["monitors"])
    run.step, run.epoch = int(state["step"]), int(state["epoch"])
    loaders = state.get("loader_per_process") or [state["loader"]]
    same_world = len(loaders) == run.info.world_size
    run.loader.load_state_dict(loaders[run.info.rank] if same_world else state["loader"])
    rng = state["rng"]
    restore_rng_state(rng[run.info.rank] if run.info.rank < len(rng) else rng[0])
    run.timing.load_state_dict(state.get("timing"))
    if run.budget is not None:  # the saved plan, a re-plan for a new budget, or measure again
        run.budget.resume(run, state.get("budget"))
