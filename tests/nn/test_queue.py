"""FeatureQueue: ring-buffer order against a naive FIFO, wrap-around, state dict, autograd."""

from __future__ import annotations

import random

import pytest
import torch

from twinview.nn import FeatureQueue


def fifo_order(queue: FeatureQueue) -> torch.Tensor:
    """Rows oldest -> newest: the ring buffer rolled so ``ptr`` (the oldest row) comes first."""
    return torch.roll(queue.features, -int(queue.ptr), dims=0)


def test_initial_state() -> None:
    queue = FeatureQueue(10, 4)
    assert queue.features.shape == (10, 4)
    assert queue.ptr.dtype == torch.long and queue.ptr.ndim == 0 and int(queue.ptr) == 0
    torch.testing.assert_close(queue.features.norm(dim=1), torch.ones(10))
    assert set(queue.state_dict()) == {"features", "ptr"}


def test_wrap_around_when_batch_does_not_divide_size() -> None:
    queue = FeatureQueue(5, 2)
    initial = queue.features.clone()
    a = torch.arange(6.0).reshape(3, 2)
    queue.enqueue(a)
    assert int(queue.ptr) == 3
    torch.testing.assert_close(queue.features[:3], a)
    torch.testing.assert_close(queue.features[3:], initial[3:])
    b = 10 + torch.arange(6.0).reshape(3, 2)
    queue.enqueue(b)  # rows 3, 4, then wraps to row 0
    assert int(queue.ptr) == 1
    torch.testing.assert_close(queue.features, torch.stack([b[2], a[1], a[2], b[0], b[1]]))


def test_more_keys_than_size_keeps_the_last() -> None:
    queue = FeatureQueue(4, 3)
    queue.enqueue(torch.randn(2, 3))  # ptr = 2
    keys = torch.randn(7, 3)
    queue.enqueue(keys)
    assert int(queue.ptr) == (2 + 7) % 4
    torch.testing.assert_close(fifo_order(queue), keys[-4:])
    big = torch.randn(8, 3)  # exact multiple of the size
    queue.enqueue(big)
    assert int(queue.ptr) == 1
    torch.testing.assert_close(fifo_order(queue), big[-4:])


def test_matches_python_fifo_over_many_enqueues() -> None:
    rng = random.Random(0)
    size, dim = 13, 3
    queue = FeatureQueue(size, dim)
    fifo = list(queue.features.clone().unbind(0))  # oldest first
    ring = list(queue.features.clone().unbind(0))  # naive one-key-at-a-time ring buffer
    ptr = 0
    for _ in range(60):
        keys = torch.randn(rng.randint(0, 30), dim)
        queue.enqueue(keys)
        fifo = (fifo + list(keys.unbind(0)))[-size:]
        for k in keys:
            ring[ptr] = k
            ptr = (ptr + 1) % size
        assert int(queue.ptr) == ptr
        torch.testing.assert_close(queue.features, torch.stack(ring), rtol=0, atol=0)
        torch.testing.assert_close(fifo_order(queue), torch.stack(fifo), rtol=0, atol=0)


def test_state_dict_round_trip() -> None:
    queue = FeatureQueue(9, 4)
    queue.enqueue(torch.randn(5, 4))
    queue.enqueue(torch.randn(7, 4))
    fresh = FeatureQueue(9, 4)
    assert not torch.equal(fresh.features, queue.features)
    fresh.load_state_dict(queue.state_dict())
    torch.testing.assert_close(fresh.features, queue.features, rtol=0, atol=0)
    assert int(fresh.ptr) == int(queue.ptr) == 3
    keys = torch.randn(4, 4)  # both continue identically
    queue.enqueue(keys)
    fresh.enqueue(keys)
    torch.testing.assert_close(fresh.features, queue.features, rtol=0, atol=0)
    assert int(fresh.ptr) == int(queue.ptr)


def test_enqueue_casts_and_detaches() -> None:
    queue = FeatureQueue(4, 2)
    keys = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    queue.enqueue(keys * 2)
    assert queue.features.dtype == torch.float32
    assert not queue.features.requires_grad
    torch.testing.assert_close(queue.features[:2], (keys * 2).detach().float())
    queue.half()
    assert queue.features.dtype == torch.float16 and queue.ptr.dtype == torch.long
    queue.enqueue(torch.ones(1, 2))
    assert queue.features.dtype == torch.float16
    torch.testing.assert_close(queue.features[2], torch.ones(2, dtype=torch.float16))


def test_negatives_survive_an_enqueue_before_backward() -> None:
    # float64: the gradient (a matmul) and its reference (a sum) add in different orders.
    queue = FeatureQueue(6, 3).to(torch.float64)
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    negatives = queue.negatives()
    before = negatives.clone()
    logits = q @ negatives.T  # (4, 6)
    queue.enqueue(torch.randn(4, 3))  # MoCo enqueues in the same step
    logits.sum().backward()
    torch.testing.assert_close(negatives, before, rtol=0, atol=0)
    torch.testing.assert_close(q.grad, before.sum(0).expand(4, 3), rtol=1e-12, atol=1e-12)
    assert not torch.equal(queue.negatives(), before)


@pytest.mark.parametrize("shape", [(3,), (2, 5), (1, 2, 3)])
def test_enqueue_rejects_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"keys must have shape \(n, 3\)"):
        FeatureQueue(4, 3).enqueue(torch.randn(*shape))


@pytest.mark.parametrize(("size", "dim"), [(0, 3), (4, 0), (2.5, 3)])
def test_bad_sizes(size: object, dim: object) -> None:
    with pytest.raises(ValueError, match="must be a positive int"):
        FeatureQueue(size, dim)  # type: ignore[arg-type]
