"""Two gloo processes x batch B must equal one process x batch 2B: the loss and every gradient
at each of two optimizer steps, and the whole state after them (BN statistics, EMA weights,
queues, DINO's center, SwAV's prototypes and queue, NNCLR's support set), for every method whose
paper synchronises BatchNorm (all but MoCo v2, whose shuffle-BN is tested below).

This is the bug class that has hit peer libraries more than once: negatives gathered without
gradient, labels not offset by rank, BatchNorm statistics that differ between the two setups.
Methods are built with twinview's SyncBatchNorm so BN sees the same global batch either way.

Everything runs in float64: the two setups sum in different orders (per-process partial sums,
BN statistics over a split batch, convolution kernels that block differently per CPU), and in
float32 that alone moves some gradients by ~1e-5 on some CPUs (Intel AMX), as much as a small
real bug would. In float64 the two agree to ~1e-14 of the gradients' scale on any CPU, so the
tolerance can be 1e-10 relative, far below any error a missing gradient path would cause.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from twinview import distributed
from twinview.methods import build_method
from twinview.methods.moco import _shuffled_across_processes
from twinview.nn.batchnorm import SyncBatchNorm, convert_sync_batchnorm

pytestmark = pytest.mark.distributed
WORLD = 2
BATCH = 6  # per process
DTYPE = torch.float64
RTOL = 1e-10  # relative to each tensor's values, and to the largest value for near-zero entries


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Small heads for every method; multi-crop methods get two local crops; state that matters
# (DINO's center, SwAV's queue and prototypes, NNCLR's support set) is switched on from step 0.
CASES: dict[str, dict] = {
    "simclr": {},
    "moco_v3": {},
    "byol": {},
    "simsiam": {"pred_hidden_dim": 4},
    "barlow_twins": {},
    "vicreg": {},
    "dino": {"local": 2, "bottleneck_dim": 8, "out_dim": 32, "freeze_last_layer": 0},
    "swav": {"local": 2, "num_prototypes": 10, "queue_size": 12, "queue_start_epoch": 0,
             "freeze_prototypes_steps": 0},
    "nnclr": {"queue_size": 20, "pred_hidden_dim": 16},
    "supcon": {"labels": True},
    "dcl": {},
    "dclw": {},
}  # fmt: skip
STEPS = 2  # the second step sees the state the first one left (queues, center, EMA weights)


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    kwargs = {"hidden_dim": 16, "out_dim": 8}
    kwargs.update({k: v for k, v in CASES[name].items() if k not in ("local", "labels")})
    method = build_method(name, backbone, feature_dim=8, **kwargs)
    return convert_sync_batchnorm(method).to(DTYPE)


def _global_views(name: str, step: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The global batch of step ``step``: 2 views of 6 px (+ local crops of 4 px), labels."""
    g = torch.Generator().manual_seed(1 + step)
    n = WORLD * BATCH
    views = [torch.randn(n, 3, 6, 6, generator=g, dtype=DTYPE) for _ in range(2)]
    views += [
        torch.randn(n, 3, 4, 4, generator=g, dtype=DTYPE)
        for _ in range(CASES[name].get("local", 0))
    ]
    labels = torch.arange(n) % 4 if CASES[name].get("labels") else None
    return views, labels


