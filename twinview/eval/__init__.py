"""Evaluation of frozen representations: features, kNN, linear probes, baselines, health.

Used both as per-epoch monitors during pretraining and by ``twinview eval``. Protocols are
fixed and honest (DESIGN.md, principle 7): weighted cosine kNN with k = 20 and 200, T = 0.07;
linear-probe hyperparameters chosen on a validation split, numbers reported on test.
"""

from twinview.eval.baselines import random_init_knn, raw_pixel_knn
from twinview.eval.evaluate import evaluate, format_eval_table
from twinview.eval.features import (
    extract_features,
    extract_features_and_labels,
    raw_pixel_features,
)
from twinview.eval.finetune import finetune
from twinview.eval.health import (
    RANK_RATIO_THRESHOLD,
    STD_RATIO_THRESHOLD,
    alignment,
    effective_rank,
    embedding_std,
    health_report,
    is_collapsed,
    uniformity,
)
from twinview.eval.knn import knn_accuracy, knn_predict
from twinview.eval.linear import OnlineLinearProbe, linear_probe

__all__ = [
    "RANK_RATIO_THRESHOLD",
    "STD_RATIO_THRESHOLD",
    "OnlineLinearProbe",
    "alignment",
    "effective_rank",
    "embedding_std",
    "evaluate",
    "extract_features",
    "extract_features_and_labels",
    "finetune",
    "format_eval_table",
    "health_report",
    "is_collapsed",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "random_init_knn",
    "raw_pixel_features",
    "raw_pixel_knn",
    "uniformity",
]
