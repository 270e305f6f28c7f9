"""The report's results table: this run's scores beside the baselines.

Two inputs share one layout (rows = protocol / metric, columns = this run, then each
baseline, raw pixels and random init first):

- ``summary.json`` (end of pretraining): flat keys ``<split>_<metric>`` for the run and
  ``<split>_raw_pixel_<metric>`` / ``<split>_random_init_<metric>`` for the baselines;
- ``eval.json`` (``twinview eval``): ``{"protocols": {name: {...}}, "baselines": {name: {...}}}``
  with any nesting of scalar results. A baseline value is matched to a row by its full path
  (``knn/knn_top1_k20``) or by the path without the protocol (``knn_top1_k20``), so flat
  baseline dicts line up with nested protocol dicts. Baseline-only metrics get their own row.

Accuracies (names with ``top1``, ``top5`` or ``acc``, values in [0, 1]) are shown as
percentages with two decimals, like the trainer's closing summary. A ``<metric>_mean`` with its
``<metric>_std`` (``twinview eval`` over several seeds) makes one ``<metric>`` row showing
``mean ± std``; with one seed the std is null and the row shows the mean alone.
"""

from __future__ import annotations

import html
import re
from typing import Any

Path_ = tuple[str, ...]
BASELINE_NAMES = {"raw_pixel": "raw pixels", "random_init": "random init"}
THIS_RUN = "this run"


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def flatten(data: Any, prefix: Path_ = ()) -> dict[Path_, float]:
    """Scalar leaves of nested dicts, keyed by their path of keys; other leaves dropped."""
    if _scalar(data):
        return {prefix: float(data) if isinstance(data, float) else data}
    if not isinstance(data, dict):
        return {}
    out: dict[Path_, float] = {}
    for key, value in data.items():
        out.update(flatten(value, (*prefix, str(key))))
    return out


def is_accuracy(path: Path_, value: float) -> bool:
    name = path[-1].lower() if path else ""
    return any(tag in name for tag in ("top1", "top5", "acc")) and 0.0 <= value <= 1.0


def format_value(path: Path_, value: float | None, std: float | None = None) -> str:
    """``0.8123`` -> ``"81.23%"`` for accuracies; 4 significant digits otherwise; with ``std``,
    ``"81.23 ± 0.45%"`` (``"0.1 ± 0.02"``)."""
    if value is None:
        return "—"
    if is_accuracy(path, value):
        return f"{value:.2%}" if std is None else f"{100 * value:.2f} ± {100 * std:.2f}%"
    if isinstance(value, int) and std is None:
        return str(value)
    return f"{value:.4g}" if std is None else f"{value:.4g} ± {std:.2g}"


def fold_seeds(table: dict[Path_, float]) -> tuple[dict[Path_, float], dict[Path_, float]]:
    """``(values, stds)``: each ``(..., "x_mean")`` of ``table`` becomes ``(..., "x")``, with the
    ``(..., "x_std")`` beside it (when present) in ``stds``; other entries are kept as they are."""
    values: dict[Path_, float] = {}
    stds: dict[Path_, float] = {}
    for path, value in table.items():
        name = path[-1] if path else ""
        if name.endswith("_mean"):
            folded = (*path[:-1], name[: -len("_mean")])
            values[folded] = value
            std = table.get((*path[:-1], folded[-1] + "_std"))
            if std is not None:
                stds[folded] = std
        elif not (name.endswith("_std") and (*path[:-1], name[: -len("_std")] + "_mean") in table):
            values[path] = value
    return values, stds


def pretty_name(path: Path_) -> str:
    """``("knn", "knn_top1_k20")`` -> ``"kNN top-1 (k=20)"``; a protocol name that the metric
    name already starts with is dropped."""
    parts = list(path)
    if len(parts) >= 2 and parts[-1].lower().startswith(parts[-2].lower()):
        del parts[-2]

    def one(token: str) -> str:
        token = re.sub(r"_k(\d+)$", r" (k=\1)", token)
        token = re.sub(r"top(\d+)", r"top-\1", token)
        token = re.sub(r"\bknn\b", "kNN", token.replace("_", " "), flags=re.IGNORECASE)
        return token

    return " / ".join(one(p) for p in parts)


