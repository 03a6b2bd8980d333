"""Run l2p_core's img2img, inpaint and outpaint inside ComfyUI for the L2P Edit node.

This module imports ComfyUI's model code through pixel_sampling, so the node imports it
only when it runs.
"""

from __future__ import annotations

import logging

import comfy.model_management
import torch

from ..l2p_core import img2img, inpaint, outpaint
from .conditioning import caption_features
from .diffusion_model import l2p_network
from .edit_images import check_image, check_inpaint_mask, check_margins, composite, sampled_shape, to_core_image
from .pixel_sampling import host_sampling
from .presets import resolve_steps_and_cfg

logger = logging.getLogger(__name__)

NODE = "L2P Edit node"


def edit_images(
    model,
    positive,
    negative,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    mode: str,
    seed: int,
    steps: int,
    cfg: float,
    shift: float,
    denoise: float,
    grow_px: int,
    feather_px: int,
    margins: dict[str, int],
    crop: bool,
    context_px: int,
    max_window_px: int,
) -> torch.Tensor:
    """Edit an IMAGE [B, H, W, 3] and return the IMAGE, every kept pixel equal to the input's.

    Every input is checked before the model loads. An inpaint mask that is empty after
    growing returns the input unchanged without loading the model.
    """
    check_image(image)
    network = l2p_network(model, node=NODE)
    config = network.config
    multiple = config.size_multiple
    if mode == "inpaint":
        mask = check_inpaint_mask(mask, image)
    elif mode == "outpaint":
        check_margins(margins, multiple)
    positive_captions = caption_features(positive, "positive", config.cap_feat_dim)
    negative_captions = caption_features(negative, "negative", config.cap_feat_dim)
    steps, cfg = resolve_steps_and_cfg(config, steps, cfg)

    shape = sampled_shape(
        image, mask, mode=mode, multiple=multiple, grow_px=grow_px, crop=crop, context_px=context_px,
        max_window_px=max_window_px, margins=margins,
    )  # fmt: skip
    if shape is None:
        logger.info("L2P Edit: the mask is empty, so the image is returned unchanged")
        return image.clone()

    core_input = to_core_image(image)
    settings = {"seed": seed, "steps": steps, "cfg": cfg, "shift": shift, "denoise": denoise}
    with host_sampling(model, shape, steps, node=NODE) as (host_network, options):
        core_input_on_device = core_input.to(options["device"])
        if mode == "img2img":
            result = img2img(
                host_network, positive_captions, negative_captions, core_input_on_device, **settings, **options
            )
        elif mode == "inpaint":
            result = inpaint(
                host_network, positive_captions, negative_captions, core_input_on_device, mask, grow_px=grow_px,
                feather_px=feather_px, crop=crop, context_px=context_px, max_window_px=max_window_px,
                **settings, **options,
            )  # fmt: skip
        else:
            result = outpaint(
                host_network, positive_captions, negative_captions, core_input_on_device, **margins,
                feather_px=feather_px, crop=crop, context_px=context_px, max_window_px=max_window_px,
                **settings, **options,
            )  # fmt: skip

    offset = (margins["top"], margins["left"]) if mode == "outpaint" else (0, 0)
    edited = composite(image.cpu(), core_input, result, offset)
    return edited.to(device=comfy.model_management.intermediate_device())
