"""The run report: a self-contained report.html whose images all decode, whose tables show the
run's numbers beside the baselines, and which degrades to notes when inputs are missing; the
2-D embedding map (PCA against scikit-learn, t-SNE, cluster separation); the neighbour grid."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import re
import subprocess
import sys
import textwrap
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinview.report import embedding_map, project_2d, write_report
from twinview.report.curves import curve_panels, read_records
from twinview.report.neighbours import choose_queries, nearest_neighbours
from twinview.report.plots import OTHER_LABEL, SAME_LABEL, neighbour_grid_png, scatter_png
from twinview.report.results import results_table_html

SUMMARY = {
    "status": "finished",
    "method": "byol",
    "dataset": "fashion_mnist",
    "backbone": "convnet",
    "steps": 120,
    "epochs": 3,
    "run_dir": "runs/x",
    "eval_split": "test",
    "test_knn_top1_k20": 0.8123,
    "test_knn_top1_k200": 0.8051,
    "test_raw_pixel_knn_top1_k20": 0.7712,
    "test_raw_pixel_knn_top1_k200": 0.7654,
    "backbone_path": "runs/x/backbone.pt",
}
EVAL = {
    "protocols": {
        "knn": {"knn_top1_k20": 0.82, "knn_top1_k200": 0.81},
        "linear": {"linear_top1": 0.86, "linear_lr": 0.1},
    },
    "baselines": {
        "raw_pixel": {"knn_top1_k20": 0.77, "knn_top1_k200": 0.765},  # flat
        "random_init": {"knn": {"knn_top1_k20": 0.74}, "linear": {"linear_top1": 0.8}},
        "supervised": {"linear_top5": 0.99},  # baseline-only metric, unknown baseline name
    },
}
CLASS_NAMES = ["circle", "square", "triangle"]


class PageParser(HTMLParser):
    """Collects <img> sources, <h2> headings, table rows and all text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if tag == "tr":
            self.rows.append([])
        if tag in ("h2", "td", "th"):
            self._in.append(tag)
            if tag in ("td", "th"):
                self.rows[-1].append("")
            else:
                self.headings.append("")

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in and self._in[-1] == "h2":
            self.headings[-1] += data
        elif self._in and self._in[-1] in ("td", "th"):
            self.rows[-1][-1] += data


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(data)).verify()  # checks the whole file, CRCs included
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.width > 0 and image.height > 0
    return image


