"""keep_freed_memory: large tensors freed in one step are reused by the next, not re-mapped."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh process per setting (mallopt is process-wide): allocate, touch and free a 64 MiB
# tensor again and again, as a training step does with its activations, and count the minor
# page faults of the last 20 times (glibc's heap settles after about 10).
SCRIPT = """
import resource, sys, torch
from twinview.train.memory import keep_freed_memory
applied = keep_freed_memory()
for i in range(40):
    if i == 20:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20)  # 64 MiB of float32
    x.fill_(1.0)
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: str) -> tuple[str, int]:
    env = {"TWINVIEW_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_activations_are_reused_without_new_page_faults():
    applied, kept = _faults("1")
    off, default = _faults("0")
    assert (applied, off) == ("True", "False")
    # glibc default: each 64 MiB block is a fresh mmap, 16k page faults per allocation.
    assert default > 20 * 10_000, default
    assert kept < default / 20, (kept, default)
