"""The schema of ``twinview pretrain``'s configuration: typed dataclasses, one doc line per key.

:class:`PretrainConfig` is the root; OmegaConf turns it into a structured config, so parsing and
type conversion are OmegaConf's (:mod:`twinview.config.load`). Every field carries its one-line
doc in ``metadata["help"]``, which :func:`config_help` prints. Top-level shorthands
(``method=byol`` for ``method.name=byol``, ...) are listed in :data:`ALIASES`.

The defaults are THE DEFAULT RUN: ``twinview pretrain`` with no arguments trains SimCLR on
Fashion-MNIST with the small ConvNet on CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

HELP_HINT = "(see `twinview pretrain --help`)"


class ConfigError(ValueError):
    """A bad config file, key or value; the message says which and how to fix it."""


def _f(default: Any, help: str) -> Any:
    """A dataclass field with an immutable default and its one-line doc in ``metadata["help"]``."""
    return field(default=default, metadata={"help": help})


# --- sections ----------------------------------------------------------------------------------


@dataclass
class MethodConfig:
    name: str = _f(
        "simclr",
        "method: simclr, moco_v2, moco_v3, byol, simsiam, barlow_twins, vicreg, dino, swav, "
        "nnclr, supcon (needs labels), dcl, dclw",
    )
    temperature: float | None = _f(None, "softmax temperature of the contrastive loss")
    proj_hidden_dim: int | None = _f(None, "hidden width of the projector MLP")
    proj_out_dim: int | None = _f(None, "output width of the projector (embedding size)")
    pred_hidden_dim: int | None = _f(None, "hidden width of the predictor (BYOL, SimSiam, MoCo v3)")
    queue_size: int | None = _f(None, "negatives kept in the MoCo v2 queue")
    momentum: float | None = _f(None, "base EMA momentum tau of the momentum encoder")
    momentum_final: float | None = _f(None, "final tau of the cosine momentum schedule")
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "further arguments of the method, e.g. method.options.lambda_param=0.005 "
            "(barlow_twins), method.options.num_prototypes=300 (swav)"
        },
    )


@dataclass
class BackboneConfig:
    name: str = _f(
        "convnet", "backbone: convnet, resnet18/34/50, vit_tiny, vit_small or timm:<model_name>"
    )
    cifar_stem: bool = _f(False, "ResNet 3x3 stride-1 stem without max-pool for ~32 px images")
    width: int | None = _f(None, "base channel width of the convnet backbone")
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "further backbone arguments, e.g. backbone.options.patch_size=4 (vit)"},
    )


@dataclass
class DataConfig:
    dataset: str = _f(
        "fashion_mnist",
        "dataset name (fashion_mnist, cifar10, ...), image folder, or shards (dir/a-{0..9}.tar)",
    )
    root: str | None = _f(None, "where datasets are stored / downloaded (None: the default cache)")
    val_fraction: float = _f(0.1, "fraction of the training set held out for validation")
    loader: str = _f("auto", "auto, memory (whole set on the device) or workers (DataLoader)")
    num_workers: int = _f(2, "decoding workers for the workers loader")
    image_size: int | None = _f(None, "resize images to this size when loading (None: native)")
    channels: int | None = _f(None, "image channels, 1 or 3 (None: the dataset's own)")
    max_pixels: int | None = _f(
        8192 * 8192,  # twinview.data.decode.DEFAULT_MAX_PIXELS; a test keeps the two equal
        "skip folder images whose header declares more pixels (None: no limit)",
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "extra dataset arguments, e.g. data.options.n=512 (synthetic)"},
    )


@dataclass
class ViewsConfig:
    preset: str | None = _f(None, "augmentation preset (None: the method's paper preset)")
    size: int | None = _f(None, "output size of the global crops (None: the image size)")
    crop_scale_min: float | None = _f(None, "smallest area fraction of a random resized crop")
    jitter_strength: float | None = _f(None, "colour jitter strength s (SimCLR)")
    hflip_p: float | None = _f(None, "probability of a horizontal flip")
    jitter_p: float | None = _f(None, "probability of colour jitter")
    grayscale_p: float | None = _f(None, "probability of grayscale conversion")
    blur_p: float | None = _f(None, "probability of Gaussian blur")
    solarize_p: float | None = _f(None, "probability of solarization")
    num_small_crops: int | None = _f(
        None, "small (local) crops per image, multi-crop (None: the preset's, 0 for two views)"
    )
    small_crop_size: int | None = _f(None, "output size of the small crops (None: 96/224 of size)")
    small_crop_scale: list[float] | None = field(
        default=None,
        metadata={"help": "area fraction range [min, max] of the small crops (None: the preset's)"},
    )


@dataclass
class OptimConfig:
    name: str | None = _f(None, "optimizer: sgd, adamw or lars (None: the method recipe)")
    lr: float | None = _f(None, "base learning rate for reference_batch images (None: recipe)")
    lr_scaling: str = _f("linear", "scale lr with batch size: linear, sqrt or none")
    reference_batch: int = _f(256, "batch size the base learning rate is given for")
    weight_decay: float | None = _f(None, "weight decay (None: the method recipe)")
    momentum: float = _f(0.9, "SGD / LARS momentum")
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"}
    )
    lars_eta: float = _f(0.001, "LARS trust coefficient")


@dataclass
class ScheduleConfig:
    warmup_epochs: float | None = _f(None, "linear warm-up epochs (None: recipe, <= 10% of run)")
    min_lr_ratio: float = _f(0.0, "final learning rate of the cosine decay, as a fraction")


@dataclass
class TrainConfig:
    epochs: int = _f(4, "training epochs (ignored when train.budget is set)")
    budget: str | None = _f(
        None,
        "time budget of the whole run, e.g. 10min, 2h, 1h30min: steps planned from the first "
        "steps' speed so that training, evaluation and the report end within it (train.epochs "
        "is then ignored; train.max_steps still caps)",
    )
    batch_size: int = _f(256, "global batch size (all devices, all accumulation steps)")
    accumulate: int = _f(1, "gradient accumulation steps per optimizer step")
    precision: str = _f(
        "auto",
        "auto (bf16 where the GPU / CPU runs it natively: AMX, AVX512-BF16; else fp32), fp32, "
        "bf16 or fp16 (autocast; fp16 adds a gradient scaler)",
    )
    seed: int = _f(0, "random seed")
    devices: int = _f(1, "processes / GPUs to train on")
    device: str = _f("auto", "auto (cuda if available), cpu or cuda")
    compile: bool = _f(False, "torch.compile the model")
    channels_last: bool = _f(True, "channels-last memory format (faster convs on GPU)")
    sync_bn: bool | None = _f(None, "synchronise BatchNorm across devices (None: method default)")
    max_steps: int | None = _f(None, "stop after this many optimizer steps (for tests)")
    checkpoint_every_steps: int = _f(500, "write last.pt every N steps (0: only at epoch end)")


@dataclass
class MonitorConfig:
    knn_every_epochs: int = _f(1, "kNN accuracy on the validation split every N epochs (0: off)")
    knn_k: int = _f(200, "neighbours of the kNN classifier")
    knn_temperature: float = _f(0.07, "temperature of the weighted kNN vote")
    knn_max_train: int | None = _f(None, "subsample the kNN memory bank to this many images")
    health: bool = _f(True, "log embedding health: effective rank, std, alignment, uniformity")
    online_probe: bool = _f(False, "train a linear probe on detached features alongside")
    collapse_rank_threshold: float = _f(0.01, "warn when effective rank / dim falls below this")
    nan_policy: str = _f("raise", "on a non-finite loss: raise (stop) or skip (skip the step)")
    log_every_steps: int = _f(50, "log training scalars every N steps")
    sample_log: bool = _f(False, "write each batch's sample indices to samples-rank<r>.jsonl")


@dataclass
class OutputConfig:
    dir: str = _f("runs", "parent directory of run directories")
    name: str | None = _f(None, "run name (None: <method>-<dataset>)")
    resume: bool = _f(True, "resume runs/<name> from its last checkpoint if there is one")


@dataclass
class PretrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


ALIASES: dict[str, str] = {
    "method": "method.name",
    "backbone": "backbone.name",
    "data": "data.dataset",
    "views": "views.preset",
    "optim": "optim.name",
    "lr": "optim.lr",
    "epochs": "train.epochs",
    "budget": "train.budget",
    "batch_size": "train.batch_size",
    "precision": "train.precision",
    "seed": "train.seed",
    "devices": "train.devices",
    "name": "output.name",
    "resume": "output.resume",
}
"""Top-level shorthands: ``method=byol`` means ``method.name=byol``."""

CHOICES: dict[str, tuple[str, ...]] = {
    "optim.name": ("sgd", "adamw", "lars"),
    "optim.lr_scaling": ("linear", "sqrt", "none"),
    "data.loader": ("auto", "memory", "workers"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "monitor.nan_policy": ("raise", "skip"),
}


# --- the key table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """One leaf of the schema: dotted key, type (as written), default, doc."""

    key: str
    type: str
    default: Any
    help: str


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp)


def config_keys(cls: type = PretrainConfig, prefix: str = "") -> list[KeyInfo]:
    """Every leaf key of the schema, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[KeyInfo] = []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            out += config_keys(tp, key + ".")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append(KeyInfo(key, _type_name(tp), default, f.metadata.get("help", "")))
    return out