def write_metrics(run_dir: Path) -> None:
    lines = []
    for step in range(0, 120, 10):
        lines.append(
            {
                "kind": "train",
                "step": step,
                "epoch": step // 40,
                "loss": 4 * math.exp(-step / 60),
                "lr": 0.1 * (1 - step / 120),
                "lr_factor": 1 - step / 120,
                "images_per_s": 900.0,
            }
        )
    for epoch in range(3):
        lines.append(
            {
                "kind": "epoch",
                "step": 40 * (epoch + 1),
                "epoch": epoch,
                "val_knn_top1": 0.5 + 0.1 * epoch,
                "health_rankme": 10.0 + epoch,
                "health_std_ratio": 0.6 + 0.1 * epoch,
                "health_uniformity": -2.0,
                "val_feature_rankme": 12.0,
            }
        )
        if epoch == 1:
            lines[-1]["collapse_warning"] = 1.0
    lines.append({"kind": "summary", "step": 120, "epoch": 3, "test_knn_top1_k20": 0.8123})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def make_embeddings(n: int = 90, classes: int = 3, dim: int = 32, seed: int = 0):
    """Well-separated clusters: features (n, dim), labels (n,), images (n, 1, 8, 8) uint8."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 4
    features = centres[labels] + 0.3 * torch.randn(n, dim, generator=g)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return features, labels, images


def png_bytes(size=(40, 20), colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, PageParser]:
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    (run_dir / "eval.json").write_text(json.dumps(EVAL))
    (run_dir / "config.yaml").write_text("method:\n  name: byol\n  tau_base: 0.996  # <ema>\n")
    write_metrics(run_dir)
    features, labels, images = make_embeddings()
    path = write_report(
        run_dir,
        test_features=features,
        test_labels=labels,
        test_images=images,
        views_grid_png=png_bytes(),
        class_names=CLASS_NAMES,
        k_neighbours=4,
        map_method="pca",
    )
    return path, parse(path)


def test_report_is_self_contained_and_every_image_decodes(full_report):
    path, page = full_report
    assert path.name == "report.html" and path.is_file()
    # training curves, epoch monitors, embedding map, neighbour grid, views grid
    assert len(page.images) == 5
    sizes = [decode_png(src).size for src in page.images]
    assert sizes[-1] == (40, 20)  # the caller's views PNG is embedded unchanged
    assert not page.links and "script" not in page.tags and "link" not in page.tags
    assert "http://" not in path.read_text() and "https://" not in path.read_text()


def test_report_sections_header_and_config(full_report):
    path, page = full_report
    for heading in (
        "Results",
        "Training curves",
        "Embedding map",
        "Nearest neighbours",
        "Augmented views",
        "Configuration",
    ):
        assert heading in page.headings
    text = " ".join(page.text)
    for value in ("byol", "fashion_mnist", "convnet"):
        assert value in text
    assert "PCA of 90 of 90 l2-normalised test embeddings, coloured by label" in text
    assert "tau_base: 0.996  # <ema>" in text  # config shown verbatim (escaped, then parsed)
    assert "details" in page.tags and 'class="note"' not in path.read_text()


def test_results_tables_show_run_beside_baselines(full_report):
    _, page = full_report
    rows = {row[0]: row[1:] for row in page.rows if row}
    # summary.json: this run, raw pixels (percentages, two decimals)
    assert rows["kNN top-1 (k=20)knn_top1_k20"] == ["81.23%", "77.12%"]
    assert rows["kNN top-1 (k=200)knn_top1_k200"] == ["80.51%", "76.54%"]
    # eval.json: nested protocols matched to flat and nested baselines; non-accuracies raw
    assert rows["kNN top-1 (k=20)knn/knn_top1_k20"] == ["82.00%", "77.00%", "74.00%", "—"]
    assert rows["linear top-1linear/linear_top1"] == ["86.00%", "—", "80.00%", "—"]
    assert rows["linear lrlinear/linear_lr"] == ["0.1", "—", "—", "—"]
    assert rows["linear top-5linear_top5"] == ["—", "—", "—", "99.00%"]
    headers = [row for row in page.rows if row and row[0] == "metric"]
    assert headers[1] == ["metric", "this run", "raw pixels", "random init", "supervised"]


def test_results_table_folds_mean_and_std_over_seeds():
    results = {
        "seeds": 3,
        "protocols": {"linear": {"linear_top1_mean": 0.8512, "linear_top1_std": 0.0034,
                                 "per_seed": [{"linear_top1": 0.85}], "linear_lr": 0.1}},
        "baselines": {"raw_pixel": {"linear": {"linear_top1_mean": 0.8, "linear_top1_std": None}}},
    }  # fmt: skip
    parser = PageParser()
    parser.feed(results_table_html(results))
    rows = {row[0]: row[1:] for row in parser.rows}
    assert rows["linear top-1linear/linear_top1"] == ["85.12 ± 0.34%", "80.00%"]  # std null: 1 seed
    assert rows["linear lrlinear/linear_lr"] == ["0.1", "—"]
    assert len(rows) == 3  # header, the folded row, lr: no separate mean / std rows


@pytest.mark.filterwarnings(r"ignore:k=\d+ exceeds the")
def test_twinview_eval_puts_the_linear_probe_into_the_report(tmp_path):
    """End to end: a run whose report.html has no eval.json yet; ``twinview eval`` writes
    eval.json and rewrites the report, whose table then holds the linear probe (mean ± std over
    the seeds) and the kNN scores beside the raw-pixel and random-init baselines."""
    from twinview.cli import main
    from twinview.config import load_config, save_config
    from twinview.export import save_backbone
    from twinview.nn import build_backbone

    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(7)
    backbone, _ = build_backbone("convnet", width=2)
    spec = {"name": "convnet", "in_channels": 3, "cifar_stem": False, "kwargs": {"width": 2},
            "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}  # fmt: skip
    save_backbone(backbone, spec, run / "backbone.pt")
    overrides = ["data=synthetic", "data.options.n=100", "data.options.size=16"]
    save_config(load_config(None, overrides), run / "config.yaml")
    (run / "summary.json").write_text(json.dumps({**SUMMARY, "run_dir": str(run)}))
    before = {row[0] for row in parse(write_report(run)).rows if row}  # as pretraining left it
    assert "linear top-1linear/linear_top1" not in before

    argv = ["eval", str(run), "protocols=knn,linear", "linear_epochs=2", "seeds=2", "device=cpu"]
    assert main(argv) == 0
    result = json.loads((run / "eval.json").read_text())
    page = parse(run / "report.html")
    rows = {row[0]: row[1:] for row in page.rows if row}

    def linear(scores: dict) -> str:
        mean, std = scores["linear"]["linear_top1_mean"], scores["linear"]["linear_top1_std"]
        return f"{100 * mean:.2f} ± {100 * std:.2f}%"

    baselines = result["baselines"]
    assert rows["linear top-1linear/linear_top1"] == [
        linear(result["protocols"]), linear(baselines["raw_pixel"]),
        linear(baselines["random_init"]),
    ]  # fmt: skip
    knn = [f"{s['knn']['knn_top1_k20']:.2%}" for s in (result["protocols"], *baselines.values())]
    assert sorted(rows["kNN top-1 (k=20)knn/knn_top1_k20"]) == sorted(knn)
    assert rows["kNN top-1 (k=20)knn_top1_k20"] == ["81.23%", "77.12%"]  # summary.json kept
    text = " ".join(page.text)
    assert "final-epoch numbers on the test split" in text and "over 2 seeds" in text
    assert "Embedding map" in page.headings and len(page.images) >= 2  # map and grid redrawn


def test_results_table_without_baselines_or_results():
    table = results_table_html({"eval_split": "val", "val_knn_top1_k20": 0.5}, prefix="val_")
    assert "50.00%" in table and "raw pixels" not in table
    assert results_table_html({"status": "finished"}, prefix="test_") is None
    assert results_table_html({"protocols": {}, "baselines": {}}) is None


def test_summary_without_eval_split_key(tmp_path):
    summary = {k: v for k, v in SUMMARY.items() if k != "eval_split"}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rows = [row for row in parse(write_report(tmp_path)).rows if row]
    assert [row[0] for row in rows] == [
        "metric",
        "kNN top-1 (k=20)knn_top1_k20",
        "kNN top-1 (k=200)knn_top1_k200",
    ]


def test_only_summary_gives_notes_not_a_crash(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    page = parse(write_report(tmp_path))
    text = " ".join(page.text)
    assert page.images == []
    assert "81.23%" in text and "76.54%" in text
    for note in (
        "No metrics.jsonl",
        "No test features given: embedding map omitted",
        "No test features given: nearest-neighbour grid omitted",
        "No views grid given",
        "No config.yaml",
    ):
        assert note in text


def test_empty_or_broken_run_dir(tmp_path):
    page = parse(write_report(tmp_path))
    assert "No results" in " ".join(page.text) and len(page.headings) == 6
    (tmp_path / "summary.json").write_text('{"status": "fini')  # killed mid-write
    (tmp_path / "config.yaml").write_text("method:\n  name: simsiam\n")
    (tmp_path / "metrics.jsonl").write_text('{"kind": "epoch", "step": 5, "epoch": 0}\n')
    text = " ".join(parse(write_report(tmp_path)).text)
    assert "summary.json could not be read" in text
    assert "simsiam" in text  # header falls back to config.yaml
    assert "holds no numeric values" in text


def test_features_without_labels_or_images(tmp_path):
    features, _, _ = make_embeddings(n=30)
    page = parse(write_report(tmp_path, test_features=features, map_method="pca"))
    assert len(page.images) == 1  # the map only
    decode_png(page.images[0])
    assert "No test images given" in " ".join(page.text)


def test_bad_inputs_raise_clear_errors(tmp_path):
    features, labels, images = make_embeddings(n=30)
    with pytest.raises(ValueError, match="test_labels"):
        write_report(tmp_path, test_features=features, test_labels=labels[:5])
    with pytest.raises(ValueError, match="test_images"):
        write_report(tmp_path, test_features=features, test_images=images[:5])
    with pytest.raises(ValueError, match="k_neighbours"):
        write_report(tmp_path, test_features=features, k_neighbours=0)
    with pytest.raises(ValueError, match="map_method"):
        write_report(tmp_path, test_features=features, map_method="mds")
    with pytest.raises(ValueError, match="views_grid_png"):
        write_report(tmp_path, views_grid_png=b"not an image")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")


def test_metrics_records_become_panels(tmp_path):
    write_metrics(tmp_path)
    with (tmp_path / "metrics.jsonl").open("a") as f:  # a resumed run re-logs step 110
        f.write(json.dumps({"kind": "train", "step": 110, "epoch": 2, "loss": 7.0}) + "\n")
        f.write('{"kind": "train", "st')  # truncated by a kill
    records = read_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"][-1] == 110
    train, epoch = curve_panels(records)
    assert [p.title for p in train] == ["training loss", "learning rate", "throughput"]
    loss = train[0].series[0]
    assert loss.y[-1] == 7.0 and loss.x.tolist() == list(range(0, 120, 10))
    titles = [p.title for p in epoch]
    assert titles == [
        "validation kNN top-1",
        "embedding std × √d",
        "RankMe (effective rank)",
        "uniformity (Wang & Isola)",
    ]
    knn = epoch[0].series[0]
    assert knn.x.tolist() == [1, 2, 3] and epoch[0].percent  # plotted at epochs completed
    std = epoch[1]
    assert std.hlines[0][0] == 1.0 and std.vlines == [2.0]  # collapse warning after epoch 2
    assert len(epoch[2].series) == 2  # training-batch and validation RankMe


def test_nearest_neighbours_match_brute_force():
    features, _, _ = make_embeddings(n=40, dim=8, seed=1)
    queries = np.array([0, 7, 39])
    got = nearest_neighbours(features, queries, k=5)
    f = features / features.norm(dim=1, keepdim=True)
    for row, q in enumerate(queries):
        sims = [(float(f[q] @ f[j]), j) for j in range(40) if j != q]
        expected = [j for _, j in sorted(sims, reverse=True)[:5]]
        assert got[row].tolist() == expected
    assert nearest_neighbours(features[:3], np.array([0]), k=8).shape == (1, 2)


def test_choose_queries_covers_classes():
    labels = np.repeat(np.arange(4), 10)
    queries = choose_queries(40, labels, 6, seed=0)
    assert len(set(queries.tolist())) == 6
    assert sorted(set(labels[queries[:4]].tolist())) == [0, 1, 2, 3]
    assert (choose_queries(40, labels, 6, seed=0) == queries).all()
    assert len(choose_queries(5, None, 8, seed=0)) == 5


def count_colour(png: bytes, colour: tuple[int, int, int]) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return int((pixels == np.array(colour)).all(axis=1).sum())


def test_neighbour_grid_borders_follow_labels():
    images = torch.full((6, 3, 5, 5), 128, dtype=torch.uint8)
    queries, neighbours = np.array([0, 1]), np.array([[2, 3], [4, 5]])
    same = neighbour_grid_png(images, queries, neighbours, labels=np.zeros(6, dtype=int))
    assert count_colour(same, SAME_LABEL) > 0 and count_colour(same, OTHER_LABEL) == 0
    different = neighbour_grid_png(images, queries, neighbours, labels=np.arange(6))
    assert count_colour(different, OTHER_LABEL) > 0 and count_colour(different, SAME_LABEL) == 0
    plain = neighbour_grid_png(images, queries, neighbours)
    assert count_colour(plain, OTHER_LABEL) == count_colour(plain, SAME_LABEL) == 0


def test_scatter_many_classes_and_no_labels():
    points = np.random.default_rng(0).normal(size=(50, 2))
    many = decode_png(
        "data:image/png;base64,"
        + base64.b64encode(scatter_png(points, np.arange(50) % 25)).decode()
    )
    plain = decode_png("data:image/png;base64," + base64.b64encode(scatter_png(points)).decode())

    def colours(image: Image.Image) -> int:
        return len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0))

    assert colours(many) > 10 * colours(plain)  # a colour per label (and a colour bar)


@pytest.mark.parametrize("n, dim", [(60, 16), (20, 40)])  # covariance and Gram branches
def test_project_2d_pca_matches_sklearn(n, dim):
    from sklearn.decomposition import PCA

    features, _, _ = make_embeddings(n=n, dim=dim)
    points, used = project_2d(features, method="pca")
    assert points.shape == (n, 2) and used.tolist() == list(range(n))
    normalised = features.double().numpy()  # project_2d normalises in float64
    normalised /= np.linalg.norm(normalised, axis=1, keepdims=True)
    reference = PCA(n_components=2, svd_solver="full").fit_transform(normalised)
    for axis in range(2):  # equal up to the sign of each axis
        sign = np.sign(points[:, axis] @ reference[:, axis])
        np.testing.assert_allclose(points[:, axis], sign * reference[:, axis], atol=1e-8)


def test_project_2d_subsamples_with_seed():
    features, _, _ = make_embeddings(n=50, dim=8)
    points, used = project_2d(features, method="pca", max_points=20, seed=3)
    assert points.shape == (20, 2) and len(set(used.tolist())) == 20
    assert (np.diff(used) > 0).all() and used.max() < 50
    assert (project_2d(features, method="pca", max_points=20, seed=3)[1] == used).all()
    assert not (project_2d(features, method="pca", max_points=20, seed=4)[1] == used).all()


def nearest_neighbour_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy in the 2-D map: 1.0 when no point lands in another cluster."""
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(axis=1)] == labels).mean())


