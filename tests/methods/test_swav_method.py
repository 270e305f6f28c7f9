"""SwAV method: multi-crop forward, prototype normalisation and freeze, the queue (rows, start,
fullness), state round trip, optimizer steps, and 2 processes x B == 1 process x 2B."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tiny import tiny_backbone
from tolerance import assert_close_to_scale
from torch import nn

from twinview.losses.swav import sinkhorn, swav_loss
from twinview.methods import SwAV, build_method
from twinview.methods.simclr import encode_by_shape
from twinview.nn.batchnorm import convert_sync_batchnorm

F64 = torch.float64
SMALL = {"hidden_dim": 16, "out_dim": 8, "num_prototypes": 10}


def make(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs) -> SwAV:
    torch.manual_seed(seed)
    method = build_method("swav", tiny_backbone(), feature_dim=24, **{**SMALL, **kwargs})
    assert isinstance(method, SwAV)
    return method.to(dtype)


def crops(batch=4, seed=0, dtype=torch.float32, local=2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    big = [torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype) for _ in range(2)]
    return big + [torch.randn(batch, 3, 4, 4, generator=g, dtype=dtype) for _ in range(local)]


@torch.no_grad()
def embed(method: SwAV, views) -> list[torch.Tensor]:
    """z of every crop, recomputed as forward does (train-mode BN: same batch, same output)."""
    z = F.normalize(method.projector(torch.cat(encode_by_shape(method.backbone, views))), dim=1)
    return list(z.split(views[0].shape[0]))


def expected_loss(method: SwAV, views, queue=None) -> torch.Tensor:
    w = method.prototypes.weight.detach()
    scores = [z @ w.T for z in embed(method, views)]
    codes = {
        i: sinkhorn(scores[i], queue_scores=None if queue is None else queue[i] @ w.T)
        for i in (0, 1)
    }
    return swav_loss(scores, codes, temperature=method.temperature)


def test_multicrop_forward_one_backbone_pass_per_size_and_the_loss():
    method = make(dtype=F64)
    calls = []
    method.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    views = crops(dtype=F64)
    out = method(views)
    assert [tuple(s) for s in calls] == [(8, 3, 8, 8), (8, 3, 4, 4)]
    assert out.features.shape == (4, 24) and not out.features.requires_grad
    assert out.embeddings.shape == (4, 8)
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(4, dtype=F64))
    # forward = the formula on the same crops (prototypes normalised at init)
    ref = expected_loss(method, views)
    assert out.loss.dtype == F64
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert set(out.logs) == {"assignment_max", "queue_in_use", "prototypes_frozen"}
    assert 1 / SMALL["num_prototypes"] <= out.logs["assignment_max"].item() <= 1
    out.loss.backward()
    assert all(p.grad is not None for p in method.parameters())


def test_prototypes_normalised_at_init_and_at_each_step_start():
    method = make(dtype=F64)  # float64: norms and F.normalize sum in other orders than the method
    unit = {"rtol": 1e-12, "atol": 1e-12}  # unit rows
    w = method.prototypes.weight
    # normalised at init, before the float64 cast: unit to float32 rounding
    assert_close_to_scale(w.norm(dim=1), torch.ones(10, dtype=F64), dtype=torch.float32)
    with torch.no_grad():
        w.mul_(torch.linspace(0.5, 3.0, 10, dtype=F64)[:, None]).add_(0.01)
    direction = F.normalize(w.detach().clone(), dim=1)
    method.on_step_start(5, 10)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(10, dtype=F64), **unit)
    torch.testing.assert_close(w.detach(), direction, **unit)
    # Micro-batches of one step share the prototypes: no second normalisation in step 5.
    before = w.detach().clone()
    with torch.no_grad():
        w.mul_(2.0)
    method.on_step_start(5, 10)
    torch.testing.assert_close(w.detach(), 2 * before, rtol=0, atol=0)
    method.on_step_start(6, 10)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(10, dtype=F64), **unit)


def test_prototypes_frozen_for_the_first_steps_only():
    method = make(freeze_prototypes_steps=2)
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.5, momentum=0.9)
    for step in range(4):
        method.on_step_start(step, 10)
        before = method.prototypes.weight.detach().clone()
        out = method(crops(seed=step))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        method.on_after_backward()
        frozen = step < 2
        assert (method.prototypes.weight.grad is None) == frozen
        assert out.logs["prototypes_frozen"].item() == float(frozen)
        assert all(p.grad is not None for p in method.projector.parameters())
        opt.step()
        assert torch.equal(method.prototypes.weight.detach(), before) == frozen


def test_queue_rows_start_epoch_and_fullness():
    # batch 4, queue 10: full after 3 steps; 2 steps per epoch, used from epoch 2 (step 4).
    method = make(dtype=F64, queue_size=10, queue_start_epoch=2)
    assert method.queue.features.shape == (2, 10, 8)
    used = []
    for step in range(6):
        method.on_step_start(step, 2)
        views = crops(seed=step, dtype=F64)
        snapshot = method.queue.features.clone()
        in_use = method.queue_in_use
        out = method(views)
        used.append(out.logs["queue_in_use"].item())
        ref = expected_loss(method, views, queue=snapshot if in_use else None)
        assert out.loss.item() == pytest.approx(ref.item(), rel=1e-12)
        # The newest rows are this step's z of the two global crops, at ptr - 4 .. ptr - 1.
        z = embed(method, views)
        rows = (4 * (step + 1) - 4 + torch.arange(4)) % 10
        assert int(method.queue.ptr) == 4 * (step + 1) % 10
        for slot in (0, 1):
            torch.testing.assert_close(method.queue.features[slot, rows], z[slot])
        assert int(method.queue.filled) == min(4 * (step + 1), 10)
    assert used == [0, 0, 0, 0, 1, 1]
    # The queue changes the codes: with it the loss differs from the loss without it.
    views = crops(seed=9, dtype=F64)
    method.on_step_start(6, 2)
    assert expected_loss(method, views, queue=method.queue.features.clone()).item() != (
        pytest.approx(expected_loss(method, views).item(), rel=1e-6)
    )


def test_queue_started_but_not_full_is_not_used():
    method = make(queue_size=10, queue_start_epoch=0)
    logs = []
    for step in range(4):
        method.on_step_start(step, 100)
        logs.append(method(crops(seed=step)).logs["queue_in_use"].item())
    assert logs == [0, 0, 0, 1]  # 4, 8, then 12 >= 10 rows: full from step 3


def test_no_queue_by_default():
    method = make()
    assert method.queue is None
    assert not any(k.startswith("queue") for k in method.state_dict())
    method.on_step_start(10_000, 10)
    assert method(crops()).logs["queue_in_use"].item() == 0


def test_state_dict_round_trip_gives_identical_outputs():
    method = make(queue_size=6, queue_start_epoch=0, freeze_prototypes_steps=1)
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.1, momentum=0.9)
    for step in range(3):
        method.on_step_start(step, 4)
        out = method(crops(seed=step))
        opt.zero_grad()
        out.loss.backward()
        method.on_after_backward()
        opt.step()
    state = method.state_dict()
    assert {"queue.features", "queue.ptr", "queue.filled", "prototypes.weight"} <= set(state)
    fresh = make(seed=1, queue_size=6, queue_start_epoch=0, freeze_prototypes_steps=1)
    assert not fresh.queue.is_full
    fresh.load_state_dict(state)
    assert fresh.queue.is_full and method.queue.is_full
    outs = []
    for m in (method, fresh):
        m.on_step_start(3, 4)
        outs.append(m(crops(seed=7)))
    assert outs[0].logs["queue_in_use"].item() == 1
    assert torch.equal(outs[0].loss, outs[1].loss)
    assert torch.equal(outs[0].features, outs[1].features)
    for key, value in method.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_two_optimizer_steps_finite_loss(dtype):
    method = make(dtype=dtype, queue_size=8, queue_start_epoch=0, freeze_prototypes_steps=1)
    assert method.queue.features.dtype == dtype
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.1, momentum=0.9)
    for step in range(2):
        method.on_step_start(step, 1)
        out = method(crops(seed=step, dtype=dtype))
        assert out.loss.ndim == 0 and out.loss.dtype == dtype and torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        method.on_after_backward()
        opt.step()
    assert method.queue.is_full


def test_bf16_autocast_scores_codes_and_loss_in_float32():
    method = make(queue_size=8, queue_start_epoch=0)
    views = crops()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(views)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.embeddings.dtype == torch.float32
    assert method.queue.features.dtype == torch.float32
    out.loss.backward()
    assert method.prototypes.weight.grad.dtype == torch.float32


# -- 2 processes x batch B == 1 process x batch 2B, the shared queue in use -------------------

WORLD, BATCH, QUEUE = 2, 4, 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    """SyncBN float64 method with a full queue (same rows everywhere), queue in use."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )  # fmt: skip
    method = SwAV(
        backbone, feature_dim=8, queue_size=QUEUE, queue_start_epoch=0,
        freeze_prototypes_steps=0, **SMALL,
    )  # fmt: skip
    method = convert_sync_batchnorm(method).to(F64)
    g = torch.Generator().manual_seed(5)
    method.queue.enqueue(F.normalize(torch.randn(2, QUEUE, 8, generator=g, dtype=F64), dim=-1))
    method.on_step_start(3, 1)
    views = crops(batch=WORLD * BATCH, seed=2, dtype=F64)
    scores = torch.randn(WORLD * BATCH, 10, generator=g, dtype=F64)
    queue_scores = torch.randn(QUEUE, 10, generator=g, dtype=F64)
    return method, views, scores, queue_scores


