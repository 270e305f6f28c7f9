"""Weighted kNN (InstDisc protocol) against naive and sklearn references; pixel / random-init
baselines, including the raw-pixel score on the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from tolerance import rounding

from twinview.eval import knn_accuracy, knn_predict, random_init_knn, raw_pixel_knn
from twinview.eval.features import extract_features
from twinview.nn import build_backbone

T = 0.07


def make_data(n: int = 400, m: int = 60, d: int = 12, classes: int = 5, seed: int = 0):
    """Random features with weak class structure (so kNN is non-trivial) and no ties."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g)
    train_y = torch.randint(0, classes, (n,), generator=g)
    test_y = torch.randint(0, classes, (m,), generator=g)
    train_x = centers[train_y] + 1.5 * torch.randn(n, d, generator=g)
    test_x = centers[test_y] + 1.5 * torch.randn(m, d, generator=g)
    return train_x, train_y, test_x, test_y


def naive_knn(train_x, train_y, test_x, k, temperature, classes):
    """Full similarity matrix in float64, then a python loop over queries and neighbours.

    knn_predict computes the cosines in float32, which round by a few eps x sqrt(d) in an order
    that depends on the CPU's kernels and on the chunking. So predictions compare exactly only if
    no decision lies within that of a tie; this checks the data has the margin: with every cosine
    moved by up to ``margin`` (which may also swap the neighbours at rank k), the predicted class
    still wins.
    """
    a = train_x.double() / train_x.double().norm(dim=1, keepdim=True)
    b = test_x.double() / test_x.double().norm(dim=1, keepdim=True)
    sim = b @ a.T
    margin = rounding(torch.float32, terms=train_x.shape[1])  # of a float32 cosine
    preds = []
    for i in range(sim.shape[0]):
        row = [float(v) for v in sim[i]]
        order = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        scores = [0.0] * classes
        for j in order:
            scores[int(train_y[j])] += math.exp(row[j] / temperature)
        pred = max(range(classes), key=lambda c: scores[c])
        preds.append(pred)
        # Bounds on each class's score: surely-in neighbours (clear of the first one left out) at
        # their lowest, possibly-in ones (within 2 margins of the k-th cosine) at their highest.
        ranked = sorted(row, reverse=True)
        kth = ranked[k - 1] if k < len(row) else -math.inf
        first_out = ranked[k] if k < len(row) else -math.inf
        low, high = [0.0] * classes, [0.0] * classes
        for j, value in enumerate(row):
            c = int(train_y[j])
            if value > first_out + 2 * margin:
                low[c] += math.exp((value - margin) / temperature)
            if value >= kth - 2 * margin:
                high[c] += math.exp((value + margin) / temperature)
        rival = max(high[c] for c in range(classes) if c != pred)
        assert low[pred] > rival, f"query {i}: the prediction is within rounding of a tie"
    return torch.tensor(preds)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_predict_matches_naive_reference(k: int) -> None:
    train_x, train_y, test_x, _ = make_data()
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=T)
    expected = naive_knn(train_x, train_y, test_x, k, T, classes=5)
    assert pred.dtype == torch.long and pred.shape == (60,)
    torch.testing.assert_close(pred, expected)


@pytest.mark.parametrize("k", [10, 100])
def test_knn_predict_matches_sklearn_weighted_cosine(k: int) -> None:
    train_x, train_y, test_x, _ = make_data(n=500, m=200, seed=1)
    clf = KNeighborsClassifier(
        n_neighbors=k,
        weights=lambda dist: np.exp((1.0 - dist) / T),
        metric="cosine",
        algorithm="brute",
    ).fit(train_x.numpy(), train_y.numpy())
    expected = torch.from_numpy(clf.predict(test_x.numpy())).long()
    # sklearn's float32 cosines round otherwise than ours: exact only with the naive margin
    torch.testing.assert_close(naive_knn(train_x, train_y, test_x, k, T, classes=5), expected)
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=T)
    torch.testing.assert_close(pred, expected)
    # The comparison has power: unweighted majority voting disagrees somewhere.
    uniform = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    uniform_pred = uniform.fit(train_x.numpy(), train_y.numpy()).predict(test_x.numpy())
    assert (torch.from_numpy(uniform_pred).long() != pred).any()


