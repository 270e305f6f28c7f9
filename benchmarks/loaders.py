"""Loader throughput beside the training step: is a run bound by data or by compute?

Measures images/s of

1. the in-memory loader on Fashion-MNIST (whole train split on the device, the default
   config's views made on the device, no workers);
2. the folder loader on a generated folder of JPEGs (default 10,000 at 96 x 96) with 2 decoding
   workers: decoding + geometry in the workers, photometry on the device; first epoch (worker
   start-up included) and second epoch (persistent workers), plus decoding alone;
   the same folder written as WebDataset tar shards (``twinview shards``, 1,000 per shard),
   streamed by the shard loader with the same workers and views: reading is sequential, so
   the difference is file-open and random-read cost against tar streaming;
3. the training step alone (forward, backward, optimizer step, momentum update) of the default
   config (``twinview pretrain`` with no arguments: SimCLR, ConvNet, batch 256, Fashion-MNIST),
   on a fixed batch of views.

When (1) or (2) is well above (3) the run is compute-bound. Not a test: numbers depend on the
machine; see BENCHMARKS.md for recorded results.

    python benchmarks/loaders.py [--device cuda] [--batches 40] [--steps 10] [--out FILE.md]
        [--jpegs 10000] [--only folder,shards]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from machine import cpu_name
from PIL import Image

from twinview.config import PretrainConfig, resolve_defaults
from twinview.data import FolderLoader, ImageFolder, SyntheticShapes, build_loader
from twinview.data.shard_loader import ShardLoader
from twinview.data.shard_writer import write_shards
from twinview.data.shards import ShardSource
from twinview.run.data import build_data, view_size
from twinview.train.build import (
    backbone_spec,
    build_model,
    build_run_optimizer,
    build_run_views,
)
from twinview.views import build_views


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(loader, batches: int, device: torch.device) -> tuple[float, float]:
    """(mean, best) images/s over ``batches`` batches after one warm-up batch.

    The best single batch approximates the throughput of an unshared machine; the mean is what
    a run on this machine, as loaded as it was, would have seen.
    """
    iterator = iter(loader)
    next(iterator)
    _sync(device)
    times, count = [], 0
    for _ in range(batches):
        start = time.perf_counter()
        batch = next(iterator, None)
        _sync(device)
        if batch is None:
            break
        times.append(time.perf_counter() - start)
        count += batch.views[0].shape[0]
    return count / sum(times), int(loader.batch_size) / min(times)


def _epoch_rate(loader, device: torch.device) -> float:
    """images/s over one whole epoch, start-up included."""
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += batch.views[0].shape[0]
    _sync(device)
    return count / (time.perf_counter() - start)


def make_jpeg_folder(folder: Path, n: int, size: int) -> Path:
    """n JPEGs (synthetic shapes, quality 90) in 10 class folders; reused when already there."""
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return folder
    chunk = 1000
    for start in range(0, n, chunk):
        shapes = SyntheticShapes(min(chunk, n - start), size=size, seed=start)
        for i in range(len(shapes)):
            image, label = shapes[i]
            target = folder / f"class{label}" / f"{start + i:06d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(target, quality=90)
    return folder


def train_step_rate(
    cfg: PretrainConfig, device: torch.device, steps: int
) -> tuple[float, float, str]:
    """(mean, best) images/s of the training step alone, default config, fixed batch of views."""
    data = build_data(cfg)
    size = view_size(cfg, data)
    views = build_run_views(cfg, cfg.method.name, size)
    spec = backbone_spec(cfg, data.channels, size, views)
    method = build_model(cfg, spec, device, 1)
    optimizer = build_run_optimizer(cfg, method)
    images = data.train.images[: cfg.train.batch_size].to(device)
    batch = views(images, torch.Generator(device).manual_seed(0))

    def step(progress: float) -> None:
        out = method(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.on_step_end(progress)

    step(0.0)  # warm-up
    times = []
    for i in range(steps):
        _sync(device)
        start = time.perf_counter()
        step(i / steps)
        _sync(device)
        times.append(time.perf_counter() - start)
    label = f"{cfg.method.name} + {cfg.backbone.name}, {len(batch)} views of {size} px"
    b = cfg.train.batch_size
    return b * len(times) / sum(times), b / min(times), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, default=60, help="timed batches, in-memory loader")
    parser.add_argument("--steps", type=int, default=15, help="timed training steps")
    parser.add_argument("--jpegs", type=int, default=10_000)
    parser.add_argument("--jpeg-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folder", default="/tmp/twinview-bench-jpegs")
    parser.add_argument("--shards", default="/tmp/twinview-bench-shards")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--only", default="memory,folder,shards,step", help="sections to run")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    only = set(args.only.split(","))
    device = torch.device(args.device)
    cfg = resolve_defaults(PretrainConfig())
    batch_size = cfg.train.batch_size
    rows: list[tuple[str, str]] = []

    def record(name: str, text: str) -> None:
        rows.append((name, text))
        print(f"{name:<66} {text}", flush=True)

    # 1. In-memory loader, Fashion-MNIST, the default config's views.
    data = build_data(cfg)
    size = view_size(cfg, data)
    views = build_run_views(cfg, cfg.method.name, size)
    for with_views in (True, False) if "memory" in only else ():
        loader = build_loader(
            data.train,
            batch_size=batch_size,
            views=views if with_views else None,
            device=device,
            mode="memory",
        )
        rate, best = _rate(loader, args.batches, device)
        what = f"{len(views)} views of {size} px" if with_views else "no views (indexing only)"
        name = f"in-memory loader, Fashion-MNIST, {what}, B={batch_size}"
        record(name, f"{rate:,.0f} img/s (best batch {best:,.0f})")

    # 2. Folder loader, generated JPEGs, 2 workers.
    start = time.perf_counter()
    folder = make_jpeg_folder(Path(args.folder), args.jpegs, args.jpeg_size)
    made = time.perf_counter() - start
    start = time.perf_counter()
    source = ImageFolder(folder)
    scanned = time.perf_counter() - start
    name = f"image folder scan + header check, {len(source)} JPEGs"
    record(name, f"{scanned:.1f} s (generation {made:.0f} s)")
    jpeg_views = build_views(cfg.views.preset or "simclr", size=args.jpeg_size)

    def two_epochs(kind: str, loader_class, source) -> None:
        """Epoch 1 and 2 images/s of a decoding loader, with the views and decoding only."""
        for with_views in (True, False):
            loader = loader_class(
                source,
                batch_size=batch_size,
                geometry=jpeg_views.geometry if with_views else None,
                photometry=jpeg_views.photometry if with_views else None,
                device=device,
                num_workers=args.workers,
            )
            first = _epoch_rate(loader, device)
            second = _epoch_rate(loader, device)
            what = "simclr views" if with_views else "decoding only"
            name = f"{kind} loader, {args.jpeg_size} px JPEGs, {args.workers} workers, {what}"
            record(name, f"epoch 1 {first:,.0f} img/s, epoch 2 {second:,.0f} img/s")

    if "folder" in only:
        two_epochs("folder", FolderLoader, source)

    # 2b. The same images as tar shards, streamed.
    if "shards" in only:
        start = time.perf_counter()
        pattern = write_shards(folder, args.shards, shard_size=args.shard_size, overwrite=True)[
            "train"
        ]
        shards = ShardSource(pattern)
        name = f"twinview shards: {len(shards)} JPEGs -> {len(shards.shards)} tar shards"
        record(name, f"{time.perf_counter() - start:.1f} s")
        two_epochs("shard", ShardLoader, shards)

    # 3. The training step alone.
    if "step" in only:
        step_rate, step_best, label = train_step_rate(cfg, device, args.steps)
        name = f"training step alone ({label}), B={batch_size}"
        record(name, f"{step_rate:,.0f} img/s (best step {step_best:,.0f})")

    machine = (
        f"{cpu_name()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", torch threads {torch.get_num_threads()}"
    )
    table = "| measurement | result |\n|---|---|\n" + "".join(f"| {n} | {v} |\n" for n, v in rows)
    print("\n" + machine + "\n\n" + table)
    if args.out:
        Path(args.out).write_text(f"Machine: {machine}\n\n{table}")


if __name__ == "__main__":
    main()
