"""The training loop of one process (started by :func:`twinview.train.launch.pretrain`).

A plain loop a reader can hold in their head (nanoGPT style)::

    for epoch: for batch in loader:                 # views made on the device
        method.on_step_start(step, steps_per_epoch)
        out = model(batch.views)                    # StepOutput (SupCon: model(views, labels))
        (out.loss / accumulate).backward()
        every `accumulate` micro-batches: method.on_after_backward(), set lr,
                                          optimizer step, method.on_step_end(progress)
        every N steps and at each epoch end: checkpoint (atomic)
        with train.budget, once the first steps are timed: fix total_steps (train/budget.py)
    each epoch end: monitors (validation kNN, health) -> metrics.jsonl, TensorBoard
    end: test kNN beside the raw-pixel baseline, backbone.pt, summary.json

DDP wraps the method with its momentum copies and queue excluded, so they are never
synchronised by DDP (every process computes the same EMA and enqueues the same gathered keys).
State that matters (weights, momentum weights, queue, optimizer, scaler, step, position in the
epoch, every RNG state) is checkpointed; rerunning the same command resumes exactly.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from twinview.config import PretrainConfig, to_yaml
from twinview.data import build_loader
from twinview.eval.linear import OnlineLinearProbe
from twinview.run.checkpoint import load_latest, save_checkpoint
from twinview.run.data import DataSplits, build_data, eval_transform, view_size
from twinview.run.directory import RunDirectory
from twinview.train import state as run_state
from twinview.train.budget import budget_for
from twinview.train.build import (
    backbone_spec,
    build_model,
    build_run_optimizer,
    build_run_views,
    check_labels,
)
from twinview.train.errors import TrainingDiverged
from twinview.train.finish import finish
from twinview.train.logger import MetricsLog
from twinview.train.memory import keep_freed_memory
from twinview.train.monitors import Monitors
from twinview.train.precision import autocast, choose_precision
from twinview.train.rng import seed_everything
from twinview.train.sample_log import SampleLog
from twinview.train.schedules import apply_lr
from twinview.train.setup import ProcessInfo, ddp_wrap
from twinview.train.timing import RunTiming


@dataclass
class _Stop:
    """Set by SIGINT / SIGTERM: finish the step, save, exit cleanly."""

    signal: int | None = None


def _install_signal_handlers(stop: _Stop) -> dict[int, Any]:
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not in the main thread
            previous[sig] = signal.signal(sig, lambda s, _f: setattr(stop, "signal", s))
    return previous


class _Run:
    """One pretraining run in one process."""

    def __init__(self, cfg: PretrainConfig, info: ProcessInfo, directory: RunDirectory) -> None:
        self.timing = RunTiming()  # the run's clock starts here (train/timing.py)
        self.cfg, self.info, self.directory = cfg, info, directory
        self.run_dir = directory.path
        t = cfg.train
        keep_freed_memory()  # no mmap / munmap of activations every step (train/memory.py)
        seed_everything(t.seed)  # identical initial weights on every process
        self.data: DataSplits = build_data(cfg)
        check_labels(cfg, self.data)
        size = view_size(cfg, self.data)
        self.views = build_run_views(cfg, cfg.method.name, size)
        self.spec = backbone_spec(cfg, self.data.channels, size, self.views)
        self.method = build_model(cfg, self.spec, info.device, info.world_size)
        self.optimizer = build_run_optimizer(cfg, self.method)
        self.local_batch = t.batch_size // (info.world_size * t.accumulate)
        self.loader = build_loader(
            self.data.train,
            batch_size=self.local_batch,
            views=self.views,
            device=info.device,
            seed=t.seed,
            rank=info.rank,
            world_size=info.world_size,
            mode={"workers": "folder"}.get(cfg.data.loader, cfg.data.loader),
            num_workers=cfg.data.num_workers,
        )
        self.steps_per_epoch = len(self.loader) // t.accumulate
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.batch_size={t.batch_size} is larger than the training split "
                f"({len(self.data.train)} images); lower train.batch_size"
            )
        self.total_steps = t.epochs * self.steps_per_epoch
        if t.max_steps is not None:
            self.total_steps = min(self.total_steps, t.max_steps)
        warmup_epochs = cfg.schedule.warmup_epochs or 0.0
        # A warm-up longer than the run (short runs, max_steps) warms up over the whole run.
        self.warmup_steps = min(round(warmup_epochs * self.steps_per_epoch), self.total_steps)
        self.precision_choice = choose_precision(t.precision, info.device)
        self.precision = self.precision_choice.name
        self.scaler = torch.amp.GradScaler(
            info.device.type, enabled=self.precision == "fp16" and info.device.type == "cuda"
        )
        self.step, self.epoch, self.skipped_steps, self.saved_step = 0, 0, 0, -1
        self.monitors = Monitors(
            cfg.monitor,
            self.data,
            eval_transform(size, self.spec["mean"], self.spec["std"]),
            info.device,
            seed=t.seed,
            autocast_dtype=torch.bfloat16 if self.precision == "bf16" else None,
        )
        self.probe: OnlineLinearProbe | None = None
        if cfg.monitor.online_probe and self.data.num_classes:
            self.probe = OnlineLinearProbe(self.spec["feature_dim"], self.data.num_classes)
            self.probe.to(info.device)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.log = MetricsLog(self.run_dir, enabled=info.is_main)
        self.sample_log = SampleLog(self.run_dir, info.rank, enabled=cfg.monitor.sample_log)
        self.budget = budget_for(self)  # train.budget: provisional total_steps until planned

    # --- state ---------------------------------------------------------------------------------

    def save(self, loader_state: dict) -> None:
        with self.timing.checkpointing():  # not training time; timed for train.budget
            self._save(loader_state)

    def _save(self, loader_state: dict) -> None:
        params = [p.detach() for p in self.method.parameters()]
        if not all(torch.isfinite(n) for n in torch._foreach_norm(params)):
            raise TrainingDiverged(
                f"the weights became non-finite before step {self.step} (epoch {self.epoch + 1})"
                f"; stopping. The last good checkpoint is kept: {self.ckpt_path}. Try a lower "
                "learning rate (optim.lr=...), precision=fp32, or check the data."
            )
        state = run_state.capture(self, loader_state)  # collective: every process takes part
        if self.info.is_main:
            save_checkpoint(self.ckpt_path, state)
        self.saved_step = self.step
        if self.info.world_size > 1:
            dist.barrier()

    def start(self) -> bool:
        """Resume from the run's checkpoint when there is one (after checking that this command
        may resume it), then write config.yaml; nothing is written before that check."""
        state = load_latest(self.run_dir, map_location=self.info.device)
        if state is not None:
            changed = run_state.check_compatible(state, self.cfg, self.run_dir)
            run_state.restore(self, state)
        self.sample_log.truncate(self.step)  # every process its own file
        if self.info.is_main:
            self.directory.write_text("config.yaml", to_yaml(self.cfg))
            if state is None:
                self.log.reset()  # metrics of an earlier start that never checkpointed
            else:
                self.log.truncate(self.step)
                note = f" with {', '.join(changed)} changed" if changed else ""
                position = self.loader.state_dict().get("position", 0)
                where = (
                    f"step {self.step}, {position} batches into epoch {self.epoch + 1}"
                    if position
                    else f"step {self.step}, start of epoch {self.epoch + 1}"
                )
                print(f"twinview: resuming {self.run_dir} at {where}{note}")
        return state is not None

    # --- loop ----------------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg, info = self.cfg, self.info
        resumed = self.start()
        if info.is_main:
            print(f"twinview: precision {self.precision} ({self.precision_choice.reason})")
        model = ddp_wrap(self.method, info) if info.world_size > 1 else self.method
        if cfg.train.compile:
            model = torch.compile(model)
        stop = _Stop()
        previous_handlers = _install_signal_handlers(stop)
        started = time.time()
        bar = self._progress_bar()
        if self.budget is not None:
            self.budget.show(self, bar)
        try:
            while self.step < self.total_steps and stop.signal is None:
                if not (resumed and self.step > 0 and self._mid_epoch()):
                    self.loader.set_epoch(self.epoch)
                resumed = False
                with self.timing.training():
                    self._epoch(model, stop, bar)
                if stop.signal is not None:
                    break
                self._end_epoch(complete=self._epoch_complete())
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        if stop.signal is not None:
            if info.is_main:
                print(
                    f"twinview: stopped by signal {stop.signal}; checkpoint saved at step "
                    f"{self.step}. Rerun the same command to resume."
                )
            self.log.close()
            return {"status": "interrupted", "step": self.step, "run_dir": str(self.run_dir)}
        return finish(self, time.time() - started)

    def _mid_epoch(self) -> bool:
        return self.loader.state_dict().get("position", 0) > 0

    def _epoch_complete(self) -> bool:
        """Every optimizer step of this epoch is done (a few micro-batches short of an
        accumulation group may be left over)."""
        where = self.loader.state_dict()  # an exhausted loader has moved on to the next epoch
        done = self.steps_per_epoch * self.cfg.train.accumulate
        return where["epoch"] > self.epoch or where.get("position", 0) >= done

    def _progress_bar(self):
        if not self.info.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=None if self.budget is not None and self.budget.measuring else self.total_steps,
            initial=self.step,
            desc=f"{self.cfg.method.name}",
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def _epoch(self, model: nn.Module, stop: _Stop, bar) -> None:
        t = self.cfg.train
        accumulate, micro = t.accumulate, 0
        self.optimizer.zero_grad(set_to_none=True)  # drop a partial accumulation of last epoch
        window_loss, window_steps, window_start = 0.0, 0, time.time()
        for batch in self.loader:
            self.sample_log.add(self.step + 1, self.epoch, batch.index)
            self.method.on_step_start(self.step, self.steps_per_epoch)
            with autocast(self.precision, self.info.device):
                views = batch.views
                if t.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                if self.method.needs_labels:  # SupCon: positives are the images of one class
                    out = model(views, batch.labels.to(self.info.device, non_blocking=True))
                else:
                    out = model(views)
                loss = out.loss / accumulate
            self.scaler.scale(loss).backward()
            if self.cfg.monitor.health and self.info.is_main:
                self.monitors.add_batch(out.embeddings, out.features)
            if self.probe is not None:  # detached features, its own optimizer: not in the loss
                probe_logs = self.probe.step(out.features, batch.labels.to(out.features.device))
            micro += 1
            if micro % accumulate:
                continue
            value = self._global_loss(out.loss)
            if not math.isfinite(value) and self.cfg.monitor.nan_policy == "skip":
                # Drop this step's gradients and go on (the same on every process).
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                if self.info.is_main:
                    warnings.warn(
                        f"non-finite loss at step {self.step + 1}; step skipped", stacklevel=1
                    )
                continue
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"the loss became {value} at step {self.step + 1} (epoch {self.epoch + 1}); "
                    f"stopping. The last good checkpoint is kept: {self.ckpt_path}. Try a lower "
                    "learning rate (optim.lr=...), precision=fp32, or check the data."
                )
            self.method.on_after_backward()  # e.g. DINO's last layer, frozen in epoch 1
            factor = apply_lr(
                self.optimizer, self.step, total_steps=self.total_steps,
                warmup_steps=self.warmup_steps, min_lr_ratio=self.cfg.schedule.min_lr_ratio,
            )  # fmt: skip
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.method.on_step_end(self.step / self.total_steps)
            window_loss, window_steps = window_loss + value, window_steps + 1
            if bar is not None:
                rate = window_steps * t.batch_size / max(time.time() - window_start, 1e-9)
                bar.set_postfix(loss=f"{value:.3f}", img_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            if self.budget is not None:
                self.budget.after_step(self, bar)  # fixes total_steps once the first steps ran
            if self.step % self.cfg.monitor.log_every_steps == 0 or self.step == self.total_steps:
                elapsed = max(time.time() - window_start, 1e-9)
                logs = {**out.logs, **(probe_logs if self.probe is not None else {})}
                self.log.log(
                    "train", self.step, self.epoch,
                    {"loss": window_loss / window_steps, "lr_factor": factor,
                     "lr": self.optimizer.param_groups[0]["lr"],
                     "images_per_s": window_steps * t.batch_size / elapsed, **logs},
                )  # fmt: skip
                window_loss, window_steps, window_start = 0.0, 0, time.time()
            every = t.checkpoint_every_steps
            if stop.signal is not None or (every and self.step % every == 0):
                self.save(self.loader.state_dict())
            if stop.signal is not None or self.step >= self.total_steps:
                return

    def _global_loss(self, loss: torch.Tensor) -> float:
        """The loss averaged over processes (each process holds the mean over its anchors)."""
        if self.info.world_size == 1:
            return loss.item()
        value = loss.detach().float().clone()
        dist.all_reduce(value)
        return value.item() / self.info.world_size

    def _end_epoch(self, *, complete: bool) -> None:
        """Monitors and a checkpoint at the end of an epoch, or where max_steps ended the run
        inside one (``complete=False``: the position within the epoch is saved, so a later
        resume with more steps goes on from there instead of skipping the rest of the epoch)."""
        backbone = self.method.evaluation_backbone()
        values: dict[str, Any] = {}
        if self.info.is_main:
            monitors = self.monitors.epoch_end
            values = self.timing.timed_eval(monitors, backbone, self.epoch, step=self.step)
            record = {**values, "complete": complete, **self.timing.epoch_record()}
            self.log.log("epoch", self.step, self.epoch, record)
            if "val_knn_top1" in values:
                from tqdm.auto import tqdm

                where = "" if complete else f" (stopped at step {self.step}, within the epoch)"
                top1 = values["val_knn_top1"]
                tqdm.write(f"epoch {self.epoch + 1}: validation kNN top-1 {top1:.2%}{where}")
        if complete:
            self.epoch += 1
            self.save({"epoch": self.epoch, "position": 0})
        elif self.saved_step != self.step:
            self.save(self.loader.state_dict())
