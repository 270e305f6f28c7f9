"""``evaluate(run)``: the evaluation protocols on a pretrained backbone (``twinview eval RUN``).

For the run's backbone, and next to it the two reference points a representation has to beat
(raw pixels and the same architecture randomly initialised), it runs:

- ``"knn"``: weighted cosine kNN (InstDisc; k = 20 and 200, T = 0.07), the train split as the
  bank, scored on the evaluation split. Deterministic, so computed once whatever ``seeds``;
- ``"linear"``: a linear probe on frozen features (:func:`~twinview.eval.linear.linear_probe`),
  lr and weight decay chosen on validation, once per seed: mean and std over seeds;
- ``"finetune"``: the backbone unfrozen with a linear head (:mod:`twinview.eval.finetune`), lr
  chosen on validation, once per seed. From the random init it is supervised training from
  scratch; raw pixels have no backbone to fine-tune.

Splits (DESIGN.md, principle 7): validation is carved out of the train split with the fixed seed
pretraining used (:func:`~twinview.run.data.build_data`), so the kNN bank and the probes'
training data never include it. Numbers are final-epoch numbers on the test split. An image
folder without a ``test`` subfolder is scored on validation, which then also chose the
hyperparameters: the result says ``"eval_split": "val"`` and carries a ``"note"``.

Features of each model are extracted once per split, streamed through the model in batches, and
shared by every protocol and seed. Raw pixels are the [0, 1] pixels resized to at most 32 px a
side (the tiny-images baseline: exact pixels for Fashion-MNIST and CIFAR). Fine-tuning holds
each split's uint8 images in memory at the backbone's image size.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from twinview.data import ordered_batches
from twinview.eval.features import extract_features_and_labels
from twinview.eval.finetune import finetune
from twinview.eval.knn import knn_accuracy
from twinview.eval.linear import linear_probe

PROTOCOLS = ("knn", "linear", "finetune")
KNN_K = (20, 200)
KNN_TEMPERATURE = 0.07
KNN_BANK_CHUNK = 65536  # bank rows per similarity block: at most 1024 x 65536 floats at once
RAW_PIXEL_MAX_SIZE = 32
RANDOM_INIT_SEED = 0
TABLE_ROWS = (
    ("knn", "knn_top1_k20", "kNN top-1 (k=20)"),
    ("knn", "knn_top1_k200", "kNN top-1 (k=200)"),
    ("linear", "linear_top1", "linear top-1"),
    ("finetune", "finetune_top1", "fine-tune top-1"),
)
TABLE_BASELINES = (("raw pixels", "raw_pixel"), ("random init", "random_init"))


@dataclasses.dataclass
class EvalData:
    """The three splits evaluation uses; ``eval`` is the test split, or ``val`` without one."""

    train: Any
    val: Any
    eval: Any
    eval_split: str
    dataset: str
    num_classes: int


def load_eval_data(
    run: Path, *, data: str | None, root: str | None, val_fraction: float | None, channels: int
) -> EvalData:
    """Train / validation / evaluation splits of ``data`` (default: the run's own dataset)."""
    from twinview.config import load_config
    from twinview.run.data import build_data
    from twinview.run.reader import read_run_config, run_config_path

    if data is None and run_config_path(run) is None:
        raise ValueError(f"'{run}' has no config.yaml to take the dataset from; pass data=NAME")
    cfg = read_run_config(run) if run_config_path(run) else load_config()  # defaults without one
    d = cfg.data
    if data is not None:  # another dataset: none of the run's dataset options apply
        d = dataclasses.replace(d, dataset=str(data), root=root, options={})
    elif root is not None:
        d = dataclasses.replace(d, root=root)
    if val_fraction is not None:
        d = dataclasses.replace(d, val_fraction=val_fraction)
    if not 0.0 < d.val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be in (0, 1), got {d.val_fraction}: hyperparameters are chosen "
            "on a validation split held out of train"
        )
    folder = Path(d.dataset).expanduser()
    if folder.is_dir() and (folder / "test").is_dir() and not (folder / "train").is_dir():
        raise ValueError(
            f"image folder '{folder}' has a test/ subfolder but no train/ subfolder, so the train "
            f"split would be the whole folder, test images included; move the training class "
            f"folders into '{folder / 'train'}'"
        )
    splits = build_data(dataclasses.replace(cfg, data=dataclasses.replace(d, channels=channels)))
    train_labels = torch.as_tensor(splits.train.labels)
    if train_labels.numel() == 0 or bool((train_labels < 0).any()):
        raise ValueError(
            f"dataset {d.dataset!r} has unlabeled training images; evaluation needs a label for "
            f"every image (for a folder: one subfolder per class)"
        )
    classes = getattr(splits.train, "classes", None)
    test_classes = getattr(splits.test, "classes", None)
    if splits.test is not None and classes and test_classes and classes != test_classes:
        raise ValueError(
            f"dataset {d.dataset!r}: the test split's classes {test_classes} differ from the train "
            f"split's {classes}; give both the same class subfolders"
        )
    if len(splits.val) == 0:
        raise ValueError(
            f"val_fraction={d.val_fraction} of {len(splits.train)} images leaves no validation "
            "image; raise val_fraction"
        )
    if splits.test is None:
        warnings.warn(
            f"dataset {d.dataset!r} has no test split: reporting on the validation split",
            stacklevel=3,
        )
    eval_split, eval_source = (
        ("test", splits.test) if splits.test is not None else ("val", splits.val)
    )
    num_classes = splits.num_classes or int(train_labels.max()) + 1
    return EvalData(splits.train, splits.val, eval_source, eval_split, d.dataset, num_classes)