HAS_UMAP = importlib.util.find_spec("umap") is not None
needs_umap = pytest.mark.skipif(not HAS_UMAP, reason="umap-learn is not installed")


@pytest.mark.parametrize("method", ["pca", "tsne", pytest.param("umap", marks=needs_umap)])
def test_project_2d_keeps_clusters_apart(method):
    features, labels, _ = make_embeddings(n=60, classes=3, dim=32)
    points, used = project_2d(features, method=method)
    assert points.shape == (60, 2) and np.isfinite(points).all()
    assert nearest_neighbour_accuracy(points, labels.numpy()[used]) == 1.0
    shuffled = np.random.default_rng(0).permutation(labels.numpy()[used])
    assert nearest_neighbour_accuracy(points, shuffled) < 0.7  # the check can fail


def test_project_2d_rejects_bad_arguments():
    features = torch.randn(10, 4)
    with pytest.raises(ValueError, match="method"):
        project_2d(features, method="isomap")
    with pytest.raises(ValueError, match="N >= 3"):
        project_2d(features[:2])
    with pytest.raises(ValueError, match="max_points"):
        project_2d(features, max_points=0)


def test_project_2d_umap_missing_is_a_clear_error():
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install umap-learn"):
            project_2d(torch.randn(10, 4), method="umap")
    else:
        points, _ = project_2d(torch.randn(30, 4), method="umap")
        assert points.shape == (30, 2)


