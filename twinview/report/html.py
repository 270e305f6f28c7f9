"""The run report: ``runs/<name>/report.html``, one self-contained file.

:func:`write_report` reads what a run directory holds (``summary.json``, ``metrics.jsonl``,
``eval.json``, ``config.yaml``), takes the test embeddings and images from the caller, and
writes a single HTML file: PNGs inline as base64 data URIs, CSS inline, no script, no external
resource, so it opens offline and can be mailed or archived as is. Every section whose input is
missing is replaced by a one-line note; a report is written for any run directory.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from torch import Tensor

from twinview.report.curves import curve_panels, read_records
from twinview.report.embedding_map import METHODS, map_2d
from twinview.report.neighbours import choose_queries, nearest_neighbours
from twinview.report.plots import as_uint8_images, neighbour_grid_png, panels_png, scatter_png
from twinview.report.results import results_table_html

MAP_NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  background: #f4f5f7; color: #1d1f23; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 24px; }
section, header { background: #fff; border-radius: 8px; padding: 16px 22px; margin: 0 0 18px;
  box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h1 { margin: 0 0 6px; font-size: 1.6em; } h2 { margin: 0 0 10px; font-size: 1.25em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.meta dt { color: #5f6670; } dl.meta dd { margin: 0; font-weight: 600; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 6px 0 12px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e3e5e8; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f2f5; } td.best { font-weight: 700; color: #17663a; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: .9em; }
td code { color: #6a717b; font-size: .8em; margin-left: 6px; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; border-radius: 6px; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.note { color: #6a717b; font-style: italic; margin: 4px 0; }
.caption { color: #4a5059; font-size: .92em; margin: 2px 0 8px; }
"""


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{_png_data_uri(png)}" alt="{html.escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``; None (and a line in ``problems``) if missing or unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{path.name} could not be read ({error}); it is left out.")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} does not hold a JSON object; it is left out.")
        return None
    return data


def _config_value(config: dict[str, Any] | None, *keys: str) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _header(run_dir: Path, summary: dict | None, config: dict | None) -> str:
    summary = summary or {}
    fields = [
        ("method", summary.get("method") or _config_value(config, "method", "name")),
        ("dataset", summary.get("dataset") or _config_value(config, "data", "dataset")),
        ("backbone", summary.get("backbone") or _config_value(config, "backbone", "name")),
        ("epochs", summary.get("epochs")),
        ("steps", summary.get("steps")),
        ("status", summary.get("status")),
        ("run directory", str(run_dir)),
        ("report written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")),
    ]
    rows = "".join(
        f"<dt>{name}</dt><dd>{html.escape(str(value))}</dd>"
        for name, value in fields
        if value is not None
    )
    title = f"twinview run report: {html.escape(run_dir.name)}"
    return f'<header>\n<h1>{title}</h1>\n<dl class="meta">{rows}</dl>\n</header>'


def _results(summary: dict | None, eval_results: dict | None, problems: list[str]) -> str:
    parts = [_note(problem) for problem in problems]
    split = None
    if summary:
        split = summary.get("eval_split") or next(
            (s for s in ("test", "val") if any(k.startswith(f"{s}_knn") for k in summary)), None
        )
    if split:
        table = results_table_html(summary, prefix=f"{split}_")
        if table:
            where = html.escape(str(split))
            parts.append(
                f'<p class="caption">End of pretraining: weighted cosine kNN on the {where} '
                "split, training split as the bank.</p>"
            )
            parts.append(table)
    if eval_results:
        table = results_table_html(eval_results)
        if table:
            parts.append(f'<p class="caption">{_eval_caption(eval_results)}</p>')
            parts.append(table)
            if isinstance(eval_results.get("note"), str):
                parts.append(_note(f"Note: {eval_results['note']}."))
    if len(parts) == len(problems):
        parts.append(
            _note("No results: no kNN scores in summary.json and no eval.json (twinview eval).")
        )
    return "\n".join(parts)