def _batches(
    source: Any, size: int, batch_size: int, device: torch.device, num_workers: int
) -> Iterator[tuple[Tensor, Tensor]]:
    from twinview.run.data import square_crop

    transform = None if hasattr(source, "images") else square_crop(size)
    kwargs = {"transform": transform, "num_workers": num_workers}
    for batch in ordered_batches(source, batch_size, device, **kwargs):
        yield batch.views[0], batch.labels


def _images(source: Any, size: int, batch_size: int, num_workers: int) -> tuple[Tensor, Tensor]:
    """The whole split as uint8 (N, C, H, W) and labels (N,), on the CPU."""
    if hasattr(source, "images"):
        return source.images, torch.as_tensor(source.labels).long()
    parts = list(_batches(source, size, batch_size, torch.device("cpu"), num_workers))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]).long()


def _summary(per_seed: list[dict[str, float]], key: str, choices: Sequence[str]) -> dict:
    """Mean and (sample) std of ``key`` over seeds, the most chosen hyperparameters, per seed."""
    values = [r[key] for r in per_seed]
    out: dict[str, Any] = {
        f"{key}_mean": statistics.fmean(values),
        f"{key}_std": statistics.stdev(values) if len(values) > 1 else None,
        "per_seed": per_seed,
    }
    for choice in choices:  # the value most seeds chose; ties go to the lowest seed
        out[choice] = Counter(r[choice] for r in per_seed).most_common(1)[0][0]
    return out


def _frozen_protocols(
    feats: dict[str, tuple[Tensor, Tensor]],
    protocols: set[str],
    *,
    num_classes: int,
    seeds: int,
    epochs: int,
    batch_size: int,
    device: torch.device,
) -> dict:
    """kNN and / or linear probe on features ``{"train", "val", "eval": (features, labels)}``."""
    out: dict[str, Any] = {}
    if "knn" in protocols:
        (train_f, train_y), (eval_f, eval_y) = feats["train"], feats["eval"]
        out["knn"] = knn_accuracy(
            train_f.to(device),
            train_y,
            eval_f.to(device),
            eval_y,
            k=KNN_K,
            temperature=KNN_TEMPERATURE,
            num_classes=num_classes,
            bank_chunk_size=KNN_BANK_CHUNK,
        )
    if "linear" in protocols:
        args = [t for name in ("train", "val", "eval") for t in feats[name]]
        per_seed = [
            linear_probe(
                *args,
                num_classes=num_classes,
                epochs=epochs,
                batch_size=batch_size,
                seed=seed,
                device=device,
            )
            for seed in range(seeds)
        ]
        out["linear"] = _summary(per_seed, "linear_top1", ("linear_lr", "linear_wd"))
    return out


