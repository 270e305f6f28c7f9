"""twinview: self-supervised representation learning on images by matching augmented views.

The core (``twinview.nn``, ``twinview.losses``, ``twinview.views``, ``twinview.methods``) is plain
PyTorch and imports nothing from training, config or CLI code. The functions below mirror the
command line (``twinview pretrain ...`` is ``twinview.pretrain(...)``); they are imported on
first use so ``import twinview`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "pretrain": "twinview.train.launch",
    "evaluate": "twinview.eval.evaluate",
    "embed": "twinview.embed",
    "export": "twinview.export",
    "load_backbone": "twinview.export",
    "report": "twinview.report.from_run",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'twinview' has no attribute {name!r}")