def _eval_caption(results: dict) -> str:
    """What the eval.json table holds: split, protocols, seeds (HTML, escaped)."""
    text = "From <code>eval.json</code> (<code>twinview eval</code>)"
    split = results.get("eval_split")
    if isinstance(split, str):
        text += (
            f": final-epoch numbers on the {html.escape(split)} split; weighted cosine kNN with "
            "the training split as the bank; linear-probe and fine-tuning hyperparameters "
            "chosen on the validation split"
        )
    seeds = results.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 1:
        text += f"; mean ± std over {seeds} seeds"
    return text + "."


def _curves(run_dir: Path) -> str:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return _note("No metrics.jsonl in the run directory: no curves to draw.")
    train_panels, epoch_panels = curve_panels(read_records(path))
    parts = []
    if train_panels:
        parts.append(_img(panels_png(train_panels), "training curves"))
    if epoch_panels:
        parts.append(_img(panels_png(epoch_panels), "per-epoch monitors"))
    return "\n".join(parts) or _note("metrics.jsonl holds no numeric values to plot.")


def _embedding_map(features, labels, class_names, method, max_points, seed) -> str:
    """The map section: the scatter plot, or why there is none (never raises on the values of
    ``features``: a diverged run's NaN, zero, constant or 1e26 features still get a report)."""
    if features is None:
        return _note("No test features given: embedding map omitted.")
    result = map_2d(features, method=method, seed=seed, max_points=max_points)
    notes = [_note(note) for note in result.notes]
    if result.points is None:
        return "\n".join([_note(f"Embedding map unavailable: {result.unavailable}."), *notes])
    shown = labels[result.indices] if labels is not None else None
    caption = (
        f"{MAP_NAMES[result.method]} of {len(result.indices)} of {features.shape[0]} "
        f"l2-normalised test embeddings"
        f"{', coloured by label' if labels is not None else ' (no labels given)'}."
    )
    png = scatter_png(result.points, shown, class_names=class_names)
    parts = [f'<p class="caption">{html.escape(caption)}</p>', *notes, _img(png, "embedding map")]
    return "\n".join(parts)


def _neighbours(features, labels, images, class_names, k, count, seed) -> str:
    if features is None or images is None:
        missing = "test features" if features is None else "test images"
        return _note(f"No {missing} given: nearest-neighbour grid omitted.")
    if features.shape[0] < 2:
        return _note("Fewer than two test images: no neighbours to show.")
    queries = choose_queries(features.shape[0], labels, count, seed)
    nbrs = nearest_neighbours(features, queries, k)
    png = neighbour_grid_png(images, queries, nbrs, labels=labels, class_names=class_names)
    caption = (
        f"Each row: a test image (left) and its {nbrs.shape[1]} nearest test images by cosine "
        "similarity of the backbone features, nearest first."
    )
    if labels is not None:
        same = float((labels[nbrs] == labels[queries][:, None]).mean())
        caption += f" Green border: same label as the query ({same:.0%} here), red: different."
    return f'<p class="caption">{html.escape(caption)}</p>\n' + _img(png, "nearest neighbours")


def _views(views_grid_png: bytes | str | Path | None) -> str:
    if views_grid_png is None:
        return _note("No views grid given: augmented views omitted.")
    if isinstance(views_grid_png, str | Path):
        if not Path(views_grid_png).is_file():
            raise FileNotFoundError(f"write_report: views grid {views_grid_png} does not exist")
        views_grid_png = Path(views_grid_png).read_bytes()
    png = bytes(views_grid_png)
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        try:
            buffer = io.BytesIO()
            Image.open(io.BytesIO(png)).save(buffer, format="PNG")
        except OSError as error:
            raise ValueError(f"write_report: views_grid_png is not an image ({error})") from error
        png = buffer.getvalue()
    caption = "The augmented views the run trained on (each row: one image, then its views)."
    return f'<p class="caption">{caption}</p>\n' + _img(png, "augmented views")


