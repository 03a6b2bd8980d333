"""Backbone building blocks: timestep embedder, attention, SwiGLU feed-forward, transformer block.

Layers are created through an `operations` namespace with `Linear`, `Conv2d` and `RMSNorm`
classes (default: `torch.nn`), the way ComfyUI models take an `operations` argument, so a
host can hand in its casting and offloading layers without this package importing it.
Attribute names follow ComfyUI's Z-Image (NextDiT) model so its LoRA key mapping applies.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .rope import RotaryTables, apply_rotary

TORCH_OPERATIONS = SimpleNamespace(Linear=nn.Linear, Conv2d=nn.Conv2d, RMSNorm=nn.RMSNorm)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the model time ([cos, sin], max period 10000) followed by an MLP."""

    def __init__(self, frequency_dim: int, hidden: int, out: int, *, operations, device=None, dtype=None) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            operations.Linear(frequency_dim, hidden, bias=True, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Linear(hidden, out, bias=True, device=device, dtype=dtype),
        )

    def forward(self, time: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.frequency_dim // 2
        frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=time.device) / half)
        angles = time[:, None].float() * frequencies[None]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return self.mlp(embedding.to(dtype))


class Attention(nn.Module):
    """Multi-head self-attention with fused q/k/v, per-head RMSNorm on q and k, and RoPE."""

    def __init__(self, dim: int, n_heads: int, eps: float, *, operations, device=None, dtype=None) -> None:
        super().__init__()
        self.n_heads = n_heads
        head_dim = dim // n_heads
        self.qkv = operations.Linear(dim, 3 * dim, bias=False, device=device, dtype=dtype)
        self.out = operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.q_norm = operations.RMSNorm(head_dim, eps=eps, elementwise_affine=True, device=device, dtype=dtype)
        self.k_norm = operations.RMSNorm(head_dim, eps=eps, elementwise_affine=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, rope: RotaryTables, key_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b s (three h d) -> three b h s d", three=3, h=self.n_heads)
        q = apply_rotary(self.q_norm(q), rope)
        k = apply_rotary(self.k_norm(k), rope)

        # key_mask [B, S] is True for real tokens. Batch padding is masked out as keys only,
        # so every sample attends to exactly the tokens of its own batch-1 pass.
        mask = None if key_mask is None else rearrange(key_mask, "b s -> b 1 1 s")
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(rearrange(attended, "b h s d -> b s (h d)"))


class FeedForward(nn.Module):
    """SwiGLU: w2(SiLU(w1·x) ⊙ w3·x)."""

    def __init__(self, dim: int, hidden: int, *, operations, device=None, dtype=None) -> None:
        super().__init__()
        self.w1 = operations.Linear(dim, hidden, bias=False, device=device, dtype=dtype)
        self.w2 = operations.Linear(hidden, dim, bias=False, device=device, dtype=dtype)
        self.w3 = operations.Linear(dim, hidden, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Sandwich-norm block; with modulation, adaLN scales the norms' outputs and tanh-gates the branches.

    Modulation gives (scale_msa, gate_msa, scale_mlp, gate_mlp), used as 1 + scale and
    tanh(gate); there is no shift term. Context-refiner blocks have no modulation.
    """

    def __init__(self, config, *, modulated: bool, operations, device=None, dtype=None) -> None:
        super().__init__()
        dim, eps = config.dim, config.norm_eps
        factory = {"device": device, "dtype": dtype}
        self.attention = Attention(dim, config.n_heads, eps, operations=operations, **factory)
        self.feed_forward = FeedForward(dim, config.ffn_hidden, operations=operations, **factory)
        self.attention_norm1 = operations.RMSNorm(dim, eps=eps, elementwise_affine=True, **factory)
        self.ffn_norm1 = operations.RMSNorm(dim, eps=eps, elementwise_affine=True, **factory)
        self.attention_norm2 = operations.RMSNorm(dim, eps=eps, elementwise_affine=True, **factory)
        self.ffn_norm2 = operations.RMSNorm(dim, eps=eps, elementwise_affine=True, **factory)
        self.modulated = modulated
        if modulated:
            self.adaLN_modulation = nn.Sequential(operations.Linear(config.adaln_dim, 4 * dim, bias=True, **factory))

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryTables,
        key_mask: torch.Tensor | None = None,
        adaln: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.modulated:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), rope, key_mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))

        modulation = rearrange(self.adaLN_modulation(adaln), "b d -> b 1 d")
        scale_msa, gate_msa, scale_mlp, gate_mlp = modulation.chunk(4, dim=-1)

        attended = self.attention(self.attention_norm1(x) * (1.0 + scale_msa), rope, key_mask)
        x = x + gate_msa.tanh() * self.attention_norm2(attended)

        transformed = self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp))
        return x + gate_mlp.tanh() * self.ffn_norm2(transformed)
