"""Accuracy at a fixed budget: twinview vs lightly on Fashion-MNIST, method by method.

For each method (by default SimCLR, MoCo v2, BYOL, SimSiam; ``--methods all`` adds MoCo v3,
Barlow Twins, VICReg, DINO, SwAV, NNCLR, SupCon, DCL and DCLW), two backbones are pretrained
for the same number of epochs on the same images (Fashion-MNIST train minus the 10% validation
split that ``twinview pretrain`` holds out), with the same architecture (the default CPU
backbone, ``convnet``: 1 channel, 28 px), batch size (256), head widths, crops and
augmentation values:

- ``twinview``: ``twinview pretrain --config configs/fashion_mnist/<method>.yaml
  train.epochs=E`` (the real trainer, the shipped recipe; the per-epoch validation kNN monitor
  is off so that both sides spend their time on training only).
- ``lightly``: lightly's example loop for that method (``benchmarks/lightly_loops.py``: its
  transforms on PIL images, a ``DataLoader`` with 2 workers, its heads, losses, memory banks,
  momentum updates and gradient cancelling, its optimizer: SGD lr 0.06, Adam 1e-3 for DINO and
  SwAV), the same code ``benchmarks/throughput.py`` times, run for E epochs. Its backbone (the
  student's, for DINO, as twinview's) is saved with ``twinview.export.save_backbone`` under the
  same spec (normalisation included). SupCon and MoCo v3 have no lightly example: "n/a".

Both backbones are then scored by the same code, ``twinview.eval.evaluate``: kNN (k=200,
cosine, temperature-weighted, bank = train split) and a linear probe (SGD on frozen
features, lr / weight decay chosen on the validation split), reported on the **test** split;
plus the raw-pixel and random-init baselines (scored once: they do not depend on the method).

    python benchmarks/accuracy.py [--epochs 4] [--methods simclr,moco_v2,byol,simsiam | all]
        [--libraries twinview,lightly] [--threads 2] [--seeds 1] [--linear-epochs 100]
        [--seed 0] [--work DIR] [--config-root configs] [--out FILE.md]
        [--max-steps N (smoke test)]

Results are appended to ``DIR/results.jsonl`` as each model finishes (a rerun skips what is
there, so an interrupted benchmark resumes), and the table is printed at the end. A model
that fails (a method not implemented yet, a missing recipe) is reported in the table, not
recorded (a rerun tries it again), and the run goes on; the exit status is then 1 unless
every failure was "not implemented" (or "n/a": no lightly example).
"""

from __future__ import annotations

import argparse
import json
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
    METHOD_NAMES,
    LightlyRunner,
    MissingRecipe,
    Setting,
    parse_methods,
    prepare,
    report_failure,
)

from twinview.config import load_config  # noqa: E402
from twinview.eval.evaluate import evaluate  # noqa: E402
from twinview.export import save_backbone  # noqa: E402
from twinview.train.build import backbone_spec  # noqa: E402
from twinview.train.launch import pretrain  # noqa: E402

LIBRARIES = ("twinview", "lightly")
SETTING = Setting("convnet", "fashion_mnist", [], 256)


def train_twinview(
    method: str,
    epochs: int,
    work: Path,
    max_steps: int | None,
    seed: int,
    config_root: Path = CONFIG_ROOT,
) -> Path:
    """``twinview pretrain`` with the shipped Fashion-MNIST recipe; returns the run directory."""
    path = Path(config_root) / SETTING.config_dir / f"{method}.yaml"
    if not path.is_file():
        raise MissingRecipe(f"no recipe {path}")
    cfg = load_config(
        path,
        [
            f"train.epochs={epochs}",
            f"train.seed={seed}",
            "monitor.knn_every_epochs=0",
            f"output.dir={work / 'twinview'}",
            f"output.name={method}",
            "output.resume=false",
            f"train.max_steps={'null' if max_steps is None else max_steps}",
        ],
    )
    summary = pretrain(cfg)
    return Path(summary["run_dir"])


def train_lightly(
    method: str,
    epochs: int,
    work: Path,
    max_steps: int | None,
    seed: int,
    config_root: Path = CONFIG_ROOT,
) -> Path:
    """lightly's example loop for ``epochs`` epochs; returns the saved backbone file."""
    p = prepare(SETTING, method, {}, config_root)
    runner = LightlyRunner(method, p, seed)  # seeds the model, then data order and views
    for note in runner.notes:
        print(f"  lightly {method}: {note}", flush=True)
    loader = DataLoader(
        runner.dataset, batch_size=runner.batch, shuffle=True, drop_last=True, num_workers=2
    )
    # The momentum (and DINO teacher) schedules span the whole run, as the trainer's do.
    runner.total = epochs * len(loader)
    if max_steps is not None:
        runner.total = min(runner.total, max_steps)
    runner.model.train()
    for epoch in range(epochs):
        if runner.step >= runner.total:
            break
        it = iter(loader)
        losses = []
        for _ in range(min(len(loader), runner.total - runner.step)):
            runner.train_step(it)
            losses.append(runner.last_loss)
        it._shutdown_workers()  # type: ignore[attr-defined]
        mean = sum(losses) / len(losses)
        print(f"  lightly {method} epoch {epoch + 1}/{epochs}: mean loss {mean:.4f}", flush=True)
    spec = backbone_spec(p.cfg, p.channels, p.size, p.views)
    out = work / "lightly" / method / "backbone.pt"
    return save_backbone(runner.backbone, spec, out)


