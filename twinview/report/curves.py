"""From ``metrics.jsonl`` records to the report's line-plot panels.

The trainer writes one JSON object per line (:mod:`twinview.train.logger`): ``"kind"``
(``"train"`` every few steps, ``"epoch"`` after each epoch, ``"summary"`` at the end),
``"step"``, ``"epoch"`` and scalars. Any key may be missing; only what is there is drawn.
Epoch records carry the 0-based index of the epoch just finished, so they are plotted at
``epoch + 1`` (the number of epochs completed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from twinview.report.plots import Panel, Series

_RESERVED = {"kind", "step", "epoch"}
# train keys drawn in their own panels, or redundant (lr_factor = lr / base lr)
_TRAIN_KNOWN = {"loss", "lr", "lr_factor", "momentum", "images_per_s"}
_EPOCH_KNOWN = {
    "val_knn_top1",
    "health_std",
    "health_std_ratio",
    "health_rankme",
    "health_rankme_ratio",
    "val_feature_rankme",
    "health_uniformity",
    "collapse_warning",
    "complete",  # bookkeeping, not curves: whether the epoch ran to its end
    "train_seconds",
    "eval_seconds",
}
MAX_EXTRA_PANELS = 6


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, tolerant of a truncated last line (a killed run).

    When a resumed run logged the same (kind, step) twice, the later record wins. Values are
    converted to float where possible (``"nan"`` / ``"inf"`` strings included).
    """
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        key = (str(record.get("kind", "")), int(record.get("step", 0) or 0))
        latest[key] = record
    return sorted(latest.values(), key=lambda r: int(r.get("step", 0) or 0))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if not math.isinf(out) else None


def _columns(records: list[dict[str, Any]], x_key: str, shift: int) -> dict[str, tuple]:
    """Per numeric key: (x, y) arrays over the records holding it."""
    columns: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        x = _number(record.get(x_key))
        if x is None:
            continue
        for key, value in record.items():
            y = _number(value)
            if key in _RESERVED or y is None:
                continue
            xs, ys = columns.setdefault(key, ([], []))
            xs.append(x + shift)
            ys.append(y)
    return {k: (np.asarray(xs), np.asarray(ys)) for k, (xs, ys) in columns.items()}


def _series(columns: dict, key: str, label: str, *, smooth: bool = False) -> list[Series]:
    if key not in columns:
        return []
    x, y = columns[key]
    return [Series(label, x, y, smooth=smooth)]


def _train_panels(columns: dict) -> list[Panel]:
    panels = []
    specs = [
        ("loss", "training loss", "loss", True),
        ("lr", "learning rate", "lr", False),
        ("momentum", "EMA momentum", "momentum", False),
        ("images_per_s", "throughput", "images / s", True),
    ]
    for key, title, ylabel, smooth in specs:
        if key in columns:
            panels.append(Panel(title, "step", ylabel, _series(columns, key, key, smooth=smooth)))
    extra = [k for k in columns if k not in _TRAIN_KNOWN][:MAX_EXTRA_PANELS]
    panels += [Panel(k, "step", series=_series(columns, k, k, smooth=True)) for k in extra]
    return panels


def _epoch_panels(columns: dict) -> list[Panel]:
    warnings: list[float] = []
    if "collapse_warning" in columns:
        x, y = columns["collapse_warning"]
        warnings = [float(v) for v in x[y > 0]]

    def health(title: str, ylabel: str, series: list[Series], **kw: Any) -> Panel:
        return Panel(
            title,
            "epoch",
            ylabel,
            series,
            vlines=warnings,
            vline_label="collapse warning",
            integer_x=True,
            **kw,
        )

    panels = []
    if "val_knn_top1" in columns:
        series = _series(columns, "val_knn_top1", "validation kNN top-1")
        panels.append(
            Panel("validation kNN top-1", "epoch", "accuracy", series, percent=True, integer_x=True)
        )
    if "health_std_ratio" in columns:
        series = _series(columns, "health_std_ratio", "std × √d")
        panels.append(
            health(
                "embedding std × √d",
                "std × √d",
                series,
                hlines=[(1.0, "1/√d (spread over the sphere)")],
            )
        )
    elif "health_std" in columns:
        panels.append(health("embedding std", "std", _series(columns, "health_std", "std")))
    rankme = _series(columns, "health_rankme", "embeddings (training batches)")
    rankme += _series(columns, "val_feature_rankme", "backbone features (validation)")
    if rankme:
        panels.append(health("RankMe (effective rank)", "rank", rankme))
    if "health_rankme_ratio" in columns:
        series = _series(columns, "health_rankme_ratio", "RankMe / min(N, d)")
        panels.append(health("RankMe ratio", "ratio", series))
    if "health_uniformity" in columns:
        series = _series(columns, "health_uniformity", "uniformity (lower = more uniform)")
        panels.append(health("uniformity (Wang & Isola)", "log potential", series))
    extra = [k for k in columns if k not in _EPOCH_KNOWN][:MAX_EXTRA_PANELS]
    panels += [Panel(k, "epoch", series=_series(columns, k, k), integer_x=True) for k in extra]
    return panels


def curve_panels(records: list[dict[str, Any]]) -> tuple[list[Panel], list[Panel]]:
    """(train panels over step, epoch panels over epochs completed) of the given records."""
    train = [r for r in records if r.get("kind") == "train"]
    epoch = [r for r in records if r.get("kind") == "epoch"]
    return (
        _train_panels(_columns(train, "step", 0)),
        _epoch_panels(_columns(epoch, "epoch", 1)),
    )
