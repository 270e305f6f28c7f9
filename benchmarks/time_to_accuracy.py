"""Time to accuracy: validation kNN after every epoch against training time, twinview vs lightly.

For each method (by default SimCLR, BYOL, VICReg), on Fashion-MNIST, in one invocation:

- ``twinview``: ``twinview pretrain --config configs/fashion_mnist/<method>.yaml`` in a
  subprocess (the real trainer, the recipe as shipped: its epochs, optimizer, schedule and
  ``train.precision`` default, "auto" = bf16 autocast on a CPU with AMX / AVX512-BF16, fp32
  elsewhere; the precision it chose is recorded from ``summary.json``). Its per-epoch monitor
  scores the validation kNN; the points are the ``kind="epoch"`` records of the run's
  ``metrics.jsonl``: ``val_knn_top1`` against ``train_seconds`` (seconds in training steps:
  loader + forward / backward / optimizer, monitors and checkpoints excluded). A trainer
  without ``train_seconds`` falls back to the wall-clock time at which each record appeared
  (start-up and evaluation included, against twinview), and the output says so.
- ``lightly``: lightly's example loop of the method (``benchmarks/lightly_loops.py``, the code
  ``throughput.py`` times and ``accuracy.py`` trains: lightly's transforms on PIL images, a
  ``DataLoader`` with 2 workers, shuffle, drop_last, its heads and loss, its momentum update,
  its optimizer defaults: SGD lr 0.06 without weight decay or schedule, Adam 1e-3 for DINO and
  SwAV), fp32, for ``--epochs`` epochs, in this process. Training time per epoch runs from
  creating the loader's iterator (its workers start every epoch, as in the example) to the
  last optimizer step; after every epoch the backbone is scored outside that time.
- ``twinview (budget)``, with ``--same-budget``: the recipe again with
  ``train.budget=<lightly's training seconds>s``: the whole twinview run, its per-epoch
  evaluation and final test included, is planned to fit in the time lightly spent training
  alone, which is conservative for twinview.

Fairness: the same backbone (``twinview.nn.build_backbone("convnet")``, 1 channel, 28 px; a
fresh instance per side), batch 256, the same 54,000 / 6,000 train / validation split (the one
``twinview pretrain`` holds out, ``twinview.run.data.build_data``), and the same kNN code: the
lightly backbone goes through ``twinview.train.monitors.Monitors.epoch_end``, the monitor the
trainer runs (bank = the 54k train split, queries = the 6k validation split, cosine,
temperature-weighted, k=200, T=0.07, the recipe's normalisation). lightly's transforms carry
twinview's augmentation values and head widths (``lightly_loops.py``). What differs: the
optimizer and schedule (twinview's recipe: AdamW 1e-3, wd 1e-4, warm-up + cosine; lightly's
example: SGD 0.06, constant), the precision (twinview's default, lightly fp32), channels-last
(twinview's recipe), how views are made (twinview batched in the main process, lightly per
image in 2 workers), the process (twinview in a subprocess with ``OMP_NUM_THREADS=--threads``
and its own malloc setting, lightly here with ``torch.set_num_threads(--threads)``) and
DINO's scored backbone (twinview: the teacher, lightly: the student). Final numbers here are
on the validation split (the test split is for ``accuracy.py``).

    python benchmarks/time_to_accuracy.py [--methods simclr,byol,vicreg] [--epochs 4]
        [--twinview-epochs N (default: the recipe's)] [--same-budget] [--threads 2]
        [--seed 0] [--work DIR] [--out FILE.md] [--plot FILE.png] [--config-root configs]
        [--max-steps N (smoke test)]

``--max-steps N`` (smoke test): lightly stops each epoch after N steps; twinview gets
``train.max_steps=N``, which caps its whole run (the trainer has no per-epoch cap), so for N
below an epoch (210 steps) twinview stops inside its first epoch, with one point.
Each run is appended to ``DIR/results.jsonl`` as it ends, and a rerun with the same settings
skips the runs found there; the table, the speed-ups and the plot are made from that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from machine import cpu_name  # noqa: E402
from throughput import (  # noqa: E402
    ALL_METHODS,
    CONFIG_ROOT,
    LIGHTLY_METHODS,
    LightlyRunner,
    MissingRecipe,
    Setting,
    parse_methods,
    prepare,
    report_failure,
)

from twinview.run.data import eval_transform  # noqa: E402
from twinview.train.build import backbone_spec  # noqa: E402
from twinview.train.logger import read_metrics  # noqa: E402
from twinview.train.monitors import Monitors  # noqa: E402

SETTING = Setting("convnet", "fashion_mnist", [], 256)
THRESHOLDS = (0.80, 0.82, 0.84)
RUNS = (("lightly", "recipe"), ("twinview", "recipe"), ("twinview", "budget"))
FALLBACK = "wall-clock at each epoch record (start-up and evaluation included)"


def native_bf16() -> bool:
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def label(entry: dict) -> str:
    if entry["variant"] == "budget":
        return f"{entry['library']} (budget {entry['budget']})"
    return entry["library"]


# --- the two sides ---------------------------------------------------------------------------


def run_lightly(method: str, args: argparse.Namespace, cache: dict) -> dict:
    """lightly's example loop; validation kNN by twinview's monitor after every epoch."""
    p = prepare(SETTING, method, cache, args.config_root)
    data, _ = cache[(SETTING.name,)]
    spec = backbone_spec(p.cfg, p.channels, p.size, p.views)
    monitor_cfg = dataclasses.replace(p.cfg.monitor, knn_every_epochs=1, health=False)
    transform = eval_transform(p.size, spec["mean"], spec["std"])
    monitors = Monitors(monitor_cfg, data, transform, torch.device("cpu"), seed=p.cfg.train.seed)
    runner = LightlyRunner(method, p, args.seed)  # seeds the model, then data order and views
    for note in runner.notes:
        print(f"  lightly {method}: {note}", flush=True)
    loader = DataLoader(
        runner.dataset, batch_size=runner.batch, shuffle=True, drop_last=True, num_workers=2
    )
    per_epoch = len(loader) if args.max_steps is None else min(len(loader), args.max_steps)
    runner.steps_per_epoch = per_epoch  # the epoch of DINO's / SwAV's schedules
    runner.total = args.epochs * per_epoch  # momentum schedules span the run, as the trainer's
    points, train_s = [], 0.0
    for epoch in range(args.epochs):
        runner.model.train()
        start = time.perf_counter()
        it = iter(loader)
        for _ in range(per_epoch):
            runner.train_step(it)
        train_s += time.perf_counter() - start
        it._shutdown_workers()  # type: ignore[attr-defined]
        start = time.perf_counter()
        knn = monitors.epoch_end(runner.backbone, epoch)["val_knn_top1"]
        point = {
            "epoch": epoch + 1,
            "step": runner.step,
            "train_seconds": round(train_s, 2),
            "val_knn_top1": knn,
            "eval_seconds": round(time.perf_counter() - start, 2),
        }
        points.append(point)
        print(
            f"  lightly {method} epoch {epoch + 1}/{args.epochs}: loss "
            f"{runner.last_loss:.4f}, val kNN {knn:.2%}, {train_s:.0f} s training",
            flush=True,
        )
    return {
        "points": points,
        "precision": "fp32",
        "timing": "train_seconds",
        "epochs": args.epochs,
        "notes": runner.notes,
    }


def _epoch_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in read_metrics(path) if r.get("kind") == "epoch"]


def run_twinview(
    method: str, args: argparse.Namespace, work: Path, budget: str | None = None
) -> dict:
    """``twinview pretrain`` with the shipped recipe in a subprocess; its epoch records."""
    recipe = Path(args.config_root) / SETTING.config_dir / f"{method}.yaml"
    if not recipe.is_file():
        raise MissingRecipe(f"no recipe {recipe}")
    name = method if budget is None else f"{method}-budget"
    run_dir = work / "twinview" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: the timings are of one session
    overrides = [
        f"train.seed={args.seed}",
        "monitor.knn_every_epochs=1",
        f"output.dir={work / 'twinview'}",
        f"output.name={name}",
        "output.resume=false",
    ]
    if args.twinview_epochs is not None:
        overrides.append(f"train.epochs={args.twinview_epochs}")
    if budget is not None:
        overrides.append(f"train.budget={budget}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    command = [
        sys.executable,
        "-m",
        "twinview.cli",
        "pretrain",
        "--config",
        str(recipe),
        *overrides,
    ]
    print("  $ " + shlex.join(command), flush=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    metrics, arrivals = run_dir / "metrics.jsonl", []
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=ROOT.parent)
    while True:  # when each epoch record appears: the fallback clock
        done = proc.poll() is not None
        for _ in _epoch_records(metrics)[len(arrivals) :]:
            arrivals.append(time.perf_counter() - start)
        if done:
            break
        time.sleep(0.5)
    if proc.returncode != 0:
        raise RuntimeError(f"twinview pretrain exited with status {proc.returncode}")
    summary = json.loads((run_dir / "summary.json").read_text())
    points, timing = [], "train_seconds"
    for record, arrived in zip(_epoch_records(metrics), arrivals):
        if "val_knn_top1" not in record:
            continue
        seconds = record.get("train_seconds")
        if seconds is None:
            seconds, timing = arrived, FALLBACK
        points.append(
            {
                "epoch": record["epoch"] + 1,
                "step": record["step"],
                "train_seconds": round(seconds, 2),
                "val_knn_top1": record["val_knn_top1"],
                "eval_seconds": record.get("eval_seconds"),
            }
        )
    if not points:
        raise RuntimeError(f"no epoch record with val_knn_top1 in {metrics}")
    return {
        "points": points,
        "precision": summary.get("precision"),
        "precision_reason": summary.get("precision_reason"),
        "timing": timing,
        "epochs": summary.get("epochs"),
        "steps": summary.get("steps"),
        "budget": budget,
        "run_dir": str(run_dir),
    }


# --- tables and plot -------------------------------------------------------------------------


def time_to(points: list[dict], target: float) -> tuple[float, bool] | None:
    """Training seconds at which val kNN first reaches ``target``, linearly interpolated
    between epoch points, and whether it was reached by the first point already (then the
    time is that point's: an upper bound); None when never reached."""
    previous = None
    for point in points:
        t, acc = point["train_seconds"], point["val_knn_top1"]
        if acc >= target:
            if previous is None:
                return t, True
            t0, a0 = previous
            return t0 + (target - a0) / (acc - a0) * (t - t0), False
        previous = (t, acc)
    return None


def minutes(reached: tuple[float, bool] | None) -> str:
    if reached is None:
        return "not reached"
    seconds, bound = reached
    return f"{'<= ' if bound else ''}{seconds / 60:.2f}"


def table(entries: list[dict], failed: list[dict]) -> str:
    heads = [
        "method",
        "library",
        "precision",
        "epochs",
        "training s",
        "final val kNN",
        *(f"min to {100 * t:.0f}%" for t in THRESHOLDS),
    ]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for e in entries:
        last = e["points"][-1]
        cells = [
            e["method"],
            label(e),
            str(e.get("precision")),
            f"{e['epochs']:g}",
            f"{last['train_seconds']:.0f}",
            f"{100 * last['val_knn_top1']:.2f}%",
            *(minutes(time_to(e["points"], t)) for t in THRESHOLDS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for f in failed:
        lines.append(f"| {f['method']} | {f['library']} | {f['status']} |" + " |" * 6)
    lines.append(
        "\nMinutes of training (evaluation excluded), interpolated linearly between epochs; "
        "'<= t': reached at the first evaluation already (t = its time)."
    )
    return "\n".join(lines)


def speedups(entries: list[dict], methods: list[str]) -> list[str]:
    """Per method: when twinview reaches lightly's final kNN, and the budget run's final kNN."""
    out = []
    for method in methods:
        runs = {(e["library"], e["variant"]): e for e in entries if e["method"] == method}
        lightly = runs.get(("lightly", "recipe"))
        if lightly is None:
            continue
        goal, lightly_s = (
            lightly["points"][-1]["val_knn_top1"],
            lightly["points"][-1]["train_seconds"],
        )
        for variant in ("recipe", "budget"):
            tv = runs.get(("twinview", variant))
            if tv is None:
                continue
            what = f"{method}: {label(tv)}"
            final = tv["points"][-1]["val_knn_top1"]
            reached = time_to(tv["points"], goal)
            if reached is None:
                out.append(
                    f"- {what} does not reach lightly's final kNN ({100 * goal:.2f}%, "
                    f"{lightly_s:.0f} s); its final kNN {100 * final:.2f}%"
                )
            else:
                seconds, bound = reached
                ratio = lightly_s / max(seconds, 1e-9)
                share = f"1/{ratio:.1f} of" if ratio >= 1 else f"{1 / ratio:.1f} x"
                out.append(
                    f"- {what} reaches lightly's final kNN ({100 * goal:.2f}%) in "
                    f"{'<= ' if bound else ''}{seconds:.0f} s = {share} lightly's time "
                    f"({lightly_s:.0f} s)"
                )
            if variant == "budget":
                out.append(
                    f"- {method}: final kNN at the same budget ({tv['budget']}, the whole "
                    f"twinview run incl. evaluation): twinview {100 * final:.2f}% vs "
                    f"lightly {100 * goal:.2f}%"
                )
    return out


def plot(entries: list[dict], path: Path, title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(e["method"] for e in entries))}
    styles = {
        ("twinview", "recipe"): ("-", "o"),
        ("lightly", "recipe"): ("--", "s"),
        ("twinview", "budget"): ("-.", "^"),
    }
    ys = []
    for e in entries:
        x = [p["train_seconds"] / 60 for p in e["points"]]
        y = [100 * p["val_knn_top1"] for p in e["points"]]
        ys += y
        style, marker = styles[(e["library"], e["variant"])]
        ax.plot(
            x,
            y,
            linestyle=style,
            marker=marker,
            markersize=4,
            color=colours[e["method"]],
            label=f"{e['method']} {label(e)}",
        )
    for t in THRESHOLDS:
        ax.axhline(100 * t, linestyle=":", color="grey", linewidth=1)
        ax.annotate(
            f"{100 * t:.0f}%",
            (1.0, 100 * t),
            xycoords=("axes fraction", "data"),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=8,
            color="grey",
        )
    ax.set_ylim(min([*ys, 100 * THRESHOLDS[0]]) - 1, max([*ys, 100 * THRESHOLDS[-1]]) + 1)
    ax.set_xlim(left=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation kNN top-1 (k=200), %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.07, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="simclr,byol,vicreg", help="comma-separated, or 'all'")
    parser.add_argument("--epochs", type=int, default=4, help="lightly's epochs")
    parser.add_argument("--twinview-epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument(
        "--same-budget",
        action="store_true",
        help="also run twinview with train.budget = lightly's training seconds",
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed, both sides")
    parser.add_argument("--max-steps", type=int, default=None, help="smoke test: stop early")
    parser.add_argument("--work", type=Path, default=Path("runs/time-to-accuracy"))
    parser.add_argument("--out", type=Path, default=None, help="default: WORK/time_to_accuracy.md")
    parser.add_argument(
        "--plot", type=Path, default=None, help="default: WORK/time_to_accuracy.png"
    )
    parser.add_argument("--config-root", type=Path, default=CONFIG_ROOT)
    args = parser.parse_args(argv)
    methods = parse_methods(args.methods)
    for m in methods:
        if m not in ALL_METHODS:
            parser.error(f"--methods: unknown method {m!r}; choose from {list(ALL_METHODS)}")
    if args.epochs < 1 or (args.max_steps is not None and args.max_steps < 1):
        parser.error("--epochs and --max-steps must be >= 1")
    torch.set_num_threads(args.threads)
    import lightly

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or work / "time_to_accuracy.md"
    png = args.plot or work / "time_to_accuracy.png"
    results = work / "results.jsonl"
    done = (
        [json.loads(x) for x in results.read_text().splitlines() if x] if results.exists() else []
    )
    header = [
        f"CPU: {cpu_name()}; native bf16 (AMX / AVX512-BF16): {'yes' if native_bf16() else 'no'}",
        f"torch {torch.__version__}, lightly {lightly.__version__}, {args.threads} threads",
        "command: " + shlex.join(["python", *sys.argv]),
    ]
    print("\n".join(header), flush=True)

    def settings(library: str, variant: str) -> dict:
        """What a run depends on; a budget run also on lightly's epochs (its budget)."""
        out = {"max_steps": args.max_steps, "seed": args.seed, "threads": args.threads}
        if library == "lightly" or variant == "budget":
            out["lightly_epochs"] = args.epochs
        if library == "twinview" and variant == "recipe":
            out["twinview_epochs"] = args.twinview_epochs
        return out

    def find(library: str, method: str, variant: str) -> dict | None:
        key, want = (library, method, variant), settings(library, variant)
        matches = (d for d in done if (d["library"], d["method"], d["variant"]) == key)
        return next((d for d in reversed(list(matches)) if d["settings"] == want), None)

    failed: list[dict] = []
    cache: dict = {}
    for method in methods:
        for library, variant in RUNS:
            if (variant == "budget" and not args.same_budget) or find(library, method, variant):
                continue
            if library == "lightly" and method not in LIGHTLY_METHODS:
                failed.append({"library": library, "method": method, "status": "n/a"})
                continue
            budget = None
            if variant == "budget":
                lightly_run = find("lightly", method, "recipe")
                if lightly_run is None:
                    failed.append(
                        {
                            "library": "twinview (budget)",
                            "method": method,
                            "status": "no lightly run to match",
                        }
                    )
                    continue
                budget = f"{max(1, round(lightly_run['points'][-1]['train_seconds']))}s"
            print(f"== {library} {method}" + (f" (budget {budget})" if budget else ""), flush=True)
            start = time.perf_counter()
            try:
                if library == "lightly":
                    entry = run_lightly(method, args, cache)
                else:
                    entry = run_twinview(method, args, work, budget)
            except Exception as err:
                status = report_failure(f"{library} {method}", err)
                failed.append({"library": library, "method": method, "status": status})
                continue
            entry = {
                "library": library,
                "method": method,
                "variant": variant,
                "settings": settings(library, variant),
                **entry,
                "wall_seconds": round(time.perf_counter() - start, 1),
            }
            done.append(entry)
            with results.open("a") as f:
                f.write(json.dumps(entry) + "\n")
    entries = [e for m in methods for lib, v in RUNS if (e := find(lib, m, v)) is not None]
    fallback = sorted({label(e) for e in entries if e["timing"] != "train_seconds"})
    if fallback:
        header.append(
            f"timing: {', '.join(fallback)}: no train_seconds in metrics.jsonl, {FALLBACK}"
        )
    precisions = {e["precision_reason"] for e in entries if e.get("precision_reason")}
    header += [f"twinview precision: {reason}" for reason in sorted(precisions)]
    text = "\n".join([*header, "", table(entries, failed), "", *speedups(entries, methods)]) + "\n"
    print("\n" + text, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if entries:
        title = (
            f"Fashion-MNIST, convnet, batch 256, {args.threads} threads, {cpu_name()}\n"
            "validation kNN (k=200, 54k bank / 6k validation) vs training time"
        )
        xlabel = "training minutes (evaluation excluded)"
        if fallback:
            xlabel += f"; {', '.join(fallback)}: wall-clock, evaluation included"
        plot(entries, png, title, xlabel)
        print(f"plot: {png}", flush=True)
    return 1 if any(f["status"].startswith("error") for f in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
