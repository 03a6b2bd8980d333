"""The Pixel Sampler's "auto" steps and cfg: each variant's preset."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def presets(pack_module):
    return pack_module("nodes.presets")


@pytest.fixture(scope="module")
def synthetic(pack_module):
    return pack_module("l2p_core.synthetic")


@pytest.mark.parametrize(("patch_size", "steps", "cfg"), [(16, 30, 2.0), (64, 50, 4.0), (128, 50, 4.0), (160, 50, 4.0)])
def test_auto_takes_variant_preset(presets, synthetic, patch_size, steps, cfg):
    config = synthetic.tiny_config(patch_size=patch_size)
    assert presets.resolve_steps_and_cfg(config, presets.AUTO, presets.AUTO) == (steps, cfg)


def test_explicit_values_are_kept(presets, synthetic):
    config = synthetic.tiny_config(patch_size=64)
    assert presets.resolve_steps_and_cfg(config, 12, 1.0) == (12, 1.0)


def test_auto_steps_with_explicit_cfg(presets, synthetic):
    config = synthetic.tiny_config()
    assert presets.resolve_steps_and_cfg(config, presets.AUTO, 3.5) == (30, 3.5)


def test_auto_cfg_with_explicit_steps(presets, synthetic):
    config = synthetic.tiny_config(patch_size=64)
    assert presets.resolve_steps_and_cfg(config, 8, presets.AUTO) == (8, 4.0)
