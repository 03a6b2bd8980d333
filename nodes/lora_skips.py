"""The one log line that counts the LoRA tensors skipped on an L2P model, grouped by reason.

A Z-Image LoRA can contain tensors for two latent-model parts that L2P lacks or has in
another shape. L2P replaces the final layer with its local decoder. Its patch embedder
`x_embedder` takes 16×16 RGB patches (768 values), where Z-Image's takes 2×2 patches of
16 latent channels (64 values). Tensors of either kind are skipped.
So are tensors that match no weight of L2P or of latent Z-Image, reported as unknown.

This module does not import comfy, so it runs without the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A LoRA key or model key aimed at the latent final layer in any supported naming:
# `diffusion_model.final_layer.` (ComfyUI), `lora_unet_final_layer_` (kohya), and
# `all_final_layer.2-1.` (diffusers/PEFT and DiffSynth/ModelScope).
FINAL_LAYER = re.compile(r"(?:^|[._])final_layer[._]")
PATCH_EMBEDDER_WEIGHT = "diffusion_model.x_embedder.weight"
NAMES_LISTED = 5


@dataclass(frozen=True)
class SkippedPatch:
    """A patch the L2P patcher did not add: its model key and the number of LoRA tensors behind it.

    `input_width` and `l2p_input_width` are the values per row of the LoRA's update and of
    L2P's weight, set when the patch was skipped for its shape.
    """

    key: str
    tensors: int
    input_width: int | None = None
    l2p_input_width: int | None = None


def summarize_skipped(
    applied_tensors: int, misfits: list[SkippedPatch], absent: list[SkippedPatch], dropped_keys: list[str]
) -> str | None:
    """Return the summary line, or None when nothing was skipped.

    `misfits` have a shape L2P's weight cannot take, `absent` aim at model keys L2P does
    not have, and `dropped_keys` are the LoRA tensors the host dropped before it built
    patches, one tensor each.
    """
    # (name, tensor count) of everything aimed at a weight L2P does not have.
    missing = [(patch.key, patch.tensors) for patch in absent] + [(key, 1) for key in dropped_keys]
    final_layer = [tensors for name, tensors in missing if FINAL_LAYER.search(name)]
    unknown = [(name, tensors) for name, tensors in missing if not FINAL_LAYER.search(name)]

    embedder = [patch for patch in misfits if is_latent_patch_embedder(patch)]
    other_shape = [patch for patch in misfits if not is_latent_patch_embedder(patch)]

    groups = []
    if final_layer:
        groups.append(f"Latent final layer: {sum(final_layer)} (L2P decodes with its local decoder instead).")
    if embedder:
        widths = " or ".join(str(width) for width in sorted({patch.input_width for patch in embedder}))
        groups.append(
            f"Latent patch embedder: {sum(patch.tensors for patch in embedder)} "
            f"({widths} wide, L2P's is {embedder[0].l2p_input_width})."
        )
    if other_shape:
        groups.append(
            f"Other shape: {sum(patch.tensors for patch in other_shape)} "
            f"(the update's shape does not fit L2P's weight: {list_names([patch.key for patch in other_shape])})."
        )
    if unknown:
        groups.append(
            f"Unknown: {sum(tensors for _name, tensors in unknown)} "
            f"(no weight of that name in L2P or latent Z-Image: {list_names([name for name, _tensors in unknown])})."
        )
    if not groups:
        return None

    skipped = sum(tensors for _name, tensors in missing) + sum(patch.tensors for patch in misfits)
    return (
        f"L2P: skipped {count_tensors(skipped)} and applied the other {applied_tensors}. "
        + " ".join(groups)
        + ' ComfyUI also logs each skipped key, as "lora key not loaded" or "NOT LOADED".'
    )


def is_latent_patch_embedder(patch: SkippedPatch) -> bool:
    """Return True for a patch on L2P's x_embedder whose rows have a latent model's width, not L2P's."""
    return patch.key == PATCH_EMBEDDER_WEIGHT and patch.input_width != patch.l2p_input_width


def count_tensors(count: int) -> str:
    return f"{count} LoRA tensor" if count == 1 else f"{count} LoRA tensors"


def list_names(names: list[str]) -> str:
    """Return the first NAMES_LISTED names comma-separated, with the number of the rest."""
    listed = ", ".join(names[:NAMES_LISTED])
    rest = len(names) - NAMES_LISTED
    return f"{listed} and {rest} more" if rest > 0 else listed
