"""Text-to-image and img2img sampling: seeded noise, classifier-free guidance, Euler steps."""

from __future__ import annotations

import contextlib
import logging
import math
import operator
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import SamplingCancelled, SamplingError
from .patch_tiling import PatchTiler
from .schedule import flow_sigmas

logger = logging.getLogger(__name__)

# Tiled text-to-image resamples its upscaled guide from this strength (σ ≈ 0.875 at shift 3):
# enough to redraw detail at full resolution while the guide fixes the layout.
DEFAULT_GUIDE_DENOISE = 0.7

# callback(step, total, x0): called after step `step` (1-based) of `total` with that step's
# estimate of the clean image x₀ [B, C, H, W] in [-1, 1] (not clamped).
StepCallback = Callable[[int, int, torch.Tensor], None]
# velocity(x, sigma) -> flow velocity ε − x₀ at noise level sigma, float32 like x.
VelocityFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def draw_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Draw float32 Gaussian noise on the CPU as one tensor over the whole batch.

    This is ComfyUI's convention (and the reference's `rand_device="cpu"` path), so the
    same seed gives the same noise on every device and batch size 1 matches the reference.
    """
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def guided_velocity(
    model, positive: list[torch.Tensor], negative: list[torch.Tensor], cfg: float, *, batch_branches: bool = False
) -> VelocityFunction:
    """Return v = v_neg + cfg·(v_pos − v_neg), with the negative pass skipped at cfg 1.

    The branches run as separate passes, as in the reference pipeline, or with
    `batch_branches` as one pass on a batch twice as large. Each caption keeps its own pad
    tokens attended and only the batch padding is masked, so both ways give the same
    velocity up to floating-point rounding.
    """

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigmas = sigma.expand(x.shape[0])
        if cfg == 1.0:
            return model(x, sigmas, positive).float()
        if batch_branches:
            both = model(torch.cat([x, x]), sigmas.repeat(2), [*positive, *negative]).float()
            v_pos, v_neg = both.chunk(2)
        else:
            v_pos = model(x, sigmas, positive).float()
            v_neg = model(x, sigmas, negative).float()
        return v_neg + cfg * (v_pos - v_neg)

    return velocity


def euler(
    velocity: VelocityFunction,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    cancel_check: Callable[[], bool] | None = None,
    model_dtype: torch.dtype | None = None,
    impose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate the flow ODE with Euler steps x ← x + v·(σ_next − σ) over `sigmas` (ending in 0).

    `impose(x, σ_next)`, when given, replaces the state after every step (inpainting uses
    it to re-impose the known pixels at the new noise level).

    `cancel_check()` runs before every step; when it returns True, SamplingCancelled is
    raised. A NaN or Inf in the state raises SamplingError naming the step and dtype.
    """
    total = len(sigmas) - 1
    for index in range(total):
        if cancel_check is not None and cancel_check():
            raise SamplingCancelled(f"Sampling was cancelled before step {index + 1} of {total}.")

        sigma, sigma_next = sigmas[index], sigmas[index + 1]
        v = velocity(x, sigma)
        x0 = x - sigma * v
        x = x + v * (sigma_next - sigma)
        if impose is not None:
            x = impose(x, sigma_next)

        if not torch.isfinite(x).all():
            dtype = str(model_dtype).removeprefix("torch.") if model_dtype is not None else "unknown"
            raise SamplingError(
                f"Sampling produced NaN or Inf at step {index + 1} of {total} (sigma {float(sigma):.4f}) "
                f"with the model in {dtype}. float16 overflows in this network: load it in bfloat16 "
                "or float32. If it already is, check the conditioning and the input image for NaN."
            )
        if callback is not None:
            callback(index + 1, total, x0)
    return x


