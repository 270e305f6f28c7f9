"""Typed configuration of ``twinview pretrain``: dataclasses, YAML + ``key=value`` loading, checks.

The schema is a tree of dataclasses (:class:`PretrainConfig` at the root) turned into an
OmegaConf structured config, so OmegaConf does the parsing and type conversion; this module only
turns its errors into messages that name the key, the closest valid key and how to fix it::

    cfg = load_config("my.yaml", ["method=moco_v2", "optim.lr=0.3", "epochs=100"])

Precedence: dataclass defaults < YAML file < overrides < method recipe (fills only fields left
``None``; see :func:`resolve_defaults`). Every field has a one-line doc in its metadata, which
:func:`config_help` prints. Top-level shorthands (``method=byol`` for ``method.name=byol``, ...)
are listed in :data:`ALIASES`.

The defaults are THE DEFAULT RUN: ``twinview pretrain`` with no arguments trains SimCLR on
Fashion-MNIST with the small ConvNet on CPU in about ten minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

HELP_HINT = "(see `twinview pretrain --help`)"


class ConfigError(ValueError):
    """A bad config file, key or value; the message says which and how to fix it."""


def _f(default: Any, help: str) -> Any:
    """A dataclass field with an immutable default and its one-line doc in ``metadata["help"]``."""
    return field(default=default, metadata={"help": help})


# --- schema --------------------------------------------------------------------------------------


@dataclass
class MethodConfig:
    name: str = _f("simclr", "self-supervised method: simclr, moco_v2, moco_v3, byol, simsiam")
    temperature: float | None = _f(None, "softmax temperature of the contrastive loss")
    proj_hidden_dim: int | None = _f(None, "hidden width of the projector MLP")
    proj_out_dim: int | None = _f(None, "output width of the projector (embedding size)")
    pred_hidden_dim: int | None = _f(None, "hidden width of the predictor (BYOL, SimSiam, MoCo v3)")
    queue_size: int | None = _f(None, "negatives kept in the MoCo v2 queue")
    momentum: float | None = _f(None, "base EMA momentum tau of the momentum encoder")
    momentum_final: float | None = _f(None, "final tau of the cosine momentum schedule")


@dataclass
class BackboneConfig:
    name: str = _f("convnet", "backbone: convnet, resnet18/34/50 or timm:<model_name>")
    cifar_stem: bool = _f(False, "ResNet 3x3 stride-1 stem without max-pool for ~32 px images")
    width: int | None = _f(None, "base channel width of the convnet backbone")


@dataclass
class DataConfig:
    dataset: str = _f("fashion_mnist", "dataset name (fashion_mnist, cifar10, ...) or image folder")
    root: str | None = _f(None, "where datasets are stored / downloaded (None: the default cache)")
    val_fraction: float = _f(0.1, "fraction of the training set held out for validation")
    loader: str = _f("auto", "auto, memory (whole set on the device) or workers (DataLoader)")
    num_workers: int = _f(2, "decoding workers for the workers loader")
    image_size: int | None = _f(None, "resize images to this size when loading (None: native)")
    channels: int | None = _f(None, "image channels, 1 or 3 (None: the dataset's own)")
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
    num_small_crops: int = _f(0, "extra small crops per image (multi-crop)")
    small_crop_size: int | None = _f(None, "output size of the small crops")


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
    epochs: int = _f(4, "training epochs")
    batch_size: int = _f(256, "global batch size (all devices, all accumulation steps)")
    accumulate: int = _f(1, "gradient accumulation steps per optimizer step")
    precision: str = _f("fp32", "fp32, bf16 or fp16 (autocast; fp16 adds a gradient scaler)")
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
    "batch_size": "train.batch_size",
    "precision": "train.precision",
    "seed": "train.seed",
    "devices": "train.devices",
    "name": "output.name",
    "resume": "output.resume",
}
"""Top-level shorthands: ``method=byol`` means ``method.name=byol``."""

RECIPES: dict[str, dict[str, Any]] = {
    # SimCLR (Chen et al. 2020, sec. 2.2 / B.1): LARS, lr 0.3 x B/256, wd 1e-6, 10 warm-up epochs.
    "simclr": {"optim.name": "lars", "optim.lr": 0.3, "optim.weight_decay": 1e-6, "warmup": 10.0},
    # MoCo v2 (Chen et al. 2020b, with MoCo's He et al. 2020 recipe): SGD, lr 0.03 per 256, wd 1e-4.
    "moco_v2": {"optim.name": "sgd", "optim.lr": 0.03, "optim.weight_decay": 1e-4, "warmup": 0.0},
    # MoCo v3 ResNet-50 (Chen, Xie & He 2021; official code): LARS, lr 0.6 per 256, wd 1e-6.
    "moco_v3": {"optim.name": "lars", "optim.lr": 0.6, "optim.weight_decay": 1e-6, "warmup": 10.0},
    # BYOL (Grill et al. 2020, sec. 3.3): LARS, lr 0.2 x B/256, wd 1.5e-6, 10 warm-up epochs.
    "byol": {"optim.name": "lars", "optim.lr": 0.2, "optim.weight_decay": 1.5e-6, "warmup": 10.0},
    # SimSiam (Chen & He 2021, sec. 4): SGD, lr 0.05 x B/256, wd 1e-4, no warm-up.
    "simsiam": {"optim.name": "sgd", "optim.lr": 0.05, "optim.weight_decay": 1e-4, "warmup": 0.0},
}
"""Per-method training recipe (the papers' values) for fields left ``None``."""

SMALL_BACKBONES = ("convnet",)
"""Backbones trained with :data:`SMALL_RECIPE` instead of the papers' large-batch recipes."""

SMALL_RECIPE: dict[str, Any] = {
    "optim.name": "adamw", "optim.lr": 1e-3, "optim.weight_decay": 1e-4, "warmup": 0.25,
}  # fmt: skip
"""The CPU recipe for the small ConvNet at batch 256 (the default run). The papers' LARS
settings assume thousands of images per batch on ResNets; on Fashion-MNIST with the ConvNet,
AdamW (lr 1e-3, wd 1e-4), crops of at least 20% of the image and temperature 0.2 reached a
higher validation kNN after 2 epochs than LARS with SimCLR's values (81.7% vs 81.2%; runs
recorded in BENCHMARKS.md)."""

SMALL_VIEWS_CROP_SCALE_MIN = 0.2
SMALL_TEMPERATURE = 0.2


def _fill_small_defaults(cfg: PretrainConfig) -> PretrainConfig:
    """Crop scale and temperature of :data:`SMALL_RECIPE` where the user left them unset."""
    views, method = dataclasses.replace(cfg.views), dataclasses.replace(cfg.method)
    if views.crop_scale_min is None:
        views.crop_scale_min = SMALL_VIEWS_CROP_SCALE_MIN
    if method.temperature is None and method.name in ("simclr", "moco_v2", "moco_v3"):
        method.temperature = SMALL_TEMPERATURE
    return dataclasses.replace(cfg, views=views, method=method)


WARMUP_MAX_FRACTION = 0.1
"""A recipe's warm-up is capped at this fraction of the run (papers train 100+ epochs)."""

CHOICES: dict[str, tuple[str, ...]] = {
    "optim.name": ("sgd", "adamw", "lars"),
    "optim.lr_scaling": ("linear", "sqrt", "none"),
    "data.loader": ("auto", "memory", "workers"),
    "train.precision": ("fp32", "bf16", "fp16"),
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


def _first_line(err: OmegaConfBaseException) -> str:
    return str(err.msg or err).split("\n")[0]


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


# --- loading -------------------------------------------------------------------------------------


def _yaml_line(path: Path, dotted: str) -> int | None:
    """1-based line of ``dotted`` in the YAML file, if found."""
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            return line
        hit = next(((k, v) for k, v in node.value if k.value == part), None)
        if hit is None:
            return line
        line, node = hit[0].start_mark.line + 1, hit[1]
    return line


def _expand_aliases(data: dict) -> dict:
    """Rewrite top-level shorthands (``method: byol`` -> ``method: {name: byol}``)."""
    out: dict = {}
    for key, value in data.items():
        if key in ALIASES and not isinstance(value, dict):
            section, leaf = ALIASES[key].split(".")
            out.setdefault(section, {})[leaf] = value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        raise ConfigError(f"could not parse config file '{path}'{where}: {problem}") from err
    data = OmegaConf.to_container(loaded) if isinstance(loaded, DictConfig | ListConfig) else loaded
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{path}' must hold a mapping of keys (e.g. 'train:\\n  epochs: 10'), "
            f"got {type(data).__name__}"
        )
    return OmegaConf.create(_expand_aliases(data))


def _parse_override(text: str) -> DictConfig:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override '{text}' is not key=value (e.g. 'train.epochs=10'; no spaces around '=')"
        )
    key = ALIASES.get(key, key)
    try:
        return OmegaConf.from_dotlist([f"{key}={value}"])
    except OmegaConfBaseException as err:
        raise ConfigError(f"could not parse override '{text}': {_first_line(err)}") from err


