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
- :func:`mean_cosine`: mean cosine similarity over all pairs of distinct rows: 1 when every
  embedding points the same way, whatever their norms.
- :func:`mean_norm`: mean l2 norm of the rows (the raw scale: huge when training exploded).

:func:`health_report` collects them into one dict; :func:`is_collapsed` and :func:`is_exploded`
turn a report into a warning. Rows are l2-normalised without overflow (each row is divided by
its largest entry first), so features of 1e26 are measured, not turned into zeros; rows with a
NaN or inf are counted (``finite_fraction``) and left out of the other metrics.
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

COSINE_COLLAPSE_THRESHOLD = 0.9999
"""Default: warn when the mean pairwise cosine similarity exceeds 0.9999 -- one direction.

Backbone features are ReLU outputs, all non-negative, so even healthy ones are far from
isotropic: randomly initialised ConvNet / ResNet-18 features on Fashion-MNIST (eval mode)
measured 0.975 to 0.989 (train mode 0.84 to 0.91; projector outputs 0.0 to 0.37). 0.9999 leaves
a factor 100 in ``1 - cosine`` above the worst of those. Since ``std_ratio <= sqrt(1 - cosine)``,
this is the complete-collapse case of the std check, said in words anyone can read."""

EXPLOSION_NORM_THRESHOLD = 1e4
"""Default: warn when the mean l2 norm of the rows exceeds 1e4 -- the scale has exploded.

BatchNorm / LayerNorm keep coordinates O(1), so norms grow like sqrt(d): randomly initialised
ConvNet / ResNet-18 features and the SimCLR / BYOL / SimSiam / MoCo v3 projector outputs on
Fashion-MNIST measured 1.2 to 45. 1e4 is 200x above, and close to where fp16 (max 65504)
overflows: a run with lr=1e9 reached 1e26 while its loss stayed finite."""


def _check_2d(name: str, z: Tensor, min_rows: int = 1) -> None:
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-d (N, d) embeddings, got shape {tuple(z.shape)}")
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise ValueError(
            f"{name} needs at least {min_rows} rows and 1 column, got shape {tuple(z.shape)}"
        )


def unit_rows(z: Tensor) -> Tensor:
    """The rows of z (N, d) scaled to unit l2 norm in float32, without overflow.

    Each row is divided by its largest absolute entry first: ``F.normalize`` alone squares the
    entries, and rows of 1e20 or more overflow float32 to inf and come out as zeros. All-zero
    rows stay zero; rows with a NaN or inf come out NaN.
    """
    z = z.detach().float()
    scale = z.abs().amax(dim=1, keepdim=True)
    return F.normalize(z / torch.where(scale > 0, scale, torch.ones_like(scale)), dim=1)


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
    return float(unit_rows(z).std(dim=0).mean())


def alignment(z1: Tensor, z2: Tensor, *, alpha: float = 2.0) -> float:
    """``E ||f(x) - f(y)||^alpha`` over positive pairs (rows of z1, z2 (N, d)) on the unit sphere.

    0 when the two views embed identically; 4 (alpha = 2) when they are antipodal.
    """
    _check_2d("z1", z1)
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(z1.shape)} vs {tuple(z2.shape)}"
        )
    u, v = unit_rows(z1), unit_rows(z2)
    return float((u - v).norm(dim=1).pow(alpha).mean())


def uniformity(z: Tensor, *, t: float = 2.0, max_samples: int = 4096, seed: int = 0) -> float:
    """``log E exp(-t ||f(x) - f(y)||^2)`` over all pairs x != y of rows of z (N, d).

    Rows are l2-normalised. With N > ``max_samples`` a random subset of ``max_samples`` rows
    (fixed ``seed``, so repeated calls agree) is used: the pairwise distances
    (``torch.pdist``) take ``max_samples^2 / 2`` floats (~32 MB at the default).
    """
    _check_2d("z", z, min_rows=2)
    u = unit_rows(z)
    if u.shape[0] > max_samples:
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(u.shape[0], generator=generator)[:max_samples]
        u = u[rows.to(u.device)]
    sq_dist = torch.pdist(u).pow(2)
    return float(torch.logsumexp(-t * sq_dist, dim=0) - math.log(sq_dist.numel()))


def mean_cosine(z: Tensor) -> float:
    """Mean cosine similarity over all N (N - 1) pairs of distinct rows of z (N, d).

    ``(||sum_i u_i||^2 - sum_i ||u_i||^2) / (N (N - 1))`` with ``u_i`` the unit rows, in float64:
    O(N d), no N x N matrix. 1 when all rows point the same way, ~0 for isotropic rows.
    """
    _check_2d("z", z, min_rows=2)
    u = unit_rows(z).double()
    n = u.shape[0]
    return float((u.sum(dim=0).pow(2).sum() - u.pow(2).sum()) / (n * (n - 1)))


