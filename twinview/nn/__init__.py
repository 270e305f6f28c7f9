"""Building blocks: backbones, projection / prediction heads, momentum targets, negative queue."""

from twinview.nn.backbones import (
    BACKBONES,
    ConvNet,
    build_backbone,
    list_backbones,
    register_backbone,
)
from twinview.nn.batchnorm import SyncBatchNorm, convert_sync_batchnorm
from twinview.nn.dino_head import DINOHead
from twinview.nn.heads import (
    barlow_twins_projector,
    byol_predictor,
    byol_projector,
    mlp,
    moco_v2_projector,
    moco_v3_predictor,
    moco_v3_projector,
    simclr_projector,
    simsiam_predictor,
    simsiam_projector,
    vicreg_expander,
)
from twinview.nn.momentum import cosine_momentum, ema_update, momentum_copy
from twinview.nn.queue import FeatureQueue
from twinview.nn.vit import DropPath, VisionTransformer, disable_drop_path, resample_pos_embed

__all__ = [
    "BACKBONES",
    "ConvNet",
    "DINOHead",
    "DropPath",
    "FeatureQueue",
    "SyncBatchNorm",
    "VisionTransformer",
    "barlow_twins_projector",
    "build_backbone",
    "byol_predictor",
    "byol_projector",
    "convert_sync_batchnorm",
    "cosine_momentum",
    "disable_drop_path",
    "ema_update",
    "list_backbones",
    "mlp",
    "moco_v2_projector",
    "moco_v3_predictor",
    "moco_v3_projector",
    "momentum_copy",
    "register_backbone",
    "resample_pos_embed",
    "simclr_projector",
    "simsiam_predictor",
    "simsiam_projector",
    "vicreg_expander",
]