def test_exact_knn_matches_brute_force():
    x = np.random.default_rng(0).normal(size=(300, 7))
    x[5] = x[4]  # a duplicate row is still its own first neighbour
    indices, distances = embedding_map.exact_knn(x, 6, chunk=64)  # several blocks
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    assert indices.shape == distances.shape == (300, 6) and distances.dtype == np.float32
    assert (indices[:, 0] == np.arange(300)).all() and (distances[:, 0] == 0).all()
    assert indices[4, 1] == 5 and indices[5, 1] == 4
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :6], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, indices, axis=1), distances, atol=1e-5)


@needs_umap
def test_umap_map_is_reproducible_capped_and_quiet():
    features, labels, _ = make_embeddings(n=2100, classes=3, dim=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = embedding_map.map_2d(features, seed=1)
        again = embedding_map.map_2d(features, seed=1)
    assert [str(w.message) for w in caught] == []  # the known harmless ones are silenced
    assert first.method == "umap" and first.notes == ()
    assert len(first.indices) == embedding_map.UMAP_MAX_POINTS
    np.testing.assert_array_equal(first.points, again.points)  # seeded: same map
    np.testing.assert_array_equal(first.indices, again.indices)
    assert nearest_neighbour_accuracy(first.points, labels.numpy()[first.indices]) == 1.0
    other = embedding_map.map_2d(features, seed=2)
    assert not np.array_equal(other.indices, first.indices)
    for n in (3, 4):  # tiny maps: no crash, no fallback
        assert embedding_map.map_2d(features[:n], method="umap").method == "umap"


def test_umap_failure_falls_back_to_tsne_and_says_so(monkeypatch, tmp_path, checked_tsne):
    def broken(x, seed):
        raise ImportError("numba is broken here")

    monkeypatch.setattr(embedding_map, "_umap", broken)
    features, labels, _ = make_embeddings(n=1200)
    result = embedding_map.map_2d(features, method="umap")
    assert result.method == "tsne" and len(result.indices) == 1000  # t-SNE's own cap
    assert result.notes == (
        "UMAP failed (ImportError: numba is broken here); t-SNE is shown instead.",
    )
    assert checked_tsne == [(1000, 32)]
    text = " ".join(parse(write_report(tmp_path, test_features=features, test_labels=labels)).text)
    assert "t-SNE of 1000 of 1200 l2-normalised test embeddings" in text
    assert "UMAP failed (ImportError: numba is broken here)" in text


def test_auto_without_umap_says_what_it_drew_instead(monkeypatch):
    monkeypatch.setattr(embedding_map, "available_method", lambda: "pca")
    result = embedding_map.map_2d(make_embeddings(n=30)[0])
    assert result.method == "pca"
    assert result.notes == (
        "umap-learn is not installed (pip install 'twinview[report]'): PCA instead of UMAP.",
    )


# --- degenerate features: a diverged or collapsed run (lr=1e9) must still get its report -------


def degenerate(kind: str, n: int = 60, dim: int = 32) -> torch.Tensor:
    """Features of a broken run; scikit-learn's t-SNE segfaulted on "zero" and "huge_same"."""
    features, _, _ = make_embeddings(n=n, dim=dim)
    direction = torch.randn(1, dim, generator=torch.Generator().manual_seed(7))
    if kind == "constant":
        return torch.full((n, dim), 0.5)
    if kind == "zero":
        return torch.zeros(n, dim)
    if kind == "huge_same":  # 1e26 + O(1): identical rows in float32
        return 1e26 * direction.repeat(n, 1) + torch.randn(n, dim)
    if kind == "huge_dominant":  # one dominant direction, clusters in what is left (~0.4%)
        return 1e26 * (1000 * direction + features)
    if kind == "two_directions":  # rank 1 once l2-normalised (and centred)
        norms = torch.linspace(1, 5, n)[:, None]
        return norms * torch.where(torch.arange(n)[:, None] % 2 == 0, direction, features[:1])
    if kind == "non_finite":
        features[[3, 10]] = float("nan")
        features[20, 5] = float("inf")
        return features
    raise ValueError(kind)


@pytest.fixture
def checked_tsne(monkeypatch) -> list[tuple[int, int]]:
    """t-SNE behind a check that its input is one it cannot crash on (finite, unit RMS
    distance to the mean, at least two varying directions), so a regression fails the test
    instead of killing pytest with a segfault. Returns the shapes it was called with."""
    calls: list[tuple[int, int]] = []
    real = embedding_map._tsne

    def check_then_run(x: np.ndarray, seed: int, max_iter: int) -> np.ndarray:
        assert np.isfinite(x).all()
        rms = embedding_map.principal_rms(x)
        assert (rms > embedding_map.NOISE_FLOOR).sum() >= 2
        assert np.sqrt((rms**2).sum()) == pytest.approx(1.0)
        calls.append(x.shape)
        return real(x, seed, max_iter)

    monkeypatch.setattr(embedding_map, "_tsne", check_then_run)
    return calls


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("constant", "all 60 embeddings point in the same direction"),
        ("huge_same", "all 60 embeddings point in the same direction"),
        ("zero", "only 0 of 60 rows are finite and non-zero: a map needs N >= 3"),
    ],
)
def test_collapsed_features_get_no_map_and_a_reason(kind, reason, checked_tsne):
    result = embedding_map.map_2d(degenerate(kind), method="tsne")
    assert result.points is None and result.method is None and result.indices.size == 0
    assert reason in result.unavailable
    assert checked_tsne == []  # t-SNE never saw it
    with pytest.raises(embedding_map.MapUnavailableError, match="map unavailable: " + reason):
        project_2d(degenerate(kind), method="tsne")
    if kind == "zero":
        assert result.notes == ("60 of 60 rows are all zeros (no direction) and are left out.",)


