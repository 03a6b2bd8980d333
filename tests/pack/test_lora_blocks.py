"""The shared-block range of the L2P LoRA Scope node, read from checkpoint dtypes."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="module")
def lora_blocks(pack_module):
    return pack_module("nodes.lora_blocks")


def released_like_dtypes(n_layers: int, float32_blocks: range) -> dict[str, tuple[str, ...]]:
    """Return canonical names and dtypes the way l2p_core lists a released-style 1K file."""
    dtypes = {"x_embedder.weight": ("BF16",), "noise_refiner.0.attention.qkv.weight": ("BF16",)}
    for block in range(n_layers):
        dtype = "F32" if block in float32_blocks else "BF16"
        dtypes[f"layers.{block}.attention.qkv.weight"] = (dtype, dtype, dtype)
        dtypes[f"layers.{block}.feed_forward.w1.weight"] = (dtype,)
    return dtypes


def test_float32_blocks_of_released_layout(lora_blocks):
    dtypes = released_like_dtypes(30, range(5, 25))
    assert lora_blocks.float32_joint_blocks(dtypes) == tuple(range(5, 25))


def test_block_with_one_bfloat16_part_not_float32(lora_blocks):
    dtypes = released_like_dtypes(4, range(1, 3))
    dtypes["layers.2.attention.qkv.weight"] = ("F32", "BF16", "F32")
    assert lora_blocks.float32_joint_blocks(dtypes) == (1,)


def test_shared_blocks_follow_file(lora_blocks):
    assert lora_blocks.shared_joint_blocks((1, 2), 4) == (1, 2)


@pytest.mark.parametrize(
    ("float32_blocks", "reason"),
    [
        (None, "records no checkpoint dtypes (it was not loaded by the L2P Model Loader)"),
        ((), "stores no joint block in float32, so its dtypes do not show the frozen blocks"),
        (tuple(range(30)), "stores every joint block in float32, so its dtypes do not show the frozen blocks"),
    ],
)
def test_shared_blocks_fallback_warns(lora_blocks, caplog, float32_blocks, reason):
    with caplog.at_level(logging.INFO):
        blocks = lora_blocks.shared_joint_blocks(float32_blocks, 30)
    assert blocks == tuple(range(5, 25))
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    message = caplog.records[0].getMessage()
    assert message.startswith("L2P LoRA Scope: using the fallback shared blocks 5–24 because ")
    assert reason in message
    assert "whether they are the frozen blocks of this file is not known" in message


def test_shared_blocks_from_file_not_logged(lora_blocks, caplog):
    with caplog.at_level(logging.INFO):
        lora_blocks.shared_joint_blocks((1, 2), 4)
    assert caplog.records == []


def test_fallback_limited_to_model_depth(lora_blocks):
    assert lora_blocks.shared_joint_blocks((), 8) == (5, 6, 7)


@pytest.mark.parametrize(("blocks", "text"), [((5, 6, 7), "5–7"), ((3,), "3"), ((1, 4), "1, 4"), ((), "none")])
def test_describe_blocks(lora_blocks, blocks, text):
    assert lora_blocks.describe_blocks(blocks) == text
