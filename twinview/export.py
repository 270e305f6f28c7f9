"""Write a pretrained backbone to files other tools read, and read any of them back.

A backbone travels with its **spec**, a JSON-able dict saying how to rebuild and feed it::

    {"name": "resnet18", "in_channels": 3, "cifar_stem": True, "kwargs": {},
     "feature_dim": 512, "image_size": 32, "mean": [...], "std": [...]}

``name`` / ``in_channels`` / ``cifar_stem`` / ``kwargs`` go to
:func:`~twinview.nn.backbones.build_backbone`; ``image_size``, ``mean`` and ``std`` are the
training resolution and the normalisation the views used, which new images must get too.

Formats of :func:`save_backbone` (``format=``, suffix appended when the path lacks one):

- ``"pt"`` (``.pt``, the default; pretraining writes ``runs/<name>/backbone.pt``):
  ``torch.save({"spec", "state_dict", "twinview_version"})``. The state-dict keys are the
  module's own: for the ResNets exactly torchvision's, with no ``fc.*``.
- ``"torchvision"`` (``.pth``, ResNets only): a plain state dict;
  ``m = torchvision.models.resnet18(); m.load_state_dict(torch.load(f), strict=False)`` reports
  only ``fc.weight`` / ``fc.bias`` missing. A CIFAR stem or ``in_channels != 3`` changes
  ``conv1``, so the stock model first needs ``m.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False)``
  (CIFAR stem; ``7, 2, 3`` without it) and, for the CIFAR stem, ``m.maxpool = nn.Identity()``.
- ``"timm"`` (``.pth``, ``timm:<model>`` backbones only): a plain state dict of the timm model
  (``num_classes=0``); the default-head model loads it with ``strict=False``, missing only the
  classifier.
- ``"torchscript"`` (``.ts``): the backbone traced in eval mode, the spec in the archive's
  ``extra/twinview_spec.json``. Runs without twinview (``torch.jit.load``) and from libtorch.
  Loading a TorchScript file runs code from the file, so :func:`load_backbone` reads one only
  when asked to with ``torchscript=True``.
- ``"onnx"`` (``.onnx``, needs ``pip install onnx``): opset 17, input ``"images"``
  (B, C, H, W) with a dynamic batch axis, output ``"features"`` (B, D). When onnxruntime is
  installed the file is checked against PyTorch at save time (rtol 1e-3, atol 1e-4).
- ``"safetensors"`` (``.safetensors``, needs ``pip install safetensors``): the state dict,
  with the spec as the ``twinview_spec`` metadata string.

The ``torchvision``, ``timm`` and ``onnx`` files get their spec beside them as ``<file>.json``,
which :func:`load_backbone` uses to read them back.

:func:`load_backbone` also reads a run directory (the fresher of its ``backbone.pt`` and its
``checkpoints/last.pt``, see :func:`resolve_weights`) and a training checkpoint: a dict with
``"backbone_spec"`` and a ``"method"`` state dict whose backbone entries are the keys starting
with ``"backbone."`` (a leading ``"module."`` or ``"_orig_mod."`` from DDP / ``torch.compile``
is dropped). Files are read as data: a TorchScript file, whose loading runs code from it, is
read only with ``torchscript=True``.
"""

from __future__ import annotations

import copy
import json
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from twinview.nn.backbones import TIMM_PREFIX, build_backbone

SUFFIXES = {
    "pt": (".pt", ".pth"),
    "torchvision": (".pth", ".pt"),
    "timm": (".pth", ".pt"),
    "torchscript": (".ts", ".torchscript", ".pt"),
    "onnx": (".onnx",),
    "safetensors": (".safetensors",),
}
"""format -> accepted file suffixes, the first one appended when a path has none of them."""

