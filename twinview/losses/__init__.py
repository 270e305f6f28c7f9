"""Losses as pure functions with one calling convention (tensors in, scalar tensor out)."""

from twinview.losses.cosine import negative_cosine
from twinview.losses.info_nce import info_nce, nt_xent

__all__ = ["info_nce", "negative_cosine", "nt_xent"]