def sample(
    model,
    positive,
    negative,
    *,
    width: int,
    height: int,
    seed: int,
    steps: int = 30,
    cfg: float = 2.0,
    shift: float = 3.0,
    init_image: torch.Tensor | None = None,
    denoise: float = 1.0,
    callback: StepCallback | None = None,
    batch_size: int | None = None,
    cancel_check: Callable[[], bool] | None = None,
    device: torch.device | str | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    tile_batch_size: int = 1,
    tile_guide_denoise: float = DEFAULT_GUIDE_DENOISE,
    tile_progress: Callable[[int, int], None] | None = None,
    mask: torch.Tensor | None = None,
    batch_cfg: bool = False,
) -> torch.Tensor:
    """Generate images [B, 3, height, width] in [-1, 1] (float32, clamped) on the model's device.

    `positive` and `negative` are lists of caption-feature tensors [L_i, cap_feat_dim]; a list
    of one is repeated over the batch. The batch size is `batch_size`, else the longest of
    `positive` and `init_image`. With `init_image` [B or 1, 3, H, W] in [-1, 1] and
    `denoise` < 1 this is img2img: the σ grid starts at shift(denoise) and the image is
    noised to that level first.

    `device` is where the image state lives and the network runs; None means the device of
    the model's first parameter. A host that keeps weights offloaded and streams them to the
    compute device per layer (ComfyUI's low-VRAM and dynamic loading) passes its device here.

    `tile_size` (px, None: untiled) runs the network on overlapping tiles of that size,
    `tile_overlap` px apart (default a quarter of the tile), `tile_batch_size` tiles per
    call, and blends their velocities (see `patch_tiling`). A canvas no larger than one
    tile gives exactly the untiled result. Tiled text-to-image first generates a guide at
    about one tile's area with the canvas's aspect ratio, upscales it, and samples the
    canvas from it as img2img at `tile_guide_denoise`, so the tiles share one layout
    instead of each repeating the subject. `tile_progress(done, total)` counts network
    calls: one per step and branch of the guide, one per tile, step and branch after it.

    `mask` [B or 1, height, width] in [0, 1] (1 = repaint) needs `init_image` and makes this
    inpainting. After every step the state becomes mask·x + (1 − mask)·((1 − σ)·init_image + σ·noise)
    with the starting noise, so the known pixels follow their own noising path. The
    callback's x₀ takes the known pixels from `init_image`. The returned pixels outside the
    mask are close to `init_image` but not equal to it; `l2p_core.editing` composites them
    back exactly.

    `batch_cfg` runs the positive and negative passes as one batch (see `guided_velocity`).
    That needs activation memory for twice the batch. Captions of different lengths also
    need a key mask, which rules out the flash attention kernels. benchmarks/speed.py and
    benchmarks/gpu_figures.py measure whether it pays.
    """
    config = model.config
    width, height = _whole_number(width, "width"), _whole_number(height, "height")
    _check_size(width, height, config.size_multiple, config.variant)
    steps, seed = _whole_number(steps, "steps"), _whole_number(seed, "seed")
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}.")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64 - 1]; got {seed}.")
    if batch_size is not None and (_whole_number(batch_size, "batch_size") < 1):
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    if not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"cfg must be a finite number ≥ 0; got {cfg}.")
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0; got {shift}.")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1]; got {denoise}.")
    if denoise < 1.0 and init_image is None:
        raise ValueError(f"denoise {denoise} < 1 needs an init_image to start from; pass one or use denoise 1.0.")
    if mask is not None and init_image is None:
        raise ValueError("mask needs an init_image whose unmasked pixels it keeps; pass init_image.")

    positive = _caption_list(positive, "positive")
    negative = _caption_list(negative, "negative")
    batch = batch_size or max(len(positive), 1 if init_image is None else init_image.shape[0])
    positive = _broadcast(positive, batch, "positive")
    negative = _broadcast(negative, batch, "negative") if cfg != 1.0 else positive

    parameter = next(model.parameters())
    device = parameter.device if device is None else torch.device(device)
    batch_cfg = bool(batch_cfg)
    network = model
    if tile_size is not None:
        overlap = default_tile_overlap(tile_size, config.size_multiple) if tile_overlap is None else tile_overlap
        network = PatchTiler(
            model, tile_px=tile_size, overlap_px=overlap, batch_size=tile_batch_size, cancel_check=cancel_check
        )
        tiles = len(network.tiles_for(height, width))
        passes = 1 if cfg == 1.0 or batch_cfg else 2
        guide_calls = steps * passes if tiles > 1 and init_image is None else 0
        counter = _ProgressCounter(guide_calls + tiles * steps * passes, tile_progress)
        network.progress = counter.advance

        if guide_calls:
            init_image = _guide_image(
                _CountingModel(model, counter), positive, negative, width, height, seed, steps, cfg, shift,
                tile_size, callback, cancel_check, device, batch_cfg,
            )  # fmt: skip
            denoise = tile_guide_denoise

    noise = draw_noise(seed, (batch, config.in_channels, height, width)).to(device)
    sigmas = flow_sigmas(steps, shift=shift, denoise=denoise if init_image is not None else 1.0).to(device)

    impose = None
    if init_image is None:
        x = noise
    else:
        clean = _check_init_image(init_image, batch, config.in_channels, width, height).to(device)
        x = (1 - sigmas[0]) * clean + sigmas[0] * noise
        if mask is not None:
            repaint = _check_mask(mask, batch, width, height).to(device)
            impose = _known_region_imposer(clean, noise, repaint)
            callback = _composited_preview(callback, clean, repaint)

    with torch.inference_mode(), _reusing_captions(model):
        velocity = guided_velocity(network, positive, negative, cfg, batch_branches=batch_cfg)
        x = euler(
            velocity, x, sigmas, callback=callback, cancel_check=cancel_check, model_dtype=parameter.dtype,
            impose=impose,
        )  # fmt: skip
    return x.clamp(-1.0, 1.0)


