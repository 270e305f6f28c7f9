"""Capture and restore every global random state, so a resumed run draws the same numbers.

Global generators: Python's ``random``, NumPy's legacy global ``np.random``, torch's CPU
generator and each CUDA device's. The captured state holds only tensors, ints, floats, strings
and tuples, so it loads with ``torch.load(weights_only=True)``.

``torch.Generator`` objects that a component owns (a loader's shuffling generator, the views'
parameter generator) are not global: their owners save ``generator.get_state()`` in their own
``state_dict`` and call ``generator.set_state(...)`` on load; or pass them by name as
``generators={"views": g}`` to both functions here to keep them alongside the global states.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "bit_generator": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (state["bit_generator"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
    )


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every global RNG state (plus the named ``generators``'), as a checkpointable dict."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generators:
        state["generators"] = {name: g.get_state() for name, g in generators.items()}
    return state


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Put back what :func:`capture_rng_state` captured.

    CUDA states are restored for as many devices as both the state and this machine have; a
    mismatch (resuming a GPU run on CPU, or on fewer GPUs) warns, since draws on the missing
    devices cannot be reproduced. A generator named in ``generators`` but absent from the state
    is an error.
    """
    random.setstate(state["python"])
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = list(state.get("cuda", []))
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda) != available and cuda:
        warnings.warn(
            f"the saved RNG state has {len(cuda)} CUDA device(s), this machine {available}; "
            f"restoring {min(len(cuda), available)}",
            stacklevel=2,
        )
    for device, cuda_state in enumerate(cuda[:available]):
        torch.cuda.set_rng_state(cuda_state.cpu(), device)
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"no saved state for generator {name!r}; saved: {sorted(saved)}")
        g.set_state(saved[name].cpu())


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU) with
    ``seed``: ``seed=`` makes user code that draws from any of them repeatable too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
