"""Self-supervised methods implementing the :class:`~twinview.methods.base.Method` interface."""

from twinview.methods.base import Method, StepOutput, decay_groups
from twinview.methods.byol import BYOL
from twinview.methods.moco import MoCoV2, MoCoV3
from twinview.methods.registry import METHODS, build_method, list_methods, register_method
from twinview.methods.simclr import SimCLR
from twinview.methods.simsiam import SimSiam

__all__ = [
    "BYOL",
    "METHODS",
    "Method",
    "MoCoV2",
    "MoCoV3",
    "SimCLR",
    "SimSiam",
    "StepOutput",
    "build_method",
    "decay_groups",
    "list_methods",
    "register_method",
]
