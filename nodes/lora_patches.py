"""LoRA patches on the L2P model: skip the ones aimed at latent Z-Image parts, with one summary line.

ComfyUI maps Z-Image LoRA keys onto L2P because L2PModel derives from Lumina2 (see
`comfy.lora.model_lora_keys_unet`). Two kinds of latent-model tensors then have no
counterpart. The latent final layer does not exist in L2P, whose local decoder replaces
it. The latent patch embedder shares the name `x_embedder` but takes 64 values per token
(2×2 latent patches of 16 channels), while L2P's takes 768 (16×16 RGB patches). The host
adds a patch for the second kind and fails on it at every load with an ERROR line, so
the L2P patcher drops such patches when they are added. The host's loader then logs
each dropped one as "NOT LOADED", and this module adds one summary line.

NOTE: with ComfyUI's own names (`diffusion_model.final_layer...`) the host's key map has no
entry for a final layer L2P lacks, so the host drops those tensors before any patch is
added. The host logs each as "lora key not loaded", and the summary does not count them.

This module imports ComfyUI's model code, so the nodes import it only when they run.
"""

from __future__ import annotations

import logging
import re
import uuid

import comfy.weight_adapter

from .lora_blocks import describe_blocks

logger = logging.getLogger(__name__)

JOINT_BLOCK_WEIGHT = re.compile(r"^diffusion_model\.layers\.(\d+)\.")


class L2PPatchChecks:
    """ModelPatcher mixin that adds only the patches whose shape fits an L2P weight.

    Other patches (LoHa, LoKr, GLoRA, LoRAs with a mid factor or a reshape) pass through unchecked
    because their update shape is not known before the host computes it.
    """

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        state = self.model.state_dict()
        fitting, misfits = {}, []
        for key, patch in patches.items():
            name, offset = (key, None) if isinstance(key, str) else (key[0], key[1])
            if name in state and not patch_fits(patch, state[name], offset):
                misfits.append(name)
            else:
                fitting[key] = patch

        added = super().add_patches(fitting, strength_patch, strength_model)

        added_names = {key if isinstance(key, str) else key[0] for key in added}
        absent = sorted({key if isinstance(key, str) else key[0] for key in fitting} - added_names)
        if misfits or absent:
            logger.warning(summarize_skipped(len(patches), sorted(misfits), absent))
        return added


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


def summarize_skipped(total: int, misfits: list[str], absent: list[str]) -> str:
    """Return the one log line that counts the skipped LoRA patches and gives the reason for each kind."""
    reasons = []
    if misfits:
        reasons.append(
            f"{len(misfits)} with a shape that differs from L2P's weight ({', '.join(misfits)}); a latent "
            "Z-Image x_embedder takes 64 values per token, L2P's pixel x_embedder 768"
        )
    if absent:
        final_layer = [name for name in absent if ".final_layer." in name]
        other = [name for name in absent if ".final_layer." not in name]
        if final_layer:
            reasons.append(
                f"{len(final_layer)} aimed at the latent final layer, which L2P replaces with its local decoder"
            )
        if other:
            reasons.append(f"{len(other)} aimed at weights L2P does not have ({', '.join(other)})")
    return (
        f"L2P: {len(misfits) + len(absent)} of {total} LoRA patches skipped, the rest applied: "
        + "; ".join(reasons)
        + ". ComfyUI logs each skipped key as NOT LOADED."
    )


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