def test_chunking_gives_identical_predictions() -> None:
    train_x, train_y, test_x, _ = make_data(n=300, m=50, seed=2)
    reference = knn_predict(train_x, train_y, test_x, k=20, chunk_size=1024)
    # other chunks, other float32 roundings: exact only with the naive reference's margin
    torch.testing.assert_close(reference, naive_knn(train_x, train_y, test_x, 20, T, classes=5))
    for chunk_size, bank_chunk_size in [(1, None), (7, None), (16, 13), (1024, 64), (3, 7)]:
        pred = knn_predict(
            train_x,
            train_y,
            test_x,
            k=20,
            chunk_size=chunk_size,
            bank_chunk_size=bank_chunk_size,
        )
        torch.testing.assert_close(pred, reference)


def test_knn_accuracy_keys_and_values() -> None:
    train_x, train_y, test_x, test_y = make_data(n=300, m=80, seed=3)
    result = knn_accuracy(train_x, train_y, test_x, test_y, k=(5, 20), chunk_size=16)
    assert set(result) == {"knn_top1_k5", "knn_top1_k20"}
    for k in (5, 20):
        pred = naive_knn(train_x, train_y, test_x, k, T, classes=5)
        assert result[f"knn_top1_k{k}"] == pytest.approx(float((pred == test_y).float().mean()))
    # Default protocol: k = 20 and 200, fractions in [0, 1]; well-separated classes score high.
    g = torch.Generator().manual_seed(4)
    centers = 10 * torch.randn(3, 8, generator=g)
    y = torch.arange(600) % 3
    x = centers[y] + torch.randn(600, 8, generator=g)
    result = knn_accuracy(x[:500], y[:500], x[500:], y[500:])
    assert set(result) == {"knn_top1_k20", "knn_top1_k200"}
    assert result["knn_top1_k20"] == 1.0 and result["knn_top1_k200"] == 1.0


def test_unlabeled_bank_is_a_clear_error() -> None:
    train_x, train_y, test_x, test_y = make_data(n=50, m=5)
    train_y = train_y.clone()
    train_y[3] = -1
    with pytest.raises(ValueError, match="unlabeled"):
        knn_predict(train_x, train_y, test_x, k=5)
    with pytest.raises(ValueError, match="unlabeled"):
        knn_accuracy(train_x[4:], train_y[4:], test_x, torch.full_like(test_y, -1), k=5)
    with pytest.raises(ValueError, match="dimension"):
        knn_predict(train_x, train_y.abs(), test_x[:, :3], k=5)


def test_k_larger_than_bank_uses_whole_bank() -> None:
    train_x, train_y, test_x, _ = make_data(n=30, m=10, seed=5)
    with pytest.warns(UserWarning, match="exceeds"):
        pred = knn_predict(train_x, train_y, test_x, k=200)
    torch.testing.assert_close(pred, naive_knn(train_x, train_y, test_x, 30, T, classes=5))


def test_raw_pixel_knn_equals_knn_on_flattened_unit_pixels() -> None:
    g = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (120, 1, 6, 6), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (120,), generator=g)
    result = raw_pixel_knn(images[:100], labels[:100], images[100:], labels[100:], k=(3, 10))
    flat = images.reshape(120, -1).double() / 255
    for k in (3, 10):
        pred = naive_knn(flat[:100], labels[:100], flat[100:], k, T, classes=3)
        assert result[f"knn_top1_k{k}"] == pytest.approx(
            float((pred == labels[100:]).double().mean())
        )


def test_random_init_knn_is_seeded_and_leaves_global_rng_alone() -> None:
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (80, 1, 12, 12), generator=g, dtype=torch.uint8)
    labels = torch.arange(80) % 4
    builder = partial(build_backbone, "convnet", in_channels=1, width=4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    result = random_init_knn(builder, images[:60], labels[:60], images[60:], labels[60:], k=(5,))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    backbone, _ = builder()
    bank, queries = extract_features(backbone, images[:60]), extract_features(backbone, images[60:])
    expected = knn_accuracy(bank, labels[:60], queries, labels[60:], k=5)
    assert result == expected


def _read_idx(path: Path) -> torch.Tensor:
    """IDX file (big-endian header: zero, zero, dtype, ndim, then ndim uint32 sizes)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(*dims)
    return torch.from_numpy(array.copy())


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Fashion-MNIST IDX files not found")
def test_raw_pixel_knn_on_fashion_mnist_scores_about_79_percent() -> None:
    train_x = _read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz").unsqueeze(1)
    train_y = _read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz").long()
    test_x = _read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz").unsqueeze(1)
    test_y = _read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").long()
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    result = raw_pixel_knn(train_x, train_y, test_x, test_y)
    # Measured: k=20 84.59%, k=200 79.13%.
    assert result["knn_top1_k200"] == pytest.approx(0.7913, abs=0.003)
    assert result["knn_top1_k20"] == pytest.approx(0.8459, abs=0.003)
