"""Weight streaming into a network built by the host, checked against l2p_core's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def weights(pack_module):
    return pack_module("nodes.weights")


@pytest.fixture(scope="module")
def core(pack_module):
    return pack_module("l2p_core")


@pytest.fixture(scope="module")
def synthetic(pack_module):
    return pack_module("l2p_core.synthetic")


@pytest.fixture(scope="module")
def checkpoint(synthetic, tmp_path_factory):
    """A tiny checkpoint in the official layout (split q/k/v, some blocks in float32)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return synthetic.write_checkpoint(path, synthetic.tiny_config())


def build(core, info, dtype):
    return core.L2PTransformer(info.config, dtype=dtype)


HR_4K_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-l2p-4k.safetensors"


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("variant", ["1K", "HR 4K"])
def test_streamed_weights_equal_core_loader(core, weights, checkpoint, assign, variant):
    path = checkpoint if variant == "1K" else HR_4K_FIXTURE
    info = core.inspect_checkpoint(path)
    assert info.config.variant == variant
    network = build(core, info, torch.float32)
    weights.load_weights(network, info, torch.float32, assign=assign)
    expected = core.load_model(path, dtype=torch.float32).state_dict()
    loaded = network.state_dict()
    assert loaded.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(loaded[name], expected[name])] == []


def test_storage_dtype_is_applied(core, weights, checkpoint):
    info = core.inspect_checkpoint(checkpoint)
    network = build(core, info, torch.bfloat16)
    weights.load_weights(network, info, torch.bfloat16, assign=True)
    assert {parameter.dtype for parameter in network.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(("dtype", "limit"), [(torch.float16, "65504"), (torch.float8_e4m3fn, "448")])
def test_narrow_dtype_overflow_names_weight_and_suggests_bf16(core, weights, checkpoint, tmp_path, dtype, limit):
    state = load_file(checkpoint)
    state["cap_pad_token"] = state["cap_pad_token"].float() * 0 + 1e5
    overflowing = tmp_path / "overflowing.safetensors"
    save_file(state, str(overflowing))
    info = core.inspect_checkpoint(overflowing)
    # The check runs before any weight reaches the network, whose own dtype does not matter here.
    with pytest.raises(ValueError) as error:
        weights.load_weights(build(core, info, torch.float32), info, dtype, assign=False)
    message = str(error.value)
    assert "'cap_pad_token' has values up to 100000" in message
    assert limit in message
    assert "weight_dtype bf16" in message


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("layers.3.attention.qkv.weight", "layers.3"),
        ("local_decoder.enc1.0.weight", "local_decoder"),
        ("x_embedder.bias", "x_embedder"),
        ("x_pad_token", ""),
    ],
)
def test_block_prefix(weights, name, prefix):
    assert weights.block_prefix(name) == prefix
