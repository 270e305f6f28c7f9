"""The lightly side of the benchmarks: lightly's example loop of each method lightly has.

Each loop follows lightly's own example script (``examples/pytorch/<method>.py`` of lightly
1.6: heads, losses, memory banks, momentum updates, gradient cancelling, optimizer), with the
twinview recipe's backbone, batch, head widths, number and size of crops and augmentation
values, so that the two libraries train the same model on the same views:

- SimCLR, MoCo v2, BYOL, SimSiam (Chen et al. 2020; Chen, Fan, Girshick, He 2020; Grill et al.
  2020; Chen & He 2021): ``SimCLRProjectionHead`` + ``NTXentLoss``; ``MoCoProjectionHead`` +
  ``NTXentLoss`` with a memory bank + momentum copies; ``BYOLProjectionHead`` /
  ``BYOLPredictionHead`` + ``NegativeCosineSimilarity`` + momentum copies; the SimSiam heads
  + ``NegativeCosineSimilarity``. SGD lr 0.06.
- Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
  Reduction"): ``BarlowTwinsProjectionHead`` + ``BarlowTwinsLoss``, ``BYOLTransform``, SGD 0.06.
- VICReg (Bardes, Ponce, LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization"):
  ``VICRegProjectionHead`` + ``VICRegLoss``, ``VICRegTransform``, SGD 0.06.
- DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"):
  student / teacher ``DINOProjectionHead`` (the student's last layer frozen for
  ``freeze_last_layer`` epochs via ``cancel_last_layer_gradients`` after backward),
  ``DINOLoss`` (teacher temperature warm-up by epoch, centering), teacher updated by
  ``update_momentum`` with ``cosine_schedule(epoch, epochs, 0.996, 1)`` before each step, the
  teacher on the 2 global views and the student on every view, one pass per view; Adam 1e-3.
- SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
  Assignments"): ``SwaVProjectionHead``, L2-normalised projections, ``SwaVPrototypes``
  normalised before every step and frozen for the first steps (``n_steps_frozen_prototypes``),
  ``SwaVLoss`` (Sinkhorn), ``SwaVTransform`` multi-crop, optional per-global-view queues
  (``examples/pytorch/swav_queue.py``, only when the twinview recipe has a queue); Adam 1e-3.
- NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor Contrastive
  Learning of Visual Representations"): ``NNCLRProjectionHead``, ``NNCLRPredictionHead``,
  ``NNMemoryBankModule`` (support set), ``NTXentLoss``, ``SimCLRTransform``, SGD 0.06.
- DCL / DCLW (Yeh et al. 2022, "Decoupled Contrastive Learning"): ``SimCLRProjectionHead`` +
  ``DCLLoss`` / ``DCLWLoss``, ``SimCLRTransform``, SGD 0.06.

SupCon (and MoCo v3) have no lightly example loop: :data:`LIGHTLY_METHODS` leaves them out and
the benchmarks report "n/a" for lightly.

Augmentations: lightly's transforms get twinview's values (crop scale, jitter, grayscale, blur,
solarize, flip, normalisation), read from the twinview views. Where the example's transform
cannot express the twinview views (asymmetric views for a symmetric transform; per-view colour
for multi-crop), the per-view lightly transform is used instead (``BYOLTransform`` for two
views, ``DINOViewTransform`` / ``SwaVViewTransform`` per crop) and a note says so. DINO always
uses ``DINOViewTransform`` per view: ``DINOTransform`` hard-codes which view blurs and
solarises and builds its second global view without its ``cj_strength`` argument, so it cannot
carry a recipe's colour values.

Hyperparameters the twinview recipe has (widths, temperatures, queue sizes, loss weights) are
read from it under the names in :class:`Recipe` lookups; a value it does not have falls back
to the lightly example's and is listed in the loop's ``notes``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from twinview.train.build import normalization
from twinview.views import ViewSpec

LIGHTLY_LR = 0.06  # lightly's example scripts (SimCLR, MoCo, BYOL, SimSiam, ...) use SGD 0.06
LIGHTLY_ADAM_LR = 1e-3  # lightly's DINO and SwAV examples use Adam 1e-3
LIGHTLY_METHODS = (
    "simclr", "moco_v2", "byol", "simsiam", "barlow_twins", "vicreg", "dino", "swav", "nnclr",
    "dcl", "dclw",
)  # fmt: skip


# --- data and transforms ---------------------------------------------------------------------


class PILImages(Dataset):
    """uint8 images -> PIL -> lightly transform; items ``(views, label)`` like LightlyDataset."""

    def __init__(self, images: Tensor, transform: Callable) -> None:
        array = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        self.images = array[..., 0] if array.shape[-1] == 1 else array
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(np.ascontiguousarray(self.images[i]))), 0


def _colour(spec: ViewSpec, mean: tuple, std: tuple) -> dict[str, Any]:
    """lightly's colour / flip / normalisation arguments carrying one twinview view's recipe."""
    return dict(
        cj_prob=spec.jitter_p,
        cj_strength=1.0,
        cj_bright=spec.brightness,
        cj_contrast=spec.contrast,
        cj_sat=spec.saturation,
        cj_hue=spec.hue,
        random_gray_scale=spec.grayscale_p,
        gaussian_blur=spec.blur_p,
        sigmas=tuple(spec.blur_sigma),
        hf_prob=spec.hflip_p,
        normalize={"mean": list(mean), "std": list(std)},
    )


def _view_kwargs(spec: ViewSpec, size: int, mean: tuple, std: tuple) -> dict[str, Any]:
    """lightly two-view transform arguments carrying twinview's recipe for one view."""
    return dict(input_size=size, min_scale=spec.crop_scale[0], **_colour(spec, mean, std))


