"""``report(run)``: rebuild ``report.html`` of a finished run (``twinview report RUN``).

Reads the run's ``config.yaml`` and backbone, recomputes the test split's features for the
embedding map and neighbour grid, and reuses the ``views.png`` the run wrote.
"""

from __future__ import annotations

from pathlib import Path

from twinview.eval.features import extract_features
from twinview.export import load_backbone
from twinview.report.html import write_report
from twinview.train.build import build_data, eval_transform
from twinview.train.config import load_config


def report(run: str | Path, *, device: str | None = None) -> Path:
    """Write ``run/report.html`` again from the run's files; returns its path."""
    run_dir = Path(run)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a twinview run directory (no config.yaml); pass runs/<name>"
        )
    cfg = load_config(config)
    backbone = load_backbone(run_dir)
    spec = backbone.spec
    data = build_data(cfg)
    split = data.test if data.test is not None and hasattr(data.test, "images") else data.val
    kwargs = {}
    if hasattr(split, "images"):
        transform = eval_transform(spec["image_size"], spec["mean"], spec["std"])
        kwargs = {
            "test_features": extract_features(
                backbone, split.images, device=device, normalize=transform
            ),
            "test_labels": split.labels,
            "test_images": split.images,
        }
    grid = run_dir / "views.png"
    return write_report(
        run_dir,
        views_grid_png=grid if grid.is_file() else None,
        class_names=getattr(data.train, "classes", None),
        seed=cfg.train.seed,
        **kwargs,
    )
