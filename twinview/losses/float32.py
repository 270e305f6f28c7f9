"""Losses run in float32 under mixed precision.

Under ``torch.autocast`` a network's matmuls and convolutions run in bf16 / fp16; a loss must not:
similarity matrices divided by a temperature of 0.1, softmax over thousands of candidates,
cross-correlation and covariance matrices and Sinkhorn's exponentials lose the digits that
carry the gradient. :func:`float32_loss` wraps a loss so that inside it autocast is off and
every half-precision tensor argument (also inside lists and tuples) is upcast to float32;
float32 and float64 inputs are untouched, so float64 gradient checks still run in float64.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

_HALF = (torch.float16, torch.bfloat16)


def _upcast(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, list | tuple):
        return type(value)(_upcast(v) for v in value)
    return value


def float32_loss(fn: F) -> F:
    """``fn`` with autocast disabled (CPU and CUDA) and half-precision tensor args upcast.

    Under the profiler the call is also labelled ``loss:<name>`` (``benchmarks/step_profile.py``
    reads the loss's share of a step from it)."""
    label = f"loss:{fn.__name__}"

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            if torch.autograd._profiler_enabled():
                stack.enter_context(torch.profiler.record_function(label))
            autocasting = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
            if autocasting or any(_has_half(v) for v in (*args, *kwargs.values())):
                stack.enter_context(torch.autocast("cpu", enabled=False))
                stack.enter_context(torch.autocast("cuda", enabled=False))
                args, kwargs = _upcast(args), {k: _upcast(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _has_half(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype in _HALF
    if isinstance(value, list | tuple):
        return any(_has_half(v) for v in value)
    return False
