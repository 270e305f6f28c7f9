"""Loading a config: defaults < YAML file < ``key=value`` overrides < method recipe; validated.

::

    cfg = load_config("my.yaml", ["method=moco_v2", "optim.lr=0.3", "epochs=100"])

OmegaConf's errors become :class:`~twinview.config.schema.ConfigError` messages that name the
key, the file and line, the closest valid key and how to fix it.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from twinview.config.checks import validate
from twinview.config.recipes import resolve_defaults
from twinview.config.schema import (
    _SECTION_TYPES,
    ALIASES,
    HELP_HINT,
    SECTIONS,
    ConfigError,
    PretrainConfig,
    _suggest,
    config_keys,
)


def _first_line(err: OmegaConfBaseException) -> str:
    return str(err.msg or err).split("\n")[0]


# --- reading -----------------------------------------------------------------------------------


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
    if path.is_dir():
        raise ConfigError(
            f"--config '{path}' is a folder; pass a YAML file, e.g. {path}/simclr.yaml"
        )
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        loaded = OmegaConf.load(path)
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file '{path}' is not a text file (byte {err.start} is not UTF-8); pass a "
            "YAML file such as configs/fashion_mnist/simclr.yaml"
        ) from err
    except OSError as err:
        raise ConfigError(f"cannot read config file '{path}': {err.strerror or err}") from err
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
    if value.endswith(":") and " " not in value:  # 'timm:' is a string, not a YAML mapping
        value = f"'{value}'"
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


def config_from_args(
    config: str | Path | PretrainConfig | None = None, overrides: dict[str, Any] | None = None
) -> PretrainConfig:
    """A config from a YAML path / config object plus ``key=value`` style keyword overrides."""
    if isinstance(config, PretrainConfig):
        if overrides:
            raise ValueError("pass overrides inside the PretrainConfig object, not as keywords")
        return config
    items = [f"{key}={_dotlist_value(value)}" for key, value in (overrides or {}).items()]
    return load_config(config, items)


def _dotlist_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dotlist_value(v) for v in value) + "]"
    return str(value)


def config_from_yaml(text: str, source: str) -> PretrainConfig:
    """A config saved by :func:`to_yaml` (``config.yaml``, a checkpoint's copy), read back as it
    was: no recipe filling and no value checks, so a run saved under older rules still reads."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"the config saved in {source} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"the config saved in {source} is not a mapping of keys")
    cfg = _merge(OmegaConf.structured(PretrainConfig), OmegaConf.create(data), f"in {source}", None)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, PretrainConfig)
    return obj


def to_yaml(cfg: PretrainConfig) -> str:
    """The config as YAML; :func:`load_config` on it gives an equal config."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: PretrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` (the run's ``config.yaml``)."""
    Path(path).write_text(to_yaml(cfg))
