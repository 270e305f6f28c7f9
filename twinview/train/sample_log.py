"""``monitor.sample_log=true``: which samples every optimizer step saw, one file per process.

``runs/<name>/samples-rank<r>.jsonl`` gets a line per batch, ``{"step", "epoch", "index"}``
(``step``: the optimizer step the batch counts towards, 1-based; ``index``: the samples' indices
in the training split). It answers "did every image come once per epoch?", "which images did
step 1234 see?" and shows that a resumed run continued the interrupted order: on resume, lines
of steps after the checkpoint (seen before a crash, then replayed) are dropped first.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor


class SampleLog:
    """Appends a line per batch to ``run_dir/samples-rank<rank>.jsonl`` when ``enabled``."""

    def __init__(self, run_dir: Path, rank: int, *, enabled: bool) -> None:
        self.path = Path(run_dir) / f"samples-rank{rank}.jsonl"
        self.enabled = enabled

    def truncate(self, step: int) -> None:
        """Keep the lines of steps up to ``step`` (the checkpoint's); a fresh run (0) keeps none."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def add(self, step: int, epoch: int, index: Tensor) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, "index": index.tolist()}) + "\n")
