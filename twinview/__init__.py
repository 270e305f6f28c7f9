"""twinview: self-supervised representation learning on images by matching augmented views.

The core (``twinview.nn``, ``twinview.losses``, ``twinview.views``, ``twinview.methods``) is plain
PyTorch and imports nothing from training, config or CLI code.
"""

__version__ = "0.1.0"