def _merge(base: DictConfig, new: DictConfig, source: str, path: Path | None) -> DictConfig:
    """Merge ``new`` onto ``base``; OmegaConf errors become :class:`ConfigError`."""
    for key in SECTIONS:
        if key in new and not isinstance(new[key], DictConfig):
            line = _yaml_line(path, key) if path is not None else None
            raise ConfigError(
                f"config key '{key}' is a section ({source}{f', line {line}' if line else ''}); "
                f"set its keys, e.g. {key}.{config_keys(_SECTION_TYPES[key])[0].key}=..."
            )
    try:
        return OmegaConf.merge(base, new)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = str(err.full_key or "")
        line = _yaml_line(path, key) if path is not None else None
        where = f" ({source}{f', line {line}' if line else ''})"
        if isinstance(err, ConfigKeyError):
            msg = f"unknown config key '{key}'{where}{_suggest(key)} {HELP_HINT}"
            raise ConfigError(msg) from err
        if isinstance(err, ValidationError) and key:
            types = {k.key: k.type for k in config_keys()}
            value = OmegaConf.select(new, key, default=None, throw_on_missing=False)
            got = "null" if value is None else repr(value)
            expected = types.get(key, "another type")
            raise ConfigError(f"config key '{key}' expects {expected}, got {got}{where}") from err
        raise ConfigError(f"invalid config{where}: {_first_line(err)}") from err


