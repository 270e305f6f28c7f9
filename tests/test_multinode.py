"""Two torchrun "nodes" on localhost (c10d rendezvous) train exactly like one node with two
processes: same ranks, same loss curve, bit for bit the same weights.

What this adds to the one-node tests: the rendezvous assigns the global ranks (both nodes have
LOCAL_RANK 0), MASTER_ADDR comes from the rendezvous, and the run directory, the data shards,
the gathered negatives and SyncBatchNorm all have to go by the global rank, not the local one.
A run that took LOCAL_RANK for its rank would have two rank-0 processes and not even start.

Why equality is exact, not approximate: the world size (2) and hence every per-process batch
shape is the same in both launches, so each process runs the same kernels on the same numbers;
gloo's sum of two processes' values is a + b on one and b + a on the other, equal in IEEE
arithmetic; and tests/launch_entry.py runs every process on one thread, so no kernel splits
its sums differently (without that, 2 threads per "node" against 1 per process moved the
4th-step loss by 1.2e-7 and the weights by 6e-8). fp32 is pinned so that the auto precision
(bf16 on AMX CPUs) plays no part. Any difference is therefore a real bug.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from twinview.run.checkpoint import load_checkpoint
from twinview.train.setup import free_port

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ENTRY = Path(__file__).with_name("launch_entry.py")
TIMEOUT = 300  # seconds per launch; a run takes ~20 s on 2 cores

# Tiny SimCLR (gathered negatives, SyncBN) on synthetic images, identical views in both
# launches (no random crops, flips or colour ops), 4 logged steps, no per-epoch monitors.
RUN = [
    "data=synthetic", "data.options.n=320", "data.options.size=16", "data.val_fraction=0.2",
    "backbone.width=8", "batch_size=32", "method=simclr", "method.proj_hidden_dim=64",
    "method.proj_out_dim=32", "train.precision=fp32", "epochs=1", "train.max_steps=4",
    "monitor.log_every_steps=1", "monitor.knn_every_epochs=0", "monitor.health=false",
    "monitor.knn_k=20", "views.crop_scale_min=1.0", "views.hflip_p=0", "views.jitter_p=0",
    "views.grayscale_p=0", "views.blur_p=0", "views.solarize_p=0",
]  # fmt: skip


def _env() -> dict[str, str]:
    """This environment without any launcher's variables (the tests may run under one)."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "MASTER_ADDR", "MASTER_PORT")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    return {**env, "OMP_NUM_THREADS": "1"}


def _torchrun(launcher: list[str], tmp_path: Path, name: str) -> list[str]:
    args = ["pretrain", f"output.dir={tmp_path / 'runs'}", f"name={name}", *RUN]
    torchrun = [sys.executable, "-m", "torch.distributed.run", *launcher]
    return [*torchrun, str(ENTRY), str(tmp_path / "launched" / name), *args]


def _run_all(commands: list[list[str]], cwd: Path) -> None:
    """Start the commands together, wait for all; on a failure or a timeout show their ends."""
    procs = [
        subprocess.Popen(c, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]
    outputs, timed_out = [], False
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=TIMEOUT))
        except subprocess.TimeoutExpired:
            timed_out = True
            for other in procs:
                other.kill()
            outputs.append(proc.communicate())
    if timed_out or any(p.returncode != 0 for p in procs):
        ends = [
            f"--- launch {i} (exit {p.returncode}): {' '.join(c[3:])}\n{err.decode()[-3000:]}"
            for i, (p, c, (_, err)) in enumerate(zip(procs, commands, outputs))
        ]
        pytest.fail(("timed out\n" if timed_out else "") + "\n".join(ends))


def _launched(tmp_path: Path, name: str) -> list[dict]:
    files = sorted((tmp_path / "launched" / name).glob("rank*.json"))
    return [json.loads(f.read_text()) for f in files]


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key].double() - b[key].double()).abs().max())


def test_two_nodes_on_localhost_equal_one_node_with_two_processes(tmp_path):
    one_node = ["--nnodes", "1", "--nproc-per-node", "2", "--standalone"]
    _run_all([_torchrun(one_node, tmp_path, "one-node")], cwd=tmp_path)

    port, run_id = free_port(), f"twinview-test-{uuid.uuid4().hex[:8]}"
    two_nodes = [
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id,
        "--rdzv-conf", "join_timeout=120", "--local-addr", "127.0.0.1", "--max-restarts", "0",
    ]  # fmt: skip
    node = _torchrun(two_nodes, tmp_path, "two-nodes")
    _run_all([node, node], cwd=tmp_path)  # one torchrun agent per "node", started together

    # The launches are what they say: 2 global ranks, local ranks 0-1 on one node, 0 on each of
    # two nodes (GROUP_RANK is the node's rank), and twinview read them as such.
    one, two = _launched(tmp_path, "one-node"), _launched(tmp_path, "two-nodes")
    assert [r["launch_env"] for r in one] == [[0, 2, 0], [1, 2, 1]]
    assert [r["launch_env"] for r in two] == [[0, 2, 0], [1, 2, 0]]
    assert sorted(r["GROUP_RANK"] for r in two) == ["0", "1"]
    assert {r["LOCAL_WORLD_SIZE"] for r in one} == {"2"}
    assert {r["LOCAL_WORLD_SIZE"] for r in two} == {"1"}

    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["one-node", "two-nodes"]
    for name in ("one-node", "two-nodes"):
        assert json.loads((runs / name / "summary.json").read_text())["status"] == "finished"
    single, multi = _losses(runs / "one-node"), _losses(runs / "two-nodes")
    assert len(single) == 4 and multi == single  # exact: see the module docstring

    def backbone(name: str) -> dict[str, torch.Tensor]:
        return torch.load(runs / name / "backbone.pt", weights_only=False)["state_dict"]

    def method_state(name: str) -> dict[str, torch.Tensor]:
        return load_checkpoint(runs / name / "checkpoints" / "last.pt")["method"]

    _assert_same_tensors(backbone("one-node"), backbone("two-nodes"))
    _assert_same_tensors(method_state("one-node"), method_state("two-nodes"))
