"""Fast augmented views: batched per-sample ops, view recipes, paper presets, a preview grid.

>>> from twinview.views import build_views
>>> views = build_views("simclr_cifar", size=32)
>>> v1, v2 = views(images_uint8)          # (B, 3, 32, 32) each, float, normalised

See :mod:`twinview.views.pipeline` for the in-memory and the worker / device paths.
"""

from twinview.views.ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    bernoulli,
    blur_kernel_size,
    gaussian_blur,
    normalize,
    permutations,
    sample_blur_sigma,
    solarize,
    uniform,
)
from twinview.views.ops_color import (
    JitterParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    random_grayscale,
    rgb_to_grayscale,
    sample_jitter,
)
from twinview.views.ops_geometry import (
    hflip,
    resized_crop,
    rotate,
    sample_crop_box,
    sample_crop_boxes,
)
from twinview.views.pipeline import MultiView, ViewSpec
from twinview.views.presets import PRESETS, build_views
from twinview.views.preview import preview

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "JitterParams",
    "MultiView",
    "ViewSpec",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "bernoulli",
    "blur_kernel_size",
    "build_views",
    "color_jitter",
    "gaussian_blur",
    "hflip",
    "normalize",
    "permutations",
    "preview",
    "random_grayscale",
    "resized_crop",
    "rgb_to_grayscale",
    "rotate",
    "sample_blur_sigma",
    "sample_crop_box",
    "sample_crop_boxes",
    "sample_jitter",
    "solarize",
    "uniform",
]
