"""``twinview shards FOLDER OUT/``: write WebDataset tar shards (and their index) from a folder.

Each readable image of the folder (the same scan as ``data=FOLDER``: nested folders, unreadable
and oversized files skipped and named) becomes one sample: its file's bytes unchanged under the
key ``<8-digit number>``, plus ``.cls`` (class id) for a labeled folder. Nothing else goes into
the tar (tar headers cost as much to parse as a small JPEG to decode); ``<split>-files.tsv``
lists each ``shard:key`` with the file it came from. Samples are written in a seeded random order,
because a stream reads shards sequentially and only shuffles within a buffer: a folder sorted by
class would otherwise give batches of one class. A folder with ``train/`` (and ``test/``)
subfolders gives one shard set per split, named ``train-000000.tar``, ...; each set gets a wids
index ``<split>-index.json`` with every shard's sample count and the class names.

Shards are written to temporary names and renamed when complete, the index last, so an
interrupted run never leaves a shard set that looks whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from webdataset import TarWriter

from twinview.data.decode import DEFAULT_MAX_PIXELS
from twinview.data.folder import ImageFolder
from twinview.data.shards import INDEX_KIND

SPLITS = ("train", "test")  # the splits load_dataset reads (validation is held out of train)


def _splits(folder: Path) -> dict[str, Path]:
    found = {split: folder / split for split in SPLITS if (folder / split).is_dir()}
    return found if "train" in found else {"train": folder}


def write_shards(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    shard_size: int = 5000,
    seed: int = 0,
    labeled: bool | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write the shards of ``folder`` into ``out``; returns ``{split: data= pattern}``.

    Args:
        shard_size: samples per shard (the last one may hold fewer).
        seed: the seed of the sample order.
        labeled: as for :class:`~twinview.data.folder.ImageFolder` (None: detect).
        overwrite: replace shard sets of the same name in ``out`` (else refused).
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be a positive number of samples, got {shard_size}")
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    out.mkdir(parents=True, exist_ok=True)
    patterns = {}
    for split, root in _splits(folder).items():
        existing = sorted(out.glob(f"{split}-*.tar")) + sorted(out.glob(f"{split}-index.json"))
        if existing and not overwrite:
            raise FileExistsError(
                f"{out} already holds {split} shards ({existing[0].name}, ...); choose another "
                "output folder or pass --overwrite"
            )
        for old in existing:
            old.unlink()
        patterns[split] = _write_split(root, out, split, shard_size, seed, labeled, max_pixels)
    return patterns


def _write_split(
    root: Path,
    out: Path,
    split: str,
    shard_size: int,
    seed: int,
    labeled: bool | None,
    max_pixels: int | None,
) -> str:
    source = ImageFolder(root, labeled=labeled, max_pixels=max_pixels)
    assert source.paths is not None
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed)).tolist()
    shards, listing = [], []
    for first in range(0, len(order), shard_size):
        name = f"{split}-{len(shards):06d}.tar"
        partial = out / f".{name}.partial"
        with TarWriter(str(partial), encoder=False, mtime=0) as tar:
            for number in range(first, min(first + shard_size, len(order))):
                i = order[number]
                path = Path(source.paths[i])
                label = int(source.labels[i])
                sample = {
                    "__key__": f"{number:08d}",
                    path.suffix.lower().lstrip("."): path.read_bytes(),
                }
                if label >= 0 and source.classes is not None:
                    sample["cls"] = str(label).encode()
                tar.write(sample)
                listing.append(f"{name}:{number:08d}\t{path.relative_to(root).as_posix()}\n")
        partial.replace(out / name)
        shards.append({"url": name, "nsamples": min(shard_size, len(order) - first)})
    index = {
        "__kind__": INDEX_KIND,
        "wids_version": 1,
        "name": split,
        "shardlist": shards,
        "classes": source.classes,
        "skipped": [path for path, _ in source.skipped],
    }
    (out / f"{split}-files.tsv").write_text("".join(listing))
    partial_index = out / f".{split}-index.json.partial"
    partial_index.write_text(json.dumps(index, indent=1))
    partial_index.replace(out / f"{split}-index.json")
    last = len(shards) - 1
    return str(out / (f"{split}-{{000000..{last:06d}}}.tar" if last else f"{split}-000000.tar"))
