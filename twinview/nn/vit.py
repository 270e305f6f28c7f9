"""A small Vision Transformer backbone for 28-96 px images.

ViT: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale"; the Tiny / Small widths of DeiT (Touvron et al. 2021, "Training
data-efficient image transformers & distillation through attention"), the backbones of MoCo v3
(Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers") and
DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Small images need small patches: 32 px with 4 px patches gives an 8x8 grid (64 tokens), like a
224 px image with 16 px patches (14x14). The parameter names and layout are timm's
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}``, ``norm``): the state dict loads with ``strict=True`` into
``timm.models.vision_transformer.VisionTransformer(img_size=S, patch_size=P, embed_dim=D,
depth=L, num_heads=H, num_classes=0, global_pool="token")``, which computes the same features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def patch_sizes_for(image_size: int) -> list[int]:
    """Patch sizes that tile an ``image_size`` px side exactly (divisors > 1, below the size)."""
    return [p for p in range(2, image_size) if image_size % p == 0]


def resample_pos_embed(
    pos_embed: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """Bicubic resampling of a learned position embedding to another patch grid, as DINO does.

    pos_embed: (1, 1 + gh * gw, D), the cls position first (kept as it is) and the patch
    positions in row-major order. Returns (1, 1 + nh * nw, D). The grid is resized with
    ``F.interpolate(size=new_grid, mode="bicubic", align_corners=False)`` without antialiasing
    (DINO's ``interpolate_pos_encoding``; timm's ``resample_abs_pos_embed`` with
    ``antialias=False``). At ``new_grid == grid`` the bicubic weights are (0, 1, 0, 0), so the
    result equals the input exactly. Computed in at least float32 (bf16 weights), returned in
    the input's dtype.
    """
    dim = pos_embed.shape[-1]
    dtype = pos_embed.dtype
    cls_pos = pos_embed[:, :1]
    patch_pos = pos_embed[:, 1:].to(torch.promote_types(dtype, torch.float32))
    patch_pos = patch_pos.reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=new_grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([cls_pos, patch_pos.to(dtype)], dim=1)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016, "Deep Networks with Stochastic Depth").

    In training, each sample's residual branch is zeroed with probability ``drop_prob`` and
    kept ones are scaled by ``1 / (1 - drop_prob)``; identity in eval mode or at 0.
    ``drop_prob`` is a plain attribute, so a teacher copy can switch it off (DINO's teacher has
    no stochastic depth; see :func:`disable_drop_path`). x: (B, ...) -> (B, ...).
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


def disable_drop_path(module: nn.Module) -> int:
    """Set ``drop_prob = 0`` on every :class:`DropPath` in ``module``; returns how many.

    For momentum teachers made by deep copy of a student built with ``drop_path > 0``: DINO
    builds its teacher without stochastic depth, and an EMA copy runs in train mode.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, DropPath):
            m.drop_prob = 0.0
            count += 1
    return count


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (biases, as ViT / DeiT).

    x: (B, N, D) -> (B, N, D); softmax(q k^T / sqrt(D / heads)) v per head, computed by
    ``F.scaled_dot_product_attention`` (fused kernels where the device has them).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, D / heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf form) -> fc2: (B, N, D) -> (B, N, D), hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop(attn(norm1(x)))``, then ``x + drop(mlp(norm2(x)))``.

    LayerNorm eps 1e-6 (ViT / timm / DINO). One :class:`DropPath` serves both branches, each
    call drawing its own per-sample mask. x: (B, N, D) -> (B, N, D).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches, linearly projected: (B, C, H, W) -> (B, H/p * W/p, D).

    ``proj`` is ``Conv2d(C, D, p, stride=p)``; tokens come out in row-major patch order.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT with a cls token and a learned position embedding; outputs the cls token.

    x: (B, in_channels, H, W) with H and W multiples of ``patch_size`` -> (B, dim) features
    (the final-LayerNorm cls token, as MoCo v3 and DINO use). ``forward_tokens`` returns all
    tokens (B, 1 + H/p * W/p, dim).

    The position embedding is learned for an ``image_size`` square; another input size (the
    local crops of multi-crop, evaluation at another resolution, non-square inputs) gets it
    resampled bicubically to its patch grid (:func:`resample_pos_embed`, the cls position
    kept). At the native size the embedding is used as it is.

    Stochastic depth rates rise linearly from 0 in the first block to ``drop_path`` in the last
    (DeiT / DINO / timm). Initialisation as timm / DINO: Linear weights and ``pos_embed`` /
    ``cls_token`` truncated normal (std 0.02, cut at +-2 as theirs), biases zero, LayerNorm
    ones / zeros. The patch projection is initialised as a Linear on the flattened patch with
    Xavier-uniform (MoCo v3, MAE), bias zero. ``freeze_patch_embed=True`` keeps it a fixed
    random projection (``requires_grad=False``), MoCo v3's fix for the instability of
    self-supervised ViT training (its ``--stop-grad-conv1``).

    ``pos_embed`` and ``cls_token`` are 3-d: :meth:`no_weight_decay` names them, as timm's
    does, for optimizers that exclude them from weight decay.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        freeze_patch_embed: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_size", image_size), ("patch_size", patch_size), ("in_channels", in_channels),
            ("dim", dim), ("depth", depth), ("heads", heads),
        ):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VisionTransformer: {name} must be a positive int, got {value!r}")
        if image_size % patch_size != 0:
            raise ValueError(
                f"VisionTransformer: image_size {image_size} is not divisible by patch_size "
                f"{patch_size}; patch sizes that tile {image_size} px images: "
                f"{', '.join(map(str, patch_sizes_for(image_size))) or 'none'}"
            )
        if dim % heads != 0:
            raise ValueError(f"VisionTransformer: dim {dim} is not divisible by heads {heads}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"VisionTransformer: drop_path must be in [0, 1), got {drop_path!r}")
        if mlp_ratio <= 0:
            raise ValueError(f"VisionTransformer: mlp_ratio must be > 0, got {mlp_ratio!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.feature_dim = dim
        self.patch_embed = PatchEmbed(in_channels, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_weights()
        if freeze_patch_embed:
            self.patch_embed.proj.weight.requires_grad_(False)
            self.patch_embed.proj.bias.requires_grad_(False)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        proj = self.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.out_channels, -1))
        nn.init.zeros_(proj.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names usually excluded from weight decay besides biases and norms (timm)."""
        return {"pos_embed", "cls_token"}

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding for a ``grid`` of patches: (1, 1 + grid[0] * grid[1], dim)."""
        if grid == self.grid_size:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, self.grid_size, grid)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """All tokens after the final LayerNorm: (B, C, H, W) -> (B, 1 + H/p * W/p, dim)."""
        h, w = x.shape[-2], x.shape[-1]
        p = self.patch_size
        if h % p != 0 or w % p != 0:
            raise ValueError(
                f"VisionTransformer: input {h}x{w} px is not divisible by patch_size {p}; "
                f"resize or crop the images to a multiple of {p} px"
            )
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed_for((h // p, w // p))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tokens(x)[:, 0]


__all__ = [
    "DropPath",
    "VisionTransformer",
    "disable_drop_path",
    "patch_sizes_for",
    "resample_pos_embed",
]