def load_config(
    config_file: str | Path | None = None, overrides: typing.Sequence[str] = (), *, resolve=True
) -> PretrainConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; validated.

    ``resolve=True`` fills fields left ``None`` from the method's recipe
    (:func:`resolve_defaults`). Raises :class:`ConfigError` naming the bad key, file or value.
    """
    cfg: DictConfig = OmegaConf.structured(PretrainConfig)
    if config_file is not None:
        path = Path(config_file)
        cfg = _merge(cfg, _load_yaml(path), f"in {path}", path)
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        cfg = _merge(cfg, _parse_override(text), f"from override '{text}'", None)
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config key '{err.full_key}': {_first_line(err)}") from err
    assert isinstance(obj, PretrainConfig)
    if resolve:
        obj = resolve_defaults(obj)
    validate(obj, resolved=resolve)
    return obj


def to_yaml(cfg: PretrainConfig) -> str:
    """The config as YAML; :func:`load_config` on it gives an equal config."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: PretrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` (the run's ``config.yaml``)."""
    Path(path).write_text(to_yaml(cfg))


def resolve_defaults(cfg: PretrainConfig) -> PretrainConfig:
    """A copy of ``cfg`` with ``None`` optimizer / schedule fields taken from :data:`RECIPES`.

    The recipe's lr and weight decay are for its optimizer: with another ``optim.name`` they are
    not filled in (:func:`validate` then asks for them). The recipe's warm-up is capped at
    ``WARMUP_MAX_FRACTION`` of the run. Unknown methods are left untouched. Values the user set
    are never changed.
    """
    recipe = RECIPES.get(cfg.method.name)
    if recipe is None:
        return cfg
    if cfg.backbone.name in SMALL_BACKBONES:
        recipe = SMALL_RECIPE
        cfg = _fill_small_defaults(cfg)
    optim = dataclasses.replace(cfg.optim)
    if optim.name is None:
        optim.name = recipe["optim.name"]
    if optim.name == recipe["optim.name"]:
        for leaf in ("lr", "weight_decay"):
            if getattr(optim, leaf) is None:
                setattr(optim, leaf, recipe[f"optim.{leaf}"])
    schedule = dataclasses.replace(cfg.schedule)
    if schedule.warmup_epochs is None:
        schedule.warmup_epochs = min(recipe["warmup"], WARMUP_MAX_FRACTION * cfg.train.epochs)
    return dataclasses.replace(cfg, optim=optim, schedule=schedule)


def run_name(cfg: PretrainConfig) -> str:
    """``output.name``, or ``<method>-<dataset>`` (the folder's name for an image folder)."""
    if cfg.output.name:
        return cfg.output.name
    dataset = Path(cfg.data.dataset.rstrip("/\\")).name or "data"
    return f"{cfg.method.name}-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in dataset)}"


# --- value checks --------------------------------------------------------------------------------


def _method_names() -> list[str]:
    from twinview.methods.registry import list_methods

    return list_methods()


def _backbone_ok(name: str) -> tuple[bool, str]:
    from twinview.nn.backbones import TIMM_PREFIX, list_backbones

    ok = name in list_backbones() or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))
    return ok, ", ".join([*list_backbones(), TIMM_PREFIX + "<model_name>"])


