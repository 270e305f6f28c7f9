"""GPU pretraining throughput and model FLOPs utilisation (MFU): ResNet-50, 224 px.

For SimCLR and BYOL with their ImageNet recipes (``configs/imagenet/<method>.yaml``: ResNet-50,
the papers' heads and views, bf16 autocast, channels-last) at ``--batch`` images per step on
one GPU, times the trainer's step (``benchmarks/throughput.py``'s ``TwinviewRunner``: loader,
``method(views)``, backward, lr schedule, optimizer step, momentum update) for

- **memory**: ``--images`` random uint8 RGB images held on the GPU, both views made there
  batched (the in-memory loader);
- **folder**: the same number of JPEGs in a folder (written once by this script), decoded and
  cropped by ``--workers`` DataLoader processes, photometry on the GPU (the folder loader);

each with ``torch.compile`` off and on (one compiled model per method serves both data paths).

Images/s counts source images (each gives 2 views of 224 px). MFU = (FLOPs of one training
step, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager model: convolutions
and matrix products, forward and backward, both views, the momentum branch included) x steps/s
/ ``--peak-tflops`` (default 989: the H100 / H200 SXM dense bf16 datasheet figure; 790 is what
an 8192^3 bf16 matmul reached on the lent H200, see KINDS.md).

    python benchmarks/gpu.py [--methods simclr,byol] [--data memory,folder]
        [--compile off,on] [--batch 256] [--steps 30] [--warmup 10] [--images 8192]
        [--workers 14] [--size 224] [--backbone resnet50] [--device cuda] [--out FILE.md]

Run it on a GPU machine through ``benchmarks/gpu.sh``. It also runs on a CPU with small
settings (``--device cpu --backbone resnet18 --size 32 --batch 8``) to check the script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from machine import cpu_name  # noqa: E402
from throughput import Prepared, TwinviewRunner  # noqa: E402

from twinview.config import load_config  # noqa: E402
from twinview.data import ArraySource, ImageFolder, SyntheticShapes, build_loader  # noqa: E402
from twinview.devices import fast_cuda_kernels  # noqa: E402
from twinview.train.build import build_run_views  # noqa: E402
from twinview.train.precision import autocast  # noqa: E402


def make_jpeg_folder(folder: Path, n: int, size: int, workers: int) -> Path:
    """``n`` JPEGs (synthetic shapes, ``size`` px, quality 90), written by ``workers`` processes."""
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return folder
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, -(-n // max(1, workers)))
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(
            pool.map(
                _write_chunk, [(folder, s, min(chunk, n - s), size) for s in range(0, n, chunk)]
            )
        )
    return folder


def _write_chunk(job: tuple[Path, int, int, int]) -> None:
    folder, start, count, size = job
    shapes = SyntheticShapes(count, size=size, seed=start)
    for i in range(count):
        image, label = shapes[i]
        target = folder / f"class{label}" / f"{start + i:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(target, quality=90)


def step_flops(runner: TwinviewRunner) -> float:
    """FLOPs of one training step (forward + backward), counted on the eager model."""
    from torch.utils.flop_counter import FlopCounterMode

    views = next(runner.batches).views
    if runner.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    counter = FlopCounterMode(display=False)
    with counter, autocast(runner.precision, runner.device):
        out = runner.method(views)
        out.loss.backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def use_data(runner: TwinviewRunner, source: Any, mode: str, workers: int, views: Any) -> None:
    runner.loader = build_loader(
        source,
        batch_size=runner.batch,
        views=views,
        device=runner.device,
        mode=mode,
        num_workers=workers,
    )
    runner.batches = runner._forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="simclr,byol")
    parser.add_argument("--data", default="memory,folder")
    parser.add_argument("--compile", default="off,on")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--jpeg-size", type=int, default=256, help="side of the JPEGs written")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--folder", default="/tmp/twinview-gpu-jpegs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but no CUDA GPU is visible (use --device cpu to check)")
        fast_cuda_kernels()
    methods, kinds, switches = (x.split(",") for x in (args.methods, args.data, args.compile))
    for flag, values, valid in (
        ("--methods", methods, ("simclr", "moco_v2", "moco_v3", "byol", "simsiam")),
        ("--data", kinds, ("memory", "folder")),
        ("--compile", switches, ("off", "on")),
    ):
        for v in values:
            if v not in valid:
                parser.error(f"{flag}: unknown value {v!r}; choose from {', '.join(valid)}")
    compiles = [c == "on" for c in switches]
    folder = Path(args.folder)
    if "folder" in kinds:
        t0 = time.perf_counter()
        make_jpeg_folder(folder, args.images, args.jpeg_size, args.workers)
        print(f"JPEG folder {folder}: {args.images} files in {time.perf_counter() - t0:.0f} s")
    g = torch.Generator().manual_seed(0)
    shape = (args.images, 3, args.jpeg_size, args.jpeg_size)
    memory = ArraySource(torch.randint(0, 256, shape, generator=g, dtype=torch.uint8))
    sources = {"memory": memory, "folder": ImageFolder(folder) if "folder" in kinds else None}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    env = (
        f"torch {torch.__version__}, {name}, {args.backbone} {args.size} px, batch {args.batch}, "
        f"{args.precision}, channels-last, {args.workers} decoding workers, {args.steps} timed "
        f"steps after {args.warmup} warm-up, peak {args.peak_tflops:g} TFLOP/s"
    )
    print(env, flush=True)
    rows = []
    for method in methods:
        cfg = load_config(
            ROOT.parent / "configs" / "imagenet" / f"{method}.yaml",
            [
                f"data.dataset={folder}",
                f"backbone.name={args.backbone}",
                f"views.size={args.size}",
                f"train.batch_size={args.batch}",
                f"train.precision={args.precision}",
            ],
        )
        views = build_run_views(cfg, method, args.size)
        for compiled in compiles:
            p = Prepared(cfg, memory, 3, args.size, views)
            runner = TwinviewRunner(
                p, args.precision, device=str(device), compile=compiled, mode="memory"
            )
            flops = step_flops(runner)
            for kind in kinds:
                use_data(runner, sources[kind], kind, args.workers, views)
                t0 = time.perf_counter()
                for _ in range(args.warmup):
                    runner.train_step()
                warm = time.perf_counter() - t0
                times = []
                for _ in range(args.steps):
                    d, w = runner.train_step()
                    times.append(d + w)
                step_s = statistics.median(times)
                rate = args.batch / step_s
                mean_rate = args.batch * len(times) / sum(times)
                mfu = flops / step_s / (args.peak_tflops * 1e12)
                row = (method, kind, "on" if compiled else "off", rate, mean_rate, mfu, warm)
                rows.append(row)
                print(
                    f"  {method:7s} {kind:7s} compile {row[2]:3s}: {rate:8.1f} img/s (median "
                    f"step), {mean_rate:8.1f} img/s (mean), MFU {100 * mfu:5.1f}%, "
                    f"{flops / args.batch / 1e9:.1f} GFLOP per image, warm-up {warm:.0f} s",
                    flush=True,
                )
            del runner
            if device.type == "cuda":
                torch.cuda.empty_cache()
    lines = [
        "| method | data | compile | img/s (median step) | img/s (mean) | MFU | warm-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, k, c, rate, mean_rate, mfu, warm in rows:
        lines.append(
            f"| {m} | {k} | {c} | {rate:.0f} | {mean_rate:.0f} | {100 * mfu:.1f}% | {warm:.0f} |"
        )
    text = env + "\n\n" + "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