def _random_init(spec: dict) -> nn.Module:
    """The spec's architecture, freshly initialised under a fixed seed (global RNG untouched)."""
    from twinview.nn import build_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        module, dim = build_backbone(
            spec["name"],
            in_channels=spec["in_channels"],
            cifar_stem=spec["cifar_stem"],
            **spec["kwargs"],
        )
    module.feature_dim = dim
    return module.eval()


def _default_out(run: Path) -> Path:
    from twinview.run.reader import run_folder

    return run_folder(run) / "eval.json"


def evaluate(
    run: str | Path,
    *,
    data: str | None = None,
    root: str | None = None,
    protocols: Sequence[str] = ("knn", "linear"),
    seeds: int = 1,
    val_fraction: float | None = None,
    baselines: bool = True,
    device: str | None = None,
    linear_epochs: int = 100,
    finetune_epochs: int = 10,
    batch_size: int = 256,
    num_workers: int = 0,
    out: str | Path | None = None,
    torchscript: bool = False,
) -> dict:
    """``twinview eval RUN``: score a run's backbone, write ``eval.json``, return the result.

    Args:
        run: a run directory (``runs/<name>``) or a backbone file ``load_backbone`` reads.
        data: a dataset name or a labeled image folder; default the run's dataset (its
            ``config.yaml``, with its root and options).
        root: where the dataset's files are (default: the run's ``data.root`` for its dataset).
        protocols: any of ``"knn"``, ``"linear"``, ``"finetune"``.
        seeds: linear probes and fine-tunings are repeated with seeds ``0..seeds-1`` (head
            initialisation, batch order, augmentation); mean and std over seeds are reported.
        val_fraction: share of train held out for validation; default the run's
            ``data.val_fraction`` (the split pretraining held out).
        baselines: also score raw pixels (kNN, linear) and the random-init backbone (all).
        device: where to compute; default CUDA when available.
        linear_epochs, finetune_epochs, batch_size: protocol lengths and batch size.
        num_workers: decoding workers for image folders.
        out: the JSON file to write; default ``eval.json`` in the run directory. Checked
            before any compute.
        torchscript: allow a TorchScript backbone file. Loading one RUNS CODE FROM THE FILE:
            only for files you trust.

    Returns:
        ``{"run", "dataset", "backbone", "eval_split", "seeds", "num_classes", "split_sizes",
        "protocols": {protocol: metrics}, "baselines": {"raw_pixel": ..., "random_init": ...}}``,
        accuracies as fractions; see :func:`format_eval_table` for a readable view.
    """
    from twinview.devices import pick_device
    from twinview.export import load_backbone
    from twinview.run.data import eval_transform
    from twinview.run.output import writable_file

    chosen = [protocols] if isinstance(protocols, str) else list(protocols)
    unknown = [p for p in chosen if p not in PROTOCOLS]
    if unknown or not chosen:
        raise ValueError(f"unknown protocol(s) {unknown or chosen}; valid: {', '.join(PROTOCOLS)}")
    for key, value in (("seeds", seeds), ("batch_size", batch_size), ("linear_epochs",
                       linear_epochs), ("finetune_epochs", finetune_epochs)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    run = Path(run).expanduser()
    path = writable_file(out if out is not None else _default_out(run), "out")  # before compute
    device_ = pick_device(device or "auto", key="device")
    backbone = load_backbone(run, map_location=device_, torchscript=torchscript)
    spec = backbone.spec
    c, size = int(spec["in_channels"]), int(spec.get("image_size") or 224)
    ev = load_eval_data(run, data=data, root=root, val_fraction=val_fraction, channels=c)
    normalize = eval_transform(
        size, tuple(spec.get("mean") or [0.0] * c), tuple(spec.get("std") or [1.0] * c)
    )
    frozen = {p for p in chosen if p != "finetune"}
    names = ["train", "eval"] + (["val"] if "linear" in frozen else [])

    def frozen_scores(model: nn.Module, norm: Any) -> dict:
        feats = {
            name: extract_features_and_labels(
                model,
                _batches(getattr(ev, name), size, batch_size, device_, num_workers),
                device=device_,
                normalize=norm,
            )
            for name in names
        }
        return _frozen_protocols(
            feats,
            frozen,
            num_classes=ev.num_classes,
            seeds=seeds,
            epochs=linear_epochs,
            batch_size=batch_size,
            device=device_,
        )

    models = {"run": backbone}
    if baselines:
        models["random_init"] = _random_init(spec).to(device_)
    results: dict[str, dict] = {name: {} for name in models}
    if frozen:  # features are extracted once per model and split, shared by protocols and seeds
        results = {name: frozen_scores(model, normalize) for name, model in models.items()}
        if baselines:
            raw = min(size, RAW_PIXEL_MAX_SIZE)
            pixels = eval_transform(raw, (0.0,) * c, (1.0,) * c)
            results["raw_pixel"] = frozen_scores(nn.Flatten(), pixels)
    if "finetune" in chosen:
        splits = [
            _images(getattr(ev, s), size, batch_size, num_workers) for s in ("train", "val", "eval")
        ]
        args = [t for split in splits for t in split]
        for name, model in models.items():
            per_seed = [
                finetune(
                    model,
                    *args,
                    num_classes=ev.num_classes,
                    normalize=normalize,
                    epochs=finetune_epochs,
                    batch_size=batch_size,
                    seed=seed,
                    device=device_,
                )
                for seed in range(seeds)
            ]
            results[name]["finetune"] = _summary(per_seed, "finetune_top1", ("finetune_lr",))
    result: dict[str, Any] = {
        "run": str(run),
        "dataset": ev.dataset,
        "backbone": spec["name"],
        "eval_split": ev.eval_split,
        "seeds": seeds,
        "num_classes": ev.num_classes,
        "split_sizes": {"train": len(ev.train), "val": len(ev.val)},
        "protocols": results.pop("run"),
        "baselines": results,
    }
    if ev.eval_split == "test":
        result["split_sizes"]["test"] = len(ev.eval)
    else:
        result["note"] = (
            "no test split: numbers are on the validation split, which also chose the linear "
            "and fine-tuning hyperparameters (optimistic)"
        )
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _cell(metrics: dict | None, key: str) -> str:
    """``metrics[key]`` (or its mean ± std over seeds) in percent; "-" when absent."""
    metrics = metrics or {}
    if key in metrics:
        return f"{100 * metrics[key]:.2f}"
    if f"{key}_mean" not in metrics:
        return "-"
    mean, std = metrics[f"{key}_mean"], metrics.get(f"{key}_std")
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def format_eval_table(result: dict) -> str:
    """The result of :func:`evaluate` as a plain-text table of top-1 accuracies in percent.

    Rows: each protocol metric present; columns: this run, raw pixels, random init ("-" where a
    protocol does not apply); "mean ± std" over seeds where there are several.
    """
    seeds = result.get("seeds", 1)
    spread = f", mean ± std over {seeds} seeds" if seeds > 1 else ""
    title = f"{result['dataset']}, {result['eval_split']} split: top-1 accuracy (%){spread}"
    baselines = result.get("baselines") or {}
    sources = [result["protocols"], *(baselines.get(key) or {} for _, key in TABLE_BASELINES)]
    header = ["", "this run", *(name for name, _ in TABLE_BASELINES)]
    rows = [
        [label, *(_cell(source.get(protocol), key) for source in sources)]
        for protocol, key, label in TABLE_ROWS
        if protocol in result["protocols"]
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [title, _line(header, widths), "  ".join("-" * w for w in widths)]
    lines += [_line(row, widths) for row in rows]
    if "note" in result:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)
