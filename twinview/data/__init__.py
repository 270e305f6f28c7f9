"""Data sources and loaders.

Sources give uint8 images (C, H, W), a label (-1 when unlabeled) and are indexed by sample:
:class:`FashionMNIST` (the built-in default, works offline), :class:`CIFAR10`, :class:`CIFAR100`,
:class:`STL10`, :class:`ImageFolder` (the user's images), :class:`ArraySource` (in-memory
arrays), :class:`SyntheticShapes` (procedural, for tests). :func:`load_dataset` maps a name or
path to one. Loaders: :func:`build_loader` (in memory on the device, or decoding workers for
folders), :func:`ordered_batches` for evaluation; :func:`train_val_split` holds out validation.
"""

from twinview.data.arrays import ArraySource
from twinview.data.batch import Batch
from twinview.data.cifar import CIFAR10, CIFAR100
from twinview.data.decode import DEFAULT_MAX_PIXELS, ImageTooLargeError, decode_image
from twinview.data.fashion_mnist import FashionMNIST, cache_dir
from twinview.data.folder import ImageFolder
from twinview.data.folder_loader import FolderLoader
from twinview.data.loaders import build_loader, ordered_batches
from twinview.data.memory_loader import InMemoryLoader
from twinview.data.registry import DATASETS, builtin_name, load_dataset
from twinview.data.sampling import epoch_indices, mix_seed
from twinview.data.splits import Subset, subset, train_val_split
from twinview.data.stl10 import STL10
from twinview.data.synthetic import SyntheticShapes

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "DEFAULT_MAX_PIXELS",
    "STL10",
    "ArraySource",
    "Batch",
    "FashionMNIST",
    "FolderLoader",
    "ImageFolder",
    "ImageTooLargeError",
    "InMemoryLoader",
    "Subset",
    "SyntheticShapes",
    "build_loader",
    "builtin_name",
    "cache_dir",
    "decode_image",
    "epoch_indices",
    "load_dataset",
    "mix_seed",
    "ordered_batches",
    "subset",
    "train_val_split",
]
