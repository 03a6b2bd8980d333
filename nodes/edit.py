"""L2P Edit: img2img, inpainting and outpainting of an IMAGE in pixel space, unmasked pixels kept exactly."""

from __future__ import annotations

from comfy_api.latest import io

from . import MAX_RESOLUTION
from .sampling_inputs import cfg_input, seed_input, shift_input, steps_input

GRID_PX = 16
# l2p_core.editing's crop-and-stitch defaults: 256 px of context, windows of at most 1024 px
# (the 1K model's 64×64 token grid).
DEFAULT_CONTEXT_PX = 256
DEFAULT_MAX_WINDOW_PX = 1024


def _margin(name: str) -> io.Int.Input:
    return io.Int.Input(
        name,
        default=0,
        min=0,
        max=MAX_RESOLUTION,
        step=GRID_PX,
        tooltip=f"Outpaint mode: pixels added on the {name}, a multiple of the model's grid (16 px for 1K).",
    )


class L2PEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2PEdit",
            display_name="L2P Edit",
            category="L2P",
            search_aliases=["l2p", "inpaint", "outpaint", "img2img", "image to image", "edit image", "l2p edit"],
            description=(
                "Edits an image in pixel space with the L2P reference sampler: img2img, inpainting with a "
                "mask, or outpainting. No VAE touches the image, so every pixel outside the mask (all of "
                "the original in outpaint mode) comes out bit for bit as it went in, and so does the file "
                "Save Image writes. Any image size works; sides off the model's grid are padded and "
                "cropped back. Inpainting samples only a window around the mask (crop and stitch), so a "
                "small edit of a large photo costs about as much as the window. Works with the L2P Patch "
                "Tiling node."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="The model from the L2P Model Loader (optionally after L2P Patch Tiling)."
                ),
                io.Conditioning.Input(
                    "positive",
                    tooltip=(
                        "The prompt, from CLIP Text Encode with the Qwen3-4B text encoder (CLIPLoader type lumina2). "
                        "For inpainting, describe the whole picture with the new content."
                    ),
                ),
                io.Conditioning.Input(
                    "negative",
                    tooltip="What to steer away from; encode an empty text as L2P was trained. Unused at cfg 1.",
                ),
                io.Image.Input("image", tooltip="The image to edit, for example from Load Image."),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip=(
                        "Inpaint mode: the area to repaint (1 = repaint), the image's size. Paint it in the mask "
                        "editor of Load Image (right-click the node, Open in MaskEditor) and connect its MASK "
                        "output. Ignored in img2img and outpaint modes."
                    ),
                ),
                io.Combo.Input(
                    "mode",
                    options=["inpaint", "img2img", "outpaint"],
                    default="inpaint",
                    tooltip=(
                        "inpaint: repaint the masked area. img2img: resample the whole image from the noise "
                        "level that denoise sets. outpaint: extend the canvas by the margins and paint them."
                    ),
                ),
                seed_input(
                    "Seed of the noise, drawn on the CPU as KSampler does, so a seed gives the same result "
                    "on every device."
                ),
                steps_input(
                    "Number of Euler steps, all of them run from the starting noise level. 0 (auto) uses the "
                    "model's preset: 30 for the 1K model, 50 for the HR models."
                ),
                cfg_input(),
                shift_input(),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "Strength: sampling starts at σ = shift(denoise), as in the official L2P pipeline, and "
                        "runs all steps from there. At shift 3, 0.6 starts at σ ≈ 0.818. This is not KSampler's "
                        "denoise, which cuts its full schedule (0.6 at 4 steps starts near σ 0.857). 1 ignores "
                        "what is under the mask, lower values keep its layout and colours."
                    ),
                ),
                io.Int.Input(
                    "grow_mask",
                    default=0,
                    min=0,
                    max=MAX_RESOLUTION,
                    tooltip="Inpaint mode: pixels by which the mask is enlarged (dilated) before sampling.",
                ),
                io.Int.Input(
                    "feather",
                    default=0,
                    min=0,
                    max=MAX_RESOLUTION,
                    tooltip=(
                        "Pixels over which the new content fades into the original, inside the mask (the margins "
                        "in outpaint mode). Pixels outside it stay exact."
                    ),
                ),
                _margin("left"),
                _margin("top"),
                _margin("right"),
                _margin("bottom"),
                io.Boolean.Input(
                    "crop_and_stitch",
                    default=True,
                    tooltip=(
                        "Inpaint and outpaint modes: sample only the mask's bounding box plus the context, then "
                        "paste it back. Off samples the whole image."
                    ),
                ),
                io.Int.Input(
                    "context",
                    default=DEFAULT_CONTEXT_PX,
                    min=0,
                    max=MAX_RESOLUTION,
                    step=GRID_PX,
                    tooltip=(
                        "Crop and stitch: pixels of surrounding image sampled on each side of the mask's box, "
                        "so the new content matches it. The window is at most 1024 px a side unless the mask "
                        "is larger."
                    ),
                ),
            ],
            outputs=[io.Image.Output(tooltip="The edited images; pixels outside the mask equal the input's exactly.")],
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        image,
        mode: str,
        seed: int,
        steps: int,
        cfg: float,
        shift: float,
        denoise: float,
        grow_mask: int,
        feather: int,
        left: int,
        top: int,
        right: int,
        bottom: int,
        crop_and_stitch: bool,
        context: int,
        mask=None,
    ) -> io.NodeOutput:
        from .pixel_editing import edit_images

        return io.NodeOutput(
            edit_images(
                model,
                positive,
                negative,
                image,
                mask,
                mode=mode,
                seed=seed,
                steps=steps,
                cfg=cfg,
                shift=shift,
                denoise=denoise,
                grow_px=grow_mask,
                feather_px=feather,
                margins={"left": left, "top": top, "right": right, "bottom": bottom},
                crop=crop_and_stitch,
                context_px=context,
                max_window_px=DEFAULT_MAX_WINDOW_PX,
            )
        )
