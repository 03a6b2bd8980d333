"""Run l2p_core's sampler inside ComfyUI: memory management, progress, previews, cancel, tiling.

This module imports ComfyUI's model code, so the sampler node imports it only when it runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import comfy.model_management
import comfy.utils
import latent_preview
import torch
from einops import rearrange

from ..l2p_core import SamplingCancelled, sample
from .conditioning import caption_features
from .diffusion_model import l2p_network
from .memory_estimate import MemoryEstimateError
from .presets import resolve_steps_and_cfg
from .tiled_model import HostNetwork, tiling_settings
from .tiling_settings import TilingSettings, default_tiling

GIB = 2**30


def sample_images(
    model,
    positive,
    negative,
    *,
    width: int,
    height: int,
    batch_size: int,
    seed: int,
    steps: int,
    cfg: float,
    shift: float,
) -> torch.Tensor:
    """Generate an IMAGE batch [B, height, width, 3] in [0, 1] with the patched weights of `model`.

    `steps` or `cfg` 0 take the model variant's preset. The model is loaded through
    ComfyUI's memory management, so LoRA patches apply and other models are offloaded as
    needed. With the L2P Patch Tiling node on the model, the network runs in tiles after a
    guide pass at one tile's area. Progress and live previews (if the user's preview
    setting allows them) follow the steps, or tiles × steps when tiled. A cancel request
    stops the run before the next step or tile batch.
    """
    network = l2p_network(model)
    config = network.config
    positive_captions = caption_features(positive, "positive", config.cap_feat_dim)
    negative_captions = caption_features(negative, "negative", config.cap_feat_dim)
    multiple = config.size_multiple
    if width % multiple or height % multiple:
        raise ValueError(
            f"The L2P {config.variant} model needs width and height in multiples of {multiple} px; got "
            f"{width}×{height}. Use for example {max(multiple, round(width / multiple) * multiple)}×"
            f"{max(multiple, round(height / multiple) * multiple)}."
        )
    steps, cfg = resolve_steps_and_cfg(config, steps, cfg)

    shape = (batch_size, config.in_channels, height, width)
    with host_sampling(model, shape, steps) as (host_network, options):
        images = sample(
            host_network,
            positive_captions,
            negative_captions,
            width=width,
            height=height,
            seed=seed,
            steps=steps,
            cfg=cfg,
            shift=shift,
            batch_size=batch_size,
            **options,
        )

    pixels = rearrange((images + 1) / 2, "b c h w -> b h w c")
    return pixels.to(
        device=comfy.model_management.intermediate_device(), dtype=comfy.model_management.intermediate_dtype()
    )


@contextmanager
def host_sampling(model, shape: tuple[int, int, int, int], steps: int, node: str = "L2P Pixel Sampler"):
    """Load `model` for one l2p_core run of `shape` [B, C, H, W] and yield (network, sampling options).

    The options are l2p_core.sample's callback, cancel_check, device and tiling arguments.
    The positive and negative passes run one after the other, as in the reference, because
    batching them doubles the working memory that the host budgets for.
    Before loading, the working-memory estimate of `shape` is checked against the device
    (MemoryEstimateError names `node`). The model is loaded through ComfyUI's memory
    management, so LoRA patches apply and other models are offloaded as needed. Progress
    and live previews (if the user's preview setting allows them) follow the steps, or
    tiles × steps when tiled. A cancel request ends the prompt as cancelled.
    """
    network = l2p_network(model)
    tiling = tiling_settings(model)
    device = model.load_device
    memory = _check_memory(model, shape, tiling, device, node)
    comfy.model_management.load_models_gpu([model], memory_required=memory, minimum_memory_required=memory)
    progress = _TiledProgress(model) if tiling is not None else _UntiledProgress(model, steps)
    options = {
        "callback": progress.on_step,
        "cancel_check": comfy.model_management.processing_interrupted,
        "device": device,
        **_tiling_arguments(tiling, progress),
    }

    with comfy.model_management.cuda_device_context(device):
        model.pre_run()
        try:
            with network.decoder_tiles(tiling.decoder_tile_px if tiling else network.decoder_tile_px):
                yield HostNetwork(network), options
        except SamplingCancelled:
            # Turn l2p_core's cancel into the host's interrupt, which ends the prompt as cancelled.
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
        finally:
            model.cleanup()


def _tiling_arguments(tiling: TilingSettings | None, progress) -> dict:
    if tiling is None:
        return {}
    return {
        "tile_size": tiling.tile_px,
        "tile_overlap": tiling.overlap_px,
        "tile_batch_size": tiling.batch_size,
        "tile_progress": progress.on_tiles,
    }


def _check_memory(model, shape, tiling: TilingSettings | None, device, node: str) -> float:
    """Return the working-memory estimate, or raise MemoryEstimateError if the device cannot hold it.

    Weights can be offloaded and streamed, so only the working memory has to fit.
    """
    memory = model.model.working_memory(shape, tiling)
    total = comfy.model_management.get_total_memory(device)
    if memory <= total:
        return memory

    batch, _, height, width = shape
    request = f"{batch} image(s) of {width}×{height}" + (f" with {tiling.describe()}" if tiling else ", untiled")
    config = model.model.diffusion_model.config
    if tiling is None:
        suggestion = default_tiling(config)
        advice = (
            f"Add an L2P Patch Tiling node before the sampler (with {suggestion.describe()} this request "
            f"needs about {model.model.working_memory(shape, suggestion) / GIB:.1f} GiB), or lower the "
            "size or batch size."
        )
    else:
        advice = "Lower the tile size or the tile batch size, the image size, or the batch size."
    raise MemoryEstimateError(
        f"The {node} would need about {memory / GIB:.1f} GiB of working memory for {request}, "
        f"more than the {total / GIB:.1f} GiB that {device} has in total. {advice}"
    )


class _UntiledProgress:
    """Untiled progress: one unit per step, with the step's x₀ estimate as preview."""

    def __init__(self, model, steps: int) -> None:
        self.preview = latent_preview.prepare_callback(model, steps)

    def on_step(self, step: int, total: int, x0: torch.Tensor) -> None:
        # The host callback counts steps from 0 and raises InterruptProcessingException
        # when the user cancels, like KSampler's.
        self.preview(step - 1, x0, None, total)


class _TiledProgress:
    """Tiled progress: l2p_core's count of network calls (guide steps, then tiles × steps).

    The bar moves after every tile batch, and its update raises InterruptProcessingException
    when the user cancels. Each step's x₀ estimate (the guide's, then the canvas's) becomes
    the preview.
    """

    def __init__(self, model) -> None:
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.bar = comfy.utils.ProgressBar(1)

    def on_tiles(self, done: int, total: int) -> None:
        self.bar.update_absolute(done, total)

    def on_step(self, step: int, total: int, x0: torch.Tensor) -> None:
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
            self.bar.update_absolute(self.bar.current, self.bar.total, preview)
