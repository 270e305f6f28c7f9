"""``python tests/launch_entry.py RECORD_DIR ARGS...``: ``twinview ARGS...`` on one CPU thread.

For tests that compare launchers (torchrun on one node against two nodes) bit for bit. Each
process first writes what it was launched with (the launcher's variables and what
:func:`twinview.train.setup.launch_env` made of them) to ``RECORD_DIR/rank<RANK>.json``.

Why one thread: twinview gives each process ``cores // processes on this node`` threads, so two
"nodes" on one machine get twice the threads of two processes of one node, and fp32 kernels that
split their sums by thread round differently (~1e-7 on the loss after a few steps). With one
thread everywhere the two launches run the very same kernels.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.set_num_threads = lambda n: None  # twinview's per-node share of the cores is ignored


def _record(directory: Path) -> None:
    from twinview.train.setup import launch_env

    seen = {name: os.environ.get(name) for name in LAUNCHER_VARS}
    seen["launch_env"] = launch_env()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank{os.environ.get('RANK', 0)}.json").write_text(json.dumps(seen))


def main(argv: list[str]) -> int:
    _one_thread()
    _record(Path(argv[0]))
    from twinview.cli import main as cli

    return cli(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