FORMATS = tuple(SUFFIXES)
TORCHVISION_NAMES = ("resnet18", "resnet34", "resnet50")
ONNX_OPSET = 17
_SPEC_ENTRY = "twinview_spec.json"  # TorchScript extra file; also the safetensors metadata key
_SPEC_KEY = "twinview_spec"
SUPPORTED = (
    "a run directory (with backbone.pt or checkpoints/last.pt), a training checkpoint, or a "
    "file written by twinview.export.save_backbone: .pt (format 'pt'), .pth/.pt ('torchvision' "
    "or 'timm', with <file>.json beside it), .ts ('torchscript', read only with "
    "torchscript=True), .onnx (with <file>.json beside it) or .safetensors"
)


def _check_format(format: str) -> str:
    if format not in SUFFIXES:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(FORMATS)}")
    return format


def _check_spec(spec: Any, where: str) -> dict[str, Any]:
    """A copy of ``spec`` with the optional keys filled in; raises if it cannot be a spec."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(
            f"{where}: the backbone spec must be a dict with a 'name' key, e.g. "
            f"{{'name': 'resnet18', 'in_channels': 3, 'cifar_stem': False}}; got {spec!r}"
        )
    out = {"in_channels": 3, "cifar_stem": False, **spec}
    out["kwargs"] = dict(out.get("kwargs") or {})
    try:
        json.dumps(out)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: the backbone spec must be JSON-serialisable ({err})") from err
    return out


def _clean_state_dict(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """CPU, contiguous copies of the entries under ``prefix`` (DDP / compile wrappers dropped)."""
    out = {}
    for key, value in state.items():
        for wrapper in ("module.", "_orig_mod."):
            key = key.removeprefix(wrapper)
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value.detach().cpu().contiguous()
    return out


def _rebuild(spec: dict[str, Any], state: Mapping[str, Tensor], where: str) -> nn.Module:
    """The twinview backbone of ``spec`` holding ``state``, on the CPU in eval mode."""
    module, dim = build_backbone(
        spec["name"], in_channels=spec["in_channels"], cifar_stem=spec["cifar_stem"],
        **spec["kwargs"],
    )  # fmt: skip
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{where}: the weights do not fit the backbone the spec describes "
            f"(name={spec['name']!r}, in_channels={spec['in_channels']}, "
            f"cifar_stem={spec['cifar_stem']}, kwargs={spec['kwargs']}): {err}"
        ) from err
    if spec.get("feature_dim") not in (None, dim):
        raise ValueError(f"{where}: spec says feature_dim={spec['feature_dim']}, the net has {dim}")
    spec["feature_dim"] = dim
    module.eval()
    module.spec = spec
    module.feature_dim = dim
    return module


def _example_input(spec: Mapping[str, Any], batch: int) -> Tensor:
    size = int(spec.get("image_size") or 32)
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, spec["in_channels"], size, size, generator=g)


def _with_suffix(path: Path, format: str) -> Path:
    if path.suffix.lower() in SUFFIXES[format]:
        return path
    return path.with_name(path.name + SUFFIXES[format][0])


def _spec_file(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_spec(path: Path, spec: Mapping[str, Any]) -> None:
    _spec_file(path).write_text(json.dumps(spec, indent=2) + "\n")


def _version() -> str:
    import twinview

    return twinview.__version__


def save_backbone(
    backbone: nn.Module, spec: Mapping[str, Any], path: str | Path, *, format: str = "pt"
) -> Path:
    """Write ``backbone`` (built by ``build_backbone`` from ``spec``) as ``format``.

    The weights are first loaded into a fresh backbone rebuilt from ``spec`` (so a spec that
    does not describe the module fails here, not when the file is read), which is what the
    TorchScript / ONNX exports trace, on the CPU in eval mode. ``backbone`` itself is left as
    it was. ``spec["feature_dim"]`` is filled in when missing. Returns the path written (the
    format's suffix appended when ``path`` has none of :data:`SUFFIXES`).
    """
    _check_format(format)
    spec = _check_spec(spec, "save_backbone")
    if format in ("torchvision", "timm"):
        _check_plain_format(format, spec)
    elif format in ("onnx", "safetensors"):
        _import("onnx" if format == "onnx" else "safetensors.torch", format, f"format {format!r}")
    state = _clean_state_dict(backbone.state_dict())
    module = _rebuild(spec, state, "save_backbone")
    path = _with_suffix(Path(path).expanduser(), format)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "pt":
        torch.save({"spec": spec, "state_dict": state, "twinview_version": _version()}, path)
    elif format in ("torchvision", "timm"):
        torch.save(state, path)
        _write_spec(path, spec)
    elif format == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
            traced = torch.jit.trace(module, _example_input(spec, 2))
            torch.jit.save(traced, str(path), _extra_files={_SPEC_ENTRY: json.dumps(spec)})
    elif format == "onnx":
        _save_onnx(module, spec, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={_SPEC_KEY: json.dumps(spec)})
    return path


def _check_plain_format(format: str, spec: Mapping[str, Any]) -> None:
    name = spec["name"]
    timm = name.startswith(TIMM_PREFIX)
    others = "pt, torchscript, onnx, safetensors" + (", timm" if timm else "")
    if format == "torchvision" and name not in TORCHVISION_NAMES:
        raise ValueError(
            f"format 'torchvision' is for the torchvision ResNets "
            f"({', '.join(TORCHVISION_NAMES)}), not backbone {name!r}; "
            f"export it as one of: {others}"
        )
    if format == "timm" and not timm:
        raise ValueError(
            f"format 'timm' is for 'timm:<model>' backbones, not {name!r}; export it as one of: "
            f"{others}" + (", torchvision" if name in TORCHVISION_NAMES else "")
        )
    if format == "torchvision" and (spec["cifar_stem"] or spec["in_channels"] != 3):
        k, s, p = (3, 1, 1) if spec["cifar_stem"] else (7, 2, 3)
        patch = f"m.conv1 = nn.Conv2d({spec['in_channels']}, 64, {k}, {s}, {p}, bias=False)"
        if spec["cifar_stem"]:
            patch += "; m.maxpool = nn.Identity()"
        warnings.warn(
            f"backbone {name!r} has a non-standard stem (cifar_stem={spec['cifar_stem']}, "
            f"in_channels={spec['in_channels']}): a stock torchvision.models.{name}() loads these "
            f"weights only after `{patch}`",
            stacklevel=3,
        )


def _import(module: str, package: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs the {package} package: pip install {package}") from err


def _save_onnx(module: nn.Module, spec: dict[str, Any], path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter needs only `onnx`; the dynamo one also needs onnxscript.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module, (_example_input(spec, 2),), str(path), dynamo=False,
            opset_version=ONNX_OPSET, input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        )  # fmt: skip
    _write_spec(path, spec)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    x = _example_input(spec, 3)  # another batch size than the export: checks the dynamic axis
    with torch.no_grad():
        expected = module(x)
    got = OnnxBackbone(path, spec)(x)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else "shape"
        path.unlink(missing_ok=True)
        _spec_file(path).unlink(missing_ok=True)
        raise RuntimeError(
            f"ONNX export of backbone {spec['name']!r} does not match PyTorch under onnxruntime "
            f"(max abs difference {diff}); the file was removed. Use format 'torchscript' or 'pt'."
        )


class OnnxBackbone(nn.Module):
    """An exported ONNX backbone run by onnxruntime on the CPU: (B, C, H, W) -> (B, D).

    Inputs are moved to the CPU as float32; the features come back on the input's device.
    Attributes: ``spec``, ``feature_dim``, ``session`` (the ``onnxruntime.InferenceSession``).
    """

    def __init__(self, path: str | Path, spec: Mapping[str, Any]) -> None:
        super().__init__()
        ort = _import("onnxruntime", "onnxruntime", f"reading ONNX backbone '{path}'")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.spec = dict(spec)
        self.feature_dim = self.spec.get("feature_dim")
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        x = images.detach().to("cpu", torch.float32).numpy()
        (features,) = self.session.run(["features"], {"images": x})
        return torch.from_numpy(features).to(images.device)


# --- reading -------------------------------------------------------------------------------------


def resolve_weights(run_dir_or_file: str | Path) -> Path:
    """The file :func:`load_backbone` reads for ``run_dir_or_file``: the freshest weights.

    A file is returned as it is. In a run directory, ``backbone.pt`` (written at the end of
    pretraining, or by ``twinview export``) is used, unless ``checkpoints/last.pt`` is newer
    (mtime): then the run trained on after ``backbone.pt`` was written (an export of a run in
    progress, a resumed run), and the checkpoint is used, with a warning naming both files.
    Either file alone is used as it is. Raises ``FileNotFoundError`` naming what is missing.
    """
    path = Path(run_dir_or_file).expanduser()
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone file '{path}' does not exist. Supported: {SUPPORTED}"
            )
        return path
    final, last = path / "backbone.pt", path / "checkpoints" / "last.pt"
    if final.is_file() and last.is_file():
        if last.stat().st_mtime_ns > final.stat().st_mtime_ns:
            warnings.warn(
                f"{final} is older than {last} (the run trained on after it was written); "
                f"using the checkpoint. Pass {final} itself to load the older weights.",
                UserWarning,
                stacklevel=2,
            )
            return last
        return final
    for candidate in (final, last):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"run directory '{path}' has neither backbone.pt nor checkpoints/last.pt; pass a run "
        f"that has trained, or a backbone file. Supported: {SUPPORTED}"
    )


def _read_spec(path: Path) -> dict[str, Any]:
    spec_path = _spec_file(path)
    if not spec_path.is_file():
        raise ValueError(
            f"'{path}' holds weights without a spec: expected '{spec_path}' beside it (written "
            f"by save_backbone). Copy it there, or load the file into the model yourself."
        )
    try:
        return _check_spec(json.loads(spec_path.read_text()), str(spec_path))
    except json.JSONDecodeError as err:
        raise ValueError(f"spec file '{spec_path}' is not valid JSON ({err})") from err


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` holds TorchScript, judged by its content, whatever its name.

    A TorchScript archive is a zip whose entries include ``<archive>/code/...`` (the Python-like
    source run at load) or ``<archive>/constants.pkl`` (what ``torch.load`` itself looks for);
    ``torch.save`` zips have neither. Mobile flatbuffer modules carry ``PTMF`` at byte 4.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"PTMF":
        return True
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    for name in names:
        inner = name.split("/", 1)[1] if "/" in name else name
        if inner.startswith("code/") or inner == "constants.pkl" or "/code/" in name:
            return True
    return False


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_backbone(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    torchscript: bool = False,
) -> nn.Module:
    """Read a backbone written by :func:`save_backbone`, a run directory or a checkpoint.

    Returns the module in eval mode, with attributes ``spec`` (dict) and ``feature_dim``:
    a twinview backbone rebuilt from the spec (on ``map_location``) for the weight formats, the
    ``torch.jit`` module for TorchScript, an :class:`OnnxBackbone` (CPU) for ONNX. A run
    directory reads the file :func:`resolve_weights` picks.

    Files are data, never code: weights load only with ``torch.load(weights_only=True)`` or
    safetensors. ``torchscript=True`` runs code from the file: TorchScript is a program, and
    ``torch.jit.load`` executes it. So a TorchScript file (recognised by its content, whatever
    its name or suffix, ``backbone.pt`` included) is refused with a ``ValueError`` unless
    ``torchscript=True`` (CLI: ``torchscript=true``); pass it only for files you trust.
    """
    path = resolve_weights(path)
    where = f"load_backbone('{path}')"
    suffix = path.suffix.lower()
    is_torchscript = _is_torchscript(path)
    if is_torchscript and not torchscript:
        raise ValueError(
            f"'{path}' is a TorchScript file: loading it runs code from the file. If you trust "
            f"it, pass torchscript=True (CLI: torchscript=true); otherwise load a weights file "
            f"(backbone.pt written by format 'pt', a checkpoint, or .safetensors)."
        )
    if torchscript and (is_torchscript or suffix in (".ts", ".torchscript")):
        extra = {_SPEC_ENTRY: ""}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
            try:
                module: nn.Module = torch.jit.load(
                    str(path), map_location=map_location, _extra_files=extra
                )
            except RuntimeError as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ValueError(f"{where}: not a readable TorchScript file ({first})") from err
        if not extra[_SPEC_ENTRY]:
            raise ValueError(f"{where}: TorchScript file without {_SPEC_ENTRY}; not from twinview")
        module.spec = _check_spec(json.loads(extra[_SPEC_ENTRY]), where)
        module.feature_dim = module.spec.get("feature_dim")
        return module.eval()
    if suffix == ".onnx":
        return OnnxBackbone(path, _read_spec(path))
    if suffix == ".safetensors" or _is_safetensors(path):
        safetensors = _import("safetensors", "safetensors", where)
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        if _SPEC_KEY not in meta:
            raise ValueError(f"{where}: safetensors file without '{_SPEC_KEY}' metadata")
        spec = _check_spec(json.loads(meta[_SPEC_KEY]), where)
        return _rebuild(spec, state, where).to(map_location)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{where}: not a readable backbone file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Supported: {SUPPORTED}"
        ) from err
    if isinstance(data, dict) and "spec" in data and "state_dict" in data:
        spec, state = _check_spec(data["spec"], where), data["state_dict"]
    elif isinstance(data, dict) and "backbone_spec" in data and "method" in data:
        spec = _check_spec(data["backbone_spec"], where)
        state = _clean_state_dict(data["method"], prefix="backbone.")
    elif isinstance(data, dict) and data and all(isinstance(v, Tensor) for v in data.values()):
        spec, state = _read_spec(path), data
    else:
        raise ValueError(f"{where}: the file holds no twinview backbone. Supported: {SUPPORTED}")
    return _rebuild(spec, state, where).to(map_location)


def export(
    run: str | Path,
    *,
    format: str = "pt",
    out: str | Path | None = None,
    torchscript: bool = False,
) -> Path:
    """``twinview export RUN format=... out=...``: read the run's backbone, write it as ``format``.

    ``run``: anything :func:`load_backbone` reads that holds weights (not an ONNX file); a run
    directory gives its freshest weights (:func:`resolve_weights`). ``torchscript=True`` lets
    ``run`` be a TorchScript file, and runs code from that file (see :func:`load_backbone`);
    writing ``format="torchscript"`` needs no flag. ``out`` defaults to ``backbone.<suffix>`` in
    the run directory (``backbone_torchvision.pth`` / ``backbone_timm.pth`` for the plain state
    dicts). A default ``backbone.pt`` written while the run still trains does not shadow its
    later checkpoints: :func:`resolve_weights` prefers a newer ``checkpoints/last.pt``.
    Returns the path written.
    """
    _check_format(format)
    run = Path(run).expanduser()
    backbone = load_backbone(run, torchscript=torchscript)
    if isinstance(backbone, OnnxBackbone):
        raise ValueError(f"cannot export from ONNX file '{run}'; pass the run directory instead")
    if out is None:
        from twinview.run.reader import run_folder

        folder = run_folder(run)
        plain = format in ("torchvision", "timm")
        stem = f"backbone_{format}" if plain else "backbone"
        out = folder / (stem + SUFFIXES[format][0])
    spec = copy.deepcopy(backbone.spec)
    return save_backbone(backbone, spec, out, format=format)
