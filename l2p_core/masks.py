"""Inpainting masks: validation, grow (dilation), feather and bounding boxes.

A mask is float [B, H, W] in [0, 1] where 1 means repaint, as ComfyUI's MASK type is.
Feathering only lowers weights inside the mask, so every pixel where the grown mask is 0
stays 0 and the final composite can take it from the input unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ComfyUI's LoadImage returns an all-zero mask of this size for an image without alpha.
PLACEHOLDER_MASK_PX = 64


def check_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Validate a mask [B or 1, H, W] (or [H, W]) against an image [B or 1, 3, H, W].

    Returns the mask as float32 [B or 1, H, W] on the image's device.
    """
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        kind = f"a {mask.dtype} tensor" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a floating-point torch tensor with values in [0, 1]; got {kind}.")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"mask must have shape [B, H, W] (1 = repaint); got {list(mask.shape)}.")

    image_h, image_w = image.shape[-2:]
    mask_h, mask_w = mask.shape[-2:]
    if (mask_h, mask_w) != (image_h, image_w):
        is_placeholder = (mask_h, mask_w) == (PLACEHOLDER_MASK_PX, PLACEHOLDER_MASK_PX) and not mask.any()
        if is_placeholder:
            raise ValueError(
                f"The mask is an empty {PLACEHOLDER_MASK_PX}×{PLACEHOLDER_MASK_PX} placeholder, not a mask of the "
                f"{image_w}×{image_h} image: ComfyUI's Load Image returns it for images without an alpha channel. "
                "Paint the area to repaint in the mask editor (right-click the Load Image node, Open in MaskEditor) "
                "and save it, or load a mask file of the image's size."
            )
        raise ValueError(
            f"mask shape {list(mask.shape)} ({mask_w}×{mask_h}) does not match image shape {list(image.shape)} "
            f"({image_w}×{image_h}); the mask must have the image's width and height."
        )
    if mask.shape[0] not in (1, image.shape[0]) and image.shape[0] != 1:
        raise ValueError(
            f"mask shape {list(mask.shape)} and image shape {list(image.shape)} have different batch sizes; "
            "pass one mask for all images or one mask per image."
        )
    if mask.numel() and not torch.isfinite(mask).all():
        raise ValueError("mask contains NaN or Inf; pass values in [0, 1].")
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(
            f"mask values must lie in [0, 1] (1 = repaint); found [{float(mask.min()):.3g}, {float(mask.max()):.3g}]."
        )
    return mask.float().to(image.device)


def grow_mask(mask: torch.Tensor, grow_px: int) -> torch.Tensor:
    """Dilate a mask [B, H, W] by `grow_px` pixels with a square window (max filter), keeping soft values."""
    if grow_px == 0:
        return mask
    kernel = 2 * grow_px + 1
    # A square max filter is separable: one pass along rows, one along columns.
    grown = F.max_pool2d(mask[:, None], (1, kernel), stride=1, padding=(0, grow_px))
    grown = F.max_pool2d(grown, (kernel, 1), stride=1, padding=(grow_px, 0))
    return grown[:, 0]


def feather_mask(mask: torch.Tensor, feather_px: int) -> torch.Tensor:
    """Soften a mask [B, H, W] over `feather_px` pixels inside its edge; outside the mask stays exactly 0.

    The nonzero region is eroded by `feather_px` (square window), then box-blurred with the
    same radius. A pixel outside the mask is more than `feather_px` away from every eroded
    pixel, so its box contains none and its weight is exactly 0. The image border does not
    count as an edge, so a mask reaching the border stays 1 there.
    """
    if feather_px == 0:
        return mask
    region = (mask > 0).float()
    kernel = 2 * feather_px + 1
    # max_pool2d pads with -inf, so pixels beyond the image border never erode the mask.
    outside = F.max_pool2d(1 - region[:, None], (1, kernel), stride=1, padding=(0, feather_px))
    outside = F.max_pool2d(outside, (kernel, 1), stride=1, padding=(feather_px, 0))
    ramp = box_blur(1 - outside[:, 0], feather_px)
    return mask * ramp.clamp(0.0, 1.0)


def box_blur(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Average [B, H, W] over (2·radius + 1)² windows clipped to the image, in O(H·W) via summed-area tables."""
    table = F.pad(values.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    height, width = values.shape[-2:]
    rows = torch.arange(height, device=values.device)
    cols = torch.arange(width, device=values.device)
    top, bottom = (rows - radius).clamp(min=0), (rows + radius + 1).clamp(max=height)
    left, right = (cols - radius).clamp(min=0), (cols + radius + 1).clamp(max=width)

    total = (
        table[:, bottom[:, None], right[None, :]]
        - table[:, top[:, None], right[None, :]]
        - table[:, bottom[:, None], left[None, :]]
        + table[:, top[:, None], left[None, :]]
    )
    area = (bottom - top)[:, None] * (right - left)[None, :]
    return (total / area).to(values.dtype)


def mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """Return the (top, bottom, left, right) box, end exclusive, of a mask's nonzero pixels over the batch.

    Returns None when the mask [B, H, W] is all zero.
    """
    region = mask.detach().ne(0).any(0)
    rows = torch.nonzero(region.any(1)).flatten()
    cols = torch.nonzero(region.any(0)).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
