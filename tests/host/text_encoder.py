"""A randomly initialised Qwen3-4B text encoder in the file format ComfyUI loads.

ComfyUI's CLIPLoader (type lumina2) recognises Qwen3-4B from its key names and the 2560
hidden size, so this file gives real 2560-wide conditioning without downloading the 8 GB
release. It is written once, streamed tensor by tensor, and reused from a cache folder.

Run `python tests/host/text_encoder.py PATH` to write it ahead of the host tests.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import torch

# Sizes of Qwen3-4B (comfy/text_encoders/llama.py, Qwen3_4BConfig, ComfyUI 0.33).
VOCAB = 151936
HIDDEN = 2560
INTERMEDIATE = 9728
LAYERS = 36
HEADS = 32
KV_HEADS = 8
HEAD_DIM = 128

# Marks files written by this module, so a cache is never mistaken for the real model.
METADATA = {"comfyui_l2p_test": "random Qwen3-4B text encoder, seed 0"}


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Return the Hugging Face key names and shapes of Qwen3-4B without lm_head (tied embeddings)."""
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for index in range(LAYERS):
        prefix = f"model.layers.{index}"
        shapes |= {
            f"{prefix}.input_layernorm.weight": (HIDDEN,),
            f"{prefix}.post_attention_layernorm.weight": (HIDDEN,),
            f"{prefix}.self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            f"{prefix}.self_attn.q_norm.weight": (HEAD_DIM,),
            f"{prefix}.self_attn.k_norm.weight": (HEAD_DIM,),
            f"{prefix}.mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            f"{prefix}.mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            f"{prefix}.mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        }
    shapes["model.norm.weight"] = (HIDDEN,)
    return shapes


def expected_size() -> int:
    """Return the byte size of the finished file (header included)."""
    return len(_header_bytes(tensor_shapes())) + sum(2 * _numel(shape) for shape in tensor_shapes().values())


def ensure_random_text_encoder(path: Path) -> Path:
    """Write the random encoder to `path` unless a complete one is already there."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == expected_size():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    _write(partial)
    os.replace(partial, path)
    return path


def _write(path: Path) -> None:
    shapes = tensor_shapes()
    generator = torch.Generator().manual_seed(0)
    with path.open("wb") as handle:
        handle.write(_header_bytes(shapes))
        for shape in shapes.values():
            if len(shape) == 1:
                # Norm weights of one keep activations at the scale of a trained model.
                tensor = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
            handle.write(tensor.view(torch.int16).numpy().tobytes())


def _header_bytes(shapes: dict[str, tuple[int, ...]]) -> bytes:
    header: dict = {"__metadata__": METADATA}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * _numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/host/text_encoder.py PATH")
    print(ensure_random_text_encoder(Path(sys.argv[1])))
