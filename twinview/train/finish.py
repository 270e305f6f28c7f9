"""The end of a pretraining run: final kNN, backbone.pt, summary.json, report.html, the summary.

Runs on the main process only. The report is the last step and never loses what came before
it: backbone and summary are written first, and a report that fails (or a Ctrl-C during it) is
named in one line with the command that writes it again (``twinview report RUN``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from twinview.export import save_backbone
from twinview.report import write_report
from twinview.run.data import sample_images
from twinview.views import preview


def finish(run: Any, seconds: float) -> dict:
    """Final evaluation and files of ``run`` (a ``_Run``); returns the summary."""
    cfg = run.cfg
    summary: dict[str, Any] = {
        "status": "finished",
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "backbone": cfg.backbone.name,
        "steps": run.step,
        "epochs": round(run.step / run.steps_per_epoch, 3),
        "train_seconds_this_session": round(seconds, 1),
        "skipped_steps": run.skipped_steps,
        "precision": run.precision,
        "precision_reason": run.precision_choice.reason,
        "train_seconds": round(run.timing.train_seconds, 1),  # all sessions, steps only
        "budget": cfg.train.budget,
        "run_dir": str(run.run_dir),
    }
    if run.budget is not None and run.budget.images_per_s:
        summary["budget_images_per_s"] = round(run.budget.images_per_s, 1)  # the measured rate
    if not run.info.is_main:
        return summary
    scores, test = run.monitors.final(run.method.evaluation_backbone())
    summary.update(scores)
    path = save_backbone(run.method.evaluation_backbone(), run.spec, run.run_dir / "backbone.pt")
    summary["backbone_path"] = str(path)
    run.directory.write_text("summary.json", json.dumps(summary, indent=2) + "\n")
    run.log.log("summary", run.step, run.epoch, {
        k: v for k, v in summary.items() if isinstance(v, int | float)
    })  # fmt: skip
    try:
        summary["report_path"] = str(write_run_report(run, test))
    except KeyboardInterrupt:
        print(f"twinview: report interrupted; write it with: twinview report {run.run_dir}")
    except Exception as err:  # the run's results are saved; a report bug must not hide them
        warnings.warn(
            f"could not write the report ({type(err).__name__}: {err}); the backbone and "
            f"summary are saved. Retry with: twinview report {run.run_dir}",
            stacklevel=2,
        )
    print(format_summary(summary))
    return summary


def write_run_report(run: Any, test: dict[str, Any]) -> Path:
    """report.html: curves, results, embedding map, neighbours and the views used."""
    grid = run.run_dir / "views.png"
    source = run.data.train
    preview(sample_images(source, 8), run.views, grid, n=8, seed=run.cfg.train.seed)
    return write_report(
        run.run_dir,
        test_features=test.get("features"),
        test_labels=test.get("labels"),
        test_images=test.get("images"),
        views_grid_png=grid,
        class_names=getattr(source, "classes", None),
        seed=run.cfg.train.seed,
    )


def format_summary(summary: dict) -> str:
    """The closing lines printed at the end of pretraining."""
    lines = [
        f"twinview: {summary['method']} on {summary['dataset']} finished "
        f"({summary['epochs']:g} epochs, {summary['steps']} steps).",
    ]
    split = summary.get("eval_split")
    if split:
        for k in (200, 20):
            learned = summary.get(f"{split}_knn_top1_k{k}")
            raw = summary.get(f"{split}_raw_pixel_knn_top1_k{k}")
            if learned is not None and raw is not None:
                lines.append(
                    f"  kNN top-1 on {split} (k={k}, cosine, weighted): {learned:.2%}   "
                    f"raw pixels: {raw:.2%}   ({100 * (learned - raw):+.1f} points)"
                )
    if "backbone_path" in summary:
        lines.append(f"  backbone: {summary['backbone_path']}")
    if "report_path" in summary:
        lines.append(f"  report: {summary['report_path']}")
    lines.append(f"  run directory: {summary['run_dir']}")
    return "\n".join(lines)
