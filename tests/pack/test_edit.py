"""The L2P Edit node without a host: its schema, input checks, sampled size and IMAGE-space composite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import l2p_core
from l2p_core import synthetic

skimage_data = pytest.importorskip("skimage.data", reason="photographs come from scikit-image (the test extra)")


@pytest.fixture(scope="module")
def edit(pack_module):
    return pack_module("nodes.edit_images")


@pytest.fixture(scope="module")
def model():
    config = synthetic.tiny_config()
    network = l2p_core.L2PTransformer(config)
    network.load_state_dict(synthetic.random_state_dict(config, seed=3, dtype=torch.float32))
    return network.eval()


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    """Chelsea the cat as an IMAGE [1, 300, 451, 3], as Load Image returns it (uint8 / 255)."""
    return torch.from_numpy(skimage_data.chelsea().astype(np.float32) / 255.0)[None]


def saved(image: torch.Tensor) -> np.ndarray:
    """Return the uint8 pixels that ComfyUI's SaveImage writes: clip(255·x) cast, which truncates."""
    return np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)


def captions() -> list[torch.Tensor]:
    return [torch.randn(5, 32, generator=torch.Generator().manual_seed(1))]


def test_schema_modes_and_optional_mask(pack_module):
    schema = pack_module("nodes.edit").L2PEdit.GET_SCHEMA()
    inputs = {item.id: item for item in schema.inputs}
    assert schema.node_id == "L2PEdit"
    assert inputs["mode"].options["options"] == ["inpaint", "img2img", "outpaint"]
    assert inputs["mask"].options["optional"] is True
    assert "0.818" in inputs["denoise"].tooltip


def test_round_trip_through_core_range_is_not_exact(edit, cat):
    """The reason for the composite: converting back from [-1, 1] changes saved pixels."""
    round_trip = l2p_core_to_image(edit.to_core_image(cat))
    assert (saved(round_trip) != saved(cat)).any()


def l2p_core_to_image(core: torch.Tensor) -> torch.Tensor:
    return ((core + 1) / 2).permute(0, 2, 3, 1).clamp(0, 1)


def test_inpaint_composite_keeps_unmasked_pixels_exactly(edit, model, cat):
    mask = torch.zeros(1, 300, 451)
    mask[:, 100:180, 200:290] = 1
    core_input = edit.to_core_image(cat)
    result = l2p_core.inpaint(
        model, captions(), captions(), core_input, mask, seed=5, steps=2, cfg=1.0, grow_px=4, feather_px=6
    )
    image = edit.composite(cat, core_input, result)
    outside = l2p_core.masks.grow_mask(mask, 4)[0] == 0

    assert image.shape == cat.shape
    assert torch.equal(image[0][outside], cat[0][outside])
    assert (saved(image)[0][outside.numpy()] == saved(cat)[0][outside.numpy()]).all()
    assert not torch.equal(image[0, 100:180, 200:290], cat[0, 100:180, 200:290])


def test_outpaint_composite_keeps_original_exactly(edit, model, cat):
    margins = {"left": 32, "top": 0, "right": 16, "bottom": 48}
    core_input = edit.to_core_image(cat)
    result = l2p_core.outpaint(model, captions(), captions(), core_input, seed=5, steps=2, cfg=1.0, **margins)
    image = edit.composite(cat, core_input, result, (margins["top"], margins["left"]))

    assert image.shape == (1, 300 + 48, 451 + 32 + 16, 3)
    assert torch.equal(image[:, 0:300, 32 : 32 + 451], cat)


def test_composite_broadcasts_one_image_over_batch(edit, cat):
    core_input = edit.to_core_image(cat)
    result = core_input.expand(2, -1, -1, -1).clone()
    result[1, :, :10] = 0.0
    image = edit.composite(cat, core_input, result)
    assert image.shape == (2, 300, 451, 3)
    assert torch.equal(image[0], cat[0])
    assert torch.equal(image[1, 10:], cat[0, 10:])


def test_placeholder_mask_asks_for_mask_editor(edit, cat):
    with pytest.raises(ValueError, match="mask editor"):
        edit.check_inpaint_mask(torch.zeros(1, 64, 64), cat)


def test_missing_mask_in_inpaint_mode(edit, cat):
    with pytest.raises(ValueError, match="Inpaint mode needs a mask"):
        edit.check_inpaint_mask(None, cat)


def test_mask_of_other_size(edit, cat):
    with pytest.raises(ValueError, match=r"does not match image shape .* \(451×300\)"):
        edit.check_inpaint_mask(torch.ones(1, 300, 450), cat)


def test_mask_batch_mismatch(edit, cat):
    with pytest.raises(ValueError, match="different batch sizes"):
        edit.check_inpaint_mask(torch.ones(3, 300, 451), cat.expand(2, -1, -1, -1))


def test_image_with_alpha_rejected(edit):
    with pytest.raises(ValueError, match=r"RGB IMAGE .* got \[1, 8, 8, 4\]"):
        edit.check_image(torch.zeros(1, 8, 8, 4))


@pytest.mark.parametrize(
    ("margins", "message"),
    [
        ({"left": 0, "top": 0, "right": 0, "bottom": 0}, "All outpaint margins are 0"),
        ({"left": 20, "top": 0, "right": 0, "bottom": 0}, "left = 20 px .* use 32"),
    ],
)
def test_outpaint_margins_checked(edit, margins, message):
    with pytest.raises(ValueError, match=message):
        edit.check_margins(margins, 16)


def sampled(edit, image, mask=None, **overrides):
    settings = {
        "mode": "inpaint", "multiple": 16, "grow_px": 0, "crop": True, "context_px": 32, "max_window_px": 1024,
        "margins": {"left": 0, "top": 0, "right": 0, "bottom": 0},
    } | overrides  # fmt: skip
    return edit.sampled_shape(image, mask, **settings)


def test_sampled_shape_of_each_mode(edit, cat):
    mask = torch.zeros(1, 300, 451)
    mask[:, 100:110, 200:210] = 1
    assert sampled(edit, cat, mask) == (1, 3, 80, 80)
    assert sampled(edit, cat, mask, crop=False) == (1, 3, 304, 464)
    assert sampled(edit, cat, torch.zeros(1, 300, 451)) is None
    assert sampled(edit, cat, mode="img2img") == (1, 3, 304, 464)
    outpaint = {"left": 0, "top": 0, "right": 64, "bottom": 0}
    assert sampled(edit, cat, mode="outpaint", margins=outpaint) == (1, 3, 304, 128)
