"""Tolerances for comparing two computations of the same values, derived from their scale.

Two ways of computing a value (another summation order, another kernel, another dtype) differ by
rounding: about eps(dtype) per operation relative to the size of the terms, and up to sqrt(n)
times that over n accumulated terms with independent roundings. Which kernel rounds how differs
between CPUs (AVX2, AVX-512, AMX), so a fixed absolute tolerance such as 1e-5 is at once too
loose for values of 1e-3 and too tight for values of 1e3 on some machine. These helpers scale
the tolerance with eps(dtype), sqrt(n) and the largest reference value instead; near-zero entries
(whose error comes from cancelling large terms) get that absolute slack.

Comparisons that can run in float64 should (each test file's RTOL, ~1e-10 relative): these are for
what has to stay float32 or bf16.
"""

from __future__ import annotations

import math

import torch


def rounding(dtype: torch.dtype, *, ulps: float = 8.0, terms: int = 1) -> float:
    """Relative tolerance: ``ulps`` units of ``dtype``'s eps, times sqrt(``terms``) accumulated."""
    return ulps * torch.finfo(dtype).eps * math.sqrt(terms)


def scale_of(ref: torch.Tensor) -> float:
    """The largest magnitude in ``ref`` (0 when empty)."""
    return float(ref.detach().abs().max()) if ref.numel() else 0.0


def assert_close_to_scale(
    got: torch.Tensor,
    ref: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    ulps: float = 8.0,
    terms: int = 1,
    msg: str | None = None,
) -> None:
    """``got`` within ``rounding(dtype, ulps, terms)`` of ``ref``, relative to each value and to
    ``ref``'s largest value; ``dtype`` is the one whose rounding dominates (default: ``ref``'s)."""
    rtol = rounding(dtype or ref.dtype, ulps=ulps, terms=terms)
    kwargs = {} if msg is None else {"msg": msg}
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * scale_of(ref), **kwargs)
