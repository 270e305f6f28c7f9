"""Checkpoints: atomic writes, round trips, integrity (CRC) checks, the previous file kept."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from twinview.run import checkpoint as ckpt
from twinview.run.checkpoint import (
    CheckpointError,
    last_checkpoint_path,
    load_checkpoint,
    load_latest,
    remove_stale_temporaries,
    save_checkpoint,
    verify_checkpoint,
)
from twinview.train.optim import LARS
from twinview.train.rng import capture_rng_state


def training_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    opt = LARS(model.parameters(), lr=0.1, weight_decay=1e-4)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    return {
        "method": model.state_dict(),
        "optimizer": opt.state_dict(),
        "queue": {"features": torch.randn(16, 3), "ptr": torch.tensor(5)},
        "step": 7,
        "epoch": 1,
        "loader": {"position": 3, "order": torch.randperm(10)},
        "rng": [capture_rng_state()],
        "spec": {"name": "convnet", "mean": [0.5], "std": [0.25], "size": 28},
    }


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b):  # type: ignore[call-overload]
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_of_nested_state(tmp_path) -> None:
    state = training_state(0)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)  # weights_only: the state holds only safe types
    assert_same(state, loaded)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_overwrite_replaces_previous(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path) == {"step": 2}


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, failure) -> None:
    path = tmp_path / "last.pt"
    old = training_state(0)
    save_checkpoint(path, old)
    old_bytes = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # part of the new file is on disk ...
        raise failure  # ... when the writer dies

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    expected = CheckpointError if isinstance(failure, OSError) else type(failure)
    match = "previous checkpoint is kept" if expected is CheckpointError else None
    with pytest.raises(expected, match=match):
        save_checkpoint(path, training_state(1))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert_same(old, load_checkpoint(path))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_corrupt_checkpoint_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, training_state(0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"last\.pt.*resume=false"):
        load_checkpoint(path)
    save_checkpoint(path, training_state(0))
    data = bytearray(path.read_bytes())
    data[:200] = bytes(x ^ 0xFF for x in data[:200])  # damaged pickle inside an intact zip
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.pt.*(corrupt|damaged).*resume=false"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"last\.pt.*delete it"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, not a twinview state dict"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"missing\.pt' does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Custom:
    pass


def test_unsafe_objects_need_weights_only_false(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"thing": Custom()})
    with pytest.raises(CheckpointError, match=r"Custom object.*weights_only=False"):
        load_checkpoint(path)
    assert isinstance(load_checkpoint(path, weights_only=False)["thing"], Custom)


def test_flipped_bytes_are_refused_and_previous_is_used(tmp_path) -> None:
    """torch.load never checks the zip CRCs: a flipped byte inside a tensor loads silently unless
    the file is verified."""
    run = tmp_path / "run"
    last = last_checkpoint_path(run)
    save_checkpoint(last, {"step": 1, "w": torch.arange(1000.0)})
    save_checkpoint(last, {"step": 2, "w": torch.arange(1000.0) * 2})
    assert load_checkpoint(last.with_name("previous.pt"))["step"] == 1
    data = bytearray(last.read_bytes())
    offset = data.find(torch.arange(1000.0).mul(2).numpy().tobytes()[400:408])
    assert offset > 0
    data[offset] ^= 0x55  # one flipped byte in the middle of the weights
    last.write_bytes(bytes(data))
    assert torch.load(last, weights_only=True)["step"] == 2  # what loading did before
    assert "CRC" in verify_checkpoint(last)
    with pytest.raises(CheckpointError, match=r"last\.pt.*damaged.*CRC"):
        load_checkpoint(last)
    with pytest.warns(UserWarning, match=r"previous\.pt \(step 1\).*last\.pt\.damaged"):
        state = load_latest(run)
    assert state["step"] == 1
    assert last.with_name("last.pt.damaged").is_file() and not last.exists()


def test_damaged_without_previous_is_an_error(tmp_path) -> None:
    run = tmp_path / "run"
    last = last_checkpoint_path(run)
    save_checkpoint(last, {"step": 1})
    last.write_bytes(last.read_bytes()[:-30])
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        load_latest(run)
    assert load_latest(tmp_path / "empty") is None


def test_previous_is_a_complete_older_checkpoint(tmp_path) -> None:
    path = tmp_path / "last.pt"
    for step in range(1, 4):
        save_checkpoint(path, {"step": step})
    assert load_checkpoint(path)["step"] == 3
    assert load_checkpoint(tmp_path / "previous.pt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_stale_temporaries_are_removed(tmp_path) -> None:
    run = tmp_path / "run"
    last = last_checkpoint_path(run)
    save_checkpoint(last, {"step": 3})
    stale = last.with_name(".last.pt.tmp-12345")  # left by a writer killed with SIGKILL
    stale.write_bytes(b"partial")
    assert remove_stale_temporaries(run) == [stale]
    assert not stale.exists() and last.is_file()


def test_unwritable_folder_is_a_checkpoint_error(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint.*checkpoints"):
        save_checkpoint(folder / "checkpoints" / "last.pt", {"step": 1})
    assert os.listdir(folder) == ["checkpoints"]
