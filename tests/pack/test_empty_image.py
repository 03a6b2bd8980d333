"""L2P Empty Image: the LATENT that stock samplers start from."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def empty_image(pack_module):
    return pack_module("nodes.latent").L2PEmptyImage


def test_latent_is_three_channel_pixels(empty_image):
    (latent,) = empty_image.execute(width=64, height=48, batch_size=2).args
    assert latent["samples"].shape == (2, 3, 48, 64)
    assert latent["samples"].dtype == torch.float32
    assert torch.count_nonzero(latent["samples"]) == 0
    assert latent["downscale_ratio_spacial"] == 1


def test_size_off_the_patch_grid_is_rejected(empty_image):
    with pytest.raises(ValueError, match="72×48.*64×48"):
        empty_image.execute(width=72, height=48, batch_size=1)