def _config(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return _note("No config.yaml in the run directory.")
    text = html.escape(path.read_text())
    return (
        f"<details><summary>config.yaml (click to expand)</summary>\n<pre>{text}</pre>\n</details>"
    )


def _check_inputs(features, labels, images, k, method) -> tuple[np.ndarray | None, Any]:
    """Validate the caller's tensors; labels -> numpy (None when all are < 0, i.e. unknown),
    images -> uint8 numpy."""
    if features is not None and (not isinstance(features, Tensor) or features.ndim != 2):
        raise ValueError(f"write_report: test_features must be (N, D), got {_shape(features)}")
    n = features.shape[0] if features is not None else None
    if labels is not None:
        is_vector = isinstance(labels, Tensor) and labels.ndim == 1
        if not is_vector or (n is not None and labels.shape[0] != n):
            raise ValueError(
                f"write_report: test_labels must be (N,) with N = {n} (the rows of "
                f"test_features), got {_shape(labels)}"
            )
        labels = labels.detach().cpu().long().numpy()
        if labels.size and (labels < 0).all():
            labels = None
    if images is not None:
        images = as_uint8_images(images)
        if n is not None and images.shape[0] != n:
            raise ValueError(
                f"write_report: test_images must have N = {n} rows like test_features, "
                f"got {_shape(images)}"
            )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"write_report: k_neighbours must be a positive int, got {k!r}")
    if method not in METHODS:
        raise ValueError(f"write_report: map_method must be one of {METHODS}, got {method!r}")
    return labels, images


def _shape(x: Any) -> Any:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def write_report(
    run_dir: str | Path,
    *,
    test_features: Tensor | None = None,
    test_labels: Tensor | None = None,
    test_images: Tensor | None = None,
    views_grid_png: bytes | str | Path | None = None,
    class_names: Sequence[str] | None = None,
    k_neighbours: int = 8,
    max_points: int = 5000,
    seed: int = 0,
    n_queries: int = 8,
    map_method: str = "auto",
) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    Args:
        run_dir: the run directory (``summary.json``, ``metrics.jsonl``, ``eval.json``,
            ``config.yaml`` are read when present).
        test_features: (N, D) frozen backbone features of the test images.
        test_labels: (N,) integer labels of the test images.
        test_images: (N, C, H, W) uint8 test images (for the nearest-neighbour grid).
        views_grid_png: an image of the augmented views the run used: PNG bytes (other image
            formats are converted) or the path of a PNG file, e.g. from
            :func:`twinview.views.preview.preview`.
        class_names: names of the labels 0..C-1 (legend and grid captions).
        k_neighbours: neighbours shown per query in the grid; n_queries: rows of the grid.
        max_points: most points in the embedding map (UMAP uses at most 2000, t-SNE 1000).
        seed: seeds the map's subset and optimisation and the choice of query images.
        map_method: ``"auto"``, ``"umap"``, ``"tsne"`` or ``"pca"`` (see
            :func:`~twinview.report.embedding_map.project_2d`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"write_report: run directory {run_dir} does not exist")
    labels, images = _check_inputs(
        test_features, test_labels, test_images, k_neighbours, map_method
    )
    problems: list[str] = []
    summary = _read_json(run_dir / "summary.json", problems)
    eval_results = _read_json(run_dir / "eval.json", problems)
    config = None
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        except yaml.YAMLError:
            config = None  # still shown verbatim in its section

    sections = [
        _header(run_dir, summary, config),
        _section("Results", _results(summary, eval_results, problems), "results"),
        _section("Training curves", _curves(run_dir), "curves"),
        _section(
            "Embedding map",
            _embedding_map(test_features, labels, class_names, map_method, max_points, seed),
            "map",
        ),
        _section(
            "Nearest neighbours",
            _neighbours(test_features, labels, images, class_names, k_neighbours, n_queries, seed),
            "neighbours",
        ),
        _section("Augmented views", _views(views_grid_png), "views"),
        _section("Configuration", _config(run_dir), "config"),
    ]
    title = html.escape(f"twinview report: {run_dir.name}")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(sections)
        + "\n</main>\n</body>\n</html>\n"
    )
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
