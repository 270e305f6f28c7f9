"""Method registry: ``build_method(name, backbone, feature_dim=..., **kwargs)``.

Names are lower-case (``simclr``, ``moco_v2``, ``moco_v3``, ``byol``, ``simsiam``,
``barlow_twins``, ``vicreg``, ``dino``, ``swav``, ``nnclr``, ``supcon``, ``dcl``, ``dclw``); keyword
arguments are the method's constructor arguments (paper defaults when omitted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from twinview.methods.barlow_twins import BarlowTwins
from twinview.methods.base import Method
from twinview.methods.byol import BYOL
from twinview.methods.dcl import DCL, DCLW
from twinview.methods.dino import DINO
from twinview.methods.moco import MoCoV2, MoCoV3
from twinview.methods.nnclr import NNCLR
from twinview.methods.simclr import SimCLR
from twinview.methods.simsiam import SimSiam
from twinview.methods.supcon import SupCon
from twinview.methods.swav import SwAV
from twinview.methods.vicreg import VICReg

METHODS: dict[str, Callable[..., Method]] = {
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
    "moco_v3": MoCoV3,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "dino": DINO,
    "swav": SwAV,
    "nnclr": NNCLR,
    "supcon": SupCon,
    "dcl": DCL,
    "dclw": DCLW,
}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a Method subclass to the registry under ``name``."""

    def add(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        return cls

    return add


def list_methods() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, backbone: nn.Module, *, feature_dim: int, **kwargs: Any) -> Method:
    """Build method ``name`` around ``backbone`` whose output is (B, feature_dim)."""
    key = name.lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(list_methods())}")
    try:
        return METHODS[key](backbone, feature_dim=feature_dim, **kwargs)
    except TypeError as err:
        raise TypeError(f"method {key!r}: {err}") from err
