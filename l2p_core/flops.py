"""Analytic count of the matrix work in one L2P forward pass and one sampling step.

Counts are floating-point operations of the matrix products and convolutions, two per
multiply-add: the linear layers, the attention score and value products, and every
convolution of the local decoder. Element-wise work (norms, RoPE, activations, pooling) is
left out; it is a small share of the time on hardware that is near its matmul limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import L2PConfig


@dataclass(frozen=True)
class ForwardFlops:
    """Matrix FLOPs of one forward pass of a batch, by part of the network."""

    image_backbone: float  # patch embedder, time embedder, noise refiner and joint blocks
    captions: float  # caption embedder and context refiner, which do not depend on σ
    decoder: float  # the local decoder's convolutions

    @property
    def backbone(self) -> float:
        return self.image_backbone + self.captions

    @property
    def total(self) -> float:
        return self.backbone + self.decoder


def padded(length: int, multiple: int) -> int:
    return length + (-length % multiple)


def block_flops(config: L2PConfig, tokens: int, *, modulated: bool) -> float:
    """Return the matrix FLOPs of one transformer block on a sequence of `tokens` tokens."""
    dim, hidden = config.dim, config.ffn_hidden
    projections = 2 * tokens * (3 * dim * dim + dim * dim)
    attention = 2 * 2 * tokens * tokens * dim  # scores q·kᵀ and the weighted sum of v, over all heads
    feed_forward = 2 * tokens * 3 * dim * hidden
    modulation = 2 * config.adaln_dim * 4 * dim if modulated else 0
    return projections + attention + feed_forward + modulation


def decoder_flops(config: L2PConfig, height: int, width: int) -> float:
    """Return the convolution FLOPs of the local decoder on one height×width image."""
    decoder = config.decoder
    total = 0.0
    for depth, level in enumerate(decoder.levels):
        pixels = (height >> depth) * (width >> depth)
        total += 2 * pixels * 9 * level.enc_in * level.enc_out
        total += 2 * pixels * 9 * level.up_in * level.up_out
        total += 2 * pixels * 9 * (level.up_out + level.enc_out) * level.dec_out
    grid = (height >> decoder.depth) * (width >> decoder.depth)
    total += 2 * grid * (decoder.levels[-1].enc_out + config.dim) * decoder.bottleneck_out
    total += 2 * height * width * decoder.levels[0].dec_out * decoder.out_channels
    return total


def forward_flops(config: L2PConfig, height: int, width: int, caption_tokens: int, batch: int = 1) -> ForwardFlops:
    """Return the matrix FLOPs of one forward pass on `batch` images with captions of `caption_tokens` tokens."""
    patch = config.patch_size
    image_tokens = (height // patch) * (width // patch)
    image_len = padded(image_tokens, config.seq_multiple)
    caption_len = padded(caption_tokens, config.seq_multiple)

    embed = 2 * image_tokens * config.in_channels * patch * patch * config.dim
    time = 2 * (config.t_freq_dim * config.t_embed_hidden + config.t_embed_hidden * config.adaln_dim)
    refine_image = config.n_refiner_layers * block_flops(config, image_len, modulated=True)
    joint = config.n_layers * block_flops(config, image_len + caption_len, modulated=True)
    image_backbone = embed + time + refine_image + joint

    embed_captions = 2 * caption_tokens * config.cap_feat_dim * config.dim
    captions = embed_captions + config.n_refiner_layers * block_flops(config, caption_len, modulated=False)
    return ForwardFlops(
        image_backbone=batch * image_backbone,
        captions=batch * captions,
        decoder=batch * decoder_flops(config, height, width),
    )


def step_flops(
    config: L2PConfig,
    height: int,
    width: int,
    caption_tokens: int,
    *,
    cfg: float,
    negative_tokens: int | None = None,
    batch: int = 1,
    captions_cached: bool = True,
) -> float:
    """Return the matrix FLOPs of one sampling step: one forward pass, two with guidance (cfg ≠ 1).

    With `captions_cached` the caption path runs once per prompt, not per step, so it is
    left out of the step. Each branch counts at its own caption length: this is the useful
    work, which a batched pass exceeds by the padding of the shorter caption.
    """
    passes = [caption_tokens] if cfg == 1.0 else [caption_tokens, negative_tokens or caption_tokens]
    total = 0.0
    for tokens in passes:
        flops = forward_flops(config, height, width, tokens, batch)
        total += flops.image_backbone + flops.decoder + (0.0 if captions_cached else flops.captions)
    return total
