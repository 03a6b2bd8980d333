"""HR checkpoints (4K, 8K, 10K: patch 64, 128, 160) with their deeper local decoders.

The 4K network is checked against the official HR code's float32 outputs at the same
tolerances as 1K. No reference outputs exist for 8K and 10K, so their networks are checked
structurally at tiny size: every parameter of the file is used, and a forward pass gives
a finite image of the input's size.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import l2p_core
from l2p_core import synthetic
from l2p_core.variants import VARIANTS

from .conftest import FIXTURES

OFFICIAL_4K = FIXTURES / "tiny-l2p-4k.safetensors"


@pytest.fixture(scope="module")
def forward_reference_4k() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "reference-forward-4k.safetensors")


@pytest.fixture(scope="module", params=["official", "comfyui"])
def model_4k(request, tmp_path_factory):
    path = OFFICIAL_4K
    if request.param == "comfyui":
        path = tmp_path_factory.mktemp("comfyui-4k") / "tiny-l2p-4k-comfy.safetensors"
        save_file(synthetic.to_comfyui_layout(load_file(OFFICIAL_4K)), str(path))
    return l2p_core.load_model(path)


@pytest.mark.parametrize("case", ["a", "b"])
def test_4k_forward_matches_reference(model_4k, forward_reference_4k, case):
    reference = forward_reference_4k
    captured = {}

    def keep_features(_module, args):
        captured["feat_map"] = args[1]

    hook = model_4k.local_decoder.register_forward_pre_hook(keep_features)
    try:
        with torch.no_grad():
            velocity = model_4k(reference[f"{case}.x"], reference[f"{case}.sigma"], [reference[f"{case}.cap_feats"]])
    finally:
        hook.remove()
    assert (velocity - reference[f"{case}.velocity"]).abs().max() <= 1e-4
    assert (captured["feat_map"] - reference[f"{case}.feat_map"]).abs().max() <= 2e-4


def test_4k_config_comes_from_shapes(model_4k):
    config = model_4k.config
    assert config.variant == "HR 4K"
    assert config.patch_size == 64
    assert [level.name for level in config.decoder.levels] == ["0", "0b", "1", "2", "3", "4"]
    assert [level.dec_out for level in config.decoder.levels] == [16, 16, 32, 64, 128, 256]
    assert config.size_multiple == 64


@pytest.mark.parametrize(("patch", "height", "width"), [(64, 128, 192), (128, 128, 256), (160, 320, 640)])
@pytest.mark.parametrize("layout", ["official", "comfyui"])
def test_hr_network_uses_every_weight(tmp_path, patch, height, width, layout):
    config = synthetic.tiny_config(patch_size=patch)
    path = synthetic.write_checkpoint(tmp_path / f"hr-{patch}.safetensors", config, layout=layout)
    info = l2p_core.inspect_checkpoint(path)
    model = l2p_core.load_model(path)

    assert model.config == config
    assert set(dict(model.named_parameters())) == set(info.layout.tensors)
    with torch.no_grad():
        velocity = model(torch.rand(1, 3, height, width) * 2 - 1, torch.tensor([0.7]), [torch.randn(9, 32)])
    assert velocity.shape == (1, 3, height, width)
    assert torch.isfinite(velocity).all()


def test_8k_wrapper_level_is_outermost():
    config = synthetic.tiny_config(patch_size=128)
    wrapper = config.decoder.levels[0]
    assert (wrapper.name, wrapper.enc_in, wrapper.enc_out) == ("_8k", 3, 3)
    # Like the released up_8k (16 → 16) and dec_8k (16 + 3 → 16): the wrapper keeps the inner width.
    assert wrapper.up_in == wrapper.up_out == wrapper.dec_out == config.decoder.levels[1].dec_out


def test_10k_features_are_upsampled_nearest_to_pooled_grid(tmp_path):
    model = l2p_core.load_model(
        synthetic.write_checkpoint(tmp_path / "hr-160.safetensors", synthetic.tiny_config(patch_size=160))
    )
    captured = {}

    def keep_bottleneck_input(_module, args):
        captured["input"] = args[0]

    hook = model.local_decoder.bottleneck.register_forward_pre_hook(keep_bottleneck_input)
    features = torch.randn(1, 64, 2, 4)
    with torch.no_grad():
        model.local_decoder(torch.randn(1, 3, 320, 640), features)
    hook.remove()

    # 320×640 pools six times to 5×10; the 2×4 token grid is resized to it, nearest.
    injected = captured["input"][:, -64:]
    assert injected.shape[-2:] == (5, 10)
    assert torch.equal(injected, F.interpolate(features, size=(5, 10), mode="nearest"))


@pytest.mark.parametrize(("patch", "bad_size", "multiple"), [(64, 96, 64), (128, 192, 128), (160, 160, 320)])
def test_sizes_off_the_variant_grid_are_rejected(tmp_path, patch, bad_size, multiple):
    model = l2p_core.load_model(
        synthetic.write_checkpoint(tmp_path / "hr.safetensors", synthetic.tiny_config(patch_size=patch))
    )
    message = rf"{bad_size}×{multiple} is not a positive multiple of {multiple} px, which the L2P HR"
    with pytest.raises(ValueError, match=message):
        l2p_core.sample(
            model, [torch.randn(4, 32)], [torch.randn(4, 32)], width=bad_size, height=multiple, seed=0, steps=1
        )


def test_variant_presets_follow_official_scripts():
    assert (VARIANTS[16].steps, VARIANTS[16].cfg) == (30, 2.0)
    for patch in (64, 128, 160):
        assert (VARIANTS[patch].steps, VARIANTS[patch].cfg) == (50, 4.0)
        assert VARIANTS[patch].source_model == "Z-Image"
