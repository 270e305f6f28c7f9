"""Pretraining throughput: twinview vs lightly, images/s per method, side by side in one run.

For each setting and method, two contenders train the same backbone (one
``twinview.nn.build_backbone`` architecture, a fresh instance per side) on the same uint8
images, with the same batch size, view size, channel count, number of views (2), head widths
and augmentation recipe:

- ``twinview``: the trainer's path (``twinview.train.build`` + ``build_loader``): the whole
  split in memory, both views made batched in the main process, ``method(views)`` under the
  config's precision / channels-last, backward, ``apply_lr``, optimizer step,
  ``method.on_step_end``. Settings are the shipped recipe of each method (``configs/...``),
  so "default" is what ``twinview pretrain --config ...`` runs; when that is not fp32 the
  same path is also timed in fp32 (``twinview fp32``).
- ``lightly``: lightly's example loop: a torch Dataset of PIL images with lightly's
  ``SimCLRTransform`` / ``MoCoV2Transform`` / ``BYOLTransform`` / ``SimSiamTransform`` in a
  ``DataLoader(num_workers=2, shuffle=True, drop_last=True)``, lightly heads and losses
  (``NTXentLoss`` with a memory bank for MoCo, ``NegativeCosineSimilarity``),
  ``update_momentum`` with ``cosine_schedule``, ``SGD(lr=0.06)``, fp32, NCHW.

The lightly transforms get twinview's recipe values (crop scale, jitter, grayscale, blur,
solarize, flip, normalisation), read from the twinview views, so both sides augment alike.

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
``--steps`` timed steps. Images/s = batch images per step / seconds per step; the median over
rounds is reported, with the time per step spent waiting for data (views) and in the rest of
the step (forward, backward, optimizer, momentum update).

    python benchmarks/throughput.py [--settings convnet,resnet18]
        [--methods simclr,moco_v2,byol,simsiam] [--steps 5] [--warmup 3] [--rounds 3]
        [--threads 2] [--resnet-batch 32] [--subset 2048] [--precision default|fp32]
        [--out FILE.md]
"""

from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_name  # noqa: E402

from twinview.config import PretrainConfig, load_config  # noqa: E402
from twinview.data import build_loader, subset  # noqa: E402
from twinview.methods import METHODS  # noqa: E402
from twinview.nn import build_backbone  # noqa: E402
from twinview.run.data import build_data, view_size  # noqa: E402
from twinview.train.build import (  # noqa: E402
    backbone_spec,
    build_model,
    build_run_optimizer,
    build_run_views,
    method_kwargs,
    normalization,
)
from twinview.train.precision import autocast, effective_precision  # noqa: E402
from twinview.train.schedules import apply_lr  # noqa: E402
from twinview.views import MultiView, ViewSpec  # noqa: E402

METHOD_NAMES = ("simclr", "moco_v2", "byol", "simsiam")
LIGHTLY_LR = 0.06  # lightly's example scripts (SimCLR, MoCo, BYOL, SimSiam) all use SGD 0.06


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