def _side(spec: ViewSpec) -> int:
    h, w = spec.hw
    if h != w:
        raise ValueError(f"lightly's transforms make square crops; the twinview view is {h}x{w}")
    return h


def _same_colour(a: ViewSpec, b: ViewSpec) -> bool:
    return _colour(a, (), ()) == _colour(b, (), ()) and a.solarize_p == b.solarize_p


def lightly_transform(method: str, p: Any, notes: list[str]) -> Callable:
    """The lightly transform of ``method``'s example, given the twinview views ``p.views``."""
    from lightly import transforms as LT
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    mean, std = normalization(p.views, p.channels)
    specs = p.views.specs
    if method in ("dino", "swav"):
        return _multicrop_transform(method, specs, mean, std, notes)
    if len(specs) != 2:
        raise ValueError(f"{method}: lightly's example makes 2 views, the recipe has {len(specs)}")
    s0, s1 = specs

    def per_view() -> Callable:
        return LT.BYOLTransform(
            view_1_transform=BYOLView1Transform(
                **_view_kwargs(s0, p.size, mean, std), solarization_prob=s0.solarize_p
            ),
            view_2_transform=BYOLView2Transform(
                **_view_kwargs(s1, p.size, mean, std), solarization_prob=s1.solarize_p
            ),
        )

    if method in ("byol", "barlow_twins"):
        return per_view()
    cls = {
        "simclr": LT.SimCLRTransform, "moco_v2": LT.MoCoV2Transform,
        "simsiam": LT.SimSiamTransform, "vicreg": LT.VICRegTransform,
        "nnclr": LT.SimCLRTransform, "dcl": LT.SimCLRTransform, "dclw": LT.SimCLRTransform,
    }[method]  # fmt: skip
    extra = {"solarize_prob": s0.solarize_p} if cls is LT.VICRegTransform else {}
    if s0 != s1:
        notes.append(
            f"views: lightly's {cls.__name__} draws both views from one recipe, the twinview "
            "views differ: BYOLTransform (one transform per view) carries each view's recipe"
        )
        return per_view()
    if s0.solarize_p > 0 and not extra:
        notes.append(f"views: lightly's {cls.__name__} cannot solarize: BYOLTransform used")
        return per_view()
    return cls(**_view_kwargs(s0, p.size, mean, std), **extra)