def score(target: Path, *, baselines: bool, args: argparse.Namespace, out: Path) -> dict:
    return evaluate(
        target,
        data="fashion_mnist",
        val_fraction=0.1,
        protocols=("knn", "linear"),
        seeds=args.seeds,
        baselines=baselines,
        linear_epochs=args.linear_epochs,
        out=out,
    )


def accuracies(metrics: dict) -> tuple[float, float]:
    """(kNN k=200, linear mean over seeds) test accuracies from one ``evaluate`` entry."""
    return metrics["knn"]["knn_top1_k200"], metrics["linear"]["linear_top1_mean"]


def row(library: str, method: str, result: dict, seconds: float) -> dict:
    knn, linear = accuracies(result["protocols"])
    return {"library": library, "method": method, "knn": knn, "linear": linear, "train_s": seconds}


def table(rows: list[dict], baselines: dict | None, epochs: int) -> str:
    lines = [
        "| method | library | epochs | kNN k=200 test | linear test | pretrain time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "status" in r:  # not run: "n/a" (no lightly example), "not implemented", "error (...)"
            c = r["status"]
            lines.append(f"| {r['method']} | {r['library']} | {epochs} | {c} | {c} | |")
            continue
        t = f"{r['train_s'] / 60:.1f} min"
        lines.append(
            f"| {r['method']} | {r['library']} | {epochs} | {100 * r['knn']:.2f}% "
            f"| {100 * r['linear']:.2f}% | {t} |"
        )
    for name, m in (baselines or {}).items():
        knn, linear = accuracies(m)
        lines.append(f"| {name} (baseline) | - | - | {100 * knn:.2f}% | {100 * linear:.2f}% | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs, both sides")
    parser.add_argument(
        "--methods", default=",".join(METHOD_NAMES), help="comma-separated, or 'all'"
    )
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--seeds", type=int, default=1, help="linear-probe seeds")
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--work", default="runs/accuracy-benchmark", help="runs and results")
    parser.add_argument("--out", default=None, help="also write the table (Markdown)")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed, both sides")
    parser.add_argument("--max-steps", type=int, default=None, help="smoke test: stop early")
    parser.add_argument(
        "--config-root", type=Path, default=CONFIG_ROOT, help="recipes: DIR/fashion_mnist/*.yaml"
    )
    args = parser.parse_args(argv)
    methods = parse_methods(args.methods)
    libraries = [x.strip() for x in args.libraries.split(",") if x.strip()]
    for m in methods:
        if m not in ALL_METHODS:
            parser.error(f"--methods: unknown method {m!r}; choose from {list(ALL_METHODS)}")
    for x in libraries:
        if x not in LIBRARIES:
            parser.error(f"--libraries: unknown library {x!r}; choose from {list(LIBRARIES)}")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    torch.set_num_threads(args.threads)
    import lightly

    budget = f"epochs{args.epochs}" + ("" if args.max_steps is None else f"-steps{args.max_steps}")
    budget += "" if args.seed == 0 else f"-seed{args.seed}"
    work = Path(args.work) / budget
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.jsonl"
    done = []
    if results_file.exists():
        done = [json.loads(line) for line in results_file.read_text().splitlines() if line]
    env = (
        f"torch {torch.__version__}, lightly {lightly.__version__}, "
        f"{cpu_name()}, {args.threads} threads, "
        f"{args.epochs} epochs, linear probe {args.linear_epochs} epochs x {args.seeds} seed(s)"
    )
    print(env, flush=True)

    def record(entry: dict) -> None:
        done.append(entry)
        with results_file.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    failed: list[dict] = []  # shown in the table, never recorded: a rerun tries them again
    for method in methods:
        for library in libraries:
            if any(d.get("library") == library and d.get("method") == method for d in done):
                continue
            if library == "lightly" and method not in LIGHTLY_METHODS:
                failed.append({"library": library, "method": method, "status": "n/a"})
                continue
            print(f"== {library} {method}: pretraining {args.epochs} epoch(s)", flush=True)
            start = time.perf_counter()
            train = train_twinview if library == "twinview" else train_lightly
            need_baselines = not any("baselines" in d for d in done)
            try:
                target = train(
                    method, args.epochs, work, args.max_steps, args.seed, args.config_root
                )
                seconds = time.perf_counter() - start
                result = score(
                    target,
                    baselines=need_baselines,
                    args=args,
                    out=work / f"eval-{library}-{method}.json",
                )
            except Exception as err:
                status = report_failure(f"{library} {method}", err)
                failed.append({"library": library, "method": method, "status": status})
                continue
            if need_baselines:
                record({"baselines": result["baselines"]})
            entry = row(library, method, result, seconds)
            record(entry)
            print(f"   {entry}", flush=True)
    rows = [d for d in done if "library" in d and d["method"] in methods] + failed
    baselines = next((d["baselines"] for d in done if "baselines" in d), None)
    text = f"{env}\n\n{table(rows, baselines, args.epochs)}\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if any(r["status"].startswith("error") for r in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
