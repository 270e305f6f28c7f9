"""What the evaluation of a run will cost, measured at ``train.budget``'s planning step.

Measured, not guessed, on the main process; every estimate gets :data:`EVAL_MARGIN` on top:

- feature extraction: the evaluation backbone timed on one eval batch (512 validation images,
  topped up from the training split; the second of two passes), times the images of each epoch
  end (validation split and kNN bank; timed again under the monitors' bf16 autocast when they
  use it) and of the end (test split and the whole training split, in fp32);
- kNN: :func:`~twinview.eval.knn.knn_accuracy` timed on random features of the backbone's width
  at two sample sizes and extrapolated linearly in queries x bank (:func:`_knn_seconds`); the
  raw-pixel baseline alike, at the images' pixel count;
- health: :func:`~twinview.eval.health.health_report` timed on random tensors of the shapes an
  epoch end sees;
- a checkpoint: the slowest write of this session (the budget writes and times one at the
  planning step when there was none yet); at every epoch end and every
  ``train.checkpoint_every_steps``;
- the report: its embedding map timed on 100 random points (400 for UMAP; after a first call,
  which also pays any import or JIT) and scaled to the points it maps (as N^1.5 for UMAP);
  one plot panel timed and counted :data:`REPORT_PANELS` times (a full report's 3 training and
  11 per-epoch panels, the map and the views grid: 0.13 s each on a 2-core CPU); plus
  :data:`REPORT_SECONDS` for the neighbour grid, summary.json and the HTML.

An epoch end already timed in this session (small datasets reach one while measuring) replaces
its estimate when it took longer. Random tensors come from a private generator: the run's RNG
streams are left alone, and the backbone runs in eval mode (no BatchNorm update).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from twinview.train import timing

EVAL_MARGIN = 1.25
REPORT_PANELS = 16
REPORT_SECONDS = 0.5
EVAL_BATCH = 512


@dataclasses.dataclass
class Costs:
    """Seconds of the parts of a run, as measured (:func:`measure_costs`)."""

    step: float  # one optimizer step
    epoch_end: float  # the monitors of an epoch end without validation kNN (health)
    knn_epoch_end: float  # ... with validation kNN
    checkpoint: float  # one checkpoint write
    final: float  # test kNN, raw-pixel baseline, backbone.pt, summary and report


def _timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Seconds of the last of ``repeat`` calls."""
    seconds = 0.0
    for _ in range(repeat):
        start = timing._now()
        fn()
        seconds = timing._now() - start
    return seconds