def _multicrop_transform(
    method: str, specs: tuple[ViewSpec, ...], mean: tuple, std: tuple, notes: list[str]
) -> Callable:
    """DINO: ``DINOViewTransform`` per view. SwAV: ``SwaVTransform`` (one colour recipe, crops
    grouped by size and scale) when the recipe shares its colour, else per-view transforms."""
    from lightly.transforms.dino_transform import DINOViewTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform
    from lightly.transforms.swav_transform import SwaVTransform, SwaVViewTransform
    from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T

    if method == "dino":
        return MultiViewTransform(
            [
                DINOViewTransform(
                    crop_size=_side(s),
                    crop_scale=tuple(s.crop_scale),
                    solarization_prob=s.solarize_p,
                    **_colour(s, mean, std),
                )
                for s in specs
            ]
        )
    if any(s.solarize_p > 0 for s in specs):
        notes.append("views: lightly's SwaV transforms have no solarization; the recipe's dropped")
    if all(_same_colour(specs[0], s) for s in specs):
        groups: list[list[Any]] = []  # consecutive crops of one size and scale: [size, scale, n]
        for s in specs:
            key = [_side(s), tuple(s.crop_scale)]
            if groups and groups[-1][:2] == key:
                groups[-1][2] += 1
            else:
                groups.append([*key, 1])
        return SwaVTransform(
            crop_sizes=tuple(g[0] for g in groups),
            crop_counts=tuple(g[2] for g in groups),
            crop_min_scales=tuple(g[1][0] for g in groups),
            crop_max_scales=tuple(g[1][1] for g in groups),
            **_colour(specs[0], mean, std),
        )
    notes.append("views: the recipe's crops differ in colour; SwaVViewTransform per crop")
    return MultiViewTransform(
        [
            T.Compose(
                [
                    T.RandomResizedCrop(_side(s), scale=tuple(s.crop_scale)),
                    SwaVViewTransform(**_colour(s, mean, std)),
                ]
            )
            for s in specs
        ]
    )


# --- recipe values ---------------------------------------------------------------------------


class Recipe:
    """The twinview recipe's method arguments (``Prepared.dims``), looked up by name."""

    def __init__(self, dims: dict[str, Any], notes: list[str]) -> None:
        self.dims, self.notes = dims, notes

    def get(self, names: str | tuple[str, ...], example: Any) -> Any:
        """The first of ``names`` the recipe sets, else lightly's example value (noted)."""
        names = (names,) if isinstance(names, str) else names
        for name in names:
            if self.dims.get(name) is not None:
                return self.dims[name]
        self.notes.append(f"recipe has no {'/'.join(names)}: lightly example's {example!r} used")
        return example

    def depth(self, head: str, layers: int) -> None:
        """Note when the recipe's ``num_layers`` differs from lightly's fixed-depth ``head``."""
        wanted = self.dims.get("num_layers")
        if wanted is not None and wanted != layers:
            self.notes.append(f"lightly's {head} has {layers} layers, the recipe {wanted}")


@dataclass
class Clock:
    """Where the loop is: optimizer step (0-based), epoch, and the run's length in epochs."""

    step: int
    epoch: int
    epochs: int


# --- lightly example models ------------------------------------------------------------------


