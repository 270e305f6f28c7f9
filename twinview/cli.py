"""``twinview`` command line: a thin layer over the Python functions of the same names.

twinview pretrain [--config FILE] [--print-config] [key=value ...]
twinview views    [--config FILE] [key=value ...] [--out FILE] [--n N]
twinview export   RUN [format=pt|torchvision|timm|torchscript|onnx|safetensors] [out=FILE]
twinview embed    RUN [data=...] [split=train|test] out=FILE
twinview eval     RUN [protocols=knn,linear,finetune] [seeds=N] [data=...] [out=FILE] [report=false]
twinview report   RUN
twinview shards   FOLDER OUT/ [--shard-size N] [--seed S] [--overwrite]

Run files are data, never code: a TorchScript backbone is read only with torchscript=true,
because loading one runs code from the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twinview.config import ConfigError
from twinview.run.checkpoint import CheckpointError
from twinview.run.directory import RunLocked
from twinview.train.errors import TrainingDiverged

USAGE = __doc__


def _pretrain(argv: Sequence[str]) -> int:
    from twinview.config import config_help, load_config, to_yaml

    parser = argparse.ArgumentParser(
        prog="twinview pretrain",
        description="Pretrain a backbone with self-supervised learning.",
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=10")
    args = parser.parse_intermixed_args(argv)  # overrides before and after --config
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from twinview.train.launch import pretrain

    summary = pretrain(cfg)
    return 0 if summary.get("status") == "finished" else 130


def _views(argv: Sequence[str]) -> int:
    from twinview.config import load_config

    parser = argparse.ArgumentParser(
        prog="twinview views",
        description="Write a PNG grid of images and their augmented views for a config.",
    )
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--out", default="views.png", help="PNG file to write")
    parser.add_argument("--n", type=int, default=8, help="number of images")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides before and after --config
    cfg = load_config(args.config, args.overrides)
    from twinview.run.data import build_data, sample_images, view_size
    from twinview.run.output import writable_file
    from twinview.train.build import build_run_views
    from twinview.views import preview

    out = writable_file(args.out, "--out")
    data = build_data(cfg)
    views = build_run_views(cfg, cfg.method.name, view_size(cfg, data))
    images = sample_images(data.train, args.n)
    path = preview(images, views, out, n=args.n, seed=cfg.train.seed)
    print(f"wrote {path}")
    return 0


TRUSTED = "torchscript"
"""Option that allows TorchScript backbone files: loading one RUNS CODE FROM THE FILE."""


def _options(argv: Sequence[str], allowed: dict[str, type], command: str) -> dict[str, Any]:
    """``key=value`` arguments, each key one of ``allowed`` and converted to its type (int,
    bool, str); a wrong key or value is a :class:`ConfigError` naming it."""
    out: dict[str, Any] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(
                f"twinview {command}: unexpected argument '{item}'; expected "
                + ", ".join(f"{k}=..." for k in sorted(allowed))
            )
        kind = allowed[key]
        if kind is int:
            try:
                out[key] = int(value)
            except ValueError:
                raise ConfigError(
                    f"twinview {command}: {key} must be a whole number, got '{value}'"
                ) from None
            if out[key] < (0 if key == "num_workers" else 1):
                raise ConfigError(f"twinview {command}: {key} must be positive, got {value}")
        elif kind is bool:
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"twinview {command}: {key} must be true or false, got '{value}'")
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = value
    return out


def _usage(argv: Sequence[str], text: str) -> int | None:
    """Print ``text`` for no arguments or -h / --help; the exit code, or None to go on."""
    if argv and argv[0] not in ("-h", "--help"):
        return None
    print(text)
    return 0 if argv else 2


def _export(argv: Sequence[str]) -> int:
    usage = (
        "usage: twinview export RUN [format=pt|torchvision|timm|torchscript|onnx|safetensors] "
        "[out=FILE] [torchscript=true: read a TorchScript file, which RUNS CODE FROM IT]"
    )
    if (code := _usage(argv, usage)) is not None:
        return code
    from twinview.export import export

    opts = _options(argv[1:], {"format": str, "out": str, TRUSTED: bool}, "export")
    path = export(argv[0], **opts)
    print(f"wrote {path}")
    return 0


def _embed(argv: Sequence[str]) -> int:
    usage = (
        "usage: twinview embed RUN out=FILE.npy|FILE.parquet [data=...] [split=train|test] "
        "[batch_size=N] [device=...] [torchscript=true: allow a TorchScript file (RUNS CODE)]"
    )
    if (code := _usage(argv, usage)) is not None:
        return code
    from twinview.embed import embed

    allowed = {"data": str, "split": str, "out": str, "batch_size": int, "device": str}
    opts = _options(argv[1:], {**allowed, TRUSTED: bool}, "embed")
    if "out" not in opts:
        raise ConfigError("twinview embed: out=FILE is required (.npy or .parquet)")
    path = embed(argv[0], **opts)
    print(f"wrote {path}")
    return 0


def _eval(argv: Sequence[str]) -> int:
    usage = (
        "usage: twinview eval RUN [protocols=knn,linear,finetune] [seeds=N] [data=...] "
        "[root=...] [baselines=true|false] [linear_epochs=N] [finetune_epochs=N] [device=...] "
        "[out=FILE] [report=false: leave report.html as it is] "
        "[torchscript=true: allow a TorchScript file (RUNS CODE)]"
    )
    if (code := _usage(argv, usage)) is not None:
        return code
    from twinview.eval.evaluate import evaluate, format_eval_table

    ints = ("seeds", "linear_epochs", "finetune_epochs", "batch_size", "num_workers")
    allowed = {
        **dict.fromkeys(("protocols", "data", "root", "out", "device"), str),
        **dict.fromkeys(ints, int),
        "baselines": bool,
        TRUSTED: bool,
    }
    opts = _options(argv[1:], {**allowed, "report": bool}, "eval")
    update_report = opts.pop("report", True)
    if "protocols" in opts:
        opts["protocols"] = [p.strip() for p in opts["protocols"].split(",") if p.strip()]
    result = evaluate(argv[0], **opts)
    print(format_eval_table(result))
    run = Path(argv[0])
    if update_report and "out" not in opts and (run / "report.html").is_file():
        # The report's results table reads eval.json: rewrite it so it shows these scores.
        from twinview.report.from_run import report

        keep = {k: opts[k] for k in ("device", TRUSTED) if k in opts}
        print(f"updated {report(run, **keep)} with these results")
    return 0


def _report(argv: Sequence[str]) -> int:
    usage = (
        "usage: twinview report RUN [device=...] [torchscript=true]   (rewrites RUN/report.html)"
    )
    if (code := _usage(argv, usage)) is not None:
        return code
    from twinview.report.from_run import report

    opts = _options(argv[1:], {"device": str, TRUSTED: bool}, "report")
    print(f"wrote {report(argv[0], **opts)}")
    return 0


def _shards(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="twinview shards",
        description="Write WebDataset tar shards (and their index) from a folder of images; "
        "train on them with data=OUT/train-{000000..NNNNNN}.tar.",
    )
    parser.add_argument("folder", help="image folder (class subfolders, or train/ and test/)")
    parser.add_argument("out", help="output folder for the shards")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shard sets")
    args = parser.parse_args(argv)
    from twinview.data.shard_writer import write_shards

    patterns = write_shards(
        args.folder, args.out, shard_size=args.shard_size, seed=args.seed, overwrite=args.overwrite
    )
    for split, pattern in patterns.items():
        print(
            f"wrote {split} shards: data={pattern}"
            if split == "train"
            else f"wrote {split} shards: {pattern} (found beside the train shards)"
        )
    return 0


COMMANDS = {
    "pretrain": _pretrain,
    "views": _views,
    "export": _export,
    "embed": _embed,
    "eval": _eval,
    "report": _report,
    "shards": _shards,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"twinview: unknown command '{command}'\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except ConfigError as err:
        print(f"twinview {command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"twinview {command}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError, CheckpointError, RunLocked) as err:
        # A user's mistake or the machine's state (bad path, dataset, format, missing optional
        # package, full disk, no permission, a run in use): one clear line.
        # TWINVIEW_DEBUG=1 shows the traceback.
        if os.environ.get("TWINVIEW_DEBUG"):
            raise
        print(f"twinview {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twinview {command}: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    """The error's message; an OSError without one of ours gets its file and reason."""
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err.args[-1]):
        return f"{err.strerror or err} ({err.filename})"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