def prepare(setting: Setting, method: str, data_cache: dict) -> Prepared:
    path = ROOT / "configs" / setting.config_dir / f"{method}.yaml"
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
    cls = METHODS[method]
    defaults = {
        n: p.default
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    dims = {**defaults, **method_kwargs(cfg)}
    return Prepared(cfg, train, data.channels, size, views, dims)


# --- twinview side ---------------------------------------------------------------------------


@dataclass
class Timing:
    images_per_s: float
    data_ms: float  # per step, waiting for the batch of views
    step_ms: float  # per step, everything else


class TwinviewRunner:
    """The trainer's step (twinview/train/trainer.py ``_Run._epoch``) on twinview's loader.

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
        with autocast(self.precision, self.device):
            views = batch.views
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            out = self.model(views)
        out.loss.backward()
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


class PILImages(Dataset):
    """uint8 images -> PIL -> lightly transform; items ``(views, label)`` like LightlyDataset."""

    def __init__(self, images: Tensor, transform: Callable) -> None:
        array = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        self.images = array[..., 0] if array.shape[-1] == 1 else array
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(np.ascontiguousarray(self.images[i]))), 0


def _view_kwargs(spec: ViewSpec, size: int, mean: tuple, std: tuple) -> dict[str, Any]:
    """lightly transform arguments carrying twinview's recipe for one view."""
    return dict(
        input_size=size,
        cj_prob=spec.jitter_p,
        cj_strength=1.0,
        cj_bright=spec.brightness,
        cj_contrast=spec.contrast,
        cj_sat=spec.saturation,
        cj_hue=spec.hue,
        min_scale=spec.crop_scale[0],
        random_gray_scale=spec.grayscale_p,
        gaussian_blur=spec.blur_p,
        sigmas=tuple(spec.blur_sigma),
        hf_prob=spec.hflip_p,
        normalize={"mean": list(mean), "std": list(std)},
    )


def lightly_transform(method: str, p: Prepared) -> Callable:
    from lightly import transforms as LT
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    mean, std = normalization(p.views, p.channels)
    s0, s1 = p.views.specs[0], p.views.specs[1]
    if method == "byol":
        return LT.BYOLTransform(
            view_1_transform=BYOLView1Transform(
                **_view_kwargs(s0, p.size, mean, std), solarization_prob=s0.solarize_p
            ),
            view_2_transform=BYOLView2Transform(
                **_view_kwargs(s1, p.size, mean, std), solarization_prob=s1.solarize_p
            ),
        )
    cls = {
        "simclr": LT.SimCLRTransform,
        "moco_v2": LT.MoCoV2Transform,
        "simsiam": LT.SimSiamTransform,
    }[method]
    return cls(**_view_kwargs(s0, p.size, mean, std))


class LightlyModel(nn.Module):
    """lightly's example models (examples/pytorch/{simclr,moco,byol,simsiam}.py)."""

    def __init__(self, method: str, backbone: nn.Module, feature_dim: int, dims: dict) -> None:
        super().__init__()
        from lightly.models import modules as M
        from lightly.models.utils import deactivate_requires_grad

        self.method, self.backbone = method, backbone
        hidden, out = dims["hidden_dim"], dims["out_dim"]
        if method == "simclr":
            self.projection_head = M.SimCLRProjectionHead(feature_dim, hidden, out)
        elif method == "moco_v2":
            self.projection_head = M.MoCoProjectionHead(feature_dim, hidden, out)
        elif method == "byol":
            self.projection_head = M.BYOLProjectionHead(feature_dim, hidden, out)
            pred = dims.get("pred_hidden_dim") or hidden
            self.prediction_head = M.BYOLPredictionHead(out, pred, out)
        elif method == "simsiam":
            self.projection_head = M.SimSiamProjectionHead(feature_dim, hidden, out)
            self.prediction_head = M.SimSiamPredictionHead(out, dims["pred_hidden_dim"], out)
        if method in ("moco_v2", "byol"):
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: Tensor) -> Any:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        if self.method == "byol":
            return self.prediction_head(z)
        if self.method == "simsiam":
            return z.detach(), self.prediction_head(z)
        return z

    def forward_momentum(self, x: Tensor) -> Tensor:
        z = self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1))
        return z.detach()


