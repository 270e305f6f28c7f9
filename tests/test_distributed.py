"""Two gloo processes x batch B must equal one process x batch 2B (loss and gradients).

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


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    method = build_method(name, backbone, feature_dim=8, hidden_dim=16, out_dim=8)
    return convert_sync_batchnorm(method).to(DTYPE)


def _global_views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(WORLD * BATCH, 3, 6, 6, generator=g, dtype=DTYPE) for _ in range(2)]


def _loss_and_grads(method: nn.Module, views: list[torch.Tensor]):
    out = method(views)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    # BN running statistics (online and momentum encoders) must also see the global batch.
    buffers = {n: b.clone() for n, b in method.named_buffers()}
    return out.loss.detach(), grads, buffers


def _assert_close_to_scale(got: dict, ref: dict, what: str) -> None:
    """Each tensor within RTOL of its reference; absolute slack RTOL x the largest reference value.

    The absolute part is for entries whose true value is ~0 (a conv bias in front of BatchNorm
    has gradient exactly 0): what is computed there is rounding noise on the scale of the whole
    computation, not of the entry itself.
    """
    assert set(got) == set(ref), what
    scale = max(r.abs().max().item() for r in ref.values())
    for key, r in ref.items():
        torch.testing.assert_close(
            got[key], r, rtol=RTOL, atol=RTOL * scale, msg=lambda m, k=key: f"{what} {k}: {m}"
        )


def _worker(rank: int, port: int, name: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        method = _build(name)
        local = [v[rank * BATCH : (rank + 1) * BATCH] for v in _global_views()]
        loss, grads, buffers = _loss_and_grads(method, local)
        # What DDP does: average gradients and (for logging) the loss over processes.
        for g in grads.values():
            dist.all_reduce(g)
            g /= WORLD
        dist.all_reduce(loss)
        loss /= WORLD
        if rank == 0:
            torch.save(
                {"loss": loss, "grads": grads, "buffers": buffers}, Path(out_dir) / "result.pt"
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["simclr", "moco_v3"])
def test_two_processes_equal_one_process_with_double_batch(name, tmp_path):
    mp.spawn(_worker, args=(_free_port(), name, str(tmp_path)), nprocs=WORLD, join=True)
    result = torch.load(tmp_path / "result.pt")
    ref_loss, ref_grads, ref_buffers = _loss_and_grads(_build(name), _global_views())
    assert ref_loss.dtype == DTYPE
    assert result["loss"].item() == pytest.approx(ref_loss.item(), rel=RTOL, abs=0)
    _assert_close_to_scale(result["grads"], ref_grads, "gradient of")
    _assert_close_to_scale(result["buffers"], ref_buffers, "buffer")


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