def test_huge_features_with_one_dominant_direction_still_show_their_clusters(checked_tsne):
    _, labels, _ = make_embeddings(n=60)
    result = embedding_map.map_2d(degenerate("huge_dominant"), method="tsne")
    assert result.method == "tsne" and checked_tsne == [(60, 32)]
    assert np.isfinite(result.points).all()
    assert nearest_neighbour_accuracy(result.points, labels.numpy()) == 1.0
    assert any("nearly point in one direction" in note for note in result.notes)


def test_non_finite_rows_are_dropped_and_counted(checked_tsne):
    points, used = project_2d(degenerate("non_finite"), method="tsne")
    assert points.shape == (57, 2) and np.isfinite(points).all()
    assert not {3, 10, 20} & set(used.tolist()) and len(used) == 57
    result = embedding_map.map_2d(degenerate("non_finite"), method="pca")
    assert result.notes == ("3 of 60 rows hold NaN or inf values and are left out.",)


def test_rank_one_features_fall_back_to_pca(checked_tsne):
    result = embedding_map.map_2d(degenerate("two_directions"), method="tsne")
    assert result.method == "pca" and checked_tsne == []
    assert "single direction" in result.notes[0]
    first_axis = np.round(result.points[:, 0], 6)
    assert len(set(first_axis[::2])) == len(set(first_axis[1::2])) == 1  # two points...
    assert first_axis[0] != first_axis[1] and np.abs(result.points[:, 1]).max() < 1e-6  # apart


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_rows_get_no_map(n):
    result = embedding_map.map_2d(torch.randn(n, 8), method="pca")
    assert result.points is None and "a map needs N >= 3" in result.unavailable