def mean_norm(z: Tensor) -> float:
    """Mean l2 norm of the rows of z (N, d), in float64 and without overflow (inf if any row
    holds an inf, NaN if any holds a NaN)."""
    _check_2d("z", z)
    z = z.detach().double()
    if bool(z.isnan().any()) or bool(z.isinf().any()):
        return float("nan") if bool(z.isnan().any()) else math.inf
    scale = z.abs().amax(dim=1, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return float(((z / safe).norm(dim=1) * safe.squeeze(1)).mean())


def health_report(
    z1: Tensor,
    z2: Tensor | None = None,
    *,
    max_samples: int = 4096,
    include_uniformity: bool = True,
) -> dict[str, float]:
    """All health metrics of embeddings z1 (N, d), with z2 (N, d) the second views if given.

    RankMe and the std use at most ``max_samples`` rows (the first ones; pass a shuffled set),
    uniformity a seeded random subset of that many (the costliest metric, O(max_samples^2 d):
    ``include_uniformity=False`` leaves it out). Rows with a NaN or inf (in z1 or z2) are
    left out of every metric but ``finite_fraction``; with fewer than 2 finite rows the report
    holds only ``finite_fraction`` and ``mean_norm`` (NaN when no row is finite).

    Returns:
        ``{"finite_fraction", "mean_norm", "rankme", "rankme_ratio" (rankme / min(N, d)),
        "std", "std_ratio" (std * sqrt(d)), "mean_cosine", "alignment" (only with z2),
        "uniformity" (unless left out)}``.
    """
    _check_2d("z1", z1, min_rows=2)
    finite = torch.isfinite(z1).all(dim=1)
    if z2 is not None:
        if z1.shape != z2.shape:
            raise ValueError(
                f"z1 and z2 must have the same shape, got {tuple(z1.shape)} vs {tuple(z2.shape)}"
            )
        finite &= torch.isfinite(z2).all(dim=1)
    report = {"finite_fraction": float(finite.float().mean())}
    if not bool(finite.all()):
        z1 = z1[finite]
        z2 = z2[finite] if z2 is not None else None
    report["mean_norm"] = mean_norm(z1) if z1.shape[0] else float("nan")
    if z1.shape[0] < 2:
        return report
    subset = z1[:max_samples]
    rankme = effective_rank(subset)
    std = embedding_std(subset)
    report.update(
        rankme=rankme,
        rankme_ratio=rankme / min(subset.shape),
        std=std,
        std_ratio=std * math.sqrt(z1.shape[1]),
        mean_cosine=mean_cosine(subset),
    )
    if z2 is not None:
        report["alignment"] = alignment(z1, z2)
    if include_uniformity:
        report["uniformity"] = uniformity(z1, max_samples=max_samples)
    return report


def is_collapsed(
    report: dict[str, float],
    *,
    rank_ratio_threshold: float = RANK_RATIO_THRESHOLD,
    std_ratio_threshold: float = STD_RATIO_THRESHOLD,
    cosine_threshold: float = COSINE_COLLAPSE_THRESHOLD,
) -> str | None:
    """A human-readable warning if ``report`` (from :func:`health_report`) shows collapse.

    Checks ``mean_cosine > cosine_threshold`` and ``std_ratio < std_ratio_threshold`` (complete
    collapse: all embeddings point the same way) and ``rankme_ratio < rank_ratio_threshold``
    (dimensional collapse: they span only a few directions). Metrics missing from the report
    are not checked. Returns ``None`` when nothing holds.
    """
    problems = []
    if report.get("mean_cosine", -1.0) > cosine_threshold:
        problems.append(
            f"mean cosine similarity {report['mean_cosine']:.6g} > {cosine_threshold:g}: all "
            f"embeddings point in the same direction"
        )
    if report.get("std_ratio", math.inf) < std_ratio_threshold:
        problems.append(
            f"std_ratio={report['std_ratio']:.3g} < {std_ratio_threshold:g}: the l2-normalised "
            f"embeddings barely vary across images (complete collapse to a constant)"
        )
    if report.get("rankme_ratio", math.inf) < rank_ratio_threshold:
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


def is_exploded(
    report: dict[str, float], *, norm_threshold: float = EXPLOSION_NORM_THRESHOLD
) -> str | None:
    """A human-readable warning if ``report`` (from :func:`health_report`) shows an exploded
    representation: rows with NaN / inf (``finite_fraction < 1``) or a mean l2 norm above
    ``norm_threshold``. Returns ``None`` otherwise.
    """
    problems = []
    finite = report.get("finite_fraction", 1.0)
    if finite < 1.0:
        problems.append(f"{1.0 - finite:.1%} of the embeddings hold NaN or inf values")
    norm = report.get("mean_norm", 0.0)
    if not math.isfinite(norm) or norm > norm_threshold:
        problems.append(f"their mean l2 norm is {norm:.3g} (> {norm_threshold:g})")
    if not problems:
        return None
    return (
        "representation exploded: "
        + "; ".join(problems)
        + ". The loss can stay finite while the features blow up (normalised losses do not see"
        " the scale)."
    )
