"""Tile geometry and the tiled local decoder.

The local decoder is a conv U-Net, so an output pixel depends only on input pixels within
its receptive field. Running it on windows that extend each tile by a halo at least that
wide, and keeping only the tile's own pixels, reproduces the untiled result while peak
activation memory follows the window size instead of the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .decoder import LocalDecoder


@dataclass(frozen=True)
class Span:
    """One tile along an axis: the pixels it produces, [start, end), and its input window."""

    start: int
    end: int
    window_start: int
    window_end: int


def plan_spans(length: int, tile: int, halo: int, align: int) -> list[Span]:
    """Cut [0, length) into tiles of at most `tile` pixels, each with `halo` pixels of context.

    All boundaries are multiples of `align` (which must divide `length`, `tile` and `halo`),
    so pooling cells and token cells never straddle a window edge.
    """
    for name, value in (("length", length), ("tile", tile), ("halo", halo)):
        if value % align:
            raise ValueError(f"{name} {value} is not a multiple of {align} px.")
    if tile <= 0:
        raise ValueError(f"tile size must be positive; got {tile}.")

    spans = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        spans.append(Span(start, end, max(0, start - halo), min(length, end + halo)))
    return spans


def receptive_radius(depth: int) -> int:
    """Return how far (in pixels) an output pixel of a `depth`-level decoder can see.

    Level k works at scale s = 2^k; its encoder conv, max-pool, up conv and skip conv each
    widen the view by at most s pixels, so the radius is at most 4·(2^depth − 1).
    """
    return 4 * (2**depth - 1)


def decode_tiled(
    decoder: LocalDecoder,
    image: torch.Tensor,
    features: torch.Tensor,
    *,
    tile_px: int,
    align_px: int,
    token_px: int,
) -> torch.Tensor:
    """Run the local decoder tile by tile; same result as `decoder(image, features)`.

    `align_px` is the model's size multiple and `token_px` its patch size: window edges
    sit on both grids, so the features of a window are an exact crop of the feature map.
    """
    depth = len(decoder.level_names)
    halo = -(-receptive_radius(depth) // align_px) * align_px
    tile = max(align_px, tile_px // align_px * align_px)
    height, width = image.shape[-2:]

    output = None
    for rows in plan_spans(height, tile, halo, align_px):
        for cols in plan_spans(width, tile, halo, align_px):
            window = image[..., rows.window_start : rows.window_end, cols.window_start : cols.window_end]
            window_features = features[
                ...,
                rows.window_start // token_px : rows.window_end // token_px,
                cols.window_start // token_px : cols.window_end // token_px,
            ]
            decoded = decoder(window, window_features)
            if output is None:
                output = decoded.new_empty((*decoded.shape[:2], height, width))
            output[..., rows.start : rows.end, cols.start : cols.end] = decoded[
                ...,
                rows.start - rows.window_start : rows.end - rows.window_start,
                cols.start - cols.window_start : cols.end - cols.window_start,
            ]
    return output
