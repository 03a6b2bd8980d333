"""L2P Pixel Sampler: text to image with l2p_core's reference sampler on ComfyUI's device."""

from __future__ import annotations

from comfy_api.latest import io

from . import MAX_RESOLUTION
from .sampling_inputs import cfg_input, seed_input, shift_input, steps_input


class L2PPixelSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2PPixelSampler",
            display_name="L2P Pixel Sampler",
            category="L2P",
            search_aliases=["l2p", "pixel sampler", "l2p sample"],
            description=(
                "Generates images with the L2P reference sampler: flow-matching Euler steps on the σ grid "
                "of the official pipeline, with a separate negative pass for CFG. Shows each step's image "
                "estimate as a live preview. Returns the images directly; no VAE Decode is needed. With the "
                "L2P Patch Tiling node on the model it generates a guide at one tile's area first, then "
                "refines the full canvas tile by tile."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model from the L2P Model Loader."),
                io.Conditioning.Input(
                    "positive",
                    tooltip=(
                        "The prompt, from CLIP Text Encode with the Qwen3-4B text encoder (CLIPLoader type lumina2)."
                    ),
                ),
                io.Conditioning.Input(
                    "negative",
                    tooltip=(
                        "What to steer away from. L2P was trained with an empty negative prompt: encode an "
                        "empty text rather than using Conditioning Zero Out. Unused at cfg 1."
                    ),
                ),
                io.Int.Input(
                    "width",
                    default=1024,
                    min=16,
                    max=MAX_RESOLUTION,
                    step=16,
                    tooltip="Image width in pixels; a multiple of 16 for the 1K model (64, 128 or 320 for HR models).",
                ),
                io.Int.Input(
                    "height",
                    default=1024,
                    min=16,
                    max=MAX_RESOLUTION,
                    step=16,
                    tooltip="Image height in pixels; a multiple of 16 for the 1K model (64, 128 or 320 for HR models).",
                ),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of images generated together."),
                seed_input(
                    "Seed of the starting noise, drawn on the CPU over the whole batch as KSampler does, so "
                    "a seed gives the same image on every device."
                ),
                steps_input(
                    "Number of Euler steps. 0 (auto) uses the model's preset: 30 for the 1K model, 50 for "
                    "the HR 4K, 8K and 10K models."
                ),
                cfg_input(),
                shift_input(),
            ],
            outputs=[io.Image.Output(tooltip="The generated images.")],
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        width: int,
        height: int,
        batch_size: int,
        seed: int,
        steps: int,
        cfg: float,
        shift: float,
    ) -> io.NodeOutput:
        from .pixel_sampling import sample_images

        return io.NodeOutput(
            sample_images(
                model,
                positive,
                negative,
                width=width,
                height=height,
                batch_size=batch_size,
                seed=seed,
                steps=steps,
                cfg=cfg,
                shift=shift,
            )
        )
