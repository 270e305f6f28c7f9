"""Pretraining throughput: twinview vs lightly, images/s per method, side by side in one run.

For each setting and method, two contenders train the same backbone (one
``twinview.nn.build_backbone`` architecture, a fresh instance per side) on the same uint8
images, with the same batch size, view sizes, channel count, number of views (2, or 2 global
+ N local crops for multi-crop recipes), head widths and augmentation recipe:

- ``twinview``: the trainer's path (``twinview.train.build`` + ``build_loader``): the whole
  split in memory, every view made batched in the main process, ``method.on_step_start``,
  ``method(views)`` (``method(views, labels)`` for methods that need labels, e.g. SupCon)
  under the config's precision / channels-last, backward, ``method.on_after_backward``,
  ``apply_lr``, optimizer step, ``method.on_step_end``. Settings are the shipped recipe of each
  method (``configs/...``), so "default" is what ``twinview pretrain --config ...`` runs; when
  that is not fp32 the same path is also timed in fp32 (``twinview fp32``).
- ``lightly``: lightly's example loop of the method (``benchmarks/lightly_loops.py``): a torch
  Dataset of PIL images with the example's lightly transform in a ``DataLoader(num_workers=2,
  shuffle=True, drop_last=True)``, the example's heads, loss, memory bank / momentum update /
  gradient cancelling and optimizer (SGD 0.06; Adam 1e-3 for DINO and SwAV), fp32, NCHW.
  Methods without a lightly example (SupCon, MoCo v3) show "n/a".

The twinview side applies the trainer's malloc setting (``twinview.train.memory``: freed
activations are reused, not unmapped and faulted in again every step); it is process-wide, so
lightly's loop in the same process gets it too, which only makes the comparison harder for
twinview (lightly's own loop runs with glibc's defaults).

The lightly transforms get twinview's recipe values (crop scale, crop sizes and counts,
jitter, grayscale, blur, solarize, flip, normalisation), read from the twinview views, so both
sides augment alike. A contender that fails (a method not implemented yet, a missing recipe)
is reported in the table and the run goes on; the exit status is 1 if anything other than
"not implemented" or "n/a" failed.

Settings:

- ``convnet``: the small ConvNet on Fashion-MNIST, 28 px, **1 channel** on both sides (the
  native format; lightly gets mode-"L" PIL images and 1-channel normalisation), batch 256,
  recipes ``configs/fashion_mnist/<method>.yaml``.
- ``resnet18``: ResNet-18 with the CIFAR stem, Fashion-MNIST resized to 32 px and expanded to
  **3 channels** (``data.image_size=32 data.channels=3``; lightly gets the same RGB uint8
  images as PIL), on the first ``--subset`` training images, batch ``--resnet-batch``,
  recipes ``configs/cifar10/<method>.yaml`` (bf16 autocast, which the trainer, and so this
  benchmark, replaces with fp32 on a CPU without native bf16; when bf16 does run, fp32 is
  also timed).

Each (setting, method) runs ``--rounds`` rounds of twinview, [twinview fp32,] lightly,
interleaved so the contenders share machine noise; each round is ``--warmup`` untimed steps
(a fresh DataLoader iterator for lightly, so its worker start-up is not timed) then
``--steps`` timed steps. Images/s = batch images per step / seconds per step (images, not
crops: a multi-crop step makes 2 + N views of each image); the median over rounds is
reported, with the time per step spent waiting for data (views) and in the rest of the step
(forward, backward, optimizer, momentum update).

    python benchmarks/throughput.py [--settings convnet,resnet18]
        [--methods simclr,moco_v2,byol,simsiam | all] [--libraries twinview,lightly]
        [--steps 5] [--warmup 3] [--rounds 3] [--threads 2] [--resnet-batch 32]
        [--subset 2048] [--precision default|fp32] [--config-root configs] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightly_loops import (  # noqa: E402
    LIGHTLY_METHODS,
    LightlyLoop,
    PILImages,
    clock,
    lightly_transform,
)
from machine import cpu_name  # noqa: E402

from twinview.config import PretrainConfig, load_config  # noqa: E402
from twinview.data import build_loader, subset  # noqa: E402
from twinview.methods import METHODS  # noqa: E402
from twinview.nn import build_backbone  # noqa: E402
from twinview.run.data import build_data, view_size  # noqa: E402
from twinview.train.build import (  # noqa: E402
    METHOD_KEYS,
    backbone_spec,
    build_model,
    build_run_optimizer,
    build_run_views,
)
from twinview.train.memory import keep_freed_memory  # noqa: E402
from twinview.train.precision import autocast, effective_precision  # noqa: E402
from twinview.train.schedules import apply_lr  # noqa: E402
from twinview.views import MultiView  # noqa: E402

METHOD_NAMES = ("simclr", "moco_v2", "byol", "simsiam")  # the default list
ALL_METHODS = tuple(METHODS)  # ``--methods all``: every registered method
LIBRARIES = ("twinview", "lightly")
CONFIG_ROOT = ROOT / "configs"


def parse_methods(text: str) -> list[str]:
    """``--methods``: comma-separated names, or ``all``."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    return list(ALL_METHODS) if names == ["all"] else names


