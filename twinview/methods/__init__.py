"""Self-supervised methods implementing the :class:`~twinview.methods.base.Method` interface."""

from twinview.methods.barlow_twins import BarlowTwins
from twinview.methods.base import Method, StepOutput, decay_groups
from twinview.methods.byol import BYOL
from twinview.methods.dcl import DCL, DCLW
from twinview.methods.dino import DINO
from twinview.methods.moco import MoCoV2, MoCoV3
from twinview.methods.nnclr import NNCLR
from twinview.methods.registry import METHODS, build_method, list_methods, register_method
from twinview.methods.simclr import SimCLR
from twinview.methods.simsiam import SimSiam
from twinview.methods.supcon import SupCon
from twinview.methods.swav import SwAV
from twinview.methods.vicreg import VICReg

__all__ = [
    "BYOL",
    "DCL",
    "DCLW",
    "DINO",
    "METHODS",
    "NNCLR",
    "BarlowTwins",
    "Method",
    "MoCoV2",
    "MoCoV3",
    "SimCLR",
    "SimSiam",
    "StepOutput",
    "SupCon",
    "SwAV",
    "VICReg",
    "build_method",
    "decay_groups",
    "list_methods",
    "register_method",
]
