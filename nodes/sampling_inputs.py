"""Schema inputs that the L2P Pixel Sampler and L2P Edit share, defined once so they stay alike."""

from __future__ import annotations

from comfy_api.latest import io


def seed_input(tooltip: str) -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tooltip)


def steps_input(tooltip: str) -> io.Int.Input:
    """Steps, where 0 (the default) means the model variant's preset."""
    return io.Int.Input("steps", default=0, min=0, max=1000, tooltip=tooltip)


def cfg_input() -> io.Float.Input:
    """Guidance scale, where 0 (the default) means the model variant's preset."""
    return io.Float.Input(
        "cfg",
        default=0.0,
        min=0.0,
        max=100.0,
        step=0.1,
        round=0.01,
        tooltip=(
            "Classifier-free guidance scale; 1 skips the negative pass. 0 (auto) uses the model's "
            "preset: 2.0 for the 1K model, 4.0 for the HR models."
        ),
    )


def shift_input() -> io.Float.Input:
    return io.Float.Input(
        "shift",
        default=3.0,
        min=0.01,
        max=100.0,
        step=0.01,
        tooltip=(
            "Time shift of the σ schedule, σ = shift·t / (1 + (shift − 1)·t). The official 1K and HR "
            "pipelines use 3; the L2P paper (arXiv 2605.12013) reports that a larger shift helps "
            "global structure at 4K."
        ),
    )
