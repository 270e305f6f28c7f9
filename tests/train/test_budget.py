"""train.budget: parsing, the planning arithmetic, and budget runs end to end (a fake clock makes
the planned step count deterministic; one real-time run checks the budget is a ceiling)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from twinview import cli
from twinview.config import ConfigError, load_config
from twinview.report.embedding_map import map_2d
from twinview.run.checkpoint import load_checkpoint
from twinview.train import budget, finish, timing
from twinview.train.budget import Costs, overhead_seconds, parse_budget, plan_steps, step_seconds
from twinview.train.trainer import _Run

# tests/train/test_pretrain.py's tiny synthetic run: 288 training images, 9 steps per epoch.
SMALL = [
    "data=synthetic",
    "data.options.n=320",
    "data.options.size=16",
    "backbone.width=8",
    "batch_size=32",
    "method.proj_hidden_dim=64",
    "method.proj_out_dim=32",
    "monitor.knn_k=20",
]
SPE = 9


def _run(tmp_path: Path, *args: str) -> int:
    return cli.main(["pretrain", f"output.dir={tmp_path}", *SMALL, *args])


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10min", 600), ("2h", 7200), ("90s", 90), ("1h30min", 5400), ("1.5h", 5400),
     ("10m", 600), ("1h2m3s", 3723), ("0.5s", 0.5)],
)  # fmt: skip
def test_good_budgets_parse_to_seconds(text, seconds):
    assert parse_budget(text) == seconds
    assert load_config(None, [f"budget={text}"]).train.budget == text  # the shorthand too


@pytest.mark.parametrize("text", ["10 minutes", "0s", "-5min", "abc", "600", "30min1h", "1h 30m"])
def test_bad_budgets_are_config_errors_naming_the_key_value_and_an_example(text):
    with pytest.raises(ConfigError) as err:
        parse_budget(text)
    message = str(err.value)
    assert "train.budget" in message and repr(text) in message and "10min" in message
    with pytest.raises(ConfigError, match=r"config key 'train\.budget' must"):
        load_config(None, [f"train.budget={text}"])
    if text == "600":
        assert "600s" in message  # a bare number: the unit is what is missing


def test_a_bad_budget_fails_before_anything_is_written(tmp_path, capsys):
    assert _run(tmp_path, "train.budget=10 minutes") == 2
    err = capsys.readouterr().err
    assert "config key 'train.budget'" in err and "'10 minutes'" in err and "10min" in err
    assert not any(tmp_path.iterdir())


def test_with_a_budget_the_warmup_is_not_checked_against_train_epochs():
    with pytest.raises(ConfigError, match=r"must not exceed train\.epochs"):
        load_config(None, ["epochs=2", "schedule.warmup_epochs=3"])
    load_config(None, ["epochs=2", "schedule.warmup_epochs=3", "budget=1h"])


# --- planning ------------------------------------------------------------------------------------


def test_plan_steps_without_overhead_fills_the_target_share_of_the_budget():
    costs = Costs(step=0.1, epoch_end=0, knn_epoch_end=0, checkpoint=0, final=0)
    where = dict(epoch=0, steps_into_epoch=0, steps_per_epoch=100)
    assert plan_steps(100, 6, costs, step=0, target=0.94, **where) == 880  # (94 - 6) / 0.1
    assert plan_steps(100, 6, costs, step=20, target=0.94, **where) == 900  # + the 20 done
    assert plan_steps(100, 95, costs, step=20, **where) == 20  # used up: stop where it is


def test_plan_steps_counts_epoch_ends_checkpoints_and_the_final_evaluation():
    # 5 steps into a 10-step epoch; each step 1 s, each kNN epoch end 2 s + a 0.5 s checkpoint,
    # the final evaluation 10 s; 45 s left. 25 more steps cross into 2 further epochs (3 epoch
    # ends: 25 + 3 x 2.5 + 10 = 42.5 s); a 26th begins a 4th epoch (26 + 10 + 10 = 46 s > 45).
    costs = Costs(step=1.0, epoch_end=0.5, knn_epoch_end=2.0, checkpoint=0.5, final=10.0)
    where = dict(step=5, epoch=0, steps_into_epoch=5, steps_per_epoch=10)
    assert overhead_seconds(costs, 25, **where) == 3 * 2.5 + 10
    assert overhead_seconds(costs, 26, **where) == 4 * 2.5 + 10
    assert plan_steps(50, 5, costs, target=1.0, **where) == 30
    # kNN every 2nd epoch (epochs 1, 3: 0-based), a checkpoint every 4 steps (steps 8 ... 28).
    seconds = overhead_seconds(costs, 25, knn_every_epochs=2, checkpoint_every_steps=4, **where)
    assert seconds == 1 * 2.0 + 2 * 0.5 + (3 + 6) * 0.5 + 10
    # More budget, more steps; a slower step, fewer.
    assert plan_steps(100, 5, costs, target=1.0, **where) > 30
    assert plan_steps(50, 5, Costs(2.0, 0.5, 2.0, 0.5, 10.0), target=1.0, **where) < 30


def test_step_seconds_leaves_out_the_first_fifth():
    marks = [5.0] + [5.0 + 0.1 * i for i in range(1, 20)]  # the first step took 5 s
    assert step_seconds(marks) == pytest.approx(0.1)
    assert step_seconds([3.0, 3.5, 4.0]) == pytest.approx(0.5)


# --- end to end with a fake clock -------------------------------------------------------------

STEP = 1 / 64  # fake seconds per optimizer step; nothing else takes time on the fake clock
COSTS = Costs(step=STEP, epoch_end=1 / 16, knn_epoch_end=0.5, checkpoint=1 / 64, final=2.0)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1024.0  # binary fractions: the fake seconds add up exactly

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    """Every optimizer step takes STEP on the run's clock, evaluation is estimated as COSTS,
    and ``clock.stop_at`` stops a run at that step as SIGTERM would."""
    fake = FakeClock()
    fake.stop_at = None
    monkeypatch.setattr(timing, "_now", fake)
    monkeypatch.setattr(budget, "measure_costs", lambda run, step: dataclasses.replace(COSTS))
    real = _Run._global_loss

    def tick(self, loss):
        fake.t += STEP
        if fake.stop_at is not None and self.step + 1 == fake.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: save and stop
        return real(self, loss)

    monkeypatch.setattr(_Run, "_global_loss", tick)
    # no report (seconds of plotting; the real-time tests below write theirs)
    monkeypatch.setattr(finish, "write_run_report", lambda run, test: run.run_dir / "report.html")
    return fake


def _expected(budget_s, spent, step, **where):
    return plan_steps(budget_s, spent, COSTS, step=step, steps_per_epoch=SPE,
                      checkpoint_every_steps=500, **where)  # fmt: skip


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


ARGS = ["budget=10s", "epochs=1", "monitor.log_every_steps=1"]  # epochs is ignored


def test_a_budget_run_plans_its_steps_and_logs_its_seconds(tmp_path, clock, capsys):
    assert _run(tmp_path, *ARGS, "name=ref") == 0
    # planned after 20 steps (2 fake seconds spent), 2 steps into the third epoch
    total = _expected(10, 20 * STEP, 20, epoch=2, steps_into_epoch=2)
    assert total > 3 * SPE  # far more than train.epochs=1
    out, err = capsys.readouterr()
    eval_s = overhead_seconds(COSTS, total - 20, step=20, epoch=2, steps_into_epoch=2,
                              steps_per_epoch=SPE, checkpoint_every_steps=500)  # fmt: skip
    line = (
        f"twinview: budget 10s: 2,048 img/s over the first 20 steps -> {total} steps "
        f"({total / SPE:.1f} epochs), ~{eval_s:.0f} s for evaluation and the report"
    )
    assert line in out
    assert f"{total / SPE:.1f} epochs" in err and f"{total}/{total}" in err  # the progress bar
    run = tmp_path / "ref"
    assert json.loads((run / "summary.json").read_text())["steps"] == total
    epochs = _records(run, "epoch")
    assert all({"train_seconds", "eval_seconds"} <= r.keys() for r in epochs)
    assert epochs[-1]["train_seconds"] == pytest.approx(total * STEP, abs=1e-3)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["budget"]["planned"] == total


def test_train_max_steps_still_caps_a_budget(tmp_path, clock, capsys):
    assert _run(tmp_path, *ARGS, "train.max_steps=30", "name=cap") == 0
    total = _expected(10, 20 * STEP, 20, epoch=2, steps_into_epoch=2)
    assert f"-> 30 steps (3.3 epochs); train.max_steps=30 caps the {total} planned" in (
        capsys.readouterr().out
    )
    assert json.loads((tmp_path / "cap" / "summary.json").read_text())["steps"] == 30


def test_a_budget_too_small_to_train_past_the_measuring_steps_says_what_would_do(
    tmp_path, clock, capsys
):
    assert _run(tmp_path, "budget=2s", "name=tiny") == 0
    out = capsys.readouterr().out
    # 7 steps take 5% of the budget: measured enough; the final evaluation alone (2 s) is over
    assert "over the first 7 steps -> 7 steps (0.8 epochs)" in out
    assert "the budget leaves no time for more steps (about train.budget=4s would train" in out
    assert json.loads((tmp_path / "tiny" / "summary.json").read_text())["steps"] == 7


def test_a_stopped_budget_run_resumes_its_plan_and_ends_as_an_uninterrupted_one(
    tmp_path, clock, capsys
):
    assert _run(tmp_path, *ARGS, "name=ref") == 0
    clock.stop_at = 30  # after the plan (step 20), mid-epoch
    assert _run(tmp_path, *ARGS, "name=cut") == 130
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 30
    clock.stop_at = None
    capsys.readouterr()
    assert _run(tmp_path, *ARGS, "name=cut") == 0
    out = capsys.readouterr().out
    total = _expected(10, 20 * STEP, 20, epoch=2, steps_into_epoch=2)
    assert f"twinview: budget 10s: continuing the planned {total} steps" in out
    assert "img/s over" not in out  # not measured again
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == a["budget"]["planned"] == b["budget"]["planned"]
    for key in a["method"]:
        assert torch.equal(a["method"][key], b["method"][key]), key
    # train_seconds adds up across the two sessions
    assert _records(tmp_path / "cut", "epoch")[-1]["train_seconds"] == pytest.approx(
        a["step"] * STEP, abs=1e-3
    )


def test_a_run_stopped_before_its_plan_measures_again_with_the_same_first_lrs(
    tmp_path, clock, capsys
):
    assert _run(tmp_path, *ARGS, "name=ref") == 0
    clock.stop_at = 5
    assert _run(tmp_path, *ARGS, "name=early") == 130
    saved = load_checkpoint(tmp_path / "early" / "checkpoints" / "last.pt")["budget"]
    assert saved["planned"] is None
    clock.stop_at = None
    capsys.readouterr()
    assert _run(tmp_path, *ARGS, "name=early") == 0
    out = capsys.readouterr().out
    # measured again: 20 steps from step 5; spent 0.5 s before the stop and 2 s since
    total = _expected(10, 25 * STEP, 25, epoch=2, steps_into_epoch=25 - 2 * SPE)
    assert f"2,048 img/s over 20 steps from step 5 -> {total} steps" in out
    assert json.loads((tmp_path / "early" / "summary.json").read_text())["steps"] == total
    # until a plan is fixed the lr does not depend on it: the first 20 steps match the reference
    ref = [r["lr"] for r in _records(tmp_path / "ref", "train")]
    early = [r["lr"] for r in _records(tmp_path / "early", "train")]
    assert early[:20] == ref[:20]


def test_a_resume_with_another_budget_replans_from_the_saved_measurement(tmp_path, clock, capsys):
    assert _run(tmp_path, *ARGS, "name=ref") == 0
    state = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    done = state["step"]
    capsys.readouterr()
    assert _run(tmp_path, *ARGS[1:], "budget=20s", "name=ref") == 0
    out = capsys.readouterr().out
    total = _expected(20, state["timing"]["run_seconds"], done, epoch=state["epoch"],
                      steps_into_epoch=state["loader"]["position"])  # fmt: skip
    assert total > done
    assert "with train.budget changed" in out
    replanned = f"budget 10s -> 20s: re-planned from the 2,048 img/s measured before -> {total}"
    assert f"{replanned} steps" in out
    assert "img/s over" not in out  # no new measurement
    assert json.loads((tmp_path / "ref" / "summary.json").read_text())["steps"] == total


# --- real time ------------------------------------------------------------------------------------


def test_a_short_budget_run_ends_within_it(tmp_path):
    """In-process (the clock starts with the run): measured costs, a real plan. A little slack
    above the budget for a shared machine whose load changes after the plan; the command-line
    test below holds the ceiling strictly. The report's map is compiled first (UMAP's numba JIT,
    ~7 s once per process, is paid by the command-line test below within its budget)."""
    map_2d(torch.randn(400, 16), seed=0)
    start = time.perf_counter()
    assert _run(tmp_path, "budget=12s", "name=real") == 0
    elapsed = time.perf_counter() - start
    assert 0.5 * 12 < elapsed <= 1.05 * 12, elapsed
    assert json.loads((tmp_path / "real" / "summary.json").read_text())["steps"] > 20


@pytest.mark.slow
def test_a_budget_run_killed_after_its_plan_resumes_with_the_saved_count(tmp_path):
    command = [sys.executable, "-m", "twinview.cli", "pretrain", f"output.dir={tmp_path}",
               *SMALL, "budget=30s", "name=kill"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = tmp_path / "kill" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, planned = time.time() + 60, None
    while time.time() < deadline and planned is None:  # kill once a checkpoint holds the plan
        time.sleep(0.05)
        with contextlib.suppress(Exception):  # a checkpoint being replaced
            planned = load_checkpoint(ckpt)["budget"]["planned"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)
    assert planned is not None and state["step"] < planned, "killed too late"
    done = subprocess.run(command, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = done.stdout.decode()
    assert f"budget 30s: continuing the planned {planned:,} steps" in out
    assert "img/s over" not in out
    assert json.loads((tmp_path / "kill" / "summary.json").read_text())["steps"] == planned


@pytest.mark.slow
def test_a_20s_budget_from_the_command_line_ends_within_20s(tmp_path):
    """From the process start (Python's and torch's import included) to its exit."""
    command = [sys.executable, "-m", "twinview.cli", "pretrain", f"output.dir={tmp_path}",
               *SMALL, "budget=20s", "name=cli"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "twinview: budget 20s:" in done.stdout.decode()
    assert 0.7 * 20 < elapsed <= 20, elapsed
