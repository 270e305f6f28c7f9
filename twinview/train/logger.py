"""Run logs: ``metrics.jsonl`` (one JSON object per record) and TensorBoard events.

Only the main process writes. A resumed run appends; records carry ``step`` and ``epoch`` so a
reader can drop entries past the checkpoint it resumed from (:meth:`MetricsLog.truncate`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
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
    """Append-only JSON-lines log plus TensorBoard scalars (when tensorboard is installed).

    Nothing is created before the first record: a run refused at start leaves no file behind.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb_dir = run_dir / "tensorboard" if enabled and tensorboard else None
        self._tb = None

    def _tensorboard(self):
        if self._tb is None and self._tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self._tb_dir))
            except ImportError:  # tensorboard is a dependency, but keep logging without it
                self._tb_dir = None
        return self._tb

    def reset(self) -> None:
        """Start an empty log (a fresh run in a directory an earlier failed start used)."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate(self, step: int) -> None:
        """Drop records written after ``step`` (work lost to a kill, about to be redone), and a
        torn last line (a kill in the middle of a write)."""
        if not self.enabled or not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        keep = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines):  # torn by a kill mid-write: that record is lost anyway
                    warnings.warn(f"{self.path}: dropped a torn last line", stacklevel=2)
                    break
                raise ValueError(
                    f"{self.path}, line {number} is not valid JSON ({err.msg}); fix or delete "
                    "that line, then rerun to resume"
                ) from err
            if record.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, kind: str, step: int, epoch: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch}
        record.update({k: _plain(v) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard() is not None:
            for key, value in record.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, int | float):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file; a torn last line (a killed writer) is left out,
    any other bad line is an error naming the file and line."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number} is not valid JSON ({err.msg})") from err
    return records
