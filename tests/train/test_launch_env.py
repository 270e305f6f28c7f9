"""Rank, world size and local rank from torchrun's or SLURM's variables, and the batch split
over the processes they start (no process group)."""

from __future__ import annotations

import os
import re

import pytest

from twinview.cli import main
from twinview.config import ConfigError, PretrainConfig
from twinview.config.checks import check_batch_split
from twinview.train.setup import LaunchError, launch_env, local_world_size, slurm_env

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")

# What srun gives task 5 of `srun --nodes 2 --ntasks-per-node 4` (second node, local task 1).
SLURM_TASK = {
    "SLURM_JOB_ID": "1234",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_NODELIST": "gpu[01-02]",
}


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables from the shell that runs the tests."""
    for name in (*TORCHRUN_VARS, *SLURM_TASK, "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_process_without_launcher_variables(clean_env):
    assert launch_env() is None


def test_torchrun_variables(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    assert launch_env() == (3, 4, 1)


def test_an_srun_task_reads_its_rank_world_size_and_local_rank(clean_env):
    for name, value in {**SLURM_TASK, "MASTER_ADDR": "gpu01"}.items():
        clean_env.setenv(name, value)
    assert launch_env() == (5, 8, 1)
    assert local_world_size(os.environ, 8) == 4


def test_torchrun_under_srun_wins_over_the_slurm_variables(clean_env):
    for name, value in {**SLURM_TASK, "RANK": "2", "WORLD_SIZE": "16", "LOCAL_RANK": "2"}.items():
        clean_env.setenv(name, value)
    assert launch_env() == (2, 16, 2)


def test_the_step_task_count_wins_over_the_jobs():
    # `srun --preserve-env -n 2` inside an 8-task job keeps SLURM_NTASKS=8.
    env = {**SLURM_TASK, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "MASTER_ADDR": "a"}
    assert slurm_env(env) == (1, 2, 1)
    without_step_count = {k: v for k, v in env.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert slurm_env(without_step_count) == (1, 8, 1)


def test_a_batch_script_or_a_one_task_step_is_one_process():
    batch_script = {k: v for k, v in SLURM_TASK.items() if k != "SLURM_STEP_ID"}
    assert slurm_env({**batch_script, "SLURM_PROCID": "0"}) is None  # even without MASTER_ADDR
    one_task = {**SLURM_TASK, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert slurm_env({**one_task, "SLURM_STEP_NUM_TASKS": "1"}) is None


def test_a_missing_master_addr_is_named_with_its_fix():
    with pytest.raises(LaunchError, match="MASTER_ADDR is not set") as err:
        slurm_env(SLURM_TASK)
    assert "task 5 of 8" in str(err.value)
    assert "scontrol show hostnames" in str(err.value)


def test_the_cli_stops_on_it_before_touching_the_disk(clean_env, tmp_path, capsys):
    for name, value in SLURM_TASK.items():
        clean_env.setenv(name, value)
    assert main(["pretrain", f"output.dir={tmp_path}", "data=synthetic"]) == 2
    assert "MASTER_ADDR is not set" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOCAL_WORLD_SIZE": "2", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}, 2),
        ({"SLURM_STEP_TASKS_PER_NODE": "4(x2),3", "SLURM_NODEID": "2"}, 3),
        ({"SLURM_STEP_TASKS_PER_NODE": "4(x2),3", "SLURM_NODEID": "1"}, 4),
        ({"SLURM_STEP_TASKS_PER_NODE": "junk", "SLURM_NTASKS_PER_NODE": "6"}, 6),
        ({"SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODEID": "3"}, 8),  # not in the list
        ({}, 8),
    ],
)
def test_processes_per_node(env, expected):
    assert local_world_size(env, 8) == expected


@pytest.mark.parametrize(
    ("batch_size", "world_size", "accumulate", "problem"),
    [
        (32, 2, 1, None),
        (32, 4, 2, None),
        (32, 3, 1, "must be divisible by the world size (3 processes) x train.accumulate (3)"),
        (8, 4, 2, "gives 1 image(s) per process and step"),
    ],
)
def test_the_batch_must_split_over_the_processes_started(
    batch_size, world_size, accumulate, problem
):
    """torchrun / srun start the processes, whatever train.devices says (default 1): a global
    batch of 32 on 3 processes used to train silently with 3 x 10 images per step."""
    cfg = PretrainConfig()
    cfg.train.batch_size, cfg.train.accumulate = batch_size, accumulate
    if problem is None:
        check_batch_split(cfg, world_size)
    else:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            check_batch_split(cfg, world_size)
