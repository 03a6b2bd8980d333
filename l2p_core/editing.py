"""Pixel-space editing: img2img, inpainting and outpainting that keep unmasked pixels exactly.

Images are float [B, 3, H, W] in [-1, 1] and masks float [B, H, W] in [0, 1] (1 = repaint).
Every pixel outside the (grown) mask of the result is copied from the input tensor itself,
so it equals the input bit for bit and an 8-bit file saved from it is identical there.

Any image size works: sides that are not multiples of `model.config.size_multiple` are
padded by reflection before sampling and the result is cropped back. Reflection continues
texture and gradients across the border, where edge replication would draw streaks that
the model then tries to continue. Inpainting samples only a window around the mask
(crop-and-stitch), so the cost of a small edit does not grow with the photograph.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from .masks import box_blur, check_mask, feather_mask, grow_mask, mask_bounds
from .sampling import _whole_number, sample

logger = logging.getLogger(__name__)

# Options that editing passes on to `sample` unchanged.
SAMPLE_OPTIONS = frozenset(
    {
        "steps", "cfg", "shift", "callback", "batch_size", "cancel_check", "device", "batch_cfg",
        "tile_size", "tile_overlap", "tile_batch_size", "tile_guide_denoise", "tile_progress",
    }
)  # fmt: skip

# Crop-and-stitch defaults: context around the mask's bounding box, and the largest window
# side, which is the 1K model's trained 64×64 token grid at 16-px patches.
DEFAULT_CONTEXT_PX = 256
DEFAULT_MAX_WINDOW_PX = 1024


def img2img(model, positive, negative, image: torch.Tensor, *, seed: int, denoise: float, **options) -> torch.Tensor:
    """Resample an image [B or 1, 3, H, W] in [-1, 1] from noise level shift(`denoise`), at any size.

    The σ schedule starts at shift(denoise), as the reference does (0.818 for denoise 0.6 at
    shift 3). ComfyUI's KSampler instead cuts its full schedule, so its denoise 0.6 starts
    lower. `options` are `sample`'s keyword arguments (steps, cfg, tile_size, ...).
    """
    _check_options(options, seed)
    image = _check_image(image)
    padded = pad_to_multiple(image, model.config.size_multiple)
    result = _sample_at_size(model, positive, negative, padded, seed=seed, denoise=denoise, **options)
    return result[..., : image.shape[-2], : image.shape[-1]].to(image.device)


def inpaint(
    model,
    positive,
    negative,
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    seed: int,
    denoise: float = 1.0,
    grow_px: int = 0,
    feather_px: int = 0,
    crop: bool = True,
    context_px: int = DEFAULT_CONTEXT_PX,
    max_window_px: int = DEFAULT_MAX_WINDOW_PX,
    **options,
) -> torch.Tensor:
    """Repaint the masked pixels of `image` [B or 1, 3, H, W] and copy every pixel outside the grown mask unchanged.

    `mask` [B or 1, H, W] in [0, 1] (1 = repaint) is dilated by `grow_px`, then softened over
    `feather_px` inside its edge. After every step the known pixels are re-imposed at the
    current noise level with the run's own noise, blended by the mask. With `crop`, only the
    mask's bounding box plus `context_px` on each side is sampled, on the size grid and at
    most `max_window_px` a side unless the box itself is larger (see `plan_window`).

    An all-zero mask returns a copy of the input without sampling. An all-one mask at
    denoise 1 is text-to-image at the image's size: the same result as `sample` with the
    same seed. `options` are `sample`'s keyword arguments (steps, cfg, tile_size, ...).
    """
    _check_options(options, seed)
    image = _check_image(image)
    mask = check_mask(mask, image)
    grow_px = _non_negative(grow_px, "grow_px")
    feather_px = _non_negative(feather_px, "feather_px")
    context_px = _non_negative(context_px, "context_px")
    max_window_px = _whole_number(max_window_px, "max_window_px")
    multiple = model.config.size_multiple
    if max_window_px < multiple:
        raise ValueError(f"max_window_px must be at least the model's size multiple {multiple}; got {max_window_px}.")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1]; got {denoise}.")

    grown = grow_mask(mask, grow_px)
    bounds = mask_bounds(grown)
    if bounds is None:
        logger.info("Inpainting: the mask is empty; returning the input unchanged")
        return image.float().expand(_batch(image, mask, positive, options), -1, -1, -1).clone()
    options["batch_size"] = _batch(image, mask, positive, options)

    height, width = image.shape[-2:]
    top, bottom, left, right = (0, height, 0, width)
    if crop:
        top, bottom, left, right = plan_window(bounds, height, width, multiple, context_px, max_window_px)
        logger.info(
            "Inpainting: sampling a %d×%d window at (%d, %d) of the %d×%d image",
            right - left, bottom - top, left, top, width, height,
        )  # fmt: skip

    window = image[..., top:bottom, left:right].float()
    window_mask = _feathered_window(grown, (top, bottom, left, right), feather_px)
    repainted = _inpaint_window(model, positive, negative, window, window_mask, seed=seed, denoise=denoise, **options)
    repainted = repainted.to(image.device)

    # Stitch: the window's masked pixels from the result, everything else from the input tensor.
    batch = repainted.shape[0]
    result = image.float().expand(batch, -1, -1, -1).clone()
    region = (window_mask > 0)[:, None]
    blended = window_mask[:, None] * repainted + (1 - window_mask[:, None]) * window
    result[..., top:bottom, left:right] = torch.where(region, blended, window.expand(batch, -1, -1, -1))
    return result


def outpaint(
    model,
    positive,
    negative,
    image: torch.Tensor,
    *,
    seed: int,
    left: int = 0,
    top: int = 0,
    right: int = 0,
    bottom: int = 0,
    denoise: float = 1.0,
    feather_px: int = 0,
    crop: bool = True,
    context_px: int = DEFAULT_CONTEXT_PX,
    max_window_px: int = DEFAULT_MAX_WINDOW_PX,
    **options,
) -> torch.Tensor:
    """Extend `image` [B or 1, 3, H, W] by margins in px (multiples of the size multiple) and paint them.

    The original pixels sit unchanged in the larger canvas and are never repainted. The
    margins start as the blurred replicated edge (`fill_margins`), which only matters at
    denoise < 1. `feather_px` softens the seam inside the margins. The rest is `inpaint`.
    """
    _check_options(options, seed)
    image = _check_image(image)
    multiple = model.config.size_multiple
    margins = {"left": left, "top": top, "right": right, "bottom": bottom}
    for name, value in margins.items():
        value = _non_negative(value, name)
        if value % multiple:
            raise ValueError(
                f"Outpaint margin {name}={value} px is not a multiple of {multiple} px, the model's grid; "
                f"use {math.ceil(value / multiple) * multiple}."
            )
    if not any(margins.values()):
        raise ValueError("All outpaint margins are 0; give at least one of left, top, right and bottom in px.")

    canvas, mask = fill_margins(image, left=left, top=top, right=right, bottom=bottom)
    return inpaint(
        model, positive, negative, canvas, mask, seed=seed, denoise=denoise, feather_px=feather_px, crop=crop,
        context_px=context_px, max_window_px=max_window_px, **options,
    )  # fmt: skip


def fill_margins(
    image: torch.Tensor, *, left: int, top: int, right: int, bottom: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the extended canvas [B, 3, H', W'] and its mask [1, H', W'] (1 on the margins).

    The margins hold the replicated edge, box-blurred over a quarter of the widest margin.
    Replication keeps the edge colours, where reflection would mirror objects into the
    margin that outpainting at denoise < 1 then keeps. The blur removes the streaks that
    replication draws. The original pixels are copied into the canvas unchanged.
    """
    height, width = image.shape[-2:]
    replicated = F.pad(image.float(), (left, right, top, bottom), mode="replicate")
    canvas = replicated.clone()
    canvas_h, canvas_w = canvas.shape[-2:]
    radius = max(left, top, right, bottom) // 4
    # Each margin is blurred within a band reaching `radius` px into the image, which gives
    # the same values as blurring the whole canvas but keeps memory to the margins' size.
    bottom_start, right_start = max(0, canvas_h - bottom - radius), max(0, canvas_w - right - radius)
    bands = [
        (slice(0, top + radius), slice(None), slice(0, top), slice(None)),
        (slice(bottom_start, None), slice(None), slice(canvas_h - bottom - bottom_start, None), slice(None)),
        (slice(None), slice(0, left + radius), slice(None), slice(0, left)),
        (slice(None), slice(right_start, None), slice(None), slice(canvas_w - right - right_start, None)),
    ]
    margins = (top, bottom, left, right)
    for margin, (rows, cols, inner_rows, inner_cols) in zip(margins, bands, strict=True):
        if not margin or not radius:
            continue
        band = replicated[..., rows, cols]
        blurred = box_blur(band.flatten(0, 1), radius).unflatten(0, band.shape[:2])
        canvas[..., rows, cols][..., inner_rows, inner_cols] = blurred[..., inner_rows, inner_cols]
    canvas[..., top : top + height, left : left + width] = image.float()

    mask = torch.ones((1, *canvas.shape[-2:]), dtype=torch.float32, device=image.device)
    mask[:, top : top + height, left : left + width] = 0
    return canvas, mask


