"""A time budget instead of epochs: ``train.budget=10min`` plans the run's optimizer steps so that
the whole run (training, the epoch-end monitors, the final evaluation, backbone.pt and the
report) ends within it.

The plan. The run trains :data:`MEASURE_STEPS` steps (fewer when they take more than
:data:`MEASURE_FRACTION` of the budget), takes the time per step from the training seconds of
the last four fifths of them (the first steps pay one-off costs: allocation, cuDNN autotuning,
``torch.compile``), measures what evaluation will cost (:mod:`twinview.train.eval_cost`), and
fixes the step count with :func:`plan_steps`: the most steps whose training, epoch ends,
checkpoints and final evaluation fit in :data:`TARGET` (94%) of the budget, less the seconds
already spent (start-up, data loading, the measuring steps). ``train.max_steps`` still caps it.
The main process prints one line, e.g. ``twinview: budget 10min: 1,640 img/s over the first 20
steps -> 2,100 steps (10.0 epochs), ~55 s for evaluation and the report``, and the progress bar
takes the planned total.

The first steps' learning rate cannot depend on the measurement. Until the count is fixed, the
run's ``total_steps`` is :data:`PROVISIONAL_STEPS` (or ``train.max_steps`` when set): the lr
follows the warm-up (``schedule.warmup_epochs`` x steps per epoch, not clamped to a length not
yet known), then holds the peak (a cosine over 10^12 steps), and momentum schedules see
progress ~0. Nothing of that depends on a timing, so a run killed before the count was fixed
repeats those steps exactly when resumed, and measures again. From the planning step on, the
cosine runs to the planned total (the warm-up clamped to it, as with ``train.max_steps``). With a
warm-up longer than the measuring steps (the default run: 52 steps) nothing changes at the
switch; without one, the lr steps down from the peak to the cosine's value there, by a factor
``(1 + cos(pi * 20 / total)) / 2`` (0.999 at 1,000 planned steps).

Resume. The checkpoint keeps the plan (:meth:`RunBudget.state_dict`): rerunning the same command
continues the saved step count without measuring again, so the lr schedule, and the weights, are
those of an uninterrupted run. A resume with a *different* ``train.budget`` (it is resumable, like
``train.epochs``) re-plans from the saved measurement, without re-measuring, for the new budget
less the time the run has already spent (``run_seconds``, saved in every checkpoint): the budget
is the length of the whole run across resumes, as ``train.epochs`` is. A run killed before its
count was fixed, or one started without a budget, measures in the resumed session.

The clock is the run's (:mod:`twinview.train.timing`): from the process start for
``twinview pretrain``, else from the run's set-up.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist

from twinview.config.checks import parse_budget
from twinview.train.eval_cost import Costs, measure_costs

__all__ = ["Costs", "RunBudget", "budget_for", "parse_budget", "plan_steps"]

MEASURE_STEPS = 20
MEASURE_FRACTION = 0.05
TARGET = 0.94
PROVISIONAL_STEPS = 10**12


def overhead_seconds(
    costs: Costs, n: int, *, step: int, epoch: int, steps_into_epoch: int, steps_per_epoch: int,
    knn_every_epochs: int = 1, checkpoint_every_steps: int = 0,
) -> float:  # fmt: skip
    """Seconds of everything but training steps when ``n`` more steps follow optimizer step
    ``step``, ``steps_into_epoch`` steps into epoch ``epoch`` (0-based): an epoch end (monitors
    and a checkpoint) for this epoch and each further one begun, mid-epoch checkpoints, and the
    final evaluation."""
    left = max(steps_per_epoch - steps_into_epoch, 0)
    ends = 1 if n <= left else 1 + math.ceil((n - left) / steps_per_epoch)
    every = knn_every_epochs
    knn = (epoch + ends) // every - epoch // every if every else 0
    ckpt = checkpoint_every_steps
    mid = (step + n) // ckpt - step // ckpt if ckpt else 0
    return (
        knn * costs.knn_epoch_end
        + (ends - knn) * costs.epoch_end
        + (ends + mid) * costs.checkpoint
        + costs.final
    )


def plan_steps(
    budget_seconds: float, spent_seconds: float, costs: Costs, *, step: int, epoch: int,
    steps_into_epoch: int, steps_per_epoch: int, knn_every_epochs: int = 1,
    checkpoint_every_steps: int = 0, target: float = TARGET,
) -> int:  # fmt: skip
    """The run's total optimizer steps (at least ``step``, the steps done): the most ``step + n``
    with ``n * costs.step + overhead_seconds(n) <= target * budget_seconds - spent_seconds``."""
    where = dict(step=step, epoch=epoch, steps_into_epoch=steps_into_epoch,
                 steps_per_epoch=steps_per_epoch, knn_every_epochs=knn_every_epochs,
                 checkpoint_every_steps=checkpoint_every_steps)  # fmt: skip
    available = target * budget_seconds - spent_seconds

    def fits(n: int) -> bool:
        return n * costs.step + overhead_seconds(costs, n, **where) <= available

    if not fits(0):
        return step
    lo, hi = 0, int(available / max(costs.step, 1e-9)) + 1  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return step + lo


def step_seconds(marks: list[float]) -> float:
    """Seconds per step from the session's training seconds at the end of each step, leaving
    out the first fifth (at least one step) of them."""
    n = len(marks)
    skip = max(1, n // 5)
    return (marks[-1] - marks[skip - 1]) / (n - skip)


def budget_for(run: Any) -> RunBudget | None:
    """The budget of ``run`` (a ``_Run``, its steps per epoch and warm-up set), or None without
    ``train.budget``; sets the run's provisional ``total_steps`` and ``warmup_steps``."""
    return RunBudget(run) if run.cfg.train.budget is not None else None


