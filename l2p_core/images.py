"""Conversions between model-scale images in [-1, 1] and 8-bit RGB."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Convert [B, 3, H, W] in [-1, 1] to uint8 [B, H, W, 3] as the reference does.

    round(clamp((x + 1) / 2, 0, 1) · 255) in float32 with round-half-to-even. (ComfyUI's
    SaveImage truncates instead, so the two differ by one level on about a third of values.)
    """
    scaled = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1) * 255
    return np.round(rearrange(scaled, "b c h w -> b h w c").numpy()).astype(np.uint8)


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """Convert uint8 [B, H, W, 3] (or [H, W, 3]) to float32 [B, 3, H, W] in [-1, 1] as v·2/255 − 1."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).float()
    if tensor.ndim == 3:
        tensor = tensor[None]
    return rearrange(tensor * (2 / 255) + (-1), "b h w c -> b c h w")
