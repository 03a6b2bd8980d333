"""Patch tiling: run the network on overlapping tiles of a large canvas and blend the velocities.

Each tile is a full L2P pass (backbone and local decoder) on a window of the canvas. The
per-tile velocities are blended with weights that ramp as sin² across each overlap, so
neighbouring weights sum to one and no seam shows on flat gradients. Tile edges lie on the
model's size grid (16 px for the 1K model).

RoPE positions: a tile's tokens keep their canvas (row, column) positions while the canvas
fits the trained position tables (512 tokens a side, 8192 px at patch 16). On a larger
canvas the tile origins are scaled so the last tile ends at token 512, which keeps every
position inside the trained range and the tiles in canvas order.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import L2PError, SamplingCancelled

logger = logging.getLogger(__name__)

# Length of the trained RoPE tables of the row and column axes (the reference's axes_lens).
MAX_POSITION_TOKENS = 512


@dataclass(frozen=True)
class Tile:
    """One tile: its pixel window, its RoPE token offset, and its blending weight [h, w]."""

    top: int
    bottom: int
    left: int
    right: int
    token_row: int
    token_col: int
    weight: torch.Tensor


def plan_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Return tile start positions covering [0, length) with tiles of `tile` px overlapping ≥ `overlap` px.

    Starts are spread evenly and rounded to `align`; the last tile ends at `length`. A
    length no larger than a tile gives one tile at 0 (which is then the whole axis).
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    stride = (length - tile) / (count - 1)
    starts = sorted({round(index * stride / align) * align for index in range(count)})
    starts[-1] = length - tile
    return starts


def sin2_ramp(size: int, overlap_before: int, overlap_after: int) -> torch.Tensor:
    """Return 1-D blending weights of one tile: sin² ramps over its overlaps, 1 elsewhere."""
    weight = torch.ones(size, dtype=torch.float64)
    position = torch.arange(size, dtype=torch.float64) + 0.5
    if overlap_before:
        rising = torch.sin(0.5 * math.pi * position[:overlap_before] / overlap_before) ** 2
        weight[:overlap_before] = rising
    if overlap_after:
        falling = torch.sin(0.5 * math.pi * (size - position[size - overlap_after :]) / overlap_after) ** 2
        weight[size - overlap_after :] = torch.minimum(weight[size - overlap_after :], falling)
    return weight.float()


def token_offset(start_px: int, canvas_px: int, tile_px: int, patch: int) -> int:
    """Return a tile's RoPE offset in tokens under the position policy in the module docstring."""
    start, canvas, tile = start_px // patch, canvas_px // patch, tile_px // patch
    if canvas <= MAX_POSITION_TOKENS:
        return start
    return round(start * (MAX_POSITION_TOKENS - tile) / (canvas - tile))


def plan_tiles(height: int, width: int, tile_px: int, overlap_px: int, align: int, patch: int) -> list[Tile]:
    """Cover a height×width canvas with overlapping tiles (at most tile_px a side)."""
    tile_h, tile_w = min(tile_px, height), min(tile_px, width)
    rows = plan_starts(height, tile_h, overlap_px, align)
    cols = plan_starts(width, tile_w, overlap_px, align)

    def ramps(starts: list[int], size: int) -> list[torch.Tensor]:
        weights = []
        for index, start in enumerate(starts):
            before = starts[index - 1] + size - start if index > 0 else 0
            after = start + size - starts[index + 1] if index + 1 < len(starts) else 0
            weights.append(sin2_ramp(size, before, after))
        return weights

    row_weights, col_weights = ramps(rows, tile_h), ramps(cols, tile_w)
    tiles = []
    for top, row_weight in zip(rows, row_weights, strict=True):
        for left, col_weight in zip(cols, col_weights, strict=True):
            tiles.append(
                Tile(
                    top, top + tile_h, left, left + tile_w,
                    token_offset(top, height, tile_h, patch), token_offset(left, width, tile_w, patch),
                    torch.outer(row_weight, col_weight),
                )
            )  # fmt: skip
    return tiles