def plan_window(
    bounds: tuple[int, int, int, int], height: int, width: int, multiple: int, context_px: int, max_window_px: int
) -> tuple[int, int, int, int]:
    """Return the (top, bottom, left, right) window, end exclusive, that crop-and-stitch samples.

    Per axis: the mask's extent plus `context_px` on each side, rounded up to `multiple`,
    at most `max_window_px` (rounded down to `multiple`) unless the extent alone is larger,
    centred on the extent and shifted to lie inside the image. An axis shorter than the
    window is taken whole (and padded later).
    """
    max_px = max(multiple, max_window_px // multiple * multiple)
    top, bottom = _plan_axis(bounds[0], bounds[1], height, multiple, context_px, max_px)
    left, right = _plan_axis(bounds[2], bounds[3], width, multiple, context_px, max_px)
    return top, bottom, left, right


def _plan_axis(start: int, end: int, length: int, multiple: int, context_px: int, max_px: int) -> tuple[int, int]:
    extent = end - start
    size = _round_up(extent + 2 * context_px, multiple)
    size = min(size, max(max_px, _round_up(extent, multiple)))
    if extent > max_px:
        logger.info(
            "Inpainting: the mask spans %d px, more than the %d-px window limit, so the window is larger; "
            "pass tile_size to bound its memory",
            extent,
            max_px,
        )
    if size >= length:
        return 0, length
    first = start - (size - extent) // 2
    first = min(max(first, 0), length - size)
    return first, first + size


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad [B, C, H, W] at the bottom and right to multiples of `multiple`.

    Padding reflects the image, or replicates its edge where a side is too short to reflect.
    """
    height, width = image.shape[-2:]
    pad_h, pad_w = _round_up(height, multiple) - height, _round_up(width, multiple) - width
    if not pad_h and not pad_w:
        return image
    # Reflection needs the padding to be shorter than the side it mirrors.
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def _feathered_window(grown: torch.Tensor, window: tuple[int, int, int, int], feather_px: int) -> torch.Tensor:
    """Feather the grown mask [B, H, W] and crop it to the window.

    Feathering runs on the window plus `feather_px` around it, so a mask edge on the window
    border is softened as it would be on the whole image.
    """
    top, bottom, left, right = window
    height, width = grown.shape[-2:]
    outer_top, outer_left = max(0, top - feather_px), max(0, left - feather_px)
    outer = grown[..., outer_top : min(height, bottom + feather_px), outer_left : min(width, right + feather_px)]
    feathered = feather_mask(outer, feather_px)
    return feathered[..., top - outer_top : bottom - outer_top, left - outer_left : right - outer_left]


def _inpaint_window(model, positive, negative, window, mask, *, seed, denoise, **options) -> torch.Tensor:
    """Sample one window [B, 3, h, w] of any size with its mask [B, h, w] and return the result [B, 3, h, w]."""
    multiple = model.config.size_multiple
    height, width = window.shape[-2:]
    padded = pad_to_multiple(window, multiple)
    # The mask is padded by replication so that padding beside repainted pixels is repainted
    # too, instead of pinning them to mirrored copies of what the mask replaces.
    padded_mask = pad_to_multiple(mask[:, None], multiple)[:, 0] if padded is not window else mask

    if denoise == 1.0 and bool((padded_mask == 1).all()):
        # Nothing is kept: text-to-image at this size, so tiled runs get their guide pass too.
        result = sample(
            model, positive, negative, width=padded.shape[-1], height=padded.shape[-2], seed=seed, **options
        )  # fmt: skip
    else:
        result = _sample_at_size(
            model, positive, negative, padded, seed=seed, denoise=denoise, mask=padded_mask, **options
        )  # fmt: skip
    return result[..., :height, :width]


def _sample_at_size(model, positive, negative, padded: torch.Tensor, *, seed, denoise, mask=None, **options):
    return sample(
        model, positive, negative, width=padded.shape[-1], height=padded.shape[-2], seed=seed, init_image=padded,
        denoise=denoise, mask=mask, **options,
    )  # fmt: skip


def _check_options(options: dict, seed) -> None:
    """Check the settings that `sample` checks too, so that no setting fails after the mask work."""
    unknown = sorted(set(options) - SAMPLE_OPTIONS)
    if unknown:
        raise TypeError(
            f"Unexpected keyword argument(s) {unknown}; editing passes only {sorted(SAMPLE_OPTIONS)} to sample."
        )
    seed = _whole_number(seed, "seed")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64 - 1]; got {seed}.")
    steps = _whole_number(options.get("steps", 1), "steps")
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}.")
    cfg = options.get("cfg", 2.0)
    if not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"cfg must be a finite number ≥ 0; got {cfg}.")
    shift = options.get("shift", 3.0)
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0; got {shift}.")


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        kind = f"a {image.dtype} tensor" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"image must be a floating-point torch tensor [B, 3, H, W] in [-1, 1]; got {kind}. "
            "Convert 8-bit pixels with l2p_core.from_uint8."
        )
    if image.ndim != 4 or image.shape[1] != 3:
        hint = " (channels last: use image.permute(0, 3, 1, 2))" if image.ndim == 4 and image.shape[-1] == 3 else ""
        raise ValueError(f"image must have shape [B, 3, H, W]; got {list(image.shape)}{hint}.")
    if image.shape[-2] < 1 or image.shape[-1] < 1:
        raise ValueError(f"image is empty: shape {list(image.shape)}.")
    if not torch.isfinite(image).all() or image.min() < -1.001 or image.max() > 1.001:
        raise ValueError(
            f"image values must be finite and lie in [-1, 1]; found [{float(image.min()):.3g}, "
            f"{float(image.max()):.3g}]. Scale [0, 1] images with x * 2 - 1."
        )
    return image


def _batch(image: torch.Tensor, mask: torch.Tensor, positive, options: dict) -> int:
    return options.get("batch_size") or max(image.shape[0], mask.shape[0], len(_as_list(positive)))


def _as_list(captions) -> list:
    if isinstance(captions, torch.Tensor):
        return [captions] if captions.ndim == 2 else list(captions)
    return list(captions)


def _non_negative(value, name: str) -> int:
    value = _whole_number(value, name)
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0 px; got {value}.")
    return value


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
