"""Label-free health metrics of an embedding: is the representation collapsing?

All take (N, d) embeddings (backbone features or projector outputs) of N images:

- :func:`effective_rank`: RankMe (Garrido et al. 2023, "RankMe: Assessing the Downstream
  Performance of Pretrained Self-Supervised Representations by Their Rank"), the exponential of
  the entropy of the normalised singular values; ~1 under complete collapse, up to min(N, d).
- :func:`embedding_std`: mean over dimensions of the per-dimension std of the l2-normalised
  embeddings (SimSiam, Chen & He 2021, sec. 4.1): ~0 under collapse, ~1/sqrt(d) when the
  embeddings spread isotropically over the sphere. Reported also as ``std * sqrt(d)``.
- :func:`alignment` and :func:`uniformity` (Wang & Isola 2020, "Understanding Contrastive
  Representation Learning through Alignment and Uniformity on the Hypersphere"): expected
  distance between positive pairs (lower = views agree) and the log of the mean Gaussian
  potential over all pairs (lower = more uniform on the sphere; -4 is about the floor for t=2
  in high dimension, 0 is total collapse).

:func:`health_report` collects them into one dict, :func:`is_collapsed` turns a report into a
warning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RANK_RATIO_THRESHOLD = 0.01
"""Default: warn when RankMe < 1% of min(N, d) -- dimensional collapse onto a few directions.

Complete collapse gives RankMe ~ 1, i.e. a ratio of ~1/min(N, d). For calibration, randomly
initialised networks on Fashion-MNIST (ConvNet and ResNet-18 features, the SimCLR / MoCo v3 /
BYOL / SimSiam projector outputs in eval mode) measured ratios of 0.03 to 0.10."""

STD_RATIO_THRESHOLD = 0.02
"""Default: warn when ``std * sqrt(d) < 0.02`` -- l2-normalised embeddings have almost no spread.

Complete collapse (SimSiam without stop-gradient, Chen & He 2021, fig. 2) drives the ratio to
~0, healthy training keeps it near 1. Uncentred random-init embeddings are already quite
concentrated: the same networks as above measured 0.09 to 0.12, hence the low threshold."""


def _check_2d(name: str, z: Tensor, min_rows: int = 1) -> None:
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-d (N, d) embeddings, got shape {tuple(z.shape)}")
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise ValueError(
            f"{name} needs at least {min_rows} rows and 1 column, got shape {tuple(z.shape)}"
        )


def effective_rank(z: Tensor, *, eps: float = 1e-7) -> float:
    """RankMe of z (N, d): ``exp(-sum_k p_k log p_k)``, ``p_k = sigma_k / sum(sigma) + eps``.

    Computed in float64, without centring (as in the paper). Lies in [1, min(N, d)] up to eps.
    """
    _check_2d("z", z)
    sigma = torch.linalg.svdvals(z.detach().double())
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(z: Tensor) -> float:
    """Mean over the d dimensions of the std (over N) of the l2-normalised rows of z (N, d).

    Compare with ``1 / sqrt(d)``, the value for embeddings spread isotropically on the sphere;
    :func:`health_report` gives the ratio ``std * sqrt(d)``.
    """
    _check_2d("z", z, min_rows=2)
    return float(F.normalize(z.detach().float(), dim=1).std(dim=0).mean())


def alignment(z1: Tensor, z2: Tensor, *, alpha: float = 2.0) -> float:
    """``E ||f(x) - f(y)||^alpha`` over positive pairs (rows of z1, z2 (N, d)) on the unit sphere.

    0 when the two views embed identically; 4 (alpha = 2) when they are antipodal.
    """
    _check_2d("z1", z1)
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(z1.shape)} vs {tuple(z2.shape)}"
        )
    u = F.normalize(z1.detach().float(), dim=1)
    v = F.normalize(z2.detach().float(), dim=1)
    return float((u - v).norm(dim=1).pow(alpha).mean())


def uniformity(z: Tensor, *, t: float = 2.0, max_samples: int = 4096, seed: int = 0) -> float:
    """``log E exp(-t ||f(x) - f(y)||^2)`` over all pairs x != y of rows of z (N, d).

    Rows are l2-normalised. With N > ``max_samples`` a random subset of ``max_samples`` rows
    (fixed ``seed``, so repeated calls agree) is used: the pairwise distances
    (``torch.pdist``) take ``max_samples^2 / 2`` floats (~32 MB at the default).
    """
    _check_2d("z", z, min_rows=2)
    u = F.normalize(z.detach().float(), dim=1)
    if u.shape[0] > max_samples:
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(u.shape[0], generator=generator)[:max_samples]
        u = u[rows.to(u.device)]
    sq_dist = torch.pdist(u).pow(2)
    return float(torch.logsumexp(-t * sq_dist, dim=0) - math.log(sq_dist.numel()))


def health_report(
    z1: Tensor, z2: Tensor | None = None, *, max_samples: int = 4096
) -> dict[str, float]:
    """All health metrics of embeddings z1 (N, d), with z2 (N, d) the second views if given.

    RankMe and the std use at most ``max_samples`` rows (the first ones; pass a shuffled set),
    uniformity a seeded random subset of that many.

    Returns:
        ``{"rankme", "rankme_ratio" (rankme / min(N, d)), "std", "std_ratio" (std * sqrt(d)),
        "alignment" (only with z2), "uniformity"}``.
    """
    _check_2d("z1", z1, min_rows=2)
    subset = z1[:max_samples]
    rankme = effective_rank(subset)
    std = embedding_std(subset)
    report = {
        "rankme": rankme,
        "rankme_ratio": rankme / min(subset.shape),
        "std": std,
        "std_ratio": std * math.sqrt(z1.shape[1]),
    }
    if z2 is not None:
        report["alignment"] = alignment(z1, z2)
    report["uniformity"] = uniformity(z1, max_samples=max_samples)
    return report


def is_collapsed(
    report: dict[str, float],
    *,
    rank_ratio_threshold: float = RANK_RATIO_THRESHOLD,
    std_ratio_threshold: float = STD_RATIO_THRESHOLD,
) -> str | None:
    """A human-readable warning if ``report`` (from :func:`health_report`) shows collapse.

    Checks ``std_ratio < std_ratio_threshold`` (complete collapse: all embeddings point the
    same way) and ``rankme_ratio < rank_ratio_threshold`` (dimensional collapse: they span only
    a few directions). Returns ``None`` when neither holds.
    """
    problems = []
    if report["std_ratio"] < std_ratio_threshold:
        problems.append(
            f"std_ratio={report['std_ratio']:.3g} < {std_ratio_threshold:g}: the l2-normalised "
            f"embeddings barely vary across images (complete collapse to a constant)"
        )
    if report["rankme_ratio"] < rank_ratio_threshold:
        problems.append(
            f"rankme={report['rankme']:.3g} (ratio {report['rankme_ratio']:.3g} < "
            f"{rank_ratio_threshold:g}): the embeddings span only a few directions "
            f"(dimensional collapse)"
        )
    if not problems:
        return None
    return (
        "representation collapse suspected: "
        + "; ".join(problems)
        + ". Check the learning rate, the stop-gradient / momentum encoder, the predictor, and "
        "the augmentation strength."
    )
