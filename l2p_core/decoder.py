"""The local decoder: a conv U-Net that turns the noisy image plus backbone features into x₀ − ε.

The encoder runs at full resolution and max-pools once per level down to the token grid,
where a 1×1 bottleneck mixes the pooled image with the backbone's feature map. The way up
is nearest ×2 upsampling and a 3×3 conv, concatenated with the level's skip, then a 3×3
conv + SiLU. The depth and channel counts come from `DecoderConfig`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderConfig


class LocalDecoder(nn.Module):
    def __init__(self, decoder: DecoderConfig, feature_dim: int, *, operations, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.level_names = tuple(level.name for level in decoder.levels)

        for level in decoder.levels:
            enc = nn.Sequential(operations.Conv2d(level.enc_in, level.enc_out, 3, padding=1, **factory), nn.SiLU())
            up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                operations.Conv2d(level.up_in, level.up_out, 3, padding=1, **factory),
            )
            dec = nn.Sequential(
                operations.Conv2d(level.up_out + level.enc_out, level.dec_out, 3, padding=1, **factory),
                nn.SiLU(),
            )
            self.add_module(f"enc{level.name}", enc)
            self.add_module(f"up{level.name}", up)
            self.add_module(f"dec{level.name}", dec)

        bottleneck_in = decoder.levels[-1].enc_out + feature_dim
        self.bottleneck = nn.Sequential(
            operations.Conv2d(bottleneck_in, decoder.bottleneck_out, 1, **factory), nn.SiLU()
        )
        self.out_conv = operations.Conv2d(decoder.levels[0].dec_out, decoder.out_channels, 1, **factory)
        # Run the convolutions on channels-last (NHWC) activations; the output is returned
        # contiguous (NCHW). On a 2-core x86_64 CPU this made the decoder 1.08× (released
        # widths) to 1.23× (quarter widths) faster at 512² (benchmarks/speed.py).
        # NOTE: the CUDA speed-up is expected from cuDNN's NHWC kernels but not yet measured.
        self.channels_last = True

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Map image [B, C, H, W] and features [B, D, h, w] on the token grid to [B, C, H, W]."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
            features = features.contiguous(memory_format=torch.channels_last)
            return self._forward(image, features).contiguous()
        return self._forward(image, features)

    def _forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        skips = []
        hidden = image
        for name in self.level_names:
            hidden = self.get_submodule(f"enc{name}")(hidden)
            skips.append(hidden)
            hidden = F.max_pool2d(hidden, 2)

        # The reference resizes the feature map when the pooled grid differs (nearest).
        if features.shape[-2:] != hidden.shape[-2:]:
            features = F.interpolate(features, size=hidden.shape[-2:], mode="nearest")
        hidden = self.bottleneck(torch.cat([hidden, features.to(hidden.dtype)], dim=1))

        for name, skip in zip(reversed(self.level_names), reversed(skips), strict=True):
            hidden = self.get_submodule(f"up{name}")(hidden)
            hidden = self.get_submodule(f"dec{name}")(torch.cat([hidden, skip], dim=1))
        return self.out_conv(hidden)
