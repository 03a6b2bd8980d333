"""Analytic device-memory budget of an L2P network in each low-VRAM mode.

Weights are counted exactly from the configuration's tensor shapes. Activations are an
estimate of one forward pass (batch 1, since guidance runs its two branches as separate
passes) with memory-efficient attention, as PyTorch's scaled_dot_product_attention uses on
CUDA GPUs. The backbone term is the one ComfyUI 0.33 uses for Z-Image
(comfy/supported_models.py, class ZImage, memory_usage_factor 2.8 per latent pixel, four
latent pixels per token, times 0.01 MiB per dtype byte in BaseModel.memory_required with
efficient attention), scaled by the network's width. The local-decoder term counts its
full-resolution tensors at the outermost level with 2.5 times headroom for convolution
workspace. NOTE: neither term has been measured on a GPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .config import L2PConfig, expected_shapes
from .fp8 import FP8_LAYER_PATTERN

GIB = 2**30
MIB = 2**20

ZIMAGE_FACTOR_PER_TOKEN = 4 * 2.8
ZIMAGE_DIM = 3840
EFFICIENT_ATTENTION_MIB_PER_BYTE = 0.01
DECODER_WORKSPACE_FACTOR = 2.5
# Copies of the image in the compute dtype (input cast, decoder output, its negation, the
# cast back) and float32 image-sized buffers of the sampler (state, noise, both branches'
# velocities, the guided velocity, x₀ and Euler temporaries).
IMAGE_COPIES = 4
SAMPLER_BUFFERS = 8
# CUDA context, cuBLAS workspace and allocator fragmentation, which no tensor accounts for.
# An allowance, not a measurement: a CUDA context alone takes 0.3 to 0.5 GB.
RUNTIME_ALLOWANCE_BYTES = 1 * GIB

_BLOCK = re.compile(r"^((?:noise_refiner|context_refiner|layers)\.\d+)\.")


@dataclass(frozen=True)
class WeightCounts:
    """Parameter counts of a network, split by where the low-VRAM modes put them."""

    # Block weights that float8 storage converts (attention qkv/out, feed-forward w1/w2/w3).
    fp8_block_values: int
    # Other block parameters (norms, adaLN modulation), kept in the compute dtype.
    other_block_values: int
    # Per block: (float8-convertible values, other values), by block name.
    per_block: dict[str, tuple[int, int]]
    # Embedders, pad tokens and the local decoder: always resident.
    outside_block_values: int
    # Largest float8-convertible weight, upcast to the compute dtype during its layer's call.
    largest_fp8_weight_values: int

    @property
    def total_values(self) -> int:
        return self.fp8_block_values + self.other_block_values + self.outside_block_values


@dataclass(frozen=True)
class DeviceMemory:
    """Estimated peak device bytes of one forward pass in one mode, and the host bytes of streamed blocks."""

    mode: str
    weight_bytes: int
    upcast_bytes: int
    activation_bytes: int
    runtime_bytes: int
    host_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.upcast_bytes + self.activation_bytes + self.runtime_bytes

    def fits(self, budget_bytes: float) -> bool:
        return self.total_bytes <= budget_bytes


def count_weights(config: L2PConfig) -> WeightCounts:
    per_block: dict[str, list[int]] = {}
    outside = 0
    largest = 0
    for name, shape in expected_shapes(config).items():
        values = math.prod(shape)
        block = _BLOCK.match(name)
        if block is None:
            outside += values
            continue
        counts = per_block.setdefault(block[1], [0, 0])
        layer, _, _ = name.rpartition(".")
        if name.endswith(".weight") and FP8_LAYER_PATTERN.match(layer):
            counts[0] += values
            largest = max(largest, values)
        else:
            counts[1] += values
    return WeightCounts(
        fp8_block_values=sum(counts[0] for counts in per_block.values()),
        other_block_values=sum(counts[1] for counts in per_block.values()),
        per_block={name: (counts[0], counts[1]) for name, counts in per_block.items()},
        outside_block_values=outside,
        largest_fp8_weight_values=largest,
    )


def activation_bytes(config: L2PConfig, height: int, width: int, dtype_bytes: int = 2) -> int:
    """Estimate the activation bytes of one forward pass at height×width px (see the module docstring)."""
    tokens = (height // config.patch_size) * (width // config.patch_size)
    backbone = tokens * ZIMAGE_FACTOR_PER_TOKEN * EFFICIENT_ATTENTION_MIB_PER_BYTE * dtype_bytes * MIB
    backbone *= config.dim / ZIMAGE_DIM

    outer = config.decoder.levels[0]
    values_per_pixel = 2 * (outer.enc_out + outer.up_out) + outer.dec_out
    decoder = height * width * values_per_pixel * DECODER_WORKSPACE_FACTOR * dtype_bytes
    features = tokens * config.dim * dtype_bytes

    pixels = config.in_channels * height * width
    images = IMAGE_COPIES * pixels * dtype_bytes + SAMPLER_BUFFERS * pixels * 4
    return int(max(backbone, decoder + features) + images)


def device_memory(
    config: L2PConfig,
    *,
    height: int = 1024,
    width: int = 1024,
    fp8: bool = False,
    resident_blocks: int | None = None,
    dtype_bytes: int = 2,
) -> DeviceMemory:
    """Estimate the device memory of sampling at height×width with fp8 storage and/or block streaming.

    `resident_blocks` None keeps every block on the device; a number streams the blocks and
    counts that many of the largest ones. `dtype_bytes` is the compute dtype's size (2 for
    bfloat16). The streamed blocks' host (CPU) bytes are reported separately.
    """
    counts = count_weights(config)

    def block_bytes(block: tuple[int, int]) -> int:
        fp8_values, other_values = block
        return fp8_values * (1 if fp8 else dtype_bytes) + other_values * dtype_bytes

    all_blocks = sum(block_bytes(block) for block in counts.per_block.values())
    outside = counts.outside_block_values * dtype_bytes
    if resident_blocks is None:
        weights, host = outside + all_blocks, 0
    else:
        largest_blocks = sorted((block_bytes(block) for block in counts.per_block.values()), reverse=True)
        weights, host = outside + sum(largest_blocks[:resident_blocks]), all_blocks

    compute_name = {2: "bf16", 4: "fp32"}.get(dtype_bytes, f"{8 * dtype_bytes}-bit")
    mode = ("fp8" if fp8 else compute_name) + (
        f" + streaming {resident_blocks} blocks" if resident_blocks is not None else ""
    )
    return DeviceMemory(
        mode=mode,
        weight_bytes=weights,
        upcast_bytes=counts.largest_fp8_weight_values * dtype_bytes if fp8 else 0,
        activation_bytes=activation_bytes(config, height, width, dtype_bytes),
        runtime_bytes=RUNTIME_ALLOWANCE_BYTES,
        host_bytes=host,
    )


def memory_table(config: L2PConfig, *, height: int = 1024, width: int = 1024, resident_blocks: int = 4) -> str:
    """Return a plain-text table of `device_memory` for bfloat16, fp8 and both with streaming."""
    rows = [
        device_memory(config, height=height, width=width, fp8=fp8, resident_blocks=blocks)
        for blocks in (None, resident_blocks)
        for fp8 in (False, True)
    ]
    header = ("weights", "upcast", "activations", "runtime", "total", "host")
    lines = [f"{'mode (GiB)':<30}" + "".join(f"{name:>12}" for name in header)]
    for row in rows:
        values = (
            row.weight_bytes, row.upcast_bytes, row.activation_bytes, row.runtime_bytes, row.total_bytes, row.host_bytes
        )  # fmt: skip
        lines.append(f"{row.mode:<30}" + "".join(f"{value / GIB:>12.2f}" for value in values))
    return "\n".join(lines)
