"""``twinview`` command line: a thin layer over the Python functions of the same names.

twinview pretrain [--config FILE] [--print-config] [key=value ...]
twinview views    [--config FILE] [key=value ...] [--out FILE] [--n N]
twinview export   RUN [format=pt|torchvision|timm|torchscript|onnx|safetensors] [out=FILE]
twinview embed    RUN [data=...] [split=train|test] out=FILE
twinview eval     RUN [protocols=knn,linear,finetune] [seeds=N] [data=...] [out=FILE]
twinview report   RUN
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from twinview.train.checkpoint import CheckpointError
from twinview.train.config import ConfigError
from twinview.train.errors import TrainingDiverged

USAGE = __doc__


def _pretrain(argv: Sequence[str]) -> int:
    from twinview.train.config import config_help, load_config, to_yaml

    parser = argparse.ArgumentParser(
        prog="twinview pretrain",
        description="Pretrain a backbone with self-supervised learning.",
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=10")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from twinview.train.trainer import pretrain

    summary = pretrain(cfg)
    return 0 if summary.get("status") == "finished" else 130


def _views(argv: Sequence[str]) -> int:
    from twinview.train.config import load_config

    parser = argparse.ArgumentParser(
        prog="twinview views",
        description="Write a PNG grid of images and their augmented views for a config.",
    )
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--out", default="views.png", help="PNG file to write")
    parser.add_argument("--n", type=int, default=8, help="number of images")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from twinview.train.build import build_data, build_run_views, view_size
    from twinview.views import preview

    data = build_data(cfg)
    views = build_run_views(cfg, cfg.method.name, view_size(cfg, data))
    images = data.train.images[: args.n] if hasattr(data.train, "images") else None
    if images is None:
        import torch

        images = torch.stack([data.train[i][0] for i in range(min(args.n, len(data.train)))])
    path = preview(images, views, args.out, n=args.n, seed=cfg.train.seed)
    print(f"wrote {path}")
    return 0


def _kv(argv: Sequence[str], allowed: set[str], command: str) -> dict[str, str]:
    out = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(
                f"twinview {command}: unexpected argument '{item}'; expected "
                + ", ".join(f"{k}=..." for k in sorted(allowed))
            )
        out[key] = value
    return out


def _export(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: twinview export RUN [format=pt|torchvision|timm|torchscript|onnx|safetensors]"
              " [out=FILE]")  # fmt: skip
        return 0 if argv else 2
    from twinview.export import export

    opts = _kv(argv[1:], {"format", "out"}, "export")
    path = export(argv[0], format=opts.get("format", "pt"), out=opts.get("out"))
    print(f"wrote {path}")
    return 0


def _embed(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: twinview embed RUN out=FILE.npy|FILE.parquet [data=...] [split=train|test]")
        return 0 if argv else 2
    from twinview.embed import embed

    opts = _kv(argv[1:], {"data", "split", "out", "batch_size"}, "embed")
    if "out" not in opts:
        raise ConfigError("twinview embed: out=FILE is required (.npy or .parquet)")
    path = embed(
        argv[0],
        data=opts.get("data"),
        split=opts.get("split", "train"),
        out=opts["out"],
        batch_size=int(opts.get("batch_size", 512)),
    )
    print(f"wrote {path}")
    return 0


def _eval(argv: Sequence[str]) -> int:
    usage = (
        "usage: twinview eval RUN [protocols=knn,linear,finetune] [seeds=N] [data=...] "
        "[root=...] [baselines=true|false] [linear_epochs=N] [finetune_epochs=N] [device=...] "
        "[out=FILE]"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    from twinview.eval.evaluate import evaluate, format_eval_table

    ints = {"seeds", "linear_epochs", "finetune_epochs", "batch_size", "num_workers"}
    opts = _kv(argv[1:], {"protocols", "data", "root", "out", "baselines", "device", *ints}, "eval")
    kwargs: dict = {k: v for k, v in opts.items() if k in ("data", "root", "out", "device")}
    for key in ints & opts.keys():
        try:
            kwargs[key] = int(opts[key])
        except ValueError as err:
            raise ConfigError(
                f"twinview eval: {key} must be an integer, got '{opts[key]}'"
            ) from err
    if "protocols" in opts:
        kwargs["protocols"] = [p.strip() for p in opts["protocols"].split(",") if p.strip()]
    if "baselines" in opts:
        kwargs["baselines"] = opts["baselines"].lower() in ("1", "true", "yes")
    result = evaluate(argv[0], **kwargs)
    print(format_eval_table(result))
    return 0


def _report(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: twinview report RUN   (rewrites RUN/report.html)")
        return 0 if argv else 2
    from twinview.report.from_run import report

    print(f"wrote {report(argv[0])}")
    return 0


COMMANDS = {
    "pretrain": _pretrain,
    "views": _views,
    "export": _export,
    "embed": _embed,
    "eval": _eval,
    "report": _report,
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
    except (ValueError, FileNotFoundError, ImportError, CheckpointError) as err:
        # A user's mistake (bad path, dataset, format, missing optional package): one clear line.
        # TWINVIEW_DEBUG=1 shows the traceback.
        if os.environ.get("TWINVIEW_DEBUG"):
            raise
        print(f"twinview {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
