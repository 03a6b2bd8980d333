"""Pixel-space editing: size padding, inpainting, crop-and-stitch and outpainting on photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import l2p_core
from l2p_core import editing, synthetic
from l2p_core.errors import SamplingCancelled
from l2p_core.masks import box_blur, feather_mask, grow_mask, mask_bounds

from .conftest import OFFICIAL_1K
from .test_fidelity import SAMPLING_ATOL

skimage_data = pytest.importorskip("skimage.data", reason="photographs come from scikit-image (the test extra)")

FAST = {"steps": 2, "cfg": 1.0}


@pytest.fixture(scope="module")
def model():
    config = synthetic.tiny_config()
    network = l2p_core.L2PTransformer(config)
    network.load_state_dict(synthetic.random_state_dict(config, seed=7, dtype=torch.float32))
    return network.eval()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """Chelsea the cat, 300×451: neither side is a multiple of 16."""
    return skimage_data.chelsea()


def captions(seed: int = 1, length: int = 5) -> list[torch.Tensor]:
    return [torch.randn(length, 32, generator=torch.Generator().manual_seed(seed))]


class Recorder:
    """Wrap the network and record the shape of every input it is called on."""

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.shapes: list[tuple[int, ...]] = []
        self.inputs: list[torch.Tensor] = []

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x, sigma, context, **kwargs):
        self.shapes.append(tuple(x.shape))
        self.inputs.append(x.clone())
        return self.model(x, sigma, context, **kwargs)


def run_inpaint(model, image, mask, **kwargs):
    options = {**FAST, **kwargs}
    return editing.inpaint(model, captions(1), captions(2), image, mask, seed=3, **options)


def outside_equal(result: torch.Tensor, image: torch.Tensor, keep: torch.Tensor) -> bool:
    keep = keep[:, None].expand_as(result)
    return torch.equal(result[keep], image.expand_as(result)[keep])


# Size handling


def test_pad_to_multiple_reflects_and_keeps_pixels(cat):
    image = l2p_core.from_uint8(cat)
    padded = editing.pad_to_multiple(image, 16)
    assert padded.shape[-2:] == (304, 464)
    assert torch.equal(padded[..., :300, :451], image)
    assert torch.equal(padded[..., 300, :451], image[..., 298, :])


def test_pad_to_multiple_replicates_tiny_sides():
    image = torch.rand(1, 3, 5, 20) * 2 - 1
    padded = editing.pad_to_multiple(image, 16)
    assert padded.shape[-2:] == (16, 32)
    assert torch.equal(padded[..., 15, :20], image[..., 4, :])


def test_img2img_keeps_odd_input_size(model, cat):
    image = l2p_core.from_uint8(cat[100:145, 200:261])
    recorder = Recorder(model)
    result = editing.img2img(recorder, captions(1), captions(2), image, seed=3, denoise=0.6, **FAST)
    assert result.shape == image.shape
    assert recorder.shapes[0][-2:] == (48, 64)


def test_img2img_on_grid_equals_sample(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:48, :64])
    result = editing.img2img(model, captions(1), captions(2), image, seed=3, denoise=0.6, **FAST)
    expected = l2p_core.sample(
        model, captions(1), captions(2), width=64, height=48, seed=3, init_image=image, denoise=0.6, **FAST
    )
    assert torch.equal(result, expected)


# Masks


def test_grow_dilates_by_square_window():
    mask = torch.zeros(1, 9, 9)
    mask[0, 4, 4] = 1
    grown = grow_mask(mask, 2)
    assert grown.sum() == 25
    assert mask_bounds(grown) == (2, 7, 2, 7)


def test_feather_is_zero_outside_and_soft_inside():
    mask = torch.zeros(1, 40, 40)
    mask[:, 10:30, 10:30] = 1
    feathered = feather_mask(mask, 4)
    assert torch.equal(feathered[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert feathered[0, 10, 20] < 0.5
    assert feathered[0, 20, 20] == 1
    assert bool(((feathered > 0) & (feathered < 1)).any())


def test_feather_keeps_mask_at_image_border():
    mask = torch.zeros(1, 20, 20)
    mask[:, :, :8] = 1
    assert feather_mask(mask, 3)[0, 10, 0] == 1


def test_box_blur_matches_average_pool():
    values = torch.rand(2, 11, 13)
    expected = torch.nn.functional.avg_pool2d(values[:, None], 5, stride=1, padding=2, count_include_pad=False)[:, 0]
    assert torch.allclose(box_blur(values, 2), expected, atol=1e-6)


# Inpainting


def test_inpaint_keeps_unmasked_photo_pixels_exactly(model, astronaut):
    pixels = astronaut[40:120, 180:270]
    image = l2p_core.from_uint8(pixels)
    mask = torch.zeros(1, 80, 90)
    mask[:, 30:50, 40:60] = 1
    result = run_inpaint(model, image, mask, grow_px=3, feather_px=4)

    keep = grow_mask(mask, 3) == 0
    assert result.shape == image.shape
    assert outside_equal(result, image, keep)
    assert np.array_equal(l2p_core.to_uint8(result)[0][keep[0].numpy()], pixels[keep[0].numpy()])
    assert not torch.equal(result[..., 35:45, 45:55], image[..., 35:45, 45:55])


def test_inpaint_odd_sized_photo_keeps_size(model, cat):
    image = l2p_core.from_uint8(cat[:75, :99])
    mask = torch.zeros(1, 75, 99)
    mask[:, 60:, 80:] = 1
    result = run_inpaint(model, image, mask)
    assert result.shape == image.shape
    assert outside_equal(result, image, mask == 0)


def test_empty_mask_returns_input_without_sampling(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:64, :64])
    recorder = Recorder(model)
    result = run_inpaint(recorder, image, torch.zeros(1, 64, 64))
    assert recorder.shapes == []
    assert torch.equal(result, image)
    assert result.data_ptr() != image.data_ptr()


def test_full_mask_equals_text_to_image(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:48, :64])
    result = run_inpaint(model, image, torch.ones(1, 48, 64))
    expected = l2p_core.sample(model, captions(1), captions(2), width=64, height=48, seed=3, **FAST)
    assert torch.equal(result, expected)


def test_known_region_follows_noising_path(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:32, :48])
    mask = torch.zeros(1, 32, 48)
    mask[:, :, 24:] = 1
    recorder = Recorder(model)
    l2p_core.sample(
        recorder, captions(1), captions(2), width=48, height=32, seed=3, init_image=image, mask=mask, steps=3, cfg=1.0
    )
    noise = l2p_core.draw_noise(3, (1, 3, 32, 48))
    sigmas = l2p_core.flow_sigmas(3)
    for state, sigma in zip(recorder.inputs, sigmas, strict=False):
        known = (1 - sigma) * image + sigma * noise
        assert torch.allclose(state[..., :24], known[..., :24], atol=1e-6)


def test_sample_with_hard_mask_returns_known_pixels(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:32, :32])
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    result = l2p_core.sample(
        model, captions(1), captions(2), width=32, height=32, seed=3, init_image=image, mask=mask, **FAST
    )
    assert outside_equal(result, image, mask == 0)


def test_inpaint_batch_with_one_mask_per_image(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:32, :32])
    mask = torch.zeros(2, 32, 32)
    mask[0, :8, :8] = 1
    result = run_inpaint(model, image, mask)
    assert result.shape == (2, 3, 32, 32)
    assert torch.equal(result[1], image[0])
    assert outside_equal(result, image, mask == 0)


def test_inpaint_with_patch_tiling(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:64, :96])
    mask = torch.zeros(1, 64, 96)
    mask[:, 16:48, 16:80] = 1
    result = run_inpaint(model, image, mask, crop=False, tile_size=48, tile_overlap=16)
    assert outside_equal(result, image, mask == 0)


def test_inpaint_reports_steps_and_stops_on_cancel(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:32, :32])
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    steps = []
    run_inpaint(model, image, mask, callback=lambda step, total, x0: steps.append((step, total, x0.shape)))
    assert steps == [(1, 2, (1, 3, 32, 32)), (2, 2, (1, 3, 32, 32))]
    with pytest.raises(SamplingCancelled):
        run_inpaint(model, image, mask, cancel_check=lambda: True)


# Crop-and-stitch


def test_crop_samples_only_window_and_stitches_exactly(model, astronaut):
    image = l2p_core.from_uint8(astronaut)
    mask = torch.zeros(1, 512, 512)
    mask[:, 200:232, 300:340] = 1
    recorder = Recorder(model)
    result = run_inpaint(recorder, image, mask, context_px=24)

    assert recorder.shapes[0][-2:] == (80, 96)
    assert outside_equal(result, image, mask == 0)
    assert np.array_equal(l2p_core.to_uint8(result)[0][(mask[0] == 0).numpy()], astronaut[(mask[0] == 0).numpy()])


def test_crop_of_odd_sized_photo_stays_on_grid(model, cat):
    image = l2p_core.from_uint8(cat)
    mask = torch.zeros(1, 300, 451)
    mask[:, 140:160, 200:220] = 1
    recorder = Recorder(model)
    result = run_inpaint(recorder, image, mask, context_px=16)

    assert recorder.shapes[0][-2:] == (64, 64)
    assert result.shape == image.shape
    assert outside_equal(result, image, mask == 0)


def test_crop_window_with_patch_tiling(model, astronaut):
    image = l2p_core.from_uint8(astronaut)
    mask = torch.zeros(1, 512, 512)
    mask[:, 100:132, 100:132] = 1
    recorder = Recorder(model)
    result = run_inpaint(recorder, image, mask, context_px=48, tile_size=64, tile_overlap=16)

    assert {shape[-2:] for shape in recorder.shapes} == {(64, 64)}
    assert len(recorder.shapes) > 2
    assert outside_equal(result, image, mask == 0)


def test_plan_window_is_on_grid_inside_image():
    window = editing.plan_window((5, 30, 490, 500), 512, 512, 16, 40, 1024)
    top, bottom, left, right = window
    assert (bottom - top) % 16 == 0
    assert (right - left) % 16 == 0
    assert top == 0
    assert right == 512
    assert bottom >= 30
    assert left <= 490


def test_plan_window_caps_context_at_window_limit():
    top, bottom, left, right = editing.plan_window((1000, 1100, 1000, 1100), 4096, 4096, 16, 800, 1024)
    assert (bottom - top, right - left) == (1024, 1024)
    assert top <= 1000
    assert bottom >= 1100


def test_plan_window_keeps_mask_larger_than_limit():
    top, bottom, left, right = editing.plan_window((0, 2000, 0, 100), 4096, 4096, 16, 64, 1024)
    assert (top, bottom) == (0, 2000)
    assert right - left == 240


# Outpainting


def test_outpaint_keeps_photo_and_extends_canvas(model, cat):
    pixels = cat[:60, :70]
    image = l2p_core.from_uint8(pixels)
    result = editing.outpaint(model, captions(1), captions(2), image, seed=3, left=16, bottom=32, feather_px=4, **FAST)
    assert result.shape == (1, 3, 92, 86)
    assert torch.equal(result[..., :60, 16:], image)
    assert np.array_equal(l2p_core.to_uint8(result)[0, :60, 16:], pixels)


def test_fill_margins_replicates_blurred_edge():
    image = torch.zeros(1, 3, 16, 16)
    image[..., :8] = 1
    canvas, mask = editing.fill_margins(image, left=16, top=0, right=0, bottom=0)
    assert torch.equal(canvas[..., 16:], image)
    assert torch.equal(canvas[..., :, 0], torch.ones(1, 3, 16))
    assert mask[0, :, :16].min() == 1
    assert mask[0, :, 16:].max() == 0


@pytest.mark.parametrize("size", [(40, 50), (5, 7)])
@pytest.mark.parametrize("margins", [(16, 0, 32, 0), (0, 16, 0, 48), (64, 64, 64, 64)])
def test_fill_margins_equals_whole_canvas_blur(size, margins):
    height, width = size
    left, top, right, bottom = margins
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    canvas, _ = editing.fill_margins(image, left=left, top=top, right=right, bottom=bottom)

    replicated = torch.nn.functional.pad(image, (left, right, top, bottom), mode="replicate")
    expected = box_blur(replicated.flatten(0, 1), max(margins) // 4).unflatten(0, (2, 3))
    expected[..., top : top + height, left : left + width] = image
    assert torch.equal(canvas, expected)


def test_outpaint_rejects_off_grid_margin(model, cat):
    image = l2p_core.from_uint8(cat[:32, :32])
    with pytest.raises(ValueError, match=r"right=10 px is not a multiple of 16 px.*use 16"):
        editing.outpaint(model, captions(1), captions(2), image, seed=3, right=10)
    with pytest.raises(ValueError, match="All outpaint margins are 0"):
        editing.outpaint(model, captions(1), captions(2), image, seed=3)


# Input errors


def test_mask_size_mismatch_names_both_shapes(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:64, :80])
    with pytest.raises(ValueError, match=r"mask shape \[1, 64, 64\].*image shape \[1, 3, 64, 80\]"):
        run_inpaint(model, image, torch.ones(1, 64, 64))


def test_mask_batch_mismatch_names_both_shapes(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:64, :64]).expand(2, -1, -1, -1)
    with pytest.raises(ValueError, match=r"mask shape \[3, 64, 64\] and image shape \[2, 3, 64, 64\]"):
        run_inpaint(model, image, torch.ones(3, 64, 64))


def test_placeholder_mask_asks_for_mask_editor(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:128, :128])
    with pytest.raises(ValueError, match="empty 64×64 placeholder.*mask editor"):
        run_inpaint(model, image, torch.zeros(1, 64, 64))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.full((1, 32, 32), 2.0), r"mask values must lie in \[0, 1\]"),
        (torch.full((1, 32, 32), float("nan")), "NaN"),
        (torch.ones(1, 32, 32, dtype=torch.uint8), "floating-point"),
    ],
)
def test_invalid_mask_values_rejected(model, astronaut, mask, message):
    image = l2p_core.from_uint8(astronaut[:32, :32])
    with pytest.raises(ValueError, match=message):
        run_inpaint(model, image, mask)


def test_invalid_image_rejected_before_sampling(model, astronaut):
    recorder = Recorder(model)
    channels_last = torch.zeros(1, 32, 32, 3)
    with pytest.raises(ValueError, match="channels last"):
        editing.img2img(recorder, captions(1), captions(2), channels_last, seed=3, denoise=0.5)
    with pytest.raises(ValueError, match=r"lie in \[-1, 1\]"):
        editing.img2img(recorder, captions(1), captions(2), torch.full((1, 3, 32, 32), 3.0), seed=3, denoise=0.5)
    assert recorder.shapes == []


def test_unknown_option_rejected(model, astronaut):
    image = l2p_core.from_uint8(astronaut[:32, :32])
    with pytest.raises(TypeError, match="stpes"):
        editing.img2img(model, captions(1), captions(2), image, seed=3, denoise=0.5, stpes=3)


def test_sample_mask_needs_init_image(model):
    with pytest.raises(ValueError, match="mask needs an init_image"):
        l2p_core.sample(model, captions(1), captions(2), width=32, height=32, seed=3, mask=torch.ones(1, 32, 32))


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"steps": 0}, "steps must be at least 1"), ({"cfg": float("nan")}, "cfg must be"), ({"seed": -1}, "seed must")],
)
def test_settings_checked_even_for_empty_mask(model, astronaut, settings, message):
    image = l2p_core.from_uint8(astronaut[:32, :32])
    options = {"seed": 3, **settings}
    with pytest.raises(ValueError, match=message):
        editing.inpaint(model, captions(1), captions(2), image, torch.zeros(1, 32, 32), **options)


def test_img2img_matches_reference_case(sampling_reference):
    reference = sampling_reference
    result = editing.img2img(
        l2p_core.load_model(OFFICIAL_1K), [reference["cap_pos"]], [reference["cap_neg"]],
        reference["i2i.input_image"], seed=42, denoise=float(reference["i2i.denoising_strength"]), steps=4, cfg=2.0,
    )  # fmt: skip
    expected = reference["i2i.x_final"].clamp(-1, 1)
    assert (result - expected).abs().max() <= SAMPLING_ATOL
