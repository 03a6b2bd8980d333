"""The L2P Edit node's host-free logic: input checks, the sampled size, and the IMAGE-space composite.

ComfyUI's IMAGE is [B, H, W, 3] in [0, 1] and l2p_core works on [B, 3, H, W] in [-1, 1].
The conversion x·2 − 1 and back is not exact in float32, and SaveImage truncates
(clip(255·x) cast to uint8), so a kept pixel that went through [-1, 1] can come back one
level lower in the PNG. `composite` therefore takes every kept value from the input IMAGE
tensor itself.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..l2p_core.editing import plan_window
from ..l2p_core.masks import check_mask, grow_mask, mask_bounds


def check_image(image: torch.Tensor) -> None:
    """Reject an IMAGE that is not [B, H, W, 3] in [0, 1]."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] != 3:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"The L2P Edit node needs an RGB IMAGE [batch, height, width, 3]; got {shape}. "
            "Convert images with an alpha channel or one channel to RGB first."
        )
    if not image.is_floating_point() or not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError("The image must contain finite values in [0, 1], as Load Image returns them.")


def to_core_image(image: torch.Tensor) -> torch.Tensor:
    """Convert an IMAGE [B, H, W, 3] in [0, 1] to l2p_core's float32 [B, 3, H, W] in [-1, 1]."""
    return rearrange(image.float() * 2 - 1, "b h w c -> b c h w")


def check_inpaint_mask(mask: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
    """Validate a MASK [B or 1, H, W] against an IMAGE [B, H, W, 3]; return it as float32 [B or 1, H, W].

    The messages come from l2p_core.masks.check_mask: a mask of another size, another
    batch size, or the empty 64×64 placeholder that Load Image returns for an image
    without alpha, each with what to do.
    """
    if mask is None:
        raise ValueError(
            "Inpaint mode needs a mask: connect the MASK output of Load Image (paint it in the mask editor) "
            "or of Load Image (as Mask)."
        )
    # check_mask reads only the image's shape and device, so a channels-first view suffices.
    return check_mask(mask, rearrange(image, "b h w c -> b c h w"))


def check_margins(margins: dict[str, int], multiple: int) -> None:
    """Reject outpaint margins that are all 0 or off the model's size grid, before the model loads."""
    for name, value in margins.items():
        if value < 0 or value % multiple:
            raise ValueError(
                f"Outpaint margin {name} = {value} px is not a multiple of {multiple} px, the model's grid; "
                f"use {-(-max(value, 0) // multiple) * multiple}."
            )
    if not any(margins.values()):
        raise ValueError("All outpaint margins are 0; set at least one of left, top, right and bottom in px.")


def sampled_shape(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    mode: str,
    multiple: int,
    grow_px: int,
    crop: bool,
    context_px: int,
    max_window_px: int,
    margins: dict[str, int],
) -> tuple[int, int, int, int] | None:
    """Return the [B, 3, H, W] shape that l2p_core will sample for this edit, or None if nothing is sampled.

    This is what the memory estimate needs. It repeats the window plan of l2p_core.editing:
    the (grown) mask's bounding box plus context, padded to the size grid.
    """
    batch, height, width = image.shape[0], image.shape[1], image.shape[2]
    if mode == "img2img":
        return (batch, 3, *_padded(height, width, multiple))

    if mode == "outpaint":
        height, width = height + margins["top"] + margins["bottom"], width + margins["left"] + margins["right"]
        region = torch.ones((1, height, width))
        region[:, margins["top"] : height - margins["bottom"], margins["left"] : width - margins["right"]] = 0
    else:
        region = grow_mask(mask, grow_px)
        batch = max(batch, mask.shape[0])
    bounds = mask_bounds(region)
    if bounds is None:
        return None
    top, bottom, left, right = (0, height, 0, width)
    if crop:
        top, bottom, left, right = plan_window(bounds, height, width, multiple, context_px, max_window_px)
    return (batch, 3, *_padded(bottom - top, right - left, multiple))


def composite(
    image: torch.Tensor, core_input: torch.Tensor, core_result: torch.Tensor, offset: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Return the edit as an IMAGE [B, H', W', 3], with every pixel that l2p_core kept copied from `image`.

    `image` is the input IMAGE [B, H, W, 3], `core_input` its [-1, 1] conversion
    [B, 3, H, W] as passed to l2p_core, and `core_result` l2p_core's output [B', 3, H', W'].
    The input sits at `offset` (top, left) in the result: (0, 0) for img2img and inpaint,
    the top and left margins for outpaint.

    l2p_core copies every value it keeps from its input tensor, so wherever the result
    equals `core_input` exactly, the output takes the IMAGE's own value. Outside the
    (grown) mask that holds for every pixel; inside it a repainted value that happens to
    equal the input is taken from the IMAGE too, which is the same pixel.
    """
    batch = core_result.shape[0]
    top, left = offset
    height, width = image.shape[1], image.shape[2]

    result = rearrange((core_result.float().cpu() + 1) / 2, "b c h w -> b h w c").clamp(0, 1).to(image.dtype)
    inside = result[:, top : top + height, left : left + width]
    kept = rearrange(core_result[..., top : top + height, left : left + width].cpu(), "b c h w -> b h w c") == (
        rearrange(core_input.cpu(), "b c h w -> b h w c").expand(batch, -1, -1, -1)
    )
    result[:, top : top + height, left : left + width] = torch.where(
        kept, image.cpu().expand(batch, -1, -1, -1), inside
    )
    return result


def _padded(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Return the size after l2p_core's pad_to_multiple: each side rounded up to `multiple`."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple
