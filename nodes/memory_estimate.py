"""Estimate the working memory of L2P forward passes, untiled or with patch tiling.

ComfyUI calls a model's `BaseModel.memory_required` for the memory one forward pass needs
besides its weights, and frees or offloads other models to make room. The
estimate here follows the host's own formula for Z-Image for the backbone and counts the
local decoder's full-resolution tensors. With patch tiling, activations follow one tile
(times the tile batch), and only the canvas-sized buffers of the sampler and the tile
blending grow with the image. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math

from ..l2p_core.tiling import receptive_radius
from .tiling_settings import TilingSettings, count_tiles

MIB = 2**20

# ComfyUI's Z-Image config (comfy/supported_models.py, class ZImage, ComfyUI 0.33) sets
# memory_usage_factor 2.8 over the latent area. Each Z-Image token covers 2×2 latent
# pixels, and L2P runs the same backbone on one token per pixel patch.
ZIMAGE_FACTOR_PER_TOKEN = 4 * 2.8
# Hidden width of the Z-Image backbone that factor was set for. Narrower networks (the
# test and benchmark models) scale the estimate by their width over this one.
ZIMAGE_DIM = 3840
# ComfyUI's BaseModel.memory_required (ComfyUI 0.33): factor × area × dtype bytes × 0.01
# MiB with memory-efficient attention (xformers, or PyTorch flash attention on GPUs), and
# factor × area × 0.15 MiB otherwise (the CPU, and GPUs without those kernels).
EFFICIENT_ATTENTION_MIB_PER_BYTE = 0.01
OTHER_ATTENTION_MIB = 0.15

# The decoder's 3×3 convolutions need workspace besides the tensors alive at its
# outermost level (the skip, the upsampled map, their concatenation and the conv output).
# benchmarks/tiling_memory.py measured 1.5 (whole 4096² image) to 2.0 (1152-px windows)
# times those tensors on a 2-core CPU in float32 (docs/benchmarks.md), so the estimate
# takes 2.5 times them for headroom.
DECODER_WORKSPACE_FACTOR = 2.5
# Copies of the image in the network's dtype: the input cast, the decoder output, its
# negation and the cast back.
IMAGE_COPIES = 4
# Float32 canvas-sized buffers alive during sampling: the sampler's state, noise and Euler
# temporaries and, when tiled, the guide, the blended velocity and its normalised copy.
# benchmarks/tiling_memory.py measured tiled peak memory growing by 7.8 such buffers per
# canvas from 4096² to 8192².
CANVAS_BUFFERS = 8
CANVAS_BYTES_PER_VALUE = 4


class MemoryEstimateError(ValueError):
    """A request whose estimated working memory exceeds the device's total memory."""


def forward_bytes(
    config, height: int, width: int, dtype_bytes: int, *, efficient_attention: bool, decoder_tile_px: int | None
) -> float:
    """Estimate the peak bytes of one image's forward pass at height×width px.

    The backbone's activations are freed before the local decoder runs, so the peak is the
    larger of the two phases. The token feature map and the image copies live through both.
    """
    tokens = (height // config.patch_size) * (width // config.patch_size)
    if efficient_attention:
        mib_per_unit = EFFICIENT_ATTENTION_MIB_PER_BYTE * dtype_bytes
    else:
        mib_per_unit = OTHER_ATTENTION_MIB
    backbone = tokens * ZIMAGE_FACTOR_PER_TOKEN * mib_per_unit * MIB * config.dim / ZIMAGE_DIM

    decoder = decoder_bytes(config, height, width, dtype_bytes, decoder_tile_px=decoder_tile_px)

    features = tokens * config.dim * dtype_bytes
    images = IMAGE_COPIES * config.in_channels * height * width * dtype_bytes
    return max(backbone, decoder + features) + images


def decoder_bytes(config, height: int, width: int, dtype_bytes: int, *, decoder_tile_px: int | None) -> float:
    """Estimate the local decoder's working memory for one height×width image, in bytes.

    It counts the outermost level's full-resolution tensors over the whole image or, when
    the decoder runs in tiles, over one tile widened by its halo as `decode_tiled` does.
    """
    outer = config.decoder.levels[0]
    values_per_pixel = 2 * (outer.enc_out + outer.up_out) + outer.dec_out
    if decoder_tile_px is None or max(height, width) <= decoder_tile_px:
        return height * width * values_per_pixel * DECODER_WORKSPACE_FACTOR * dtype_bytes

    multiple = config.size_multiple
    halo = math.ceil(receptive_radius(config.decoder.depth) / multiple) * multiple
    window = max(multiple, decoder_tile_px // multiple * multiple) + 2 * halo
    window_area = min(height, window) * min(width, window)
    # A window's output waits for its tile to be copied into the image.
    values_per_pixel = values_per_pixel * DECODER_WORKSPACE_FACTOR + config.in_channels
    return window_area * values_per_pixel * dtype_bytes


def activation_bytes(
    config,
    shape,
    dtype_bytes: int,
    *,
    efficient_attention: bool,
    decoder_tile_px: int | None,
    tiling: TilingSettings | None = None,
) -> float:
    """Estimate the working memory, in bytes, of a forward pass over a batch `shape` [B, C, H, W].

    Untiled, the pass covers the whole image. With `tiling`, it covers one group of
    `tiling.batch_size` tiles per image, and the tiling's decoder tile replaces
    `decoder_tile_px`. The canvas-sized sampling buffers are added in both cases.
    """
    batch, height, width = shape[0], shape[-2], shape[-1]
    canvas = CANVAS_BUFFERS * config.in_channels * height * width * CANVAS_BYTES_PER_VALUE
    if tiling is None:
        passes = forward_bytes(
            config, height, width, dtype_bytes, efficient_attention=efficient_attention, decoder_tile_px=decoder_tile_px
        )
    else:
        group = min(tiling.batch_size, count_tiles(height, width, tiling, config.size_multiple))
        passes = group * forward_bytes(
            config,
            min(tiling.tile_px, height),
            min(tiling.tile_px, width),
            dtype_bytes,
            efficient_attention=efficient_attention,
            decoder_tile_px=tiling.decoder_tile_px,
        )
    return batch * (passes + canvas)
