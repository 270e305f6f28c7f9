"""Run logs: ``metrics.jsonl`` (one JSON object per record) and TensorBoard events.

Only the main process writes. A resumed run appends; records carry ``step`` and ``epoch`` so a
reader can drop entries past the checkpoint it resumed from (:meth:`MetricsLog.truncate`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Append-only JSON-lines log plus TensorBoard scalars (when tensorboard is installed)."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep logging without it
                self._tb = None

    def truncate(self, step: int) -> None:
        """Drop records written after ``step`` (work lost to a kill, about to be redone)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, kind: str, step: int, epoch: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch}
        record.update({k: _plain(v) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, int | float):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