def check_tile_settings(tile_px: int, overlap_px: int, multiple: int) -> None:
    """Raise ValueError unless tile and overlap sit on the model's grid and overlap < tile."""
    if tile_px <= 0 or tile_px % multiple:
        raise ValueError(f"Tile size {tile_px} px is not a positive multiple of {multiple} px, the model's grid.")
    if overlap_px < 0 or overlap_px % multiple:
        raise ValueError(f"Tile overlap {overlap_px} px is not a multiple of {multiple} px, the model's grid.")
    if overlap_px >= tile_px:
        raise ValueError(f"Tile overlap {overlap_px} px must be smaller than the tile size {tile_px} px.")


class PatchTiler:
    """Call an L2P network tile by tile with the same interface as the network itself.

    `progress(tiles_done)` runs after each batch of tiles, `cancel_check()` before it. When
    a batch of tiles runs out of memory, the batch is halved and retried; a single tile
    that does not fit raises L2PError.
    """

    def __init__(
        self,
        model,
        *,
        tile_px: int,
        overlap_px: int,
        batch_size: int = 1,
        progress: Callable[[int], None] | None = None,
        cancel_check: Callable[[], bool] | None = None,
    ) -> None:
        self.model = model
        self.config = model.config
        check_tile_settings(tile_px, overlap_px, model.config.size_multiple)
        if batch_size < 1:
            raise ValueError(f"Tile batch size must be at least 1; got {batch_size}.")
        self.tile_px = tile_px
        self.overlap_px = overlap_px
        self.batch_size = batch_size
        self.progress = progress
        self.cancel_check = cancel_check

    def parameters(self):
        return self.model.parameters()

    def reuse_captions(self):
        reuse = getattr(self.model, "reuse_captions", None)
        return reuse() if reuse is not None else contextlib.nullcontext()

    def tiles_for(self, height: int, width: int) -> list[Tile]:
        config = self.config
        return plan_tiles(height, width, self.tile_px, self.overlap_px, config.size_multiple, config.patch_size)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: Sequence[torch.Tensor]) -> torch.Tensor:
        height, width = x.shape[-2:]
        tiles = self.tiles_for(height, width)
        if len(tiles) == 1:
            # One tile is the whole canvas: the untiled call, bit for bit.
            self._check_cancel()
            velocity = self.model(x, sigma, context)
            self._report(1)
            return velocity

        blended = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        weight_sum = torch.zeros((height, width), dtype=torch.float32, device=x.device)
        index = 0
        while index < len(tiles):
            self._check_cancel()
            group = tiles[index : index + self.batch_size]
            try:
                velocities = self._run_group(x, sigma, context, group)
            except torch.OutOfMemoryError as error:
                self._shrink_batch(error)
                continue
            for tile, velocity in zip(group, velocities, strict=True):
                weight = tile.weight.to(x.device)
                blended[..., tile.top : tile.bottom, tile.left : tile.right] += velocity.float() * weight
                weight_sum[tile.top : tile.bottom, tile.left : tile.right] += weight
            index += len(group)
            self._report(len(group))
        return (blended / weight_sum).to(x.dtype)

    def _run_group(self, x, sigma, context, group: list[Tile]) -> list[torch.Tensor]:
        batch = x.shape[0]
        windows = torch.cat([x[..., tile.top : tile.bottom, tile.left : tile.right] for tile in group])
        offsets = torch.tensor([(tile.token_row, tile.token_col) for tile in group for _ in range(batch)])
        sigmas = torch.as_tensor(sigma, device=x.device).expand(batch).repeat(len(group))
        velocity = self.model(windows, sigmas, list(context) * len(group), token_offsets=offsets)
        return list(velocity.split(batch))

    def _shrink_batch(self, error: torch.OutOfMemoryError) -> None:
        if self.batch_size == 1:
            raise L2PError(
                f"Out of memory on a single {self.tile_px}×{self.tile_px} px tile. Lower the tile size, "
                "load the model in a smaller dtype, or free memory used by other models."
            ) from error
        self.batch_size = max(1, self.batch_size // 2)
        logger.warning("Out of memory in a tile batch; retrying with %d tile(s) per batch", self.batch_size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _check_cancel(self) -> None:
        if self.cancel_check is not None and self.cancel_check():
            raise SamplingCancelled("Sampling was cancelled between tiles.")

    def _report(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count)
