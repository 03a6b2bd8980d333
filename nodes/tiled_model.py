"""Patch tiling as a patch on a ComfyUI MODEL: host wrappers around l2p_core's PatchTiler.

The L2P Patch Tiling node installs two wrappers under one key on a clone of the model:

- a DIFFUSION_MODEL wrapper, through which KSampler and SamplerCustomAdvanced call the
  network, so every model evaluation runs on overlapping tiles and blends them;
- a PREPARE_SAMPLING wrapper, active while the host estimates memory before sampling, so
  the model's estimate counts one group of tiles instead of the whole canvas.

The L2P Pixel Sampler reads the settings back with `tiling_settings` and hands them to
`l2p_core.sample`, which adds the guide pass that stock samplers lack.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

import comfy.model_management
import comfy.patcher_extension
import comfy.utils
import torch

from ..l2p_core import SamplingCancelled
from ..l2p_core.patch_tiling import PatchTiler
from .tiling_settings import TilingSettings

logger = logging.getLogger(__name__)

WRAPPER_KEY = "comfyui_l2p.patch_tiling"

# Tiling of the model whose sampling the host is preparing. BaseModel.memory_required
# receives only a shape, and the host calls it before the sampled clone is marked as the
# model's current patcher, so the PREPARE_SAMPLING wrapper publishes the settings here.
_PREPARING_TILING: ContextVar[TilingSettings | None] = ContextVar("l2p_preparing_tiling", default=None)


def install_tiling(model, settings: TilingSettings):
    """Return a clone of `model` whose network runs in tiles, replacing any earlier tiling."""
    clone = model.clone()
    for wrapper_type in (
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING,
    ):
        clone.remove_wrappers_with_key(wrapper_type, WRAPPER_KEY)
    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, PatchTilingWrapper(settings)
    )
    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, TiledMemoryEstimate(settings)
    )
    return clone


def tiling_settings(model) -> TilingSettings | None:
    """Return the patch tiling installed on a ModelPatcher, or None."""
    if model is None:
        return None
    for wrapper in model.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY):
        return wrapper.settings
    return None


def tiling_for_estimate(current_patcher) -> TilingSettings | None:
    """Return the tiling that a memory estimate of the model should assume right now."""
    return _PREPARING_TILING.get() or tiling_settings(current_patcher)


def raise_oom_as_torch_error(error: Exception) -> None:
    """Re-raise an error that the host counts as out of memory as torch.OutOfMemoryError.

    ComfyUI also counts accelerator errors with an out-of-memory code or message
    (comfy.model_management.is_oom), but PatchTiler retries smaller batches on
    torch.OutOfMemoryError only. Other errors are re-raised unchanged.
    """
    if isinstance(error, torch.OutOfMemoryError) or not comfy.model_management.is_oom(error):
        raise error
    raise torch.OutOfMemoryError(str(error)) from error


class HostNetwork:
    """The L2P network as PatchTiler and l2p_core.sample call it, with the host's out-of-memory errors."""

    def __init__(self, network) -> None:
        self.network = network
        self.config = network.config

    def parameters(self):
        return self.network.parameters()

    def reuse_captions(self):
        return self.network.reuse_captions()

    def __call__(self, x, sigma, context, **kwargs):
        try:
            return self.network(x, sigma, context, **kwargs)
        except Exception as error:
            raise_oom_as_torch_error(error)


class PatchTilingWrapper:
    """DIFFUSION_MODEL wrapper: evaluate the network on overlapping tiles and blend the velocities.

    Progress counts tiles × sampling steps on ComfyUI's progress bar; a cancel request
    stops before the next tile batch. When a tile batch runs out of memory, the smaller
    batch that worked is kept for later evaluations.
    """

    def __init__(self, settings: TilingSettings) -> None:
        self.settings = settings
        self.batch_size = settings.batch_size

    def __call__(self, executor, x, timesteps, context, **kwargs):
        network = executor.class_obj
        calls = _TileCalls(executor, network.config, context, kwargs)
        tiler = PatchTiler(
            calls,
            tile_px=self.settings.tile_px,
            overlap_px=self.settings.overlap_px,
            batch_size=self.batch_size,
            cancel_check=comfy.model_management.processing_interrupted,
        )
        progress = StepProgress(kwargs.get("transformer_options") or {}, len(tiler.tiles_for(*x.shape[-2:])))
        tiler.progress = progress.advance

        try:
            with network.decoder_tiles(self.settings.decoder_tile_px):
                # Each image's conditioning travels through PatchTiler as its batch index.
                return tiler(x, timesteps, list(range(x.shape[0])))
        except SamplingCancelled:
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
        finally:
            self.batch_size = tiler.batch_size


class TiledMemoryEstimate:
    """PREPARE_SAMPLING wrapper: make the model's memory estimate assume this tiling."""

    def __init__(self, settings: TilingSettings) -> None:
        self.settings = settings

    def __call__(self, executor, *args, **kwargs):
        token = _PREPARING_TILING.set(self.settings)
        try:
            return executor(*args, **kwargs)
        finally:
            _PREPARING_TILING.reset(token)


class _TileCalls:
    """Call the rest of the wrapper chain on a batch of tiles, the way PatchTiler calls a network.

    PatchTiler passes one context entry per window. Here each entry is the batch index of
    the image the window comes from. It selects that image's rows of the context and of
    every other per-image input, such as the attention mask.
    """

    def __init__(self, executor, config, context: torch.Tensor, kwargs: dict) -> None:
        self.executor = executor
        self.config = config
        self.context = context
        self.kwargs = kwargs

    def parameters(self):
        return self.executor.class_obj.parameters()

    def __call__(self, windows, sigmas, image_indices, token_offsets=None):
        batch = self.context.shape[0]
        indices = torch.tensor(list(image_indices), device=self.context.device)
        kwargs = {
            name: value.index_select(0, indices.to(value.device)) if _is_per_image(value, batch) else value
            for name, value in self.kwargs.items()
        }
        if token_offsets is not None:
            kwargs["token_offsets"] = token_offsets
        context = self.context.index_select(0, indices)
        try:
            return self.executor(windows, sigmas, context, **kwargs)
        except Exception as error:
            raise_oom_as_torch_error(error)


def _is_per_image(value, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch


class StepProgress:
    """Report tiles × steps on a ComfyUI progress bar from one model evaluation's tiles.

    The step comes from the sampler's σ schedule in transformer_options (`sample_sigmas`,
    and `sigmas` for the current evaluation), so the bar agrees with the sampler's own
    per-step bar at every step boundary. Without a schedule (a call outside a sampler) it
    reports nothing.
    """

    def __init__(self, transformer_options: dict, tiles: int) -> None:
        self.tiles = tiles
        self.done = 0
        self.bar = None
        schedule = transformer_options.get("sample_sigmas")
        current = transformer_options.get("sigmas")
        if schedule is None or current is None or len(schedule) < 2:
            return
        self.steps = len(schedule) - 1
        # The schedule falls from σ_0 to 0; evaluation at σ_s follows s entries above it.
        # NOTE: a sampler that evaluates the model more than once per step (cond and uncond
        # in separate batches, second-order samplers) runs the bar over that step again.
        sigma = float(current.reshape(-1)[0])
        above = int((schedule[:-1].float().cpu() > sigma * (1 + 1e-5)).sum())
        self.step = min(above, self.steps - 1)
        self.bar = comfy.utils.ProgressBar(self.steps * tiles)

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update_absolute(self.step * self.tiles + self.done, self.steps * self.tiles)
