"""A Vision Transformer in the layout of DINOv2's ``DinoVisionTransformer`` (facebookresearch/dinov2,
``dinov2/models/vision_transformer.py`` as torch hub's ``dinov2_vits14`` builds it: ``img_size=518``,
``patch_size=14``, LayerScale, ``block_chunks=0``, no register tokens), written here so that the
official checkpoints (``dinov2_vits14_pretrain.pth`` ...) load into it strictly, with no code from
the network.  State-dict keys: ``cls_token``, ``pos_embed``, ``mask_token``,
``patch_embed.proj.{weight,bias}``, ``blocks.I.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,
mlp.fc2,ls2.gamma}``, ``norm.{weight,bias}``.

The forward pass is DINOv2's inference one (``model(x)``): patch embedding (a 14 x 14 stride-14
convolution), the class token, the position embedding interpolated to the image's patch grid as
DINOv2 does it (bicubic, ``scale_factor`` (grid + 0.1) / sqrt(N), its historical offset), the
pre-norm blocks ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))`` (exact-erf GELU, LayerNorm
eps 1e-6), the final norm, and the class token out (``x_norm_clstoken``; DINOv2's head is the
identity).  Attention is ``scaled_dot_product_attention``, DINOv2's own softmax(q k^T / sqrt(d)) v.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# name -> (embed_dim, depth, num_heads) of torch hub's dinov2_vit{s,b,l}14 (patch 14, img 518)
CONFIGS = {"s14": (384, 12, 6), "b14": (768, 12, 12), "l14": (1024, 24, 16)}
PATCH, IMG = 14, 518
POS_OFFSET = 0.1  # DINOv2's interpolate_offset


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2ViT(nn.Module):
    """DINOv2's ViT (module docstring); ``forward`` maps normalised images (N, 3, H, W) to the
    class token's features (N, dim)."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, patch: int = PATCH, img: int = IMG):
        super().__init__()
        self.patch = patch
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # training only; in the checkpoint
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The position embedding for an h x w patch grid (DINOv2's ``interpolate_pos_encoding``)."""
        n = self.pos_embed.shape[1] - 1
        if h * w == n and h == w:
            return self.pos_embed
        m = int(math.sqrt(n))
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + POS_OFFSET) / m, (w + POS_OFFSET) / m), mode="bicubic")
        if tuple(grid.shape[-2:]) != (h, w):
            raise ValueError(f"position embedding interpolated to {tuple(grid.shape[-2:])}, expected {(h, w)}")
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], 1).to(self.pos_embed.dtype)

    def forward(self, x):
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)
        t = t + self.position_embedding(h, w)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]


def dinov2(size: str = "s14", **overrides) -> DinoV2ViT:
    """torch hub's ``dinov2_vit{size}`` (``s14``, ``b14``, ``l14``) as a ``DinoV2ViT``; ``overrides``
    (dim, depth, heads, patch, img) make smaller ones of the same layout (tests)."""
    dim, depth, heads = CONFIGS[size]
    return DinoV2ViT(**dict({"dim": dim, "depth": depth, "heads": heads}, **overrides))