def _column_name(name: str) -> str:
    return BASELINE_NAMES.get(name, name.replace("_", " "))


def _from_summary(summary: dict[str, Any], prefix: str) -> tuple[dict, dict]:
    this: dict[Path_, float] = {}
    baselines: dict[str, dict[Path_, float]] = {}
    for key, value in summary.items():
        if not key.startswith(prefix) or not _scalar(value):
            continue
        rest = key[len(prefix) :]
        for name in BASELINE_NAMES:
            if rest.startswith(name + "_"):
                baselines.setdefault(name, {})[(rest[len(name) + 1 :],)] = value
                break
        else:
            this[(rest,)] = value
    return this, baselines


def _from_eval(results: dict[str, Any]) -> tuple[dict, dict]:
    protocols = results.get("protocols")
    if not isinstance(protocols, dict):
        protocols = {k: v for k, v in results.items() if k != "baselines"}
    raw_baselines = results.get("baselines")
    baselines = {}
    if isinstance(raw_baselines, dict):
        baselines = {name: flatten(value) for name, value in raw_baselines.items()}
    return flatten(protocols), {k: v for k, v in baselines.items() if v}


def _fold_all(this: dict, baselines: dict) -> tuple[dict, dict, dict]:
    """:func:`fold_seeds` on this run's table and each baseline's; the stds keyed by column
    (``None`` for this run, else the baseline's name)."""
    this, this_stds = fold_seeds(this)
    stds = {None: this_stds}
    for name in list(baselines):
        baselines[name], stds[name] = fold_seeds(baselines[name])
    return this, baselines, stds


def _ordered_baselines(baselines: dict[str, dict]) -> list[str]:
    known = [name for name in BASELINE_NAMES if name in baselines]
    return known + [name for name in baselines if name not in BASELINE_NAMES]


def _rows(this: dict, baselines: dict, names: list[str]) -> list[tuple[Path_, list]]:
    used: set[tuple[str, Path_]] = set()
    rows = []
    for path, value in this.items():
        cells = [value]
        for name in names:
            table = baselines[name]
            match = path if path in table else (path[1:] if path[1:] in table else None)
            cells.append(table[match] if match is not None else None)
            if match is not None:
                used.add((name, match))
        rows.append((path, cells))
    for j, name in enumerate(names):
        for path, value in baselines[name].items():
            if (name, path) in used:
                continue
            cells: list = [None] * (len(names) + 1)
            cells[j + 1] = value
            rows.append((path, cells))
    return rows


def _std(stds: dict[Path_, float], path: Path_) -> float | None:
    """The std of ``path`` in one column, matched like its value (full path, or without the
    protocol)."""
    return stds.get(path, stds.get(path[1:]))


def results_table_html(data: dict[str, Any], *, prefix: str | None = None) -> str | None:
    """An HTML ``<table>`` of the scalar results in ``data``, or None if there are none.

    Args:
        data: a ``summary.json`` dict (give ``prefix``, e.g. ``"test_"``) or an ``eval.json``
            dict (no prefix).
        prefix: the split prefix of the summary keys to read.
    """
    this, baselines = _from_summary(data, prefix) if prefix else _from_eval(data)
    this, baselines, stds = _fold_all(this, baselines)
    names = _ordered_baselines(baselines)
    rows = _rows(this, baselines, names)
    if not rows:
        return None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [THIS_RUN, *map(_column_name, names)])
    body = []
    for path, cells in rows:
        spreads = [_std(stds[column], path) for column in (None, *names)]
        others = [v for v in cells[1:] if v is not None]
        best = (
            cells[0] is not None
            and others
            and is_accuracy(path, cells[0])
            and cells[0] > max(others)
        )
        tds = "".join(
            f"<td{' class=best' if best and i == 0 else ''}>{format_value(path, v, std)}</td>"
            for i, (v, std) in enumerate(zip(cells, spreads))
        )
        label = f"{html.escape(pretty_name(path))}<code>{html.escape('/'.join(path))}</code>"
        body.append(f"<tr><td>{label}</td>{tds}</tr>")
    return (
        f"<table>\n<thead><tr><th>metric</th>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )
