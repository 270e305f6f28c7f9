"""``pretrain``: the training loop, on one process or many (torchrun, SLURM, ``devices=N``).

A plain loop a reader can hold in their head (nanoGPT style)::

    for epoch: for batch in loader:                 # views made on the device
        out = model(batch.views)                    # StepOutput: loss, features, logs
        (out.loss / accumulate).backward()
        every `accumulate` micro-batches: set lr, optimizer step, method.on_step_end(progress)
        every N steps and at each epoch end: checkpoint (atomic)
    each epoch end: monitors (validation kNN, health) -> metrics.jsonl, TensorBoard
    end: test kNN beside the raw-pixel baseline, backbone.pt, summary.json

DDP wraps the method with its momentum copies and queue excluded, so they are never
synchronised by DDP (every process computes the same EMA and enqueues the same gathered keys).
State that matters (weights, momentum weights, queue, optimizer, scaler, step, position in the
epoch, every RNG state) is checkpointed; rerunning the same command resumes exactly.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from twinview.data import build_loader
from twinview.eval.linear import OnlineLinearProbe
from twinview.export import save_backbone
from twinview.methods import Method
from twinview.report import write_report
from twinview.train.build import (
    DataSplits,
    backbone_spec,
    build_data,
    build_model,
    build_run_optimizer,
    build_run_views,
    eval_transform,
    view_size,
)
from twinview.train.checkpoint import load_checkpoint, prepare_run_dir, save_checkpoint
from twinview.train.config import (
    ConfigError,
    PretrainConfig,
    load_config,
    run_name,
    save_config,
)
from twinview.train.errors import TrainingDiverged
from twinview.train.logger import MetricsLog
from twinview.train.monitors import Monitors
from twinview.train.rng import capture_rng_state, restore_rng_state
from twinview.train.schedules import apply_lr
from twinview.train.setup import ProcessInfo, cleanup, init_distributed, launch_env, spawn
from twinview.views import preview


def config_from_args(
    config: str | Path | PretrainConfig | None = None, overrides: dict[str, Any] | None = None
) -> PretrainConfig:
    """A config from a YAML path / config object plus ``key=value`` style keyword overrides."""
    if isinstance(config, PretrainConfig):
        if overrides:
            raise ValueError("pass overrides inside the PretrainConfig object, not as keywords")
        return config
    items = [f"{key}={_dotlist_value(value)}" for key, value in (overrides or {}).items()]
    return load_config(config, items)


def _dotlist_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dotlist_value(v) for v in value) + "]"
    return str(value)


def pretrain(config: str | Path | PretrainConfig | None = None, **overrides: Any) -> dict:
    """Pretrain a backbone; ``pretrain(method="byol", data="./images", epochs=100)`` does what
    ``twinview pretrain method=byol data=./images epochs=100`` does. Returns the run summary."""
    cfg = config_from_args(config, overrides)
    env = launch_env()
    if env is None and cfg.train.devices > 1:
        run_dir = _run_dir(cfg, is_main=True)
        spawn(_train, (cfg, str(run_dir)), nprocs=cfg.train.devices)
        return json.loads((run_dir / "summary.json").read_text())
    return _train(cfg, None)


def _run_dir(cfg: PretrainConfig, *, is_main: bool) -> Path:
    return prepare_run_dir(Path(cfg.output.dir), run_name(cfg), resume=cfg.output.resume)


def _shared_run_dir(cfg: PretrainConfig, info: ProcessInfo, given: str | None) -> Path:
    """Rank 0 decides the run directory (it may add a suffix); the others follow."""
    if given is not None:
        return Path(given)
    holder = [str(_run_dir(cfg, is_main=True)) if info.is_main else None]
    if info.world_size > 1:
        dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])  # type: ignore[arg-type]


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


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: bf16 on a CPU without native bf16 (AVX512-BF16 or AMX)
    runs 15-20x slower than fp32 under autocast, so it falls back to fp32 with a warning; fp16
    autocast is for GPUs only."""
    if device.type != "cpu" or precision == "fp32":
        return precision
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if precision == "bf16" and native_bf16:
        return precision
    warnings.warn(
        f"precision={precision} is not fast on this CPU (no native {precision}); using fp32",
        stacklevel=2,
    )
    return "fp32"