class MissingRecipe(FileNotFoundError):
    """The setting's recipe file for a method does not exist."""


def report_failure(what: str, err: BaseException) -> str:
    """Print why ``what`` failed (a traceback unless it is not implemented yet or has no recipe)
    and return its table cell: "not implemented", "error (no recipe)", "error (<type>)"."""
    if isinstance(err, NotImplementedError):
        print(f"  {what}: not implemented ({err or 'NotImplementedError'})", flush=True)
        return "not implemented"
    if isinstance(err, MissingRecipe):
        print(f"  {what}: {err}", flush=True)
        return "error (no recipe)"
    print(f"  {what}: failed", flush=True)
    traceback.print_exception(err)
    return f"error ({type(err).__name__})"


@dataclass
class Setting:
    """One benchmark setting: which recipes, which data, which batch."""

    name: str
    config_dir: str
    overrides: list[str]
    batch_size: int
    subset: int | None = None


def settings(resnet_batch: int, subset_size: int) -> dict[str, Setting]:
    return {
        "convnet": Setting("convnet", "fashion_mnist", [], 256),
        "resnet18": Setting(
            "resnet18",
            "cifar10",
            ["data.dataset=fashion_mnist", "data.image_size=32", "data.channels=3"],
            resnet_batch,
            subset_size,
        ),
    }


# --- shared data -----------------------------------------------------------------------------


@dataclass
class Prepared:
    """What both sides of one (setting, method) share."""

    cfg: PretrainConfig
    train: Any  # twinview source with ``images`` (N, C, H, W) uint8
    channels: int
    size: int
    views: MultiView
    dims: dict[str, Any] = field(default_factory=dict)


