"""Flow-matching noise schedules (σ grids)."""

from __future__ import annotations

import torch


def shift_sigma(u: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Map an unshifted noise level u ∈ [0, 1] to σ = shift·u / (1 + (shift − 1)·u)."""
    return shift * u / (1 + (shift - 1) * u)


def flow_sigmas(steps: int, *, shift: float = 3.0, denoise: float = 1.0) -> torch.Tensor:
    """Return the σ grid of `steps` Euler steps plus the final 0, float32 [steps + 1].

    This is the Z-Image `FlowMatchScheduler` of the reference code: the unshifted grid is
    linspace(denoise, 0, steps + 1) without its last point, shifted after, so img2img at
    strength 0.6 starts at σ = 3·0.6 / (1 + 2·0.6) ≈ 0.818 with shift 3. (ComfyUI's
    KSampler instead cuts a full-length shifted grid, starting near 0.857 at 4 steps.)
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}.")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1]; got {denoise}.")
    if shift <= 0:
        raise ValueError(f"shift must be positive; got {shift}.")

    unshifted = torch.linspace(denoise, 0.0, steps + 1, dtype=torch.float32)[:-1]
    sigmas = shift_sigma(unshifted, shift)
    return torch.cat([sigmas, sigmas.new_zeros(1)])
