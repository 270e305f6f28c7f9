"""WebDataset tar shards: writing them from a folder, reading them (streamed and random access),
splitting them over processes and workers, exact resume, bad samples, and a two-process run."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from messy_folder import make_messy_folder
from PIL import Image

from twinview.cli import main
from twinview.data import ImageFolder, load_dataset
from twinview.data.decode import decode_image
from twinview.data.shard_loader import ShardLoader
from twinview.data.shard_writer import write_shards
from twinview.data.shards import ShardSource

N_PER_CLASS, CLASSES = 20, 3  # 60 images: 4 shards of 15


def _folder(root: Path) -> Path:
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(N_PER_CLASS):
            pixels = np.random.default_rng(100 * c + i).integers(0, 256, (12 + i % 3, 14, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture
def shards(tmp_path) -> str:
    return write_shards(_folder(tmp_path / "photos"), tmp_path / "shards", shard_size=15)["train"]


def _geometry(image: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
    top = int(torch.randint(0, 3, (1,), generator=g))  # per-sample randomness, seeded
    return [image[:, top : top + 10, :10].clone()]


def _loader(source, rank=0, world_size=2, num_workers=2, **kwargs) -> ShardLoader:
    return ShardLoader(
        source, batch_size=5, geometry=_geometry, photometry=None, rank=rank,
        world_size=world_size, num_workers=num_workers, shuffle_buffer=8, **kwargs,
    )  # fmt: skip


def _epoch(loader) -> list[tuple[list[int], float]]:
    return [(b.index.tolist(), float(b.views[0].double().sum())) for b in loader]


def test_written_shards_hold_every_file_unchanged(shards, tmp_path):
    index = json.loads((tmp_path / "shards" / "train-index.json").read_text())
    assert [s["nsamples"] for s in index["shardlist"]] == [15] * 4
    source = load_dataset(shards)
    assert len(source) == 60 and source.classes == ["c0", "c1", "c2"]
    folder = ImageFolder(tmp_path / "photos")
    by_path = {Path(p).relative_to(tmp_path / "photos").as_posix(): i
               for i, p in enumerate(folder.paths)}  # fmt: skip
    listing = (tmp_path / "shards" / "train-files.tsv").read_text().splitlines()
    assert len(listing) == 60
    for position, line in enumerate(listing[15:30]):  # the second shard, in order
        name, relative = line.split("\t")
        assert name == f"train-000001.tar:{15 + position:08d}"
        image, label = source[15 + position]  # random access by global index
        expected = folder[by_path[relative]]
        assert torch.equal(image, expected[0]) and label == expected[1]
    assert source.labels.tolist().count(0) == N_PER_CLASS
    # Written in a shuffled order: a shard is not one class.
    assert len(set(source.labels[:15].tolist())) > 1


def test_bad_files_are_skipped_when_writing_and_inside_shards(tmp_path):
    messy = make_messy_folder(tmp_path / "messy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pattern = write_shards(messy["root"], tmp_path / "out", shard_size=4)["train"]
    for path in messy["broken"]:
        assert any(path in str(w.message) for w in caught), path
    source = ShardSource(pattern)
    assert len(source) == messy["n_images"]
    # A damaged sample inside a shard (as from another tool): skipped and named in the stream.
    bad = tmp_path / "bad-000000.tar"
    with tarfile.open(bad, "w") as tar:
        for key, data in [("a", _png(1)), ("b", b"not an image"), ("c", _png(2))]:
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    other = ShardSource(str(bad))  # no index: counted from the tar headers
    assert other.counts == [3] and other.labels.tolist() == [-1, -1, -1]
    loader = ShardLoader(other, batch_size=2, geometry=None, photometry=None, num_workers=0)
    with pytest.warns(UserWarning, match=r"bad-000000\.tar:b \(.*b\.png"):
        batches = list(loader)
    assert [b.index.tolist() for b in batches] == [[0, 2]]
    # Random access replaces it by the next readable sample, naming it.
    with pytest.warns(UserWarning, match=r"skipping sample .*bad-000000\.tar:b"):
        assert torch.equal(other[1][0], other[2][0])


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_two_processes_see_each_image_once_per_epoch_and_resume_exactly(shards):
    source = ShardSource(shards)
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = _loader(source, rank=rank)
            loader.set_epoch(epoch)
            assert len(loader) == 6  # 2 shards of 15 per process, batches of 5
            seen += [i for index, _ in _epoch(loader) for i in index]
        assert sorted(seen) == list(range(60))  # every image once, none twice
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shard deal and shuffle each epoch

    # Killed after 2 batches, resumed with other worker counts: the same batches, bit for bit.
    for rank in (0, 1):
        whole = _loader(source, rank=rank)
        whole.set_epoch(1)
        reference = _epoch(whole)
        for workers_after in (0, 1, 3):
            first = _loader(source, rank=rank)
            first.set_epoch(1)
            part = []
            for batch in first:
                part.append((batch.index.tolist(), float(batch.views[0].double().sum())))
                if len(part) == 2:
                    break
            state = first.state_dict()
            assert state["position"] == 2 and state["streams"]["count"] == 2
            resumed = _loader(source, rank=rank, num_workers=workers_after)
            resumed.load_state_dict(state)
            assert part + _epoch(resumed) == reference, (rank, workers_after)
            assert resumed.state_dict() == {"epoch": 2, "position": 0}


def test_validation_is_held_out_of_the_stream(shards):
    source = ShardSource(shards)
    train, val = source.select(torch.arange(0, 60, 2)), source.select(torch.arange(1, 60, 2))
    seen = []
    for rank in (0, 1):
        loader = ShardLoader(train, batch_size=1, geometry=_geometry, photometry=None,
                             rank=rank, world_size=2, num_workers=0)  # fmt: skip
        assert len(loader) == 14  # shards keep 8, 7, 8, 7: the smallest deal holds 7 + 7
        seen += [int(train.keep[b.index]) for b in loader]
    assert len(set(seen)) == 28 and set(seen) <= set(range(0, 60, 2))  # no validation sample
    assert torch.equal(val[3][0], source[7][0])


def test_clear_errors(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"1 of 5 shard\(s\) not found.*train-000004"):
        ShardSource(shards.replace("000003", "000004"))
    with pytest.raises(ValueError, match=r"4 shard.*cannot feed 8 processes.*--shard-size"):
        _loader(ShardSource(shards), world_size=8, rank=0)
    with pytest.raises(ValueError, match=r"no option 'shufle_buffer'.*shuffle_buffer"):
        load_dataset(shards, shufle_buffer=10)
    with pytest.raises(FileNotFoundError, match="no test shards"):
        load_dataset(shards, split="test")
    assert main(["shards", str(tmp_path / "photos"), str(tmp_path / "shards")]) == 2  # exists


def test_train_and_test_folders_give_two_shard_sets(tmp_path, capsys):
    root = tmp_path / "data"
    _folder(root / "train")
    _folder(root / "test")
    assert main(["shards", str(root), str(tmp_path / "out"), "--shard-size", "25"]) == 0
    out = capsys.readouterr().out
    assert "data=" + str(tmp_path / "out" / "train-{000000..000002}.tar") in out
    test = load_dataset(str(tmp_path / "out" / "train-{000000..000002}.tar"), split="test")
    assert len(test) == 60 and test.counts == [25, 25, 10]
    assert torch.equal(test[0][0], decode_image(io.BytesIO(test._raw(0)[0]["png"])))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_training_on_shards_killed_and_resumed_sees_each_image_once(shards, tmp_path):
    """4 shards, devices=2: stopped mid-epoch (max_steps), resumed: every training image exactly
    once per epoch across both processes, in the same order as an uninterrupted run. (The weights
    are not compared: max_steps=3 also shortens the first session's learning-rate schedule.)"""
    args = [
        "pretrain", f"data={shards}", "views.size=10", "batch_size=10", "epochs=2",
        "backbone.width=4", "method.proj_hidden_dim=16", "method.proj_out_dim=8",
        "devices=2", "data.num_workers=1", "data.val_fraction=0", "train.precision=fp32",
        "monitor.knn_every_epochs=0", "monitor.sample_log=true",
    ]  # fmt: skip
    runs = tmp_path / "runs"
    assert main([*args, f"output.dir={runs}", "name=whole"]) == 0
    assert main([*args, f"output.dir={runs}", "name=cut", "train.max_steps=3"]) == 0
    assert main([*args, f"output.dir={runs}", "name=cut"]) == 0  # resumes at step 3 of 6

    def lines(name: str, rank: int) -> list[dict]:
        text = (runs / name / f"samples-rank{rank}.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    for epoch in (0, 1):
        seen = [i for r in (0, 1) for x in lines("cut", r) if x["epoch"] == epoch
                for i in x["index"]]  # fmt: skip
        assert sorted(seen) == list(range(60)), epoch
    for rank in (0, 1):
        assert lines("cut", rank) == lines("whole", rank)  # batch for batch, step for step
