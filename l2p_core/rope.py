"""Three-axis rotary position embedding (RoPE) of the Z-Image backbone.

Each token has a position (caption index, row, column). Axis `a` of width `d` rotates
channel pairs `(2j, 2j+1)` by `pos_a · θ^(-2j/d)`. As in the reference, angles are formed in
float64, rounded to float32, and the rotation is applied in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange


@dataclass(frozen=True)
class RotaryTables:
    """cos and sin of every token's rotation angles, float32 [B, 1, S, head_dim/2]."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def from_positions(
        cls, positions: torch.Tensor, axes_dims: tuple[int, ...], theta: float, device: torch.device
    ) -> RotaryTables:
        """Build the tables for integer positions [B, S, 3], computed on the CPU in float64 first."""
        positions = positions.to("cpu", torch.float64)
        angles = []
        for axis, width in enumerate(axes_dims):
            frequencies = 1.0 / theta ** (torch.arange(0, width, 2, dtype=torch.float64) / width)
            angles.append((positions[..., axis, None] * frequencies).float())
        angle = rearrange(torch.cat(angles, dim=-1), "b s half -> b 1 s half")
        return cls(torch.cos(angle).to(device), torch.sin(angle).to(device))


def apply_rotary(x: torch.Tensor, tables: RotaryTables) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B, heads, S, head_dim] in float32; returns x's dtype."""
    pairs = rearrange(x.float(), "b h s (half two) -> b h s half two", two=2)
    real, imag = pairs.unbind(-1)
    rotated = torch.stack(
        (real * tables.cos - imag * tables.sin, real * tables.sin + imag * tables.cos),
        dim=-1,
    )
    return rearrange(rotated, "b h s half two -> b h s (half two)").type_as(x)