class LightlyModel(nn.Module):
    """lightly's example models (examples/pytorch/{simclr,moco,byol,simsiam}.py)."""

    def __init__(self, method: str, backbone: nn.Module, feature_dim: int, dims: dict) -> None:
        super().__init__()
        from lightly.models import modules as M
        from lightly.models.utils import deactivate_requires_grad

        self.method, self.backbone = method, backbone
        hidden, out = dims["hidden_dim"], dims["out_dim"]
        if method == "simclr":
            self.projection_head = M.SimCLRProjectionHead(feature_dim, hidden, out)
        elif method == "moco_v2":
            self.projection_head = M.MoCoProjectionHead(feature_dim, hidden, out)
        elif method == "byol":
            self.projection_head = M.BYOLProjectionHead(feature_dim, hidden, out)
            pred = dims.get("pred_hidden_dim") or hidden
            self.prediction_head = M.BYOLPredictionHead(out, pred, out)
        elif method == "simsiam":
            self.projection_head = M.SimSiamProjectionHead(feature_dim, hidden, out)
            self.prediction_head = M.SimSiamPredictionHead(out, dims["pred_hidden_dim"], out)
        if method in ("moco_v2", "byol"):
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: Tensor) -> Any:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        if self.method == "byol":
            return self.prediction_head(z)
        if self.method == "simsiam":
            return z.detach(), self.prediction_head(z)
        return z

    def forward_momentum(self, x: Tensor) -> Tensor:
        z = self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1))
        return z.detach()


class Projected(nn.Module):
    """backbone -> projection head [-> prediction head] (Barlow Twins, VICReg, NNCLR, DCL,
    SwAV's examples). With a prediction head, ``forward`` returns ``(z.detach(), p)``."""

    def __init__(
        self, backbone: nn.Module, projection: nn.Module, prediction: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.backbone, self.projection_head = backbone, projection
        if prediction is not None:
            self.prediction_head = prediction

    def forward(self, x: Tensor) -> Any:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        if hasattr(self, "prediction_head"):
            return z.detach(), self.prediction_head(z)
        return z


class DINOModel(nn.Module):
    """lightly's examples/pytorch/dino.py model: student and momentum teacher."""

    def __init__(self, backbone: nn.Module, feature_dim: int, r: Recipe) -> None:
        super().__init__()
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        head = dict(
            input_dim=feature_dim,
            hidden_dim=r.get("hidden_dim", 512),
            bottleneck_dim=r.get("bottleneck_dim", 64),
            output_dim=r.get("out_dim", 2048),
            batch_norm=r.get(("use_bn_in_head", "batch_norm"), False),
            norm_last_layer=r.get("norm_last_layer", True),
        )
        r.depth("DINOProjectionHead", 3)
        freeze = r.get("freeze_last_layer", 1)  # epochs, in lightly and twinview
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(**head, freeze_last_layer=freeze)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(**head)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    @property
    def backbone(self) -> nn.Module:
        """The backbone the benchmarks export and score: the student's (trained by SGD)."""
        return self.student_backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))


# --- the loops -------------------------------------------------------------------------------


