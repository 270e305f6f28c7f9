"""What a resumed run may change: the saved config against the new one, key by key.

A run resumes exactly only when everything that shapes the computation is unchanged. The keys a
user may change on resume are listed in :data:`RESUMABLE` (how long to train, how often to log,
evaluate and checkpoint, how many decoding workers, where and on how many devices it runs);
any other difference is refused with every changed key named, its old and new value, and the
two ways out (the saved values, or a new run).

``train.budget`` is resumable: the same budget continues the planned step count saved in the
checkpoint, a different one re-plans the rest of the run from the saved measurement, for the new
budget less the time already spent (the budget is the length of the whole run, as
``train.epochs`` is); see :mod:`twinview.train.budget`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twinview.config import ConfigError, PretrainConfig

RESUMABLE: tuple[str, ...] = (
    "train.epochs",
    "train.budget",  # same: the saved plan; another: re-planned (train/budget.py)
    "train.max_steps",
    "train.checkpoint_every_steps",
    "train.devices",  # the global batch (train.batch_size) stays; only at an epoch boundary
    "train.device",
    "train.compile",
    "data.num_workers",
    "monitor.*",
    "output.*",
)
"""Keys that may differ between a run's saved config and the command resuming it (``section.*``:
every key of the section). Everything else is compared."""

AT_EPOCH_BOUNDARY: tuple[str, ...] = ("train.devices",)
"""Resumable keys that change how an epoch is sharded: they may change only when the checkpoint
is at the end of an epoch (mid-epoch, the position is counted in per-process batches)."""


def flat(cfg: PretrainConfig) -> dict[str, Any]:
    """``{"section.key": value}`` for every leaf of the config; an options dict
    (``method.options``, ``data.options``, ...) gives one ``section.options.name`` per entry, so
    a changed option is named like a key the user can type."""
    out: dict[str, Any] = {}
    for section, values in dataclasses.asdict(cfg).items():
        for key, value in values.items():
            if isinstance(value, dict):
                out.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = value
    return out


def _resumable(key: str) -> bool:
    return key in RESUMABLE or f"{key.split('.')[0]}.*" in RESUMABLE


def changed_keys(saved: PretrainConfig, new: PretrainConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every key that differs, in schema order."""
    old, now = flat(saved), flat(new)
    keys = [*now, *(k for k in old if k not in now)]  # an option the new command dropped too
    return [(k, old.get(k), now.get(k)) for k in keys if old.get(k) != now.get(k)]


def _show(value: Any) -> str:
    return "null" if value is None else str(value).replace(" ", "")


def check_resume(
    saved: PretrainConfig, new: PretrainConfig, *, run_dir: str, mid_epoch: bool
) -> list[str]:
    """Refuse a resume that would mix two runs; returns the resumable keys that changed.

    Raises :class:`ConfigError` naming each changed key (old -> new) that is not resumable, and
    how to go on: the saved values (``key=old ...``), or a new run (``resume=false`` or another
    ``name=``).
    """
    changes = changed_keys(saved, new)
    refused = [c for c in changes if not _resumable(c[0])]
    if mid_epoch:
        refused += [c for c in changes if c[0] in AT_EPOCH_BOUNDARY]
    if refused:
        lines = [f"  {key}: {_show(old)} -> {_show(now)}" for key, old, now in refused]
        keep = " ".join(f"{key}={_show(old)}" for key, old, _ in refused)
        boundary = [c[0] for c in refused if c[0] in AT_EPOCH_BOUNDARY]
        note = (
            f"\n({', '.join(boundary)} may change only when resuming at the end of an epoch)"
            if boundary
            else ""
        )
        raise ConfigError(
            f"{run_dir} was trained with other settings; resuming would mix two runs:\n"
            + "\n".join(lines)
            + note
            + f"\nEither resume with the saved values ({keep}), or start a new run with "
            "resume=false or another name=... (keys that may change on resume: "
            + ", ".join(RESUMABLE)
            + ")"
        )
    return [key for key, _, _ in changes]
