"""The "auto" sampling settings of the L2P Pixel Sampler: each variant's recommended steps and cfg."""

from __future__ import annotations

import logging

from ..l2p_core.variants import VARIANTS

logger = logging.getLogger(__name__)

# Widget value that selects the variant's preset: 0 steps cannot run, and cfg 0 would
# keep only the negative prompt's prediction.
AUTO = 0


def resolve_steps_and_cfg(config, steps: int, cfg: float) -> tuple[int, float]:
    """Replace an AUTO steps or cfg by the preset of the model's variant (30 / 2.0 for 1K, 50 / 4.0 for HR)."""
    # The loader accepts only the released variants, so every loaded model has a preset.
    variant = VARIANTS[config.patch_size]
    resolved = (variant.steps if steps == AUTO else steps, variant.cfg if cfg == AUTO else cfg)
    if steps == AUTO or cfg == AUTO:
        logger.info("L2P %s preset: %d steps, cfg %.1f", variant.name, *resolved)
    return resolved