def _reusing_captions(model):
    """Return the network's `reuse_captions()` block, or a no-op one for a model without it.

    A host wrapper around the network passes the block on through `reuse_captions` too.
    """
    reuse = getattr(model, "reuse_captions", None)
    return reuse() if reuse is not None else contextlib.nullcontext()


def _known_region_imposer(clean: torch.Tensor, noise: torch.Tensor, repaint: torch.Tensor):
    keep = 1 - repaint

    def impose(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # Where repaint is 1 this is x exactly (1·x + 0·known), so an all-one mask changes nothing.
        return repaint * x + keep * ((1 - sigma) * clean + sigma * noise)

    return impose


def _composited_preview(callback: StepCallback | None, clean: torch.Tensor, repaint: torch.Tensor):
    if callback is None:
        return None

    def preview(step: int, total: int, x0: torch.Tensor) -> None:
        callback(step, total, repaint * x0 + (1 - repaint) * clean)

    return preview


def _check_mask(mask: torch.Tensor, batch: int, width: int, height: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        raise ValueError("mask must be a floating-point torch tensor with values in [0, 1] (1 = repaint).")
    if mask.ndim != 3 or mask.shape[0] not in (1, batch) or mask.shape[-2:] != (height, width):
        raise ValueError(f"mask must have shape [{batch} or 1, {height}, {width}]; got {list(mask.shape)}.")
    if mask.numel() and (not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1):
        raise ValueError("mask values must be finite and lie in [0, 1] (1 = repaint).")
    return mask.float().expand(batch, -1, -1)[:, None]


def default_tile_overlap(tile_px: int, multiple: int) -> int:
    """Return a quarter of the tile, on the model's grid: 256 px for 1024-px tiles.

    That is four times the local decoder's receptive radius (60 px at 1K), so each tile's
    border pixels, which see zero padding instead of their neighbours, carry little weight.
    """
    return max(multiple, tile_px // 4 // multiple * multiple)


def _guide_image(
    model,
    positive,
    negative,
    width,
    height,
    seed,
    steps,
    cfg,
    shift,
    tile_size,
    callback,
    cancel_check,
    device,
    batch_cfg,
) -> torch.Tensor:
    """Generate the canvas's layout at about one tile's area, then upscale it to the canvas (bicubic)."""
    multiple = model.config.size_multiple
    scale = min(1.0, tile_size / math.sqrt(width * height))
    guide_width = max(multiple, int(width * scale) // multiple * multiple)
    guide_height = max(multiple, int(height * scale) // multiple * multiple)
    guide = sample(
        model, positive, negative, width=guide_width, height=guide_height, seed=seed, steps=steps, cfg=cfg,
        shift=shift, callback=callback, batch_size=len(positive), cancel_check=cancel_check, device=device,
        batch_cfg=batch_cfg,
    )  # fmt: skip
    logger.info("Tiled sampling: guide generated at %d×%d for a %d×%d canvas", guide_width, guide_height, width, height)
    upscaled = F.interpolate(guide, size=(height, width), mode="bicubic", align_corners=False)
    return upscaled.clamp(-1.0, 1.0)


class _ProgressCounter:
    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.done = 0
        self.total = total
        self.report = report

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.report is not None:
            self.report(self.done, self.total)


class _CountingModel:
    """The network, reporting one progress unit per call (for the guide pass)."""

    def __init__(self, model, counter: _ProgressCounter) -> None:
        self.model = model
        self.config = model.config
        self.counter = counter

    def parameters(self):
        return self.model.parameters()

    def reuse_captions(self):
        return _reusing_captions(self.model)

    def __call__(self, x, sigma, context):
        velocity = self.model(x, sigma, context)
        self.counter.advance()
        return velocity


def _check_size(width: int, height: int, multiple: int, variant: str) -> None:
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        suggestion = (
            f"{max(multiple, round(width / multiple) * multiple)}×{max(multiple, round(height / multiple) * multiple)}"
        )
        raise ValueError(
            f"Image size {width}×{height} is not a positive multiple of {multiple} px, which the L2P "
            f"{variant} model needs; use multiples of {multiple} (for example {suggestion})."
        )


def _caption_list(captions, name: str) -> list[torch.Tensor]:
    if isinstance(captions, torch.Tensor):
        captions = [captions] if captions.ndim == 2 else list(captions.unbind(0))
    captions = list(captions)
    if not captions:
        raise ValueError(f"{name} conditioning is empty; pass at least one caption-feature tensor.")
    return captions


def _broadcast(captions: list[torch.Tensor], batch: int, name: str) -> list[torch.Tensor]:
    if len(captions) == batch:
        return captions
    if len(captions) == 1:
        return captions * batch
    raise ValueError(f"{name} conditioning has {len(captions)} entries for a batch of {batch}; pass 1 or {batch}.")


def _whole_number(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number; got {value!r}.") from None


def _check_init_image(image: torch.Tensor, batch: int, channels: int, width: int, height: int) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        kind = type(image).__name__ if not isinstance(image, torch.Tensor) else f"a {image.dtype} tensor"
        raise ValueError(
            f"init_image must be a floating-point torch tensor in [-1, 1]; got {kind}. "
            "Convert 8-bit pixels with l2p_core.from_uint8."
        )
    if image.ndim == 4 and image.shape[-1] == channels and image.shape[1] != channels:
        raise ValueError(
            f"init_image has shape {list(image.shape)}, channels last; pass [B, {channels}, H, W] "
            "(for example image.permute(0, 3, 1, 2)), in [-1, 1]."
        )
    if image.ndim != 4 or image.shape[1] != channels or image.shape[0] not in (1, batch):
        raise ValueError(f"init_image must have shape [{batch} or 1, {channels}, H, W]; got {list(image.shape)}.")
    if image.numel() and (image.min() < -1.001 or image.max() > 1.001 or not torch.isfinite(image).all()):
        raise ValueError(
            f"init_image values must lie in [-1, 1]; found [{float(image.min()):.3g}, {float(image.max()):.3g}]. "
            "Scale [0, 1] images with x * 2 - 1 and 8-bit ones with l2p_core.from_uint8."
        )
    if image.shape[-2:] != (height, width):
        raise ValueError(
            f"init_image is {image.shape[-1]}×{image.shape[-2]} but width×height is {width}×{height}; they must match."
        )
    return image.float().expand(batch, -1, -1, -1)