class LightlyLoop:
    """One lightly example: ``model`` (every trained and momentum part), ``criterion``, the
    example's optimizer, and ``loss(views, clock)`` / ``after_backward(clock)`` for one step.

    Built in the order of the example scripts (backbone, heads, momentum copies, then the loss
    and its memory banks), so a seed gives the same initial weights as the example would."""

    def __init__(
        self, method: str, backbone: nn.Module, dim: int, dims: dict, steps_per_epoch: int
    ) -> None:
        if method not in LIGHTLY_METHODS:
            raise ValueError(f"lightly has no example loop for {method!r}")
        self.method, self.notes = method, []
        self.optimizer_name, self.lr = "sgd", LIGHTLY_LR
        self.criterion: nn.Module
        self.model: nn.Module
        r = Recipe(dims, self.notes)
        if method in ("simclr", "moco_v2", "byol", "simsiam"):
            self._build_classic(backbone, dim, dims)
        elif method == "dino":
            self._build_dino(backbone, dim, r)
        elif method == "swav":
            self._build_swav(backbone, dim, r, steps_per_epoch)
        else:
            self._build_projected(backbone, dim, r)

    def _build_classic(self, backbone: nn.Module, dim: int, dims: dict) -> None:
        """SimCLR, MoCo v2, BYOL, SimSiam (the recipe always has their widths)."""
        from lightly import loss as L

        self.model = LightlyModel(self.method, backbone, dim, dims)
        if self.method == "simclr":
            self.criterion = L.NTXentLoss(temperature=dims["temperature"])
        elif self.method == "moco_v2":
            self.criterion = L.NTXentLoss(
                temperature=dims["temperature"],
                memory_bank_size=(dims["queue_size"], dims["out_dim"]),
            )
        else:
            self.criterion = L.NegativeCosineSimilarity()

    def _build_projected(self, backbone: nn.Module, dim: int, r: Recipe) -> None:
        """Barlow Twins, VICReg, NNCLR, DCL, DCLW: one projector (NNCLR: and a predictor)."""
        from lightly import loss as L
        from lightly.models import modules as M
        from lightly.models.modules.heads import VICRegProjectionHead

        method = self.method
        wide = method in ("barlow_twins", "vicreg")  # the examples' 2048-2048 projectors
        hidden, out = (
            r.get("hidden_dim", 2048 if wide else 512),
            r.get("out_dim", 2048 if wide else 128),
        )
        if method == "barlow_twins":
            r.depth("BarlowTwinsProjectionHead", 3)
            self.model = Projected(backbone, M.BarlowTwinsProjectionHead(dim, hidden, out))
            self.criterion = L.BarlowTwinsLoss(lambda_param=r.get("lambda_param", 0.005))
        elif method == "vicreg":
            layers = r.get("num_layers", 2)
            self.model = Projected(backbone, VICRegProjectionHead(dim, hidden, out, layers))
            self.criterion = L.VICRegLoss(
                lambda_param=r.get("invariance_weight", 25.0),
                mu_param=r.get("variance_weight", 25.0),
                nu_param=r.get("covariance_weight", 1.0),
                eps=r.get("eps", 1e-4),
            )
        elif method == "nnclr":
            self.model = Projected(
                backbone,
                M.NNCLRProjectionHead(dim, hidden, out),
                M.NNCLRPredictionHead(out, r.get("pred_hidden_dim", 512), out),
            )
            size = r.get("queue_size", 4096)
            self.memory_bank = M.NNMemoryBankModule(size=(size, out))
            self.criterion = L.NTXentLoss(temperature=r.get("temperature", 0.5))
        else:
            layers = r.get("num_layers", 2)
            self.model = Projected(backbone, M.SimCLRProjectionHead(dim, hidden, out, layers))
            t = r.get("temperature", 0.1)
            self.criterion = (
                L.DCLLoss(temperature=t)
                if method == "dcl"
                else L.DCLWLoss(temperature=t, sigma=r.get("sigma", 0.5))
            )

    def _build_dino(self, backbone: nn.Module, dim: int, r: Recipe) -> None:
        from lightly.loss import DINOLoss

        self.optimizer_name, self.lr = "adam", LIGHTLY_ADAM_LR
        self.model = DINOModel(backbone, dim, r)
        self.criterion = DINOLoss(
            output_dim=r.get("out_dim", 2048),
            warmup_teacher_temp=r.get("warmup_teacher_temp", 0.04),
            teacher_temp=r.get("teacher_temp", 0.04),
            warmup_teacher_temp_epochs=r.get("warmup_teacher_temp_epochs", 5),
            student_temp=r.get("student_temp", 0.1),
            center_momentum=r.get("center_momentum", 0.9),
        )

    def _build_swav(self, backbone: nn.Module, dim: int, r: Recipe, steps_per_epoch: int) -> None:
        from lightly.loss import SwaVLoss
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
        from lightly.models.modules.memory_bank import MemoryBankModule

        self.optimizer_name, self.lr = "adam", LIGHTLY_ADAM_LR
        out = r.get("out_dim", 128)
        self.model = Projected(backbone, SwaVProjectionHead(dim, r.get("hidden_dim", 512), out))
        # frozen (no gradient) for the recipe's first steps; lightly's queue example: 5
        frozen = r.get("freeze_prototypes_steps", 5)
        prototypes = r.get("num_prototypes", 512)
        self.model.prototypes = SwaVPrototypes(out, prototypes, n_steps_frozen_prototypes=frozen)
        queue = r.dims.get("queue_size") or 0  # swav.py has no queue; swav_queue.py does
        self.queue_start = r.get("queue_start_epoch", 2) if queue else 0
        self.queues = nn.ModuleList(
            [MemoryBankModule(size=(queue, out), feature_dim_first=False) for _ in range(2)]
            if queue
            else []
        )
        self.criterion = SwaVLoss(
            temperature=r.get("temperature", 0.1),
            sinkhorn_iterations=r.get("sinkhorn_iterations", 3),
            sinkhorn_epsilon=r.get("epsilon", 0.05),
        )

    @property
    def backbone(self) -> nn.Module:
        """The backbone to export and score."""
        return self.model.backbone  # type: ignore[return-value]

    def optimizer(self) -> torch.optim.Optimizer:
        params = self.model.parameters()
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr)

    def loss(self, views: list[Tensor], c: Clock, total: int) -> Tensor:
        """The example's loss for one batch of views (momentum updates first, as there)."""
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m, method = self.model, self.method
        if method in ("moco_v2", "byol"):
            momentum = cosine_schedule(c.step, total, 0.996, 1)
            update_momentum(m.backbone, m.backbone_momentum, m=momentum)
            update_momentum(m.projection_head, m.projection_head_momentum, m=momentum)
        if method == "simsiam":
            (z0, p0), (z1, p1) = m(views[0]), m(views[1])
            return 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))
        if method == "moco_v2":
            return self.criterion(m(views[0]), m.forward_momentum(views[1]))
        if method == "byol":
            p0, z0 = m(views[0]), m.forward_momentum(views[0])
            p1, z1 = m(views[1]), m.forward_momentum(views[1])
            return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        if method == "nnclr":
            (z0, p0), (z1, p1) = m(views[0]), m(views[1])
            z0 = self.memory_bank(z0, update=False)
            z1 = self.memory_bank(z1, update=True)
            return 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))
        if method == "dino":
            momentum = cosine_schedule(c.epoch, c.epochs, 0.996, 1)
            update_momentum(m.student_backbone, m.teacher_backbone, m=momentum)
            update_momentum(m.student_head, m.teacher_head, m=momentum)
            teacher = [m.forward_teacher(v) for v in views[:2]]
            student = [m(v) for v in views]
            return self.criterion(teacher, student, epoch=c.epoch)
        if method == "swav":
            return self._swav_loss(views, c)
        return self.criterion(m(views[0]), m(views[1]))  # SimCLR, Barlow Twins, VICReg, DCL(W)

    def _swav_loss(self, views: list[Tensor], c: Clock) -> Tensor:
        m = self.model
        m.prototypes.normalize()
        z = [nn.functional.normalize(m(v), dim=1, p=2) for v in views]
        scores = [m.prototypes(x, c.step) for x in z]
        queued = None
        if len(self.queues):
            with torch.no_grad():
                banks = [q(x, update=True)[1] for q, x in zip(self.queues, z[:2])]
                if c.epoch >= self.queue_start:
                    queued = [m.prototypes(b, c.step) for b in banks]
        return self.criterion(scores[:2], scores[2:], queued)

    def after_backward(self, c: Clock) -> None:
        """After backward, before the optimizer step (DINO: cancel the last layer's grads)."""
        if self.method == "dino":
            self.model.student_head.cancel_last_layer_gradients(current_epoch=c.epoch)


def clock(step: int, total: int, steps_per_epoch: int) -> Clock:
    """The loop's position; ``epochs`` spans ``total`` steps (at least one epoch)."""
    return Clock(step, step // steps_per_epoch, max(1, math.ceil(total / steps_per_epoch)))
