"""``report(run)``: rebuild ``report.html`` of a finished run (``twinview report RUN``).

Reads the run's ``config.yaml`` and backbone through :mod:`twinview.run.reader`, recomputes the
test split's features for the embedding map and neighbour grid, and reuses the ``views.png``
the run wrote.
"""

from __future__ import annotations

from pathlib import Path

from twinview.devices import pick_device
from twinview.eval.features import extract_features
from twinview.export import load_backbone
from twinview.report.html import write_report
from twinview.run.data import build_data
from twinview.run.reader import backbone_input, read_run_config, run_folder


def report(run: str | Path, *, device: str | None = None, torchscript: bool = False) -> Path:
    """Write ``run/report.html`` again from the run's files; returns its path.

    ``torchscript=True`` allows a TorchScript backbone file, which RUNS CODE FROM THE FILE.
    """
    run_dir = run_folder(run)
    cfg = read_run_config(run_dir)
    device_ = pick_device(device or "auto", key="device")
    backbone = load_backbone(run_dir, map_location=device_, torchscript=torchscript)
    data = build_data(cfg)
    split = data.test if data.test is not None and hasattr(data.test, "images") else data.val
    kwargs = {}
    if hasattr(split, "images"):
        _, normalize = backbone_input(backbone.spec, split)
        kwargs = {
            "test_features": extract_features(
                backbone, split.images, device=device_, normalize=normalize
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
