"""The released L2P variants, identified by their pixel patch size."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One released L2P model family and its recommended sampling settings."""

    name: str
    patch_size: int
    # Local-decoder level names from the outermost (full resolution) inwards.
    decoder_levels: tuple[str, ...]
    steps: int
    cfg: float
    # The latent model whose backbone the variant was transferred from.
    source_model: str


# Settings from the official repositories: the 1K scripts use 30 steps at cfg 2.0, the HR
# (4K/8K/10K) scripts 50 steps at cfg 4.0. Both use shift 3.
VARIANTS = {
    16: Variant("1K", 16, ("1", "2", "3", "4"), 30, 2.0, "Z-Image-Turbo"),
    64: Variant("HR 4K", 64, ("0", "0b", "1", "2", "3", "4"), 50, 4.0, "Z-Image"),
    128: Variant("HR 8K", 128, ("_8k", "0", "0b", "1", "2", "3", "4"), 50, 4.0, "Z-Image"),
    160: Variant("HR 10K", 160, ("_10k_a", "0", "0b", "1", "2", "3"), 50, 4.0, "Z-Image"),
}