def validate(cfg: PretrainConfig, *, resolved: bool = True) -> None:
    """Check values (choices, ranges, consistency); raise one :class:`ConfigError` listing all.

    ``resolved=True`` also requires the recipe fields (optimizer, lr, weight decay, warm-up) to be
    set, as they are after :func:`resolve_defaults` for a method with a recipe.
    """
    errors: list[str] = []

    def get(key: str) -> Any:
        section, leaf = key.split(".")
        return getattr(getattr(cfg, section), leaf)

    def check(key: str, ok: bool, rule: str) -> None:
        if not ok:
            errors.append(f"config key '{key}' must be {rule}; got {get(key)!r}")

    def num(key: str, lo: float, hi: float = math.inf, *, lo_open=False, hi_open=False) -> None:
        v = get(key)
        if v is None:
            return
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if hi == math.inf:
            rule = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            rule = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        check(key, ok and math.isfinite(v), rule)

    methods = _method_names()
    check("method.name", cfg.method.name in methods, f"one of {', '.join(methods)}")
    ok, names = _backbone_ok(cfg.backbone.name)
    check("backbone.name", ok, f"one of {names}")
    for key, choices in CHOICES.items():
        if get(key) is not None:
            check(key, get(key) in choices, f"one of {', '.join(choices)}")
    check("data.dataset", bool(cfg.data.dataset.strip()), "a dataset name or an image folder")
    check("data.channels", cfg.data.channels in (None, 1, 3), "1 or 3")
    name = cfg.output.name
    check("output.name", name is None or _plain_name(name), "a plain folder name (no '/')")
    check("optim.betas", len(cfg.optim.betas) == 2, "two numbers, e.g. [0.9,0.999]")
    for key in ("method.temperature", "optim.lr", "optim.lars_eta", "monitor.knn_temperature"):
        num(key, 0, lo_open=True)
    for key in (
        "method.proj_hidden_dim", "method.proj_out_dim", "method.pred_hidden_dim",
        "method.queue_size", "backbone.width", "data.image_size", "views.size",
        "views.small_crop_size", "optim.reference_batch", "train.epochs", "train.batch_size",
        "train.accumulate", "train.devices", "train.max_steps", "monitor.knn_k",
        "monitor.knn_max_train", "monitor.log_every_steps",
    ):  # fmt: skip
        num(key, 1)
    for key in (
        "data.num_workers", "views.jitter_strength", "views.num_small_crops",
        "optim.weight_decay", "schedule.warmup_epochs", "train.seed",
        "train.checkpoint_every_steps", "monitor.knn_every_epochs",
    ):  # fmt: skip
        num(key, 0)
    for key in (
        "method.momentum", "method.momentum_final", "views.hflip_p", "views.jitter_p",
        "views.grayscale_p", "views.blur_p", "views.solarize_p", "schedule.min_lr_ratio",
        "monitor.collapse_rank_threshold",
    ):  # fmt: skip
        num(key, 0, 1)
    num("views.crop_scale_min", 0, 1, lo_open=True)
    num("data.val_fraction", 0, 1, hi_open=True)
    num("optim.momentum", 0, 1, hi_open=True)
    if not all(isinstance(b, float | int) and 0 <= b < 1 for b in cfg.optim.betas):
        errors.append(f"config key 'optim.betas' must be in [0, 1); got {cfg.optim.betas!r}")
    warmup = cfg.schedule.warmup_epochs
    if warmup is not None and cfg.train.epochs >= 1 and warmup > cfg.train.epochs:
        errors.append(
            f"config key 'schedule.warmup_epochs' ({warmup:g}) must not exceed "
            f"train.epochs ({cfg.train.epochs})"
        )
    per_step = cfg.train.devices * cfg.train.accumulate
    if per_step >= 1 and cfg.train.batch_size % per_step:
        errors.append(
            f"config key 'train.batch_size' ({cfg.train.batch_size}) must be divisible by "
            f"train.devices x train.accumulate ({per_step})"
        )
    if resolved and cfg.method.name in methods:
        for key in ("optim.name", "optim.lr", "optim.weight_decay", "schedule.warmup_epochs"):
            if get(key) is None:
                recipe = f"method '{cfg.method.name}' with optimizer '{cfg.optim.name}'"
                errors.append(
                    f"config key '{key}' is not set and {recipe} has no recipe for it; "
                    f"set it, e.g. {key}=..."
                )
    if errors:
        raise ConfigError("\n".join(errors) + f"\n{HELP_HINT}")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
