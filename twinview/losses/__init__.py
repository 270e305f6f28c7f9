"""Losses as pure functions with one calling convention (tensors in, scalar tensor out)."""

from twinview.losses.barlow_twins import barlow_twins_loss, barlow_twins_terms
from twinview.losses.cosine import negative_cosine
from twinview.losses.dcl import dcl_loss, vmf_weights
from twinview.losses.dino import (
    dino_loss,
    teacher_probabilities,
    teacher_temperature,
    update_center,
)
from twinview.losses.info_nce import info_nce, nt_xent
from twinview.losses.swav import sinkhorn, swav_loss
from twinview.losses.vicreg import vicreg_loss, vicreg_terms

__all__ = [
    "barlow_twins_loss",
    "barlow_twins_terms",
    "dcl_loss",
    "dino_loss",
    "info_nce",
    "negative_cosine",
    "nt_xent",
    "sinkhorn",
    "swav_loss",
    "teacher_probabilities",
    "teacher_temperature",
    "update_center",
    "vicreg_loss",
    "vicreg_terms",
    "vmf_weights",
]
