"""A small class-conditional DiT with adaLN-style conditioning (the MNIST DiT's architecture).

Written from the architecture description in ``shared/models/SOURCES.md`` so that the
``dit-mnist-franfee`` checkpoint loads strictly into it; the same class, with a smaller
config, is the offline tiny DiT of the tests.

Block: ``y = LN(x)·(1+γ(c)) + β(c)``; ``x += α(c)·Attn(y)``; same again with the FFN. The
condition is ``c = label_emb(y) + time_emb(t)``. Attention (``block.attn``) and the FFN
(``block.ff``) are modules of their own, so that runtime hooks (LazyDiT, FORA) see exactly the
modulated input and return the output before the α gate. The original checkpoint stores the
attention linears flat in the block (``dits.0.wq.weight``); they load into ``dits.0.attn.wq``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiTConfig:
    img_size: int = 28
    patch_size: int = 4
    channels: int = 1
    emb_size: int = 64
    num_blocks: int = 3
    num_heads: int = 4
    head_dim: int = 64
    ffn_size: int = 256
    num_classes: int = 10
    model_type: str = "slimbench_dit"

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class TimeEmbedding(nn.Module):
    """[sin(t·f), cos(t·f)] with f = exp(-ln(10000)·arange(h)/(h-1)), h = emb/2."""

    def __init__(self, emb_size: int) -> None:
        super().__init__()
        half = emb_size // 2
        self.register_buffer("half_emb", torch.exp(torch.arange(half) * (-math.log(10000) / (half - 1))))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float().view(-1, 1) * self.half_emb.unsqueeze(0)  # [B, h]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # [B, emb]


class Attention(nn.Module):
    """Multi-head self-attention of a block: q, k, v, output projections."""

    def __init__(self, d: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.wq, self.wk, self.wv = nn.Linear(d, inner), nn.Linear(d, inner), nn.Linear(d, inner)
        self.lv = nn.Linear(inner, d)

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # y [B, N, D]
        b, n, _ = y.shape
        q, k, v = (w(y).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, Dh], scale 1/sqrt(Dh)
        return self.lv(out.transpose(1, 2).reshape(b, n, -1))


_FLAT_ATTENTION_KEYS = ("wq.", "wk.", "wv.", "lv.")


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.emb_size
        for name in ("gamma1", "beta1", "alpha1", "gamma2", "beta2", "alpha2"):
            setattr(self, name, nn.Linear(d, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, cfg.num_heads, cfg.head_dim)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ffn_size), nn.ReLU(), nn.Linear(cfg.ffn_size, d))
        self._register_load_state_dict_pre_hook(self._nest_flat_attention_keys)

    @staticmethod
    def _nest_flat_attention_keys(state_dict, prefix, *args) -> None:
        """The original checkpoint's ``<block>.wq.weight`` is ``<block>.attn.wq.weight`` here."""
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].startswith(_FLAT_ATTENTION_KEYS)]:
            state_dict[prefix + "attn." + key[len(prefix):]] = state_dict.pop(key)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x [B, N, D], cond [B, D]
        y = self.ln1(x) * (1 + self.gamma1(cond).unsqueeze(1)) + self.beta1(cond).unsqueeze(1)
        x = x + self.alpha1(cond).unsqueeze(1) * self.attn(y)
        y = self.ln2(x) * (1 + self.gamma2(cond).unsqueeze(1)) + self.beta2(cond).unsqueeze(1)
        return x + self.alpha2(cond).unsqueeze(1) * self.ff(y)


class DiT(nn.Module):
    """Noise predictor ε(x_t, t, y) for images [B, C, H, W]."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.config = cfg
        p, c, d = cfg.patch_size, cfg.channels, cfg.emb_size
        self.patch_count = cfg.img_size // p
        self.conv = nn.Conv2d(c, c * p * p, kernel_size=p, stride=p)
        self.patch_emb = nn.Linear(c * p * p, d)
        self.patch_pos_emb = nn.Parameter(torch.rand(1, cfg.num_patches, d))
        self.time_emb = nn.Sequential(TimeEmbedding(d), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.label_emb = nn.Embedding(cfg.num_classes, d)
        self.dits = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_blocks))
        self.ln = nn.LayerNorm(d)
        self.linear = nn.Linear(d, c * p * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg, b = self.config, x.shape[0]
        cond = self.label_emb(y) + self.time_emb(t)  # [B, D]
        h = self.conv(x).permute(0, 2, 3, 1).reshape(b, cfg.num_patches, -1)  # [B, N, C*p*p]
        h = self.patch_emb(h) + self.patch_pos_emb  # [B, N, D]
        for block in self.dits:
            h = block(h, cond)
        h = self.linear(self.ln(h))  # [B, N, C*p*p]
        g, p, c = self.patch_count, cfg.patch_size, cfg.channels
        h = h.view(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)  # [B, C, g, p, g, p]
        return h.reshape(b, c, cfg.img_size, cfg.img_size)
