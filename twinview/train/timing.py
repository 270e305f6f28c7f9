"""The wall clock of a run: seconds in training steps, in the epoch-end monitors, in all.

``train_seconds`` (loader, forward, backward, optimizer; not the epoch-end monitors, not
checkpoint writes) and ``run_seconds`` are summed across resumes (they are in the checkpoint);
both, with ``eval_seconds`` (the last epoch end's monitors), go into every kind="epoch" record
of metrics.jsonl, and ``train.budget`` (:mod:`twinview.train.budget`) plans with them.

The clock starts with the process when run from the command line (``twinview pretrain``: the
import of torch included; with ``train.devices=N``, the command's process that starts the N
trainers; Linux, from /proc), else when the run is set up
(``twinview.pretrain()`` in a notebook: data loading included).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_now: Callable[[], float] = time.perf_counter
"""The clock of every timing of a run and of its budget (tests replace it)."""


def _process_age(pid: int | str = "self") -> float | None:
    """Seconds since process ``pid`` started (Linux), None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _session_start() -> float:
    """When this session's clock started: for ``twinview pretrain``, the process start (with
    ``train.devices=N``, the start of the command's process, the parent of the N trainers)."""
    main = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    cli = main is not None and (
        main.name == "twinview" or main.resolve() == Path(__file__).parents[1] / "cli.py"
    )
    if not cli:
        return _now()
    spawned = multiprocessing.parent_process() is not None
    return _now() - (_process_age(os.getppid() if spawned else "self") or 0.0)


class RunTiming:
    """Wall seconds of a run: in training steps (``train_seconds``: loader, forward, backward,
    optimizer; not monitors, not checkpoint writes; summed across resumes), in the last epoch
    end's monitors (``eval_seconds``), and in all (``run_seconds``, across resumes)."""

    def __init__(self) -> None:
        self.started = _session_start()
        self.train_before = 0.0  # of earlier sessions, from the checkpoint
        self.run_before = 0.0
        self.session_train = 0.0
        self.eval_seconds = 0.0
        self.epoch_ends: list[tuple[float, bool]] = []  # this session: (seconds, ran kNN)
        self.checkpoints: list[float] = []  # this session's checkpoint writes
        self._since: float | None = None

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        self._since = _now()
        try:
            yield
        finally:
            self.session_train += _now() - self._since
            self._since = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave this out of ``train_seconds`` (a checkpoint write, the budget's measurement)."""
        if self._since is None:
            yield
            return
        self.session_train += _now() - self._since
        self._since = None
        try:
            yield
        finally:
            self._since = _now()

    @contextlib.contextmanager
    def checkpointing(self) -> Iterator[None]:
        """A checkpoint write: left out of ``train_seconds``, its seconds kept."""
        start = _now()
        with self.paused():
            yield
        self.checkpoints.append(_now() - start)

    @property
    def session_train_seconds(self) -> float:
        return self.session_train + (_now() - self._since if self._since is not None else 0.0)

    @property
    def train_seconds(self) -> float:
        return self.train_before + self.session_train_seconds

    @property
    def run_seconds(self) -> float:
        return self.run_before + _now() - self.started

    def timed_eval(self, monitors: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
        """``monitors(*args, **kwargs)``, its seconds kept as ``eval_seconds``."""
        start = _now()
        values = monitors(*args, **kwargs)
        self.eval_seconds = _now() - start
        self.epoch_ends.append((self.eval_seconds, any(k.startswith("val_") for k in values)))
        return values

    def epoch_record(self) -> dict[str, float]:
        """The timing fields of a kind="epoch" record of metrics.jsonl."""
        return {
            "train_seconds": round(self.train_seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3),
        }

    def state_dict(self) -> dict[str, float]:
        return {"train_seconds": self.train_seconds, "run_seconds": self.run_seconds}

    def load_state_dict(self, state: dict[str, float] | None) -> None:
        """Earlier sessions' seconds (a checkpoint without them: 0)."""
        self.train_before = float((state or {}).get("train_seconds", 0.0))
        self.run_before = float((state or {}).get("run_seconds", 0.0))
