"""Where a training step's time goes: views, backbone + heads, loss, backward, optimizer.

Profiles the trainer's step (``benchmarks/throughput.py``'s ``TwinviewRunner``: the shipped
Fashion-MNIST recipe, the in-memory loader, the recipe's precision) with ``torch.profiler`` and
labels its phases:

- ``views``: the next batch: indexing plus every view made batched on the device;
- ``forward``: ``method(views)``, of which ``loss`` is the time inside the loss functions
  (each ``twinview.losses`` function labels itself ``loss:<name>`` under the profiler);
- ``backward``; ``optimizer``: the lr, ``optimizer.step``, ``zero_grad`` and ``on_step_end``
  (momentum updates).

Also counts the minor page faults and system CPU time of the profiled steps (the cost of
memory that is mapped and unmapped every step; see ``twinview/train/memory.py``).

    python benchmarks/step_profile.py [--methods simclr,byol] [--precision default|fp32]
        [--steps 5] [--warmup 3] [--threads 2] [--top 0] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_name
from throughput import TwinviewRunner, parse_methods, prepare, settings

from twinview.train.precision import choose_precision, cpu_native_bf16
from twinview.train.schedules import apply_lr

PHASES = ("views", "forward", "loss", "backward", "optimizer")


def profiled_step(r: TwinviewRunner) -> None:
    """One trainer step with its phases labelled (the same calls as ``TwinviewRunner``)."""
    with record_function("views"):
        batch = next(r.batches)
    r.method.on_step_start(r.step, r.steps_per_epoch)
    with record_function("forward"), torch.autocast("cpu", torch.bfloat16, r.precision == "bf16"):
        views = batch.views
        if r.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        out = r.model(views, batch.labels) if r.needs_labels else r.model(views)
    with record_function("backward"):
        out.loss.backward()
    with record_function("optimizer"):
        r.method.on_after_backward()
        apply_lr(r.optimizer, r.step, total_steps=r.total, warmup_steps=0)
        r.optimizer.step()
        r.optimizer.zero_grad(set_to_none=True)
        r.step += 1
        r.method.on_step_end(r.step / r.total)


def phase_ms(prof: profile, steps: int) -> dict[str, float]:
    """Wall ms per step of each labelled phase (``loss``: all ``loss:*`` labels together)."""
    totals = dict.fromkeys(PHASES, 0.0)
    for event in prof.key_averages():
        name = "loss" if event.key.startswith("loss:") else event.key
        if name in totals:
            totals[name] += event.cpu_time_total / 1000.0
    return {k: v / steps for k, v in totals.items()}


def profile_method(method: str, precision: str, args: argparse.Namespace) -> dict:
    p = prepare(settings(32, 2048)["convnet"], method, {})
    chosen = choose_precision(p.cfg.train.precision if precision == "default" else "fp32",
                              torch.device("cpu")).name  # fmt: skip
    r = TwinviewRunner(p, chosen)
    for _ in range(args.warmup):
        profiled_step(r)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            profiled_step(r)
    wall = (time.perf_counter() - start) * 1000.0 / args.steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    if args.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    ms = phase_ms(prof, args.steps)
    return {
        "method": method,
        "precision": chosen,
        "step_ms": wall,
        **ms,
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
        "sys_share": (after.ru_stime - before.ru_stime) * 1000.0 / args.steps / wall / 2,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | precision | step ms | views | backbone + heads (fwd) | loss (fwd) | backward "
        "| optimizer | views + loss + optimizer | minor faults / step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        step = r["step_ms"]
        share = {k: 100.0 * r[k] / step for k in PHASES}
        lean = share["views"] + share["loss"] + share["optimizer"]
        lines.append(
            f"| {r['method']} | {r['precision']} | {step:.0f} | {share['views']:.1f}% "
            f"| {share['forward'] - share['loss']:.1f}% | {share['loss']:.1f}% "
            f"| {share['backward']:.1f}% | {share['optimizer']:.1f}% | **{lean:.1f}%** "
            f"| {r['faults_per_step']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="simclr,moco_v2,byol,simsiam")
    parser.add_argument("--precision", default="default", choices=("default", "fp32"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=0, help="also print the top-N op table")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# CPU: {cpu_name()}, native bf16: {cpu_native_bf16()}, torch {torch.__version__}, "
          f"{args.threads} threads")  # fmt: skip
    rows = [profile_method(m, args.precision, args) for m in parse_methods(args.methods)]
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