def _local(name: str, step: int, rank: int, world: int):
    views, labels = _global_views(name, step)
    part = slice(rank * BATCH * WORLD // world, (rank + 1) * BATCH * WORLD // world)
    return [v[part] for v in views], None if labels is None else labels[part]


def _train(method: nn.Module, name: str, rank: int, world: int) -> dict:
    """STEPS optimizer steps as the trainer takes them, DDP's gradient averaging included.

    Returns per step the (process-averaged) loss and the gradients, and at the end every
    parameter and buffer (EMA copies, BN statistics, queues, DINO's center, prototypes)."""
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    record: dict = {"loss": [], "grads": []}
    for step in range(STEPS):
        views, labels = _local(name, step, rank, world)
        method.on_step_start(step, 5)
        out = method(views, labels) if labels is not None else method(views)
        out.loss.backward()
        loss = out.loss.detach().clone()
        if world > 1:  # what DDP does: average gradients (and, for logging, the loss)
            for p in method.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
            dist.all_reduce(loss)
            loss /= world
        method.on_after_backward()
        record["loss"].append(loss)
        record["grads"].append(
            {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        )
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_step_end((step + 1) / 10)
    record["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return record


def _assert_close_to_scale(got: dict, ref: dict, what: str) -> None:
    """Each tensor within RTOL of its reference; absolute slack RTOL x the largest reference value.

    The absolute part is for entries whose true value is ~0 (a conv bias in front of BatchNorm
    has gradient exactly 0): what is computed there is rounding noise on the scale of the whole
    computation, not of the entry itself.
    """
    assert set(got) == set(ref), what
    floats = [r for r in ref.values() if r.is_floating_point() and r.numel()]
    scale = max(r.abs().max().item() for r in floats)
    for key, r in ref.items():
        if not r.is_floating_point():  # counters, queue pointers: exactly equal
            assert torch.equal(got[key], r), f"{what} {key}"
            continue
        torch.testing.assert_close(
            got[key], r, rtol=RTOL, atol=RTOL * scale, msg=lambda m, k=key: f"{what} {k}: {m}"
        )


def _worker(rank: int, port: int, name: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        record = _train(_build(name), name, rank, WORLD)
        if rank == 0:
            torch.save(record, Path(out_dir) / "result.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_equal_one_process_with_double_batch(name, tmp_path):
    """Loss and every gradient at each of two steps, then the whole state, 2 x B == 1 x 2B."""
    mp.spawn(_worker, args=(_free_port(), name, str(tmp_path)), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "result.pt")
    ref = _train(_build(name), name, 0, 1)
    for step in range(STEPS):
        assert ref["loss"][step].dtype == DTYPE
        assert got["loss"][step].item() == pytest.approx(ref["loss"][step].item(), rel=RTOL, abs=0)
        assert ref["grads"][step], "no gradient at all"
        _assert_close_to_scale(got["grads"][step], ref["grads"][step], f"step {step} gradient of")
    # BN running statistics, EMA weights, queues, centers: the same global batch either way.
    _assert_close_to_scale(got["state"], ref["state"], "state")


def _ops_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different permutations per rank unless broadcast works
        x = torch.arange(4.0).view(2, 2) + 10 * rank
        encoder = nn.Linear(2, 3)
        torch.manual_seed(0)
        nn.init.normal_(encoder.weight)
        keys = _shuffled_across_processes(encoder, x)
        expected = encoder(x)
        # gather with gradient: d/dx of sum over all processes of gathered rows * (rank + 1)
        y = torch.ones(2, 2, requires_grad=True)
        (distributed.gather(y) * (rank + 1)).sum().backward()
        # SyncBatchNorm statistics over both processes
        bn = SyncBatchNorm(2)
        normed = bn(x)
        # ... and in float64, computed in float64 (values not exact in binary: x / 3)
        bn64 = SyncBatchNorm(2).to(torch.float64)
        normed64 = bn64(x.to(torch.float64) / 3)
        result = {
            "keys_ok": torch.allclose(keys, expected, atol=1e-6),
            "grad": y.grad,
            "normed": normed.detach(),
            "running_mean": bn.running_mean,
            "normed64": normed64.detach(),
            "running64": (bn64.running_mean, bn64.running_var),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_shuffle_bn_and_sync_bn_across_processes(tmp_path):
    mp.spawn(_ops_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert r0["keys_ok"] and r1["keys_ok"]
    # Every process's rows received the sum of both processes' upstream gradients: 1 + 2.
    assert torch.equal(r0["grad"], torch.full((2, 2), 3.0))
    assert torch.equal(r1["grad"], torch.full((2, 2), 3.0))
    x_all = torch.cat([torch.arange(4.0).view(2, 2), torch.arange(4.0).view(2, 2) + 10])
    ref_bn = nn.BatchNorm1d(2)
    ref = ref_bn(x_all)
    torch.testing.assert_close(torch.cat([r0["normed"], r1["normed"]]), ref.detach())
    torch.testing.assert_close(r0["running_mean"], ref_bn.running_mean)
    ref_bn64 = nn.BatchNorm1d(2).to(torch.float64)
    ref64 = ref_bn64(x_all.to(torch.float64) / 3).detach()
    got64 = torch.cat([r0["normed64"], r1["normed64"]])
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, ref64, rtol=RTOL, atol=RTOL)  # |values| ~ 1
    for got, ref in zip(r0["running64"], (ref_bn64.running_mean, ref_bn64.running_var)):
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=RTOL)


def test_helpers_are_identities_on_one_process():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather(x) is x
    assert distributed.all_reduce_sum(x) is x
    assert not distributed.is_distributed()
