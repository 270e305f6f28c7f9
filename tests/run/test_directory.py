"""Run directories: which one is used, one writer at a time, failed starts reused."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from twinview.run.checkpoint import last_checkpoint_path, save_checkpoint
from twinview.run.directory import RunDirectory, RunLocked


def test_naming_never_overwrites_a_trained_run(tmp_path) -> None:
    root = tmp_path / "runs"
    with RunDirectory.open(root, "simclr-fmnist", resume=True) as first:
        assert first.path == root / "simclr-fmnist" and first.path.is_dir()
        (first.path / "config.yaml").write_text("x")
        (first.path / "metrics.jsonl").write_text("{}\n")
    # a failed start (config.yaml, metrics, no checkpoint) is reused, with resume on or off
    for resume in (True, False):
        with RunDirectory.open(root, "simclr-fmnist", resume=resume) as again:
            assert again.path == first.path
    save_checkpoint(last_checkpoint_path(first.path), {"step": 1})
    with RunDirectory.open(root, "simclr-fmnist", resume=True) as again:
        assert again.path == first.path  # resume
    with RunDirectory.open(root, "simclr-fmnist", resume=False) as fresh:
        assert fresh.path == root / "simclr-fmnist-1"
        save_checkpoint(last_checkpoint_path(fresh.path), {"step": 1})
    with RunDirectory.open(root, "simclr-fmnist", resume=False) as fresh:
        assert fresh.path == root / "simclr-fmnist-2"
    assert (first.path / "config.yaml").read_text() == "x"
    # results without a checkpoint (checkpoints deleted by hand): never reused
    (root / "done").mkdir()
    (root / "done" / "backbone.pt").write_bytes(b"weights")
    with RunDirectory.open(root, "done", resume=True) as other:
        assert other.path == root / "done-1"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError, match="plain folder name"):
            RunDirectory.open(root, bad, resume=True)


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path) -> None:
    root = tmp_path / "runs"
    first = RunDirectory.open(root, "r1", resume=True)
    with pytest.raises(RunLocked, match=rf"'{root / 'r1'}' is in use .*pid {os.getpid()}"):
        RunDirectory.open(root, "r1", resume=True)
    # resume=false does not wait for it: it takes the next free directory
    with RunDirectory.open(root, "r1", resume=False) as other:
        assert other.path == root / "r1-1"
    first.close()
    with RunDirectory.open(root, "r1", resume=True) as again:
        assert again.path == root / "r1"


def _hold(root: str, ready) -> None:
    RunDirectory.open(root, "busy", resume=True)
    ready.set()
    time.sleep(60)


def test_lock_dies_with_its_process(tmp_path) -> None:
    """flock is released by the OS when the holder is killed: no stale lock to delete by hand."""
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            RunDirectory.open(tmp_path, "busy", resume=True)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with RunDirectory.open(tmp_path, "busy", resume=True) as opened:
        assert opened.path == tmp_path / "busy"


def test_stale_temporary_checkpoints_removed_on_open(tmp_path) -> None:
    root = tmp_path / "runs"
    with RunDirectory.open(root, "r", resume=True) as run:
        save_checkpoint(last_checkpoint_path(run.path), {"step": 1})
        stale = last_checkpoint_path(run.path).with_name(".last.pt.tmp-999")
        stale.write_bytes(b"partial")
    with RunDirectory.open(root, "r", resume=True):
        assert not stale.exists()
        assert last_checkpoint_path(run.path).is_file()


def test_unusable_output_dir_names_it(tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"output\.dir=.*a_file/runs: cannot create"):
        RunDirectory.open(blocker / "runs", "r", resume=True)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValueError, match=r"output\.dir=.*not writable"):
            RunDirectory.open(ro, "r", resume=True)


def test_atomic_write_text(tmp_path) -> None:
    with RunDirectory.open(tmp_path, "r", resume=True) as run:
        run.write_text("config.yaml", "a: 1\n")
        run.write_text("config.yaml", "a: 2\n")
        assert (run.path / "config.yaml").read_text() == "a: 2\n"
        assert sorted(p.name for p in run.path.iterdir()) == [".lock", "config.yaml"]