class LightlyRunner:
    """lightly's example training loop, one step at a time."""

    def __init__(self, method: str, p: Prepared, seed: int = 0) -> None:
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss

        torch.manual_seed(seed)
        spec = backbone_spec(p.cfg, p.channels, p.size, p.views)
        backbone, dim = build_backbone(
            spec["name"], in_channels=spec["in_channels"], cifar_stem=spec["cifar_stem"],
            **spec["kwargs"],
        )  # fmt: skip
        self.method = method
        self.model = LightlyModel(method, backbone, dim, p.dims)
        if method == "simclr":
            self.criterion: nn.Module = NTXentLoss(temperature=p.dims["temperature"])
        elif method == "moco_v2":
            self.criterion = NTXentLoss(
                temperature=p.dims["temperature"],
                memory_bank_size=(p.dims["queue_size"], p.dims["out_dim"]),
            )
        else:
            self.criterion = NegativeCosineSimilarity()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LIGHTLY_LR)
        self.batch = p.cfg.train.batch_size
        self.dataset = PILImages(p.train.images, lightly_transform(method, p))
        self.step, self.total, self.last_loss = 0, 10_000, float("nan")

    def train_step(self, it: Iterator) -> tuple[float, float]:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        t0 = time.perf_counter()
        (x0, x1), _ = next(it)
        t1 = time.perf_counter()
        m, model = self.model, self.model
        if self.method == "simclr":
            loss = self.criterion(m(x0), m(x1))
        elif self.method == "moco_v2":
            momentum = cosine_schedule(self.step, self.total, 0.996, 1)
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            loss = self.criterion(m(x0), m.forward_momentum(x1))
        elif self.method == "byol":
            momentum = cosine_schedule(self.step, self.total, 0.996, 1)
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            p0, z0 = m(x0), m.forward_momentum(x0)
            p1, z1 = m(x1), m.forward_momentum(x1)
            loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        else:
            z0, p0 = m(x0)
            z1, p1 = m(x1)
            loss = 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))
        value = self.last_loss = loss.item()
        assert np.isfinite(value), f"lightly loss became {value}"
        loss.backward()
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

    def median(self, name: str) -> Timing:
        ts = self.results[name]
        return Timing(
            statistics.median(t.images_per_s for t in ts),
            statistics.median(t.data_ms for t in ts),
            statistics.median(t.step_ms for t in ts),
        )


def bench(setting: Setting, method: str, args: argparse.Namespace, cache: dict) -> Row:
    p = prepare(setting, method, cache)
    # "default" is what the trainer runs: the recipe's precision, or fp32 where this CPU has no
    # native bf16 (effective_precision falls back, with a warning).
    recipe = p.cfg.train.precision if args.precision == "default" else "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision = effective_precision(recipe, torch.device("cpu"))
    contenders: dict[str, Any] = {"twinview": TwinviewRunner(p, precision)}
    if precision != "fp32":
        contenders["twinview fp32"] = TwinviewRunner(p, "fp32")
    contenders["lightly"] = LightlyRunner(method, p)
    results: dict[str, list[Timing]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, runner in contenders.items():
            t = runner.run(args.warmup, args.steps)
            results[name].append(t)
            print(
                f"  {setting.name:8s} {method:8s} round {r + 1}/{args.rounds} {name:14s} "
                f"{t.images_per_s:8.1f} img/s (data {t.data_ms:6.1f} ms, step {t.step_ms:7.1f} "
                "ms per step)",
                flush=True,
            )
    return Row(setting.name, method, precision, setting.batch_size, results)


def table(rows: list[Row]) -> str:
    head = (
        "| setting | method | batch | twinview precision | twinview img/s | twinview fp32 img/s "
        "| lightly img/s | ratio default | ratio fp32 | twinview data / step ms "
        "| lightly data / step ms |\n|" + "---|" * 11
    )
    lines = [head]
    for row in rows:
        tv, lt = row.median("twinview"), row.median("lightly")
        tv32 = row.median("twinview fp32") if "twinview fp32" in row.results else tv
        lines.append(
            f"| {row.setting} | {row.method} | {row.batch} | {row.precision} "
            f"| {tv.images_per_s:.1f} | {tv32.images_per_s:.1f} | {lt.images_per_s:.1f} "
            f"| {tv.images_per_s / lt.images_per_s:.2f}x "
            f"| {tv32.images_per_s / lt.images_per_s:.2f}x "
            f"| {tv32.data_ms:.0f} / {tv32.step_ms:.0f} | {lt.data_ms:.0f} / {lt.step_ms:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="convnet,resnet18")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
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
    parser.add_argument("--out", default=None, help="also write the results table (Markdown)")
    args = parser.parse_args(argv)
    known = settings(args.resnet_batch, args.subset)
    chosen = [s.strip() for s in args.settings.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in chosen:
        if name not in known:
            parser.error(f"--settings: unknown setting {name!r}; choose from {sorted(known)}")
    for m in methods:
        if m not in METHOD_NAMES:
            parser.error(f"--methods: unknown method {m!r}; choose from {list(METHOD_NAMES)}")
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


if __name__ == "__main__":
    main()