def _step(method, views, average=None):
    out = method(views)
    assert out.logs["queue_in_use"].item() == 1
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters()}
    loss = out.loss.detach()
    if average is not None:
        loss, grads = average(loss), {n: average(g) for n, g in grads.items()}
    for n, p in method.named_parameters():  # plain SGD on the (averaged) gradient
        p.data.sub_(0.1 * grads[n])
    return loss, grads, {k: v.clone() for k, v in method.state_dict().items()}


def _average(x):
    x = x.clone()
    dist.all_reduce(x)
    return x / WORLD


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        method, views, scores, queue_scores = _setup()
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        codes = sinkhorn(scores[part], queue_scores=queue_scores)
        loss, grads, state = _step(method, [v[part] for v in views], average=_average)
        result = {"codes": codes, "loss": loss, "grads": grads, "state": state}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _close(got, ref, what):
    scale = max(r.abs().max().item() for r in ref.values() if r.is_floating_point())
    for key, r in ref.items():
        if not r.is_floating_point():
            assert torch.equal(got[key], r), f"{what} {key}"
            continue
        torch.testing.assert_close(got[key], r, rtol=1e-10, atol=1e-10 * scale, msg=f"{what} {key}")


@pytest.mark.distributed
def test_two_processes_equal_one_process_with_double_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    method, views, scores, queue_scores = _setup()
    # Sinkhorn over the global batch with a shared queue counted once.
    ref_codes = sinkhorn(scores, queue_scores=queue_scores)
    torch.testing.assert_close(torch.cat([r0["codes"], r1["codes"]]), ref_codes, rtol=1e-10, atol=0)
    ref_loss, ref_grads, ref_state = _step(method, views)
    assert r0["loss"].item() == pytest.approx(ref_loss.item(), rel=1e-10)
    _close(r0["grads"], ref_grads, "gradient of")
    # One step later the whole state (weights, BN statistics, queue) is the same, and both
    # processes hold the same queue.
    _close(r0["state"], ref_state, "state")
    assert torch.equal(r0["state"]["queue.features"], r1["state"]["queue.features"])
