"""Patch-tiling settings of a MODEL: what the L2P Patch Tiling node sets, its checks and defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..l2p_core.network import DEFAULT_DECODER_TILE_PX
from ..l2p_core.patch_tiling import plan_starts
from ..l2p_core.sampling import default_tile_overlap

# Every L2P variant was trained on a 64×64 token grid: 1024 px at patch 16 (1K), 4096 px
# at patch 64 (HR 4K) and so on.
TRAINED_GRID_TOKENS = 64


@dataclass(frozen=True)
class TilingSettings:
    """Tile side, overlap (px), tiles per network call, and the decoder's tile side (None: untiled)."""

    tile_px: int
    overlap_px: int
    batch_size: int
    decoder_tile_px: int | None

    def describe(self) -> str:
        decoder = f"{self.decoder_tile_px}-px decoder tiles" if self.decoder_tile_px else "the decoder untiled"
        return f"{self.tile_px}-px tiles, {self.overlap_px}-px overlap, {self.batch_size} per call, {decoder}"


def default_tiling(config) -> TilingSettings:
    """Return tiles of the trained token grid with a quarter-tile overlap, one per call, on the model's grid."""
    multiple = config.size_multiple
    tile_px = TRAINED_GRID_TOKENS * config.patch_size // multiple * multiple
    decoder_tile_px = max(multiple, DEFAULT_DECODER_TILE_PX // multiple * multiple)
    return TilingSettings(tile_px, default_tile_overlap(tile_px, multiple), 1, decoder_tile_px)


def check_tiling(config, settings: TilingSettings) -> None:
    """Raise ValueError naming the input and the model's grid unless the settings fit the model."""
    multiple = config.size_multiple
    grid = f"the {multiple}-px grid of the L2P {config.variant} model"
    trained = TRAINED_GRID_TOKENS * config.patch_size

    if settings.tile_px <= 0 or settings.tile_px % multiple:
        raise ValueError(
            f"L2P Patch Tiling: tile_size {settings.tile_px} px is not on {grid}. Use a multiple of {multiple}, "
            f"for example {_nearest_multiple(settings.tile_px, multiple)} ({trained} px is the model's trained "
            f"{TRAINED_GRID_TOKENS}×{TRAINED_GRID_TOKENS} token grid)."
        )
    if settings.overlap_px < 0 or settings.overlap_px % multiple:
        raise ValueError(
            f"L2P Patch Tiling: tile_overlap {settings.overlap_px} px is not on {grid}. Use a multiple of "
            f"{multiple}, for example {_nearest_multiple(settings.overlap_px, multiple, minimum=0)}."
        )
    if settings.overlap_px >= settings.tile_px:
        raise ValueError(
            f"L2P Patch Tiling: tile_overlap {settings.overlap_px} px must be smaller than tile_size "
            f"{settings.tile_px} px; a quarter of the tile ({default_tile_overlap(settings.tile_px, multiple)} px) "
            "works well."
        )
    if settings.batch_size < 1:
        raise ValueError(f"L2P Patch Tiling: tile_batch_size must be at least 1; got {settings.batch_size}.")
    decoder = settings.decoder_tile_px
    if decoder is not None and (decoder <= 0 or decoder % multiple):
        raise ValueError(
            f"L2P Patch Tiling: decoder_tile_size {decoder} px is not on {grid}. Use a multiple of {multiple}, "
            f"for example {_nearest_multiple(decoder, multiple)}, or 0 to run the decoder in one piece."
        )


def count_tiles(height: int, width: int, settings: TilingSettings, multiple: int) -> int:
    """Return how many tiles cover a height×width canvas (the same plan as l2p_core's PatchTiler)."""
    rows = plan_starts(height, min(settings.tile_px, height), settings.overlap_px, multiple)
    cols = plan_starts(width, min(settings.tile_px, width), settings.overlap_px, multiple)
    return len(rows) * len(cols)


def _nearest_multiple(value: int, multiple: int, minimum: int | None = None) -> int:
    return max(multiple if minimum is None else minimum, round(value / multiple) * multiple)