def _ddp_wrap(method: Method, info: ProcessInfo) -> nn.Module:
    """DDP over the trainable parts only: momentum copies and the queue are ignored."""
    ignored = []
    for prefix in [*method.momentum_modules(), "queue"]:
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


def _train(cfg: PretrainConfig, run_dir_arg: str | None) -> dict:
    env = launch_env() or (0, 1, 0)
    info = init_distributed(cfg.train.device, *env)
    try:
        return _Run(cfg, info, _shared_run_dir(cfg, info, run_dir_arg)).fit()
    finally:
        cleanup()


class _Run:
    """One pretraining run in one process."""

    def __init__(self, cfg: PretrainConfig, info: ProcessInfo, run_dir: Path) -> None:
        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        t = cfg.train
        torch.manual_seed(t.seed)  # identical initial weights on every process
        self.data: DataSplits = build_data(cfg)
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
        self.precision = effective_precision(t.precision, info.device)
        self.scaler = torch.amp.GradScaler(
            info.device.type, enabled=t.precision == "fp16" and info.device.type == "cuda"
        )
        self.step, self.epoch, self.skipped_steps = 0, 0, 0
        self.monitors = Monitors(
            cfg.monitor,
            self.data,
            eval_transform(size, self.spec["mean"], self.spec["std"]),
            info.device,
            seed=t.seed,
        )
        self.probe: OnlineLinearProbe | None = None
        if cfg.monitor.online_probe and self.data.num_classes:
            self.probe = OnlineLinearProbe(self.spec["feature_dim"], self.data.num_classes)
            self.probe.to(info.device)
        self.ckpt_path = run_dir / "checkpoints" / "last.pt"
        self.log = MetricsLog(run_dir, enabled=info.is_main)

    # --- state ---------------------------------------------------------------------------------

    def state_dict(self, loader_state: dict) -> dict:
        rng = capture_rng_state()
        if self.info.world_size > 1:
            states: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        return {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "loader": loader_state,
            "rng": states,
            "probe": self.probe.state_dict() if self.probe is not None else None,
            "backbone_spec": self.spec,
            "method_name": self.cfg.method.name,
            "run_keys": {"method.name": self.cfg.method.name, "optim.name": self.cfg.optim.name},
            "world_size": self.info.world_size,
        }

    def save(self, loader_state: dict) -> None:
        params = [p.detach() for p in self.method.parameters()]
        if not all(torch.isfinite(n) for n in torch._foreach_norm(params)):
            raise TrainingDiverged(
                f"the weights became non-finite before step {self.step} (epoch {self.epoch + 1})"
                f"; stopping. The last good checkpoint is kept: {self.ckpt_path}. Try a lower "
                "learning rate (optim.lr=...), precision=fp32, or check the data."
            )
        state = self.state_dict(loader_state)  # collective: every process takes part
        if self.info.is_main:
            save_checkpoint(self.ckpt_path, state)
        if self.info.world_size > 1:
            dist.barrier()

    def resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        state = load_checkpoint(self.ckpt_path, map_location=self.info.device)
        for key, now in (
            ("method.name", self.cfg.method.name),
            ("optim.name", self.cfg.optim.name),
        ):
            was = state.get("run_keys", {}).get(key, now)
            if was != now:
                raise ConfigError(
                    f"{self.run_dir} was trained with {key}={was}, this command asks for "
                    f"{key}={now}; resume with {key}={was}, or start a new run with "
                    "resume=false or another name=..."
                )
        self.method.load_state_dict(state["method"])
        # The optimizer's buffers come from the checkpoint; its hyperparameters (lr, weight
        # decay) from this command's config, so an edited config takes effect on resume.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, hyper in zip(self.optimizer.param_groups, fresh):
            group.update(hyper)
        self.scaler.load_state_dict(state["scaler"])
        if self.probe is not None and state.get("probe") is not None:
            self.probe.load_state_dict(state["probe"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.loader.load_state_dict(state["loader"])
        rng = state["rng"]
        restore_rng_state(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])
        self.log.truncate(self.step)
        if self.info.is_main:
            print(f"twinview: resuming {self.run_dir} at step {self.step} (epoch {self.epoch + 1})")
        return True

    # --- loop ----------------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg, info = self.cfg, self.info
        if info.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        resumed = self.resume()
        model = _ddp_wrap(self.method, info) if info.world_size > 1 else self.method
        if cfg.train.compile:
            model = torch.compile(model)
        stop = _Stop()
        previous_handlers = _install_signal_handlers(stop)
        started = time.time()
        bar = self._progress_bar()
        try:
            while self.step < self.total_steps and stop.signal is None:
                if not (resumed and self.step > 0 and self._mid_epoch()):
                    self.loader.set_epoch(self.epoch)
                resumed = False
                self._epoch(model, stop, bar)
                if stop.signal is not None:
                    break
                self._end_epoch()
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
        return self._finish(time.time() - started)

    def _mid_epoch(self) -> bool:
        return self.loader.state_dict().get("position", 0) > 0

    def _progress_bar(self):
        if not self.info.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps,
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
            with _autocast(self.precision, self.info.device):
                views = batch.views
                if t.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                out = model(views)
                loss = out.loss / accumulate
            self.scaler.scale(loss).backward()
            if self.cfg.monitor.health and self.info.is_main:
                self.monitors.buffer.add(out.embeddings)
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

    def _end_epoch(self) -> None:
        backbone = self.method.backbone
        values: dict[str, Any] = {}
        if self.info.is_main:
            values = self.monitors.epoch_end(backbone, self.epoch)
            self.log.log("epoch", self.step, self.epoch, values)
            if "val_knn_top1" in values and self.info.is_main:
                from tqdm.auto import tqdm

                tqdm.write(
                    f"epoch {self.epoch + 1}: validation kNN top-1 {values['val_knn_top1']:.2%}"
                )
        self.epoch += 1
        self.save({"epoch": self.epoch, "position": 0})

    def _finish(self, seconds: float) -> dict:
        summary: dict[str, Any] = {
            "status": "finished",
            "method": self.cfg.method.name,
            "dataset": self.cfg.data.dataset,
            "backbone": self.cfg.backbone.name,
            "steps": self.step,
            "epochs": self.epoch,
            "train_seconds_this_session": round(seconds, 1),
            "skipped_steps": self.skipped_steps,
            "precision": self.precision,
            "run_dir": str(self.run_dir),
        }
        if self.info.is_main:
            scores, test = self.monitors.final(self.method.backbone)
            summary.update(scores)
            path = save_backbone(self.method.backbone, self.spec, self.run_dir / "backbone.pt")
            summary["backbone_path"] = str(path)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self.log.log("summary", self.step, self.epoch, {
                k: v for k, v in summary.items() if isinstance(v, int | float)
            })  # fmt: skip
            summary["report_path"] = str(self._report(test))
            print(format_summary(summary))
        self.log.close()
        if self.info.world_size > 1:
            dist.barrier()
        return summary

    def _report(self, test: dict[str, Any]) -> Path:
        """report.html: curves, results, embedding map, neighbours and the views used."""
        grid = self.run_dir / "views.png"
        source = self.data.train
        images = source.images[:8] if hasattr(source, "images") else None
        if images is None:
            images = torch.stack([source[i][0] for i in range(min(8, len(source)))])
        preview(images, self.views, grid, n=8, seed=self.cfg.train.seed)
        return write_report(
            self.run_dir,
            test_features=test.get("features"),
            test_labels=test.get("labels"),
            test_images=test.get("images"),
            views_grid_png=grid,
            class_names=getattr(source, "classes", None),
            seed=self.cfg.train.seed,
        )


def format_summary(summary: dict) -> str:
    """The closing lines printed at the end of pretraining."""
    lines = [
        f"twinview: {summary['method']} on {summary['dataset']} finished "
        f"({summary['epochs']} epochs, {summary['steps']} steps).",
    ]
    split = summary.get("eval_split")
    if split:
        for k in (200, 20):
            learned = summary.get(f"{split}_knn_top1_k{k}")
            raw = summary.get(f"{split}_raw_pixel_knn_top1_k{k}")
            if learned is not None and raw is not None:
                lines.append(
                    f"  kNN top-1 on {split} (k={k}, cosine, weighted): {learned:.2%}   "
                    f"raw pixels: {raw:.2%}   ({100 * (learned - raw):+.1f} points)"
                )
    if "backbone_path" in summary:
        lines.append(f"  backbone: {summary['backbone_path']}")
    if "report_path" in summary:
        lines.append(f"  report: {summary['report_path']}")
    lines.append(f"  run directory: {summary['run_dir']}")
    return "\n".join(lines)
