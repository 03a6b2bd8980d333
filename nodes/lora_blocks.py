"""The joint blocks L2P shares bit-for-bit with its source model, read from the checkpoint's storage dtypes.

The official L2P training freezes the source model's joint blocks 5–24 during the transfer
and fine-tunes the rest. The released 1K file (model-1k-merge.safetensors) stores exactly
the frozen blocks in float32, the source's precision, and the rest in bfloat16. So a LoRA
trained on the source (Z-Image-Turbo for the 1K file, Z-Image Base for the HR files) has
its exact meaning on the float32 blocks only. A file re-saved in one dtype loses that
record, and then the released 1K range applies.

NOTE: the storage dtypes of the HR files were not checked. If they store every block in
one dtype, the fallback range 5–24 is a guess for them.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

# Frozen joint blocks of the released 1K file, for checkpoints whose dtypes do not show them.
RELEASED_SHARED_BLOCKS = range(5, 25)

JOINT_BLOCK = re.compile(r"^layers\.(\d+)\.")


def float32_joint_blocks(tensor_dtypes: dict[str, tuple[str, ...]]) -> tuple[int, ...]:
    """Return the joint blocks whose every stored tensor is float32.

    `tensor_dtypes` maps canonical names (`layers.N.…`) to the safetensors dtypes of their
    stored parts (a fused q/k/v has three), as l2p_core's checkpoint layout lists them.
    """
    all_float32: dict[int, bool] = {}
    for name, dtypes in tensor_dtypes.items():
        match = JOINT_BLOCK.match(name)
        if match:
            block = int(match[1])
            all_float32[block] = all_float32.get(block, True) and all(dtype == "F32" for dtype in dtypes)
    return tuple(sorted(block for block, is_float32 in all_float32.items() if is_float32))


def shared_joint_blocks(float32_blocks: tuple[int, ...] | None, n_layers: int) -> tuple[int, ...]:
    """Return the joint blocks shared with the source model, from the file's float32 blocks.

    When none or all of the joint blocks were stored in float32, or the model records no
    file dtypes, the dtypes carry no information. Then the released 1K range 5–24 is used,
    limited to the model's `n_layers`, and a warning gives the reason.
    """
    if float32_blocks and len(float32_blocks) < n_layers:
        return tuple(float32_blocks)

    fallback = tuple(block for block in RELEASED_SHARED_BLOCKS if block < n_layers)
    if float32_blocks is None:
        reason = "the model records no checkpoint dtypes (it was not loaded by the L2P Model Loader)"
    elif float32_blocks:
        reason = "the checkpoint stores every joint block in float32, so its dtypes do not show the frozen blocks"
    else:
        reason = "the checkpoint stores no joint block in float32, so its dtypes do not show the frozen blocks"
    logger.warning(
        "L2P LoRA Scope: using the fallback shared blocks %s because %s. They are the blocks frozen "
        "in the released 1K file (model-1k-merge.safetensors); whether they are the frozen blocks of "
        "this file is not known. Choose 'all blocks' to keep every LoRA patch.",
        describe_blocks(fallback),
        reason,
    )
    return fallback


def describe_blocks(blocks: tuple[int, ...]) -> str:
    """Return "5–24" for a contiguous run of blocks and a comma-separated list otherwise."""
    if not blocks:
        return "none"
    if list(blocks) == list(range(blocks[0], blocks[-1] + 1)):
        return f"{blocks[0]}–{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])
    return ", ".join(str(block) for block in blocks)
