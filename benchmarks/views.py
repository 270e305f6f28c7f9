"""Views throughput: images/s producing 2 SimCLR views (CIFAR recipe) of 32x32 RGB, batch 256.

Side by side, in one run, on the same synthetic uint8 images:

- ``twinview``: ``build_views("simclr_cifar", size=32)`` on a uint8 batch, batched in the main
  process (the in-memory path);
- ``twinview split``: ``MultiView.geometry`` per image in 2 DataLoader workers, then
  ``MultiView.photometry`` batched in the main process (the image-folder path);
- (a) ``lightly + DataLoader``: lightly's ``SimCLRTransform`` (torchvision transforms on PIL
  images) per sample in a DataLoader with 2 workers, the way lightly feeds training;
- (b) ``kornia``: ``kornia.augmentation`` batched in the main process;
- (c) ``torchvision v2``: ``torchvision.transforms.v2`` per sample on uint8 tensors, main process.

All use the same recipe: random resized crop scale (0.08, 1), flip 0.5, colour jitter
(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, ImageNet normalisation. Each contender runs
``--rounds`` times, interleaved with the others, and the median is reported. ``--threads``
sets the intra-op threads of the main process for every contender (DataLoader workers use 1).

    python benchmarks/views.py [--batch 256] [--batches 8] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_name

from twinview.views import IMAGENET_MEAN, IMAGENET_STD, MultiView, build_views

SIZE = 32


class _PILDataset(Dataset):
    """uint8 HWC images -> PIL -> a transform returning the views (lightly's way)."""

    def __init__(self, images: np.ndarray, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> object:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


class _GeometryDataset(Dataset):
    """uint8 CHW tensors -> ``MultiView.geometry`` per image (twinview's worker path)."""

    def __init__(self, images: torch.Tensor, views: MultiView) -> None:
        self.images, self.views = images, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return self.views.geometry(self.images[i])


def _loader_rate(loader: DataLoader, after: Callable | None = None) -> Callable[[], float]:
    def run() -> float:
        n, start = 0, time.perf_counter()
        for batch in loader:
            views = after(batch) if after is not None else batch
            n += views[0].shape[0]
        return n / (time.perf_counter() - start)

    run()  # warm up: start the persistent workers
    return run


def _batched_rate(
    fn: Callable[[torch.Tensor], list[torch.Tensor]], images: torch.Tensor, batch: int, batches: int
) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        for i in range(batches):
            fn(images[i * batch : (i + 1) * batch])
        return batches * batch / (time.perf_counter() - start)

    fn(images[:batch])  # warm up
    return run


def contenders(args: argparse.Namespace) -> dict[str, Callable[[], float]]:
    n = args.batch * args.batches
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    views = build_views("simclr_cifar", size=SIZE)
    out: dict[str, Callable[[], float]] = {}
    out["twinview (in-memory, batched)"] = _batched_rate(views, images, args.batch, args.batches)
    split = DataLoader(
        _GeometryDataset(images, views), batch_size=args.batch, num_workers=args.workers,
        persistent_workers=True,
    )  # fmt: skip
    out["twinview split (geometry in workers)"] = _loader_rate(split, views.photometry)

    if "lightly" not in args.skip:
        from lightly.transforms import SimCLRTransform

        transform = SimCLRTransform(input_size=SIZE, cj_strength=0.5, gaussian_blur=0.0)
        hwc = images.permute(0, 2, 3, 1).numpy()
        loader = DataLoader(
            _PILDataset(hwc, transform), batch_size=args.batch, num_workers=args.workers,
            persistent_workers=True,
        )  # fmt: skip
        out["(a) lightly SimCLRTransform, DataLoader"] = _loader_rate(loader)
    if "kornia" not in args.skip:
        import kornia.augmentation as K

        aug = torch.nn.Sequential(
            K.RandomResizedCrop((SIZE, SIZE), scale=(0.08, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)),
        )

        def kornia_views(x: torch.Tensor) -> list[torch.Tensor]:
            x = x.float() / 255
            return [aug(x), aug(x)]

        out["(b) kornia.augmentation, batched"] = _batched_rate(
            kornia_views, images, args.batch, args.slow_batches
        )
    if "tv2" not in args.skip:
        from torchvision.transforms import v2

        tv2 = v2.Compose([
            v2.RandomResizedCrop(SIZE, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])  # fmt: skip

        def tv2_views(x: torch.Tensor) -> list[torch.Tensor]:
            return [torch.stack([tv2(im) for im in x]) for _ in range(2)]

        out["(c) torchvision.transforms.v2, per sample"] = _batched_rate(
            tv2_views, images, args.batch, args.slow_batches
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8, help="batches per round (fast ones)")
    parser.add_argument("--slow-batches", type=int, default=2, help="batches per round, kornia/v2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["lightly", "kornia", "tv2"])
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads of the main process (all)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    runs = contenders(args)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(run())
    median = {name: statistics.median(r) for name, r in rates.items()}
    ours = median["twinview (in-memory, batched)"]
    print(
        f"2 SimCLR views of {SIZE}x{SIZE} RGB, batch {args.batch}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_name()}"
    )
    print("| pipeline | images/s (median) | twinview is x faster |")
    print("|---|---:|---:|")
    for name, rate in median.items():
        print(f"| {name} | {rate:,.0f} | {ours / rate:.1f} |")


if __name__ == "__main__":
    main()