def _knn_seconds(queries: int, bank: int, dim: int, k: int) -> float:
    """Weighted kNN of ``queries`` against ``bank`` rows of width ``dim``: timed at two sample
    sizes (up to 256 x 4,096 and 1,024 x 16,384) and extrapolated linearly in queries x bank
    (per pair, small searches cost more: scaling the small one alone overestimates 6,000 x
    54,000 threefold)."""
    from twinview.eval.knn import knn_accuracy

    if not (queries and bank and dim):
        return 0.0
    g = torch.Generator().manual_seed(0)  # the run's RNG streams are left alone
    rows = max(256, 2**25 // dim)  # at most 128 MB of random bank

    def timed(q: int, b: int) -> float:
        f_bank, f_query = torch.randn(b, dim, generator=g), torch.randn(q, dim, generator=g)
        y_bank, y_query = torch.randint(10, (b,), generator=g), torch.randint(10, (q,), generator=g)
        return _timed(lambda: knn_accuracy(f_bank, y_bank, f_query, y_query, k=(min(k, b),)))

    large = (min(queries, 1024), min(bank, 16384, rows))
    seconds = timed(*large)
    if large == (queries, bank):
        return seconds
    small = (min(queries, 256), min(bank, 4096, rows))
    pairs, small_pairs = large[0] * large[1], small[0] * small[1]
    per_pair = seconds / pairs
    if pairs > small_pairs:
        per_pair = max(seconds - timed(*small), 0.0) / (pairs - small_pairs)
    return seconds + per_pair * (queries * bank - pairs)


def measure_costs(run: Any, step: float) -> Costs:
    """What the evaluation of ``run`` (a ``_Run``) will cost; see the module docstring."""
    from twinview.eval.features import extract_features
    from twinview.eval.health import health_report
    from twinview.report.embedding_map import UMAP_MAX_POINTS, available_method, map_2d
    from twinview.report.plots import Panel, Series, panels_png

    mon, data, cfg, dim = run.monitors, run.data, run.cfg.monitor, int(run.spec["feature_dim"])
    g = torch.Generator().manual_seed(0)
    per_image = per_image_epoch = 0.0  # the per-epoch kNN may run lowered (Monitors)
    if mon.in_memory:
        val = data.val.images[:EVAL_BATCH]  # topped up from the training split to a full batch
        batch = torch.cat([val, data.train.images[: EVAL_BATCH - val.shape[0]]])
        backbone = run.method.evaluation_backbone()

        def per_image_seconds(dtype: torch.dtype | None) -> float:
            extract = lambda: extract_features(
                backbone, batch, batch_size=EVAL_BATCH, device=run.info.device,
                normalize=mon.transform, autocast_dtype=dtype,
            )  # fmt: skip
            return _timed(extract, repeat=2) / batch.shape[0]

        per_image = per_image_epoch = per_image_seconds(None)
        if getattr(mon, "autocast_dtype", None) is not None:
            per_image_epoch = per_image_seconds(mon.autocast_dtype)
    health = 0.0
    if cfg.health:
        rows = min(4096, run.steps_per_epoch * run.local_batch)
        for buffer, uniformity in ((mon.buffer, True), (mon.feature_buffer, False)):
            if buffer.rows:
                z = torch.randn(max(rows, 2), buffer.rows[0].shape[1], generator=g)
                health += _timed(lambda: health_report(z, include_uniformity=uniformity))  # noqa: B023
    n_train, n_val = len(data.train), len(data.val)
    knn_epoch = health
    if mon.in_memory:
        n_bank = min(n_train, cfg.knn_max_train or n_train) if mon.labeled else 0
        knn_epoch += (n_val + n_bank) * per_image_epoch
        knn_epoch += _knn_seconds(n_val, n_bank, dim, cfg.knn_k)
        if cfg.health and n_val >= 2:
            z = torch.randn(min(n_val, 4096), dim, generator=g)
            knn_epoch += _timed(lambda: health_report(z, include_uniformity=False))
    final, points = 0.0, 0
    if mon.in_memory and mon.labeled:
        test = data.test if data.test is not None and len(data.test) else data.val
        n_test, pixels = len(test), math.prod(test.images.shape[1:])
        final = (n_test + n_train) * per_image + _knn_seconds(n_test, n_train, dim, 200)
        final += _knn_seconds(n_test, n_train, pixels, 200)
        cap = {"tsne": 1000, "umap": UMAP_MAX_POINTS}.get(available_method(), 5000)
        points = min(n_test, cap)
    if points >= 3 and available_method() != "pca":
        # The first call pays imports and JIT (numba for UMAP). t-SNE scales about linearly from
        # 100 points; UMAP faster than linearly: timed at 400 and scaled as N^1.5 (0.2 -> 1.0 s
        # for 400 -> 2000 points on 2 cores with exact neighbours: N^1.5 errs on the safe side).
        n = 400 if available_method() == "umap" else 100
        x = torch.randn(n, dim, generator=g)
        power = 1.5 if available_method() == "umap" else 1.0
        final += _timed(lambda: map_2d(x, seed=0), repeat=2) * max(1.0, points / n) ** power
    steps = np.arange(100.0)
    panel = Panel("loss", "step", series=[Series("loss", steps, np.linspace(1.0, 0.0, 100))])
    final += _timed(lambda: panels_png([panel]), repeat=2) * REPORT_PANELS
    checkpoint = max(run.timing.checkpoints)  # at least one: see RunBudget.after_step
    ends = run.timing.epoch_ends  # epoch ends already timed in this session
    return Costs(
        step=step,
        epoch_end=max([health * EVAL_MARGIN] + [s for s, knn in ends if not knn]),
        knn_epoch_end=max([knn_epoch * EVAL_MARGIN] + [s for s, knn in ends if knn]),
        checkpoint=checkpoint,
        final=final * EVAL_MARGIN + REPORT_SECONDS + checkpoint,
    )
