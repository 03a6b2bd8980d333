"""Refine each caption once per sampling run on the stock samplers' path too.

The Pixel Sampler and the L2P Edit node enter the network's `reuse_captions()` block through
l2p_core. KSampler and SamplerCustomAdvanced call the network step by step, so an
OUTER_SAMPLE wrapper on the MODEL opens the block around the host's whole sampling run.
"""

from __future__ import annotations

import comfy.patcher_extension

WRAPPER_KEY = "l2p_reuse_captions"


def add_caption_reuse(patcher) -> None:
    """Install the wrapper on `patcher` (its clones inherit it)."""
    patcher.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, reuse_captions_while_sampling
    )


def reuse_captions_while_sampling(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: run the host's sampling inside the network's `reuse_captions()` block.

    Hook keyframes can change the weights between steps, which cached captions would not
    follow, so a patcher with hook patches samples without reuse.
    """
    patcher = executor.class_obj.model_patcher
    network = patcher.model.diffusion_model
    if patcher.hook_patches:
        return executor(*args, **kwargs)
    with network.reuse_captions():
        return executor(*args, **kwargs)