def recipe_dims(cfg: PretrainConfig, method: str) -> dict[str, Any]:
    """The method's constructor arguments as the recipe gives them: the constructor's defaults,
    then the ``method.*`` keys that are set (under the constructor's names), then
    ``method.options``. Unlike ``method_kwargs`` it does not check them against the
    constructor, so the lightly side can read a recipe whose twinview method is unfinished."""
    cls = METHODS[method]
    dims = {
        n: p.default
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for key, arg in METHOD_KEYS.items():
        if getattr(cfg.method, key, None) is not None:
            dims[arg] = getattr(cfg.method, key)
    dims.update(getattr(cfg.method, "options", None) or {})
    return dims


def prepare(
    setting: Setting, method: str, data_cache: dict, config_root: Path = CONFIG_ROOT
) -> Prepared:
    path = Path(config_root) / setting.config_dir / f"{method}.yaml"
    if not path.is_file():
        raise MissingRecipe(f"no recipe {path}")
    overrides = [*setting.overrides, f"train.batch_size={setting.batch_size}"]
    cfg = load_config(path, overrides)
    key = (setting.name,)
    if key not in data_cache:
        data = build_data(cfg)
        train = data.train
        if setting.subset is not None:
            train = subset(train, list(range(min(setting.subset, len(train)))))
        data_cache[key] = (data, train)
    data, train = data_cache[key]
    size = view_size(cfg, data)
    views = build_run_views(cfg, method, size)
    return Prepared(cfg, train, data.channels, size, views, recipe_dims(cfg, method))


# --- twinview side ---------------------------------------------------------------------------


@dataclass
class Timing:
    images_per_s: float
    data_ms: float  # per step, waiting for the batch of views
    step_ms: float  # per step, everything else


class TwinviewRunner:
    """The trainer's step (twinview/train/trainer.py ``_Run._epoch``) on twinview's loader:
    ``on_step_start(step, steps_per_epoch)`` before the forward, ``model(views)`` (with the
    batch labels when ``method.needs_labels``), backward, ``on_after_backward()``, the lr, the
    optimizer step, ``on_step_end(progress)``.

    ``mode``: ``"memory"`` (the whole split on ``device``, views made there batched) or
    ``"folder"`` (decoding + geometry in ``num_workers`` processes, photometry on ``device``).
    ``compile``: ``torch.compile`` the method, as ``train.compile=true`` does.
    """

    def __init__(
        self,
        p: Prepared,
        precision: str,
        *,
        device: str = "cpu",
        compile: bool = False,
        mode: str = "memory",
        num_workers: int = 2,
    ) -> None:
        cfg = p.cfg
        keep_freed_memory()  # as the trainer does (process-wide: lightly's loop gets it too)
        torch.manual_seed(0)
        self.precision, self.channels_last = precision, cfg.train.channels_last
        self.device = torch.device(device)
        self.spec = backbone_spec(cfg, p.channels, p.size, p.views)
        self.method = build_model(cfg, self.spec, self.device, world_size=1)
        self.model: Any = torch.compile(self.method) if compile else self.method
        self.optimizer = build_run_optimizer(cfg, self.method)
        self.batch = cfg.train.batch_size
        self.loader = build_loader(
            p.train,
            batch_size=self.batch,
            views=p.views,
            device=self.device,
            mode=mode,
            num_workers=num_workers,
        )
        self.step, self.total, self.epoch = 0, 10_000, 0
        self.steps_per_epoch = max(1, len(self.loader))
        self.needs_labels = bool(getattr(self.method, "needs_labels", False))
        self.batches = self._forever()

    def _forever(self) -> Iterator[Any]:
        while True:
            self.loader.set_epoch(self.epoch)
            yield from self.loader
            self.epoch += 1

    def train_step(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        batch = next(self.batches)
        t1 = time.perf_counter()
        self.method.on_step_start(self.step, self.steps_per_epoch)
        with autocast(self.precision, self.device):
            views = batch.views
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            if self.needs_labels:  # as the trainer: supervised methods get the batch labels
                out = self.model(views, batch.labels.to(self.device))
            else:
                out = self.model(views)
        out.loss.backward()
        self.method.on_after_backward()
        value = out.loss.item()
        assert np.isfinite(value), f"twinview loss became {value}"
        apply_lr(self.optimizer, self.step, total_steps=self.total, warmup_steps=0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.method.on_step_end(self.step / self.total)
        return t1 - t0, time.perf_counter() - t1

    def run(self, warmup: int, steps: int) -> Timing:
        for _ in range(warmup):
            self.train_step()
        return _timed(self.train_step, steps, self.batch)


def _timed(step: Callable[[], tuple[float, float]], steps: int, batch: int) -> Timing:
    data = work = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        d, w = step()
        data, work = data + d, work + w
    elapsed = time.perf_counter() - start
    return Timing(batch * steps / elapsed, 1e3 * data / steps, 1e3 * work / steps)


# --- lightly side ----------------------------------------------------------------------------


class LightlyRunner:
    """lightly's example training loop (:class:`lightly_loops.LightlyLoop`), one step at a time.

    ``model`` holds every trained and momentum part, ``backbone`` the one to export; ``total``
    (steps of the whole run) sets the momentum schedules and ``steps_per_epoch`` the epoch,
    as the examples' loops over epochs do. ``notes``: where the twinview recipe lacked a value
    and lightly's example value was used, or the views needed another lightly transform.
    """

    def __init__(self, method: str, p: Prepared, seed: int = 0) -> None:
        torch.manual_seed(seed)
        spec = backbone_spec(p.cfg, p.channels, p.size, p.views)
        backbone, dim = build_backbone(
            spec["name"], in_channels=spec["in_channels"], cifar_stem=spec["cifar_stem"],
            **spec["kwargs"],
        )  # fmt: skip
        self.method = method
        self.batch = p.cfg.train.batch_size
        self.steps_per_epoch = max(1, len(p.train) // self.batch)  # drop_last=True
        self.loop = LightlyLoop(method, backbone, dim, p.dims, self.steps_per_epoch)
        self.model, self.criterion = self.loop.model, self.loop.criterion
        self.optimizer = self.loop.optimizer()
        self.notes = self.loop.notes
        self.dataset = PILImages(p.train.images, lightly_transform(method, p, self.notes))
        self.step, self.total, self.last_loss = 0, 10_000, float("nan")

    @property
    def backbone(self) -> nn.Module:
        return self.loop.backbone

    def train_step(self, it: Iterator) -> tuple[float, float]:
        t0 = time.perf_counter()
        views, _ = next(it)
        t1 = time.perf_counter()
        now = clock(self.step, self.total, self.steps_per_epoch)
        loss = self.loop.loss(list(views), now, self.total)
        value = self.last_loss = loss.item()
        assert np.isfinite(value), f"lightly loss became {value}"
        loss.backward()
        self.loop.after_backward(now)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return t1 - t0, time.perf_counter() - t1

    def run(self, warmup: int, steps: int) -> Timing:
        # A fresh loader per round (workers started in the warm-up, not timed) and shut down
        # after it, so its workers never prefetch while the other contender is being timed.
        loader = DataLoader(
            self.dataset, batch_size=self.batch, shuffle=True, drop_last=True, num_workers=2
        )
        if len(loader) < warmup + steps:
            raise ValueError(
                f"{len(self.dataset)} images give {len(loader)} batches of {self.batch}, fewer "
                f"than --warmup + --steps = {warmup + steps}; raise --subset or lower the steps"
            )
        it = iter(loader)
        try:
            for _ in range(warmup):
                self.train_step(it)
            return _timed(lambda: self.train_step(it), steps, self.batch)
        finally:
            it._shutdown_workers()  # type: ignore[attr-defined]


# --- main ------------------------------------------------------------------------------------


@dataclass
class Row:
    setting: str
    method: str
    precision: str
    batch: int
    results: dict[str, list[Timing]]
    failed: dict[str, str] = field(default_factory=dict)  # contender -> table cell
    notes: list[str] = field(default_factory=list)

    def median(self, name: str) -> Timing | None:
        ts = self.results.get(name)
        if not ts or name in self.failed:
            return None
        return Timing(
            statistics.median(t.images_per_s for t in ts),
            statistics.median(t.data_ms for t in ts),
            statistics.median(t.step_ms for t in ts),
        )

    def cell(self, name: str) -> str:
        """Why ``name`` has no timing: "n/a", "not implemented", "error (...)", "-" (not run)."""
        return self.failed.get(name, "-")


def bench(setting: Setting, method: str, args: argparse.Namespace, cache: dict) -> Row:
    libraries = args.library_list
    try:
        p = prepare(setting, method, cache, args.config_root)
    except Exception as err:  # no recipe (yet), a bad one: both sides are out
        cell = report_failure(f"{setting.name} {method}: recipe", err)
        failed = {name: cell for name in libraries}
        if "lightly" in failed and method not in LIGHTLY_METHODS:
            failed["lightly"] = "n/a"
        return Row(setting.name, method, "?", setting.batch_size, {}, failed)
    # "default" is what the trainer runs: the recipe's precision, or fp32 where this CPU has no
    # native bf16 (effective_precision falls back, with a warning).
    recipe = p.cfg.train.precision if args.precision == "default" else "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision = effective_precision(recipe, torch.device("cpu"))
    makers: dict[str, Callable[[], Any]] = {}
    if "twinview" in libraries:
        makers["twinview"] = lambda: TwinviewRunner(p, precision)
        if precision != "fp32":
            makers["twinview fp32"] = lambda: TwinviewRunner(p, "fp32")
    if "lightly" in libraries:
        makers["lightly"] = lambda: LightlyRunner(method, p)
    row = Row(setting.name, method, precision, setting.batch_size, {})
    contenders: dict[str, Any] = {}
    for name, make in makers.items():
        if name == "lightly" and method not in LIGHTLY_METHODS:
            row.failed[name] = "n/a"
            continue
        try:
            contenders[name] = make()
        except Exception as err:
            row.failed[name] = report_failure(f"{setting.name} {method} {name}", err)
    if "lightly" in contenders:
        row.notes = contenders["lightly"].notes
        for note in row.notes:
            print(f"  {setting.name} {method} lightly: {note}", flush=True)
    row.results = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, runner in contenders.items():
            if name in row.failed:
                continue
            try:
                t = runner.run(args.warmup, args.steps)
            except Exception as err:
                row.failed[name] = report_failure(f"{setting.name} {method} {name}", err)
                continue
            row.results[name].append(t)
            print(
                f"  {setting.name:8s} {method:8s} round {r + 1}/{args.rounds} {name:14s} "
                f"{t.images_per_s:8.1f} img/s (data {t.data_ms:6.1f} ms, step {t.step_ms:7.1f} "
                "ms per step)",
                flush=True,
            )
    return row


def table(rows: list[Row]) -> str:
    head = (
        "| setting | method | batch | twinview precision | twinview img/s | twinview fp32 img/s "
        "| lightly img/s | ratio default | ratio fp32 | twinview data / step ms "
        "| lightly data / step ms |\n|" + "---|" * 11
    )
    lines, notes = [head], []

    def speed(t: Timing | None, row: Row, name: str) -> str:
        return f"{t.images_per_s:.1f}" if t else row.cell(name)

    def ratio(a: Timing | None, b: Timing | None) -> str:
        return f"{a.images_per_s / b.images_per_s:.2f}x" if a and b else "-"

    def split(t: Timing | None) -> str:
        return f"{t.data_ms:.0f} / {t.step_ms:.0f}" if t else "-"

    for row in rows:
        tv, lt = row.median("twinview"), row.median("lightly")
        has32 = "twinview fp32" in row.results or "twinview fp32" in row.failed
        tv32 = row.median("twinview fp32") if has32 else tv
        lines.append(
            f"| {row.setting} | {row.method} | {row.batch} | {row.precision} "
            f"| {speed(tv, row, 'twinview')} "
            f"| {speed(tv32, row, 'twinview fp32' if has32 else 'twinview')} "
            f"| {speed(lt, row, 'lightly')} | {ratio(tv, lt)} | {ratio(tv32, lt)} "
            f"| {split(tv32)} | {split(lt)} |"
        )
        notes += [f"- {row.setting} {row.method}, lightly: {note}" for note in row.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="convnet,resnet18")
    parser.add_argument(
        "--methods", default=",".join(METHOD_NAMES), help="comma-separated, or 'all'"
    )
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, main process")
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--subset", type=int, default=2048, help="images for the resnet18 run")
    parser.add_argument(
        "--precision",
        choices=("default", "fp32"),
        default="default",
        help="twinview precision: the recipe's (timed beside fp32 when not fp32) or fp32 only",
    )
    parser.add_argument(
        "--config-root", type=Path, default=CONFIG_ROOT, help="recipes: DIR/<dataset>/<method>.yaml"
    )
    parser.add_argument("--out", default=None, help="also write the results table (Markdown)")
    args = parser.parse_args(argv)
    known = settings(args.resnet_batch, args.subset)
    chosen = [s.strip() for s in args.settings.split(",") if s.strip()]
    methods = parse_methods(args.methods)
    args.library_list = [x.strip() for x in args.libraries.split(",") if x.strip()]
    for name in chosen:
        if name not in known:
            parser.error(f"--settings: unknown setting {name!r}; choose from {sorted(known)}")
    for m in methods:
        if m not in ALL_METHODS:
            parser.error(f"--methods: unknown method {m!r}; choose from {list(ALL_METHODS)}")
    for x in args.library_list:
        if x not in LIBRARIES:
            parser.error(f"--libraries: unknown library {x!r}; choose from {list(LIBRARIES)}")
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    import lightly

    env = (
        f"torch {torch.__version__}, lightly {lightly.__version__}, {cpu_name()}"
        f", {args.threads} threads, steps {args.steps} (+{args.warmup} warm-up) x "
        f"{args.rounds} rounds, medians"
    )
    print(env, flush=True)
    rows, cache = [], {}
    for name in chosen:
        for m in methods:
            rows.append(bench(known[name], m, args, cache))
    text = f"{env}\n\n{table(rows)}\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    errors = [c for row in rows for c in row.failed.values() if c.startswith("error")]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
