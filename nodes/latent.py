"""L2P Empty Image: the empty LATENT that stock samplers start from with an L2P model."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from . import MAX_RESOLUTION

PATCH_PX = 16


class L2PEmptyImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2PEmptyImage",
            display_name="L2P Empty Image",
            category="L2P",
            search_aliases=["l2p", "empty latent", "empty pixel latent"],
            description=(
                "Creates an empty batch for KSampler or SamplerCustomAdvanced with an L2P model. An L2P latent "
                "is the RGB image itself (3 channels at full resolution); decode it with VAE Decode and the "
                "pixel_space VAE."
            ),
            inputs=[
                io.Int.Input(
                    "width",
                    default=1024,
                    min=PATCH_PX,
                    max=MAX_RESOLUTION,
                    step=PATCH_PX,
                    tooltip="Image width in pixels; a multiple of 16 (64, 128 or 320 for the HR models).",
                ),
                io.Int.Input(
                    "height",
                    default=1024,
                    min=PATCH_PX,
                    max=MAX_RESOLUTION,
                    step=PATCH_PX,
                    tooltip="Image height in pixels; a multiple of 16 (64, 128 or 320 for the HR models).",
                ),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Number of images in the batch."),
            ],
            outputs=[io.Latent.Output(tooltip="Zeros of shape [batch, 3, height, width].")],
        )

    @classmethod
    def execute(cls, width: int, height: int, batch_size: int = 1) -> io.NodeOutput:
        if width % PATCH_PX or height % PATCH_PX:
            raise ValueError(
                f"L2P Empty Image: width and height must be multiples of {PATCH_PX} px; got {width}×{height}. "
                f"Use for example {max(PATCH_PX, round(width / PATCH_PX) * PATCH_PX)}×"
                f"{max(PATCH_PX, round(height / PATCH_PX) * PATCH_PX)}."
            )
        samples = torch.zeros(
            (batch_size, 3, height, width),
            device=comfy.model_management.intermediate_device(),
            dtype=comfy.model_management.intermediate_dtype(),
        )
        # Ratio 1 marks the latent as pixel scale, so the stock samplers do not rescale it.
        return io.NodeOutput({"samples": samples, "downscale_ratio_spacial": 1})
