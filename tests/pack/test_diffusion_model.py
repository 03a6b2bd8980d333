"""The network behind ComfyUI's calling convention: padded context, σ timesteps, float16 guard."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def core(pack_module):
    return pack_module("l2p_core")


@pytest.fixture(scope="module")
def synthetic(pack_module):
    return pack_module("l2p_core.synthetic")


@pytest.fixture(scope="module")
def network(pack_module, synthetic):
    diffusion_model = pack_module("nodes.diffusion_model")
    config = synthetic.tiny_config()
    state = synthetic.random_state_dict(config, dtype=torch.float32)
    network = diffusion_model.L2PDiffusionModel(
        l2p_config=config, dtype=torch.float32, image_model="test", dim=config.dim
    )
    network.load_state_dict(state)
    return network.eval()


def test_padded_context_with_mask_equals_caption_list(network):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 48)
    sigma = torch.tensor([0.7, 0.7])
    width = network.config.cap_feat_dim
    context = torch.randn(2, 9, width)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    with torch.inference_mode():
        padded = network(x, sigma, context=context, attention_mask=mask, num_tokens=9, transformer_options={})
        listed = network(x, sigma, [context[0], context[1, :5]])
    torch.testing.assert_close(padded, listed)


def test_token_offsets_pass_through(network):
    """l2p_core's tiled sampler shifts RoPE positions through a keyword argument."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 32)
    context = [torch.randn(4, network.config.cap_feat_dim)]
    with torch.inference_mode():
        plain = network(x, torch.tensor([0.5]), context)
        shifted = network(x, torch.tensor([0.5]), context, token_offsets=torch.tensor([[0, 3]]))
    assert not torch.allclose(plain, shifted)


def test_control_input_is_rejected(network):
    context = torch.randn(1, 4, network.config.cap_feat_dim)
    with pytest.raises(ValueError, match="ControlNet"):
        network(torch.randn(1, 3, 32, 32), torch.tensor([0.5]), context=context, control={"output": []})


def test_float16_overflow_stops_with_advice(network, core, monkeypatch):
    monkeypatch.setattr(network, "compute_dtype", torch.float16)
    with pytest.raises(core.SamplingError, match="weight_dtype bf16"):
        network._check_finite(torch.tensor([1.0, float("inf")]))


def test_float32_output_is_not_checked(network):
    velocity = torch.tensor([float("nan")])
    assert network._check_finite(velocity) is velocity