def _from_main(run: Any, value: int) -> int:
    """The main process's ``value`` on every process."""
    if run.info.world_size == 1:
        return value
    holder = torch.tensor([value], dtype=torch.long, device=run.info.device)
    dist.broadcast(holder, src=0)
    return int(holder.item())


def _say(run: Any, text: str) -> None:
    if run.info.is_main:
        from tqdm.auto import tqdm

        tqdm.write(text)


class RunBudget:
    """Plans the step count of a run with ``train.budget`` (see the module docstring)."""

    def __init__(self, run: Any) -> None:
        t = run.cfg.train
        self.text, self.seconds, self.max_steps = t.budget, parse_budget(t.budget), t.max_steps
        self.warmup = round((run.cfg.schedule.warmup_epochs or 0.0) * run.steps_per_epoch)
        self.planned: int | None = None  # the plan, before train.max_steps caps it
        self.costs: Costs | None = None
        self.images_per_s = 0.0
        self.marks: list[float] = []  # session training seconds at the end of each step
        self.start_step = 0
        self.note: str | None = None  # printed once the progress bar is up
        self._set_total(run, t.max_steps or PROVISIONAL_STEPS)

    @property
    def measuring(self) -> bool:
        return self.planned is None

    def _set_total(self, run: Any, total: int) -> None:
        run.total_steps = max(total, run.step, 1)
        run.warmup_steps = min(self.warmup, run.total_steps)

    def _fix(self, run: Any, planned: int) -> None:
        self.planned = planned
        self._set_total(run, min(planned, self.max_steps or planned))

    def _where(self, run: Any) -> dict[str, int]:
        spe, state = run.steps_per_epoch, run.loader.state_dict()
        into = spe if state.get("epoch", run.epoch) > run.epoch else state.get("position", 0)
        return dict(step=run.step, epoch=run.epoch, steps_per_epoch=spe,
                    steps_into_epoch=min(spe, into // run.cfg.train.accumulate),
                    knn_every_epochs=run.cfg.monitor.knn_every_epochs,
                    checkpoint_every_steps=run.cfg.train.checkpoint_every_steps)  # fmt: skip

    def _plan(self, run: Any) -> int:
        """The total steps for this budget from ``self.costs``, fixed by the main process."""
        assert self.costs is not None
        total = 0
        if run.info.is_main:
            total = plan_steps(self.seconds, run.timing.run_seconds, self.costs, **self._where(run))
        return _from_main(run, total)

    def _outcome(self, run: Any, *, measured: bool = False) -> str:
        epochs = run.total_steps / run.steps_per_epoch
        line = f"{run.total_steps:,} steps ({epochs:.1f} epochs)"
        if self.planned is not None and run.total_steps < self.planned:
            line += f"; train.max_steps={self.max_steps} caps the {self.planned:,} planned"
        if self.costs is not None:
            where = self._where(run)
            n = max(run.total_steps - run.step, 0)
            seconds = overhead_seconds(self.costs, n, **where)
            line += f", ~{seconds:,.0f} s for evaluation and the report"
            if n == 0 and measured:  # nothing left to train: say what would train one epoch
                one = run.timing.run_seconds + overhead_seconds(
                    self.costs, run.steps_per_epoch, **where
                )
                need = (one + self.costs.step * run.steps_per_epoch) / TARGET
                hint = f"{math.ceil(need)}s" if need < 120 else f"{math.ceil(need / 60)}min"
                line += (
                    f"; the budget leaves no time for more steps (about train.budget={hint} "
                    "would train one epoch)"
                )
        return line

    def after_step(self, run: Any, bar: Any) -> None:
        """Called after every optimizer step; fixes the count once the first steps are timed."""
        if self.planned is not None:
            return
        if not self.marks:
            self.start_step = run.step - 1
        self.marks.append(run.timing.session_train_seconds)
        n = len(self.marks)
        due = n >= MEASURE_STEPS or (n >= 3 and self.marks[-1] >= MEASURE_FRACTION * self.seconds)
        if not _from_main(run, int(due)):
            return
        with run.timing.paused():
            step = step_seconds(self.marks)
            self.images_per_s = run.cfg.train.batch_size / max(step, 1e-12)
            if not run.timing.checkpoints:  # one write timed for the estimate (collective)
                run.save(run.loader.state_dict())
            if run.info.is_main:
                self.costs = measure_costs(run, step)
            else:
                self.costs = Costs(step, 0.0, 0.0, 0.0, 0.0)
            self._fix(run, self._plan(run))
        over = f"the first {n} steps"
        if self.start_step:
            over = f"{n} steps from step {self.start_step}"
        _say(run, f"twinview: budget {self.text}: {self.images_per_s:,.0f} img/s over {over} -> "
                  f"{self._outcome(run, measured=True)}")  # fmt: skip
        self.show(run, bar)

    def show(self, run: Any, bar: Any) -> None:
        """The progress bar's total and description; a pending note (resume) is printed."""
        if self.note is not None:
            _say(run, self.note)
            self.note = None
        if bar is None:
            return
        if self.measuring:
            bar.total = None
            bar.set_description(f"{run.cfg.method.name} (measuring for the budget)")
        else:
            bar.total = run.total_steps
            epochs = run.total_steps / run.steps_per_epoch
            bar.set_description(f"{run.cfg.method.name}, {epochs:.1f} epochs")
        bar.refresh()

    def state_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "seconds": self.seconds,
            "planned": self.planned,
            "costs": dataclasses.asdict(self.costs) if self.costs is not None else None,
            "images_per_s": self.images_per_s,
        }

    def resume(self, run: Any, saved: dict[str, Any] | None) -> None:
        """Continue a saved plan (same budget), re-plan for another budget from the saved
        measurement, or measure again (no saved plan); see the module docstring."""
        if not saved or saved.get("planned") is None or saved.get("costs") is None:
            return  # measure in this session
        self.costs, self.images_per_s = Costs(**saved["costs"]), float(saved["images_per_s"])
        if math.isclose(float(saved["seconds"]), self.seconds):
            self._fix(run, int(saved["planned"]))
            self.note = f"twinview: budget {self.text}: continuing the planned {self._outcome(run)}"
            return
        self._fix(run, self._plan(run))
        self.note = (
            f"twinview: budget {saved['text']} -> {self.text}: re-planned from the "
            f"{self.images_per_s:,.0f} img/s measured before -> {self._outcome(run)}"
        )
