"""Value checks of a loaded config: choices, ranges, consistency, all errors at once."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from twinview.config.schema import CHOICES, HELP_HINT, ConfigError, PretrainConfig

MIN_LOCAL_BATCH = 2
"""Images per process and optimizer micro-step below which no method learns (see validate)."""

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048
"""Image and view sides a run accepts: below 8 px the backbones' strides leave nothing; above
2048 px one batch of views would not fit in memory (crop with views.size instead)."""

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m(?:in)?)?(?:{_NUMBER}s)?")


def parse_budget(text: Any) -> float:
    """Seconds of a ``train.budget`` value: hours, minutes and seconds, each optional, in that
    order, no spaces: ``"10min"`` -> 600.0, ``"2h"``, ``"90s"``, ``"1h30min"``, ``"1.5h"``
    (``m`` is short for ``min``).

    Raises :class:`ConfigError` naming ``train.budget``, the value and an example of a good one.
    """
    value = str(text).strip()
    match = _DURATION.fullmatch(value)
    if not value or match is None or not any(match.groups()):
        unit = f" (a number needs its unit: {value}s, {value}min?)" if _is_number(value) else ""
        raise ConfigError(
            "config key 'train.budget' must be a duration of hours, minutes and seconds such as "
            f"10min, 2h, 90s or 1h30min (no spaces), e.g. train.budget=10min; got {text!r}{unit}"
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not total > 0:
        raise ConfigError(
            "config key 'train.budget' must be longer than 0, e.g. train.budget=10min; "
            f"got {text!r}"
        )
    return total


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


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
    for key in ("data.image_size", "views.size", "views.small_crop_size"):
        num(key, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    for key in (
        "method.proj_hidden_dim", "method.proj_out_dim", "method.pred_hidden_dim",
        "method.queue_size", "backbone.width", "data.max_pixels", "optim.reference_batch",
        "train.epochs", "train.batch_size",
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
    scale = cfg.views.small_crop_scale
    if scale is not None and not (
        len(scale) == 2 and all(isinstance(x, float | int) for x in scale)
        and 0 < scale[0] <= scale[1] <= 1
    ):  # fmt: skip
        errors.append(
            "config key 'views.small_crop_scale' must be [min, max] with 0 < min <= max <= 1, "
            f"e.g. [0.05,0.14]; got {scale!r}"
        )
    num("data.val_fraction", 0, 1, hi_open=True)
    num("optim.momentum", 0, 1, hi_open=True)
    if not all(isinstance(b, float | int) and 0 <= b < 1 for b in cfg.optim.betas):
        errors.append(f"config key 'optim.betas' must be in [0, 1); got {cfg.optim.betas!r}")
    if cfg.train.budget is not None:
        try:
            parse_budget(cfg.train.budget)
        except ConfigError as err:
            errors.append(str(err))
    warmup = cfg.schedule.warmup_epochs
    by_epochs = cfg.train.budget is None  # with a budget, train.epochs is ignored
    if warmup is not None and by_epochs and cfg.train.epochs >= 1 and warmup > cfg.train.epochs:
        errors.append(
            f"config key 'schedule.warmup_epochs' ({warmup:g}) must not exceed "
            f"train.epochs ({cfg.train.epochs})"
        )
    if resolved and cfg.method.name in methods:
        for key in ("optim.name", "optim.lr", "optim.weight_decay", "schedule.warmup_epochs"):
            if get(key) is None:
                recipe = f"method '{cfg.method.name}' with optimizer '{cfg.optim.name}'"
                errors.append(
                    f"config key '{key}' is not set and {recipe} has no recipe for it; "
                    f"set it, e.g. {key}=..."
                )
    errors += _batch_split_errors(cfg, cfg.train.devices, "train.devices")
    if cfg.backbone.name.startswith("timm:") and len(cfg.backbone.name) > len("timm:"):
        problem = _timm_problem(cfg.backbone.name[len("timm:") :])
        if problem:
            errors.append(f"config key 'backbone.name' ({cfg.backbone.name}): {problem}")
    if errors:
        raise ConfigError("\n".join(errors) + f"\n{HELP_HINT}")


def check_batch_split(cfg: PretrainConfig, world_size: int) -> None:
    """The global ``train.batch_size`` must split evenly over the processes that were actually
    started (torchrun or srun start them, whatever ``train.devices`` says) and their accumulation
    micro-steps, with at least :data:`MIN_LOCAL_BATCH` images each; raises :class:`ConfigError`."""
    errors = _batch_split_errors(cfg, world_size, f"the world size ({world_size} processes)")
    if errors:
        raise ConfigError("\n".join(errors))


def _batch_split_errors(cfg: PretrainConfig, processes: int, what: str) -> list[str]:
    """``train.batch_size`` over ``processes`` x ``train.accumulate`` (``what`` names the
    processes in the messages): not divisible, or under MIN_LOCAL_BATCH images per part."""
    errors = []
    per_step = processes * cfg.train.accumulate
    if per_step >= 1 and cfg.train.batch_size % per_step:
        errors.append(
            f"config key 'train.batch_size' ({cfg.train.batch_size}) must be divisible by "
            f"{what} x train.accumulate ({per_step})"
        )
    local = cfg.train.batch_size // per_step if per_step >= 1 else 0
    if cfg.train.batch_size >= 1 and per_step >= 1 and local < MIN_LOCAL_BATCH:
        errors.append(
            f"config key 'train.batch_size' ({cfg.train.batch_size}) gives {local} image(s) per "
            f"process and step (batch_size / ({what} x accumulate)); every method needs at "
            f"least {MIN_LOCAL_BATCH}: BatchNorm in the projector cannot normalise one sample, "
            "and a contrastive loss with no other image has no negatives (SimCLR's loss is then "
            f"exactly 0). Use train.batch_size >= {MIN_LOCAL_BATCH * per_step}"
        )
    return errors


def _timm_problem(model: str) -> str | None:
    """Why ``timm:<model>`` cannot be built here (timm missing, unknown name), or None."""
    try:
        import timm
    except ImportError:
        return "timm backbones need the timm package: pip install timm (or 'twinview[timm]')"
    if timm.is_model(model):
        return None
    close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"timm has no model '{model}'{hint} (list them with timm.list_models('*pattern*'))"


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
