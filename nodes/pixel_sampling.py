"""Run l2p_core's sampler inside ComfyUI: memory management, progress, previews, cancel.

This module imports ComfyUI's model code, so the sampler node imports it only when it runs.
"""

from __future__ import annotations

import comfy.model_management
import latent_preview
import torch
from einops import rearrange

from ..l2p_core import SamplingCancelled, sample
from .conditioning import caption_features
from .host_model import l2p_network


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

    The model is loaded through ComfyUI's memory management, so LoRA patches apply and
    other models are offloaded as needed. Each step updates the progress bar with a preview
    of its x₀ estimate (if the user's preview setting allows one), and a cancel request
    stops the run before the next step.
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

    shape = (batch_size, config.in_channels, height, width)
    memory = model.model.memory_required(shape)
    comfy.model_management.load_models_gpu([model], memory_required=memory, minimum_memory_required=memory)
    device = model.load_device
    preview = latent_preview.prepare_callback(model, steps)

    def on_step(step: int, total: int, x0: torch.Tensor) -> None:
        # The host callback counts steps from 0 and raises InterruptProcessingException
        # when the user cancels, like KSampler's.
        preview(step - 1, x0, None, total)

    with comfy.model_management.cuda_device_context(device):
        model.pre_run()
        try:
            images = sample(
                network,
                positive_captions,
                negative_captions,
                width=width,
                height=height,
                seed=seed,
                steps=steps,
                cfg=cfg,
                shift=shift,
                batch_size=batch_size,
                callback=on_step,
                cancel_check=comfy.model_management.processing_interrupted,
                device=device,
            )
        except SamplingCancelled:
            # Turn l2p_core's cancel into the host's interrupt, which ends the prompt as cancelled.
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
        finally:
            model.cleanup()

    pixels = rearrange((images + 1) / 2, "b c h w -> b h w c")
    return pixels.to(
        device=comfy.model_management.intermediate_device(), dtype=comfy.model_management.intermediate_dtype()
    )
