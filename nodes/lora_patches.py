"""LoRA patches on the L2P model: skip the ones aimed at latent Z-Image parts, with one summary line.

ComfyUI maps Z-Image LoRA keys onto L2P because L2PModel derives from Lumina2 (see
`comfy.lora.model_lora_keys_unet`). Two kinds of latent-model tensors then have no
counterpart. The latent final layer does not exist in L2P, whose local decoder replaces
it. The latent patch embedder shares the name `x_embedder` but takes 64 values per token
(2×2 latent patches of 16 channels), while L2P's takes 768 (16×16 RGB patches). The host
adds a patch for the second kind and fails on it at every load with an ERROR line, so
the L2P patcher drops such patches when they are added. The host's loader then logs
each dropped one as "NOT LOADED".

Final-layer tensors with ComfyUI's own names (`diffusion_model.final_layer...`) never
become patches: the host's key map has no entry for a layer L2P lacks, so
`comfy.lora.load_lora` drops them and logs each as "lora key not loaded". The patcher
takes those keys from `lora_host_log` and counts them in the same summary line.

This module imports ComfyUI's model code, so the nodes import it only when they run.
"""

from __future__ import annotations

import logging
import re
import uuid

import comfy.weight_adapter

from .lora_blocks import describe_blocks
from .lora_host_log import take_dropped_lora_keys
from .lora_skips import SkippedPatch, summarize_skipped

logger = logging.getLogger(__name__)

JOINT_BLOCK_WEIGHT = re.compile(r"^diffusion_model\.layers\.(\d+)\.")


class L2PPatchChecks:
    """ModelPatcher mixin that adds only the patches whose shape fits an L2P weight.

    Other patches (LoHa, LoKr, GLoRA, LoRAs with a mid factor or a reshape) pass through unchecked
    because their update shape is not known before the host computes it.

    NOTE: the host's debugging nodes LoraLoaderBypass and LoraLoaderBypassModelOnly inject
    LoRA adapters without add_patches, so neither this check nor the summary applies to them.
    Nothing in the tests runs them on L2P.
    """

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        dropped_keys = take_dropped_lora_keys(self.model) or []
        state = self.model.state_dict()
        fitting, misfits = {}, []
        for key, patch in patches.items():
            name, offset = weight_name(key), (None if isinstance(key, str) else key[1])
            if name in state and not patch_fits(patch, state[name], offset):
                misfits.append(misfit(name, patch, state[name]))
            else:
                fitting[key] = patch

        added = super().add_patches(fitting, strength_patch, strength_model)

        # Keys outside `diffusion_model.` are the text encoder's when LoraLoader gets a CLIP too.
        added_keys = set(added)
        absent = [
            SkippedPatch(weight_name(key), lora_tensor_count(patch))
            for key, patch in fitting.items()
            if key not in added_keys and weight_name(key).startswith("diffusion_model.")
        ]
        applied = sum(lora_tensor_count(patches[key]) for key in added_keys)
        summary = summarize_skipped(applied, misfits, absent, dropped_keys)
        if summary:
            logger.warning(summary)
        return added


def weight_name(key) -> str:
    """Return the model key of a patch key, which is the key itself or (key, offset[, function])."""
    return key if isinstance(key, str) else key[0]


def patch_fits(patch, weight, offset) -> bool:
    """Return False when a LoRA or diff patch has a shape that cannot update `weight` (or its `offset` slice)."""
    if offset is not None:
        dimension, start, length = offset
        weight = weight.narrow(dimension, start, length)

    if isinstance(patch, comfy.weight_adapter.LoRAAdapter):
        up, down, _alpha, mid, _dora_scale, reshape = patch.weights
        if mid is not None or reshape is not None:
            return True
        return up.shape[0] == weight.shape[0] and down[0].numel() == weight[0].numel()

    if isinstance(patch, tuple) and len(patch) == 2 and patch[0] == "diff":
        return tuple(patch[1][0].shape) == tuple(weight.shape)
    return True


def misfit(name: str, patch, weight) -> SkippedPatch:
    """Describe a patch that `patch_fits` rejected, with the values per row of its update and of `weight`."""
    if isinstance(patch, comfy.weight_adapter.LoRAAdapter):
        input_width = patch.weights[1][0].numel()
    else:
        input_width = patch[1][0][0].numel()
    return SkippedPatch(name, lora_tensor_count(patch), input_width, weight[0].numel())


def lora_tensor_count(patch) -> int:
    """Return the number of LoRA file tensors behind one patch.

    A weight adapter keeps one entry per tensor it read (up, down, alpha, mid, DoRA scale,
    reshape for a LoRA), None for the absent ones. A ("diff", (tensor,)) or ("set", …)
    patch contains one.
    """
    if isinstance(patch, comfy.weight_adapter.WeightAdapterBase):
        return sum(item is not None for item in patch.weights)
    if isinstance(patch, tuple) and len(patch) == 2 and isinstance(patch[1], tuple):
        return len(patch[1])
    return 1


_PATCHER_CLASSES: dict[type, type] = {}


def l2p_patcher_class(base: type) -> type:
    """Return `base` (a ModelPatcher class) with L2PPatchChecks mixed in; clones keep the class."""
    if base not in _PATCHER_CLASSES:
        _PATCHER_CLASSES[base] = type(f"L2P{base.__name__}", (L2PPatchChecks, base), {})
    return _PATCHER_CLASSES[base]


def keep_patches_of_blocks(model, blocks: tuple[int, ...]):
    """Return a clone of the ModelPatcher `model` that keeps only the patches on joint `blocks`.

    It filters the clone's own `patches` (the host's LoRA patch list), so the weights
    outside those blocks stay as loaded and unpatching works as for any LoRA.
    """
    clone = model.clone()
    kept = {}
    for key, key_patches in clone.patches.items():
        match = JOINT_BLOCK_WEIGHT.match(key)
        if match and int(match[1]) in blocks:
            kept[key] = key_patches
    removed = len(clone.patches) - len(kept)
    clone.patches = kept
    clone.patches_uuid = uuid.uuid4()
    logger.info(
        "L2P LoRA Scope: kept the patches of %d weights in joint blocks %s, removed those of %d other weights.",
        len(kept),
        describe_blocks(blocks),
        removed,
    )
    return clone