SECTIONS = tuple(f.name for f in dataclasses.fields(PretrainConfig))
_SECTION_TYPES = typing.get_type_hints(PretrainConfig)


def config_help() -> str:
    """Every key with its type, default and a one-line doc, then the shorthands."""
    keys = config_keys()
    w_key = max(len(k.key) for k in keys)
    w_type = max(len(k.type) for k in keys)
    defaults = ["null" if k.default is None else str(k.default) for k in keys]
    w_default = max(len(d) for d in defaults)
    lines = ["Config keys (set with key=value or in a YAML file given by --config):"]
    section = ""
    for k, default in zip(keys, defaults):
        if k.key.split(".")[0] != section:
            section = k.key.split(".")[0]
            lines.append(f"\n{section}:")
        lines.append(f"  {k.key:<{w_key}}  {k.type:<{w_type}}  {default:<{w_default}}  {k.help}")
    lines.append("\nShorthands:")
    lines += [f"  {a}=... means {k}=..." for a, k in ALIASES.items()]
    lines.append(
        "\nnull means the paper's value for the method (method, views, optim, schedule keys) or "
        "the dataset's own (data keys)."
    )
    return "\n".join(lines)


def _suggest(key: str) -> str:
    """'; did you mean 'x'?' using the closest valid dotted key (or shorthand), else ''."""
    valid = [k.key for k in config_keys()] + list(ALIASES) + list(SECTIONS)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not match:  # compare the last component: 'lr_scale' -> 'optim.lr_scaling'
        leaves = {k.rsplit(".", 1)[-1]: k for k in valid}
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.6)
        match = [leaves[leaf[0]]] if leaf else []
    return f"; did you mean '{match[0]}'?" if match else ""
