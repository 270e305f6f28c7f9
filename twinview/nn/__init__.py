"""Building blocks: backbones, projection / prediction heads, momentum targets, negative queue."""

from twinview.nn.backbones import (
    BACKBONES,
    ConvNet,
    build_backbone,
    list_backbones,
    register_backbone,
)
from twinview.nn.batchnorm import SyncBatchNorm, convert_sync_batchnorm
from twinview.nn.heads import (
    byol_predictor,
    byol_projector,
    mlp,
    moco_v2_projector,
    moco_v3_predictor,
    moco_v3_projector,
    simclr_projector,
    simsiam_predictor,
    simsiam_projector,
)
from twinview.nn.momentum import cosine_momentum, ema_update, momentum_copy
from twinview.nn.queue import FeatureQueue

__all__ = [
    "BACKBONES",
    "ConvNet",
    "FeatureQueue",
    "SyncBatchNorm",
    "build_backbone",
    "byol_predictor",
    "byol_projector",
    "convert_sync_batchnorm",
    "cosine_momentum",
    "ema_update",
    "list_backbones",
    "mlp",
    "moco_v2_projector",
    "moco_v3_predictor",
    "moco_v3_projector",
    "momentum_copy",
    "register_backbone",
    "simclr_projector",
    "simsiam_predictor",
    "simsiam_projector",
]