def test_sane_features_still_get_the_requested_map(checked_tsne):
    features, _, _ = make_embeddings(n=60)
    result = embedding_map.map_2d(features, method="tsne")
    assert result.method == "tsne" and result.notes == () and result.unavailable is None
    assert checked_tsne == [(60, 32)]
    auto = embedding_map.map_2d(features)
    assert auto.method == embedding_map.available_method()


@pytest.mark.parametrize(
    "kind, n, unavailable",
    [
        ("constant", 60, True),
        ("zero", 60, True),
        ("huge_same", 60, True),
        ("huge_dominant", 60, False),
        ("non_finite", 60, False),
        ("constant", 1, True),
        ("non_finite", 2, True),
    ],
)
def test_write_report_never_fails_on_broken_features(tmp_path, kind, n, unavailable, checked_tsne):
    features = degenerate(kind)[:n]
    _, labels, images = make_embeddings(n=60)
    path = write_report(
        tmp_path, test_features=features, test_labels=labels[:n], test_images=images[:n],
        map_method="tsne",
    )  # fmt: skip
    page = parse(path)
    text = " ".join(page.text)
    for src in page.images:
        decode_png(src)
    assert ("Embedding map unavailable: " in text) == unavailable
    assert any(alt == "embedding map" for alt in _alts(path)) != unavailable
    if kind == "non_finite" and n == 60:
        assert "t-SNE of 57 of 60 l2-normalised test embeddings" in text
        assert "3 of 60 rows hold NaN or inf values and are left out." in text


def _alts(path: Path) -> list[str]:
    """The alt texts of the page's images, in order."""
    return re.findall(r'<img src="[^"]*" alt="([^"]*)">', path.read_text())


def test_report_of_exploded_features_does_not_crash_the_process(tmp_path):
    """The original bug, end to end with the real t-SNE in a fresh process: it segfaulted
    (return code -11) on features that are all zero or 1e26 in one direction."""
    script = textwrap.dedent(
        f"""
        import torch
        from pathlib import Path
        from twinview.report import write_report
        direction = torch.randn(1, 32)
        for name, features in [
            ("zero", torch.zeros(100, 32)),
            ("huge", 1e26 * direction.repeat(100, 1) + torch.randn(100, 32)),
        ]:
            run = Path({str(tmp_path)!r}) / name
            run.mkdir()
            write_report(run, test_features=features, map_method="tsne")
            assert "Embedding map unavailable" in (run / "report.html").read_text()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
