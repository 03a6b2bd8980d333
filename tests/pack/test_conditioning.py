"""CONDITIONING to caption lists: padding removal and the errors a user can act on."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def conditioning(pack_module):
    return pack_module("nodes.conditioning")


def entry(tokens: int = 5, width: int = 2560, batch: int = 1, **options) -> list:
    return [[torch.randn(batch, tokens, width), {"pooled_output": None, **options}]]


def test_unpadded_without_mask(conditioning):
    captions = conditioning.caption_features(entry(tokens=7), "positive", 2560)
    assert [tuple(caption.shape) for caption in captions] == [(7, 2560)]


def test_mask_removes_padding(conditioning):
    features = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    captions = conditioning.unpad_captions(features, mask)
    assert [len(caption) for caption in captions] == [6, 3]
    assert torch.equal(captions[1], features[1, :3])


def test_all_padding_is_rejected(conditioning):
    with pytest.raises(ValueError, match="Caption 1 .* no tokens"):
        conditioning.unpad_captions(torch.randn(2, 3, 8), torch.tensor([[1, 1, 1], [0, 0, 0]]))


def test_width_mismatch_names_both_sizes(conditioning):
    with pytest.raises(ValueError) as error:
        conditioning.caption_features(entry(width=4096), "negative", 2560)
    message = str(error.value)
    assert "negative conditioning is 4096 wide" in message
    assert "2560-wide" in message
    assert "qwen_3_4b.safetensors" in message


def test_several_entries_are_rejected(conditioning):
    with pytest.raises(ValueError, match="has 2 entries"):
        conditioning.caption_features(entry() + entry(), "positive", 2560)


def test_empty_conditioning_is_rejected(conditioning):
    with pytest.raises(ValueError, match="positive conditioning is empty"):
        conditioning.caption_features([], "positive", 2560)


@pytest.mark.parametrize(
    "options", [{"area": (64, 64, 0, 0)}, {"mask": torch.ones(1, 8, 8)}, {"strength": 0.5}, {"start_percent": 0.2}]
)
def test_sampler_only_options_are_rejected(conditioning, options):
    with pytest.raises(ValueError, match=f"sets {next(iter(options))}.*KSampler"):
        conditioning.caption_features(entry(**options), "positive", 2560)


def test_neutral_options_pass(conditioning):
    captions = conditioning.caption_features(entry(strength=1.0, start_percent=0.0, end_percent=1.0), "positive", 2560)
    assert len(captions) == 1


def test_long_captions_keep_first_512_tokens(conditioning):
    # The reference tokenises to 512 tokens; the causal encoder's first 512 rows are the same.
    features = torch.randn(2, 600, 8)
    mask = torch.ones(2, 600)
    mask[1, 300:] = 0
    captions = conditioning.unpad_captions(features, mask)
    assert torch.equal(captions[0], features[0, :512])
    assert torch.equal(captions[1], features[1, :300])
    assert torch.equal(conditioning.unpad_captions(features, None)[0], features[0, :512])
