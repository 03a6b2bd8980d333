"""Stream a checkpoint's canonical weights into a network that ComfyUI built.

l2p_core maps every supported file layout to canonical names (ComfyUI's Z-Image names plus
`local_decoder.*`). The weights go in one block at a time through `load_state_dict`, so
ComfyUI's operation classes run their own loading code (dynamic VRAM loads lazily there)
and memory grows by at most one block beyond the model.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import ExitStack

import torch
from safetensors import safe_open
from torch import nn

from ..l2p_core import CheckpointInfo

logger = logging.getLogger(__name__)

# Storage dtypes whose range is narrower than the bfloat16/float32 weights of the release:
# a value beyond the range would become Inf (float16) or NaN (float8).
NARROW_DTYPES = (torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)


def block_prefix(name: str) -> str:
    """Return the module that loads `name` as one unit: `layers.3`, `local_decoder`, or "" for the root."""
    parts = name.split(".")
    if len(parts) == 1:
        return ""
    if parts[1].isdigit():
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def load_weights(network: nn.Module, info: CheckpointInfo, dtype: torch.dtype, *, assign: bool) -> None:
    """Copy the checkpoint's weights into `network`, cast to the storage `dtype`.

    With `assign` the network takes the tensors instead of copying them, as ComfyUI does for
    dynamic VRAM. Raises ValueError naming the weight and its largest value when `dtype`
    cannot represent a weight.
    """
    blocks: dict[str, list[str]] = defaultdict(list)
    for name in info.layout.tensors:
        blocks[block_prefix(name)].append(name)

    with ExitStack() as stack:
        handles: dict = {}

        def read(name: str) -> torch.Tensor:
            parts = []
            for part in info.layout.tensors[name].parts:
                if part.file not in handles:
                    handles[part.file] = stack.enter_context(safe_open(str(part.file), framework="pt", device="cpu"))
                parts.append(handles[part.file].get_tensor(part.name))
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        for prefix, names in blocks.items():
            state = {
                name.removeprefix(f"{prefix}.") if prefix else name: _cast(name, read(name), dtype) for name in names
            }
            module = network.get_submodule(prefix) if prefix else network
            # The root's own parameters are only the pad tokens, so its load cannot be strict.
            # l2p_core has already checked that the file has every weight in its exact shape.
            result = module.load_state_dict(state, strict=bool(prefix), assign=assign)
            if result.unexpected_keys:
                raise RuntimeError(
                    f"The L2P network has no parameter for {', '.join(result.unexpected_keys)} in '{prefix}'. "
                    "The node pack and its l2p_core copy are out of step: reinstall ComfyUI-L2P."
                )


def _cast(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in NARROW_DTYPES and tensor.is_floating_point():
        largest = float(tensor.abs().amax()) if tensor.numel() else 0.0
        limit = torch.finfo(dtype).max
        if largest > limit:
            raise ValueError(
                f"weight_dtype {str(dtype).removeprefix('torch.')} cannot hold this model: '{name}' has values "
                f"up to {largest:.6g}, beyond that type's ±{limit:g}. Load it with weight_dtype bf16 (the same "
                "memory as fp16) or default."
            )
    return tensor.to(dtype)
