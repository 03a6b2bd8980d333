"""Network configuration, derived from checkpoint tensor shapes.

Every size comes from a shape except three constants that no tensor carries and that the
released models share: the RoPE split of a head across its three axes (head_dim × 1/4,
3/8, 3/8, as Z-Image uses), RoPE θ = 256 and the time scale 1000.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import CheckpointError
from .layouts import CheckpointLayout
from .variants import VARIANTS

ROPE_THETA = 256.0
TIME_SCALE = 1000.0
NORM_EPS = 1e-5
# Both token streams are padded to a multiple of this with learned pad tokens.
SEQ_MULTIPLE = 32

# Block counts of the released models, by hidden size: (joint blocks, refiner blocks). A
# file of that size with fewer blocks has lost some, since no release prunes blocks.
RELEASED_BLOCK_COUNTS = {3840: (30, 2)}
# Upper bound on block indices, so a damaged key cannot make the loader count to 10¹².
MAX_BLOCKS = 1000

# Decoder level names from the outermost (full resolution) to the innermost. Each level
# has `enc{name}.0` (conv3×3 + SiLU, then a 2×2 max-pool) and, on the way up,
# `up{name}.1` (nearest ×2, conv3×3) and `dec{name}.0` (conv3×3 + SiLU on the skip concat).
DECODER_LEVEL_ORDER = ("_10k_a", "_8k", "0", "0b", "1", "2", "3", "4")


@dataclass(frozen=True)
class DecoderLevel:
    """Channel counts of one U-Net level of the local decoder."""

    name: str
    enc_in: int
    enc_out: int
    up_in: int
    up_out: int
    dec_out: int


@dataclass(frozen=True)
class DecoderConfig:
    """The local decoder: a conv U-Net whose bottleneck sits on the backbone's token grid."""

    levels: tuple[DecoderLevel, ...]
    bottleneck_out: int
    out_channels: int

    def __post_init__(self) -> None:
        for outer, inner in zip(self.levels, self.levels[1:], strict=False):
            if inner.enc_in != outer.enc_out:
                raise ValueError(
                    f"decoder level {inner.name} takes {inner.enc_in} channels "
                    f"but level {outer.name} gives {outer.enc_out}"
                )

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def downscale(self) -> int:
        return 2**self.depth


@dataclass(frozen=True)
class L2PConfig:
    """Sizes of an L2P network: Z-Image backbone on pixel patches plus the local decoder."""

    patch_size: int
    in_channels: int
    dim: int
    n_heads: int
    n_layers: int
    n_refiner_layers: int
    cap_feat_dim: int
    ffn_hidden: int
    adaln_dim: int
    t_embed_hidden: int
    t_freq_dim: int
    decoder: DecoderConfig
    axes_dims: tuple[int, int, int]
    rope_theta: float = ROPE_THETA
    time_scale: float = TIME_SCALE
    norm_eps: float = NORM_EPS
    seq_multiple: int = SEQ_MULTIPLE

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"{self.n_heads} heads do not divide the hidden size {self.dim}")
        if sum(self.axes_dims) != self.head_dim:
            raise ValueError(
                f"RoPE axes {self.axes_dims} sum to {sum(self.axes_dims)}, not the head width {self.head_dim}"
            )
        if any(axis % 2 for axis in self.axes_dims):
            raise ValueError(f"RoPE axes {self.axes_dims} must be even (pairs of channels rotate together)")
        if self.decoder.levels[0].enc_in != self.in_channels or self.decoder.out_channels != self.in_channels:
            raise ValueError(
                f"the local decoder maps {self.decoder.levels[0].enc_in} to {self.decoder.out_channels} "
                f"channels but the image has {self.in_channels}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def variant(self) -> str:
        variant = VARIANTS.get(self.patch_size)
        return variant.name if variant else f"patch {self.patch_size}"

    @property
    def size_multiple(self) -> int:
        """Pixel multiple that image sides need: whole patches, and whole pooled cells in the decoder.

        16 for 1K, 64 for 4K, 128 for 8K and 320 for 10K, whose decoder pools to 1/64 and
        resizes the 1/160 token grid to that.
        """
        return math.lcm(self.patch_size, self.decoder.downscale)


def rope_axes_for_head(head_dim: int) -> tuple[int, int, int]:
    """Split a head across the (caption index, row, column) axes as Z-Image does: 1/4, 3/8, 3/8."""
    if head_dim % 8:
        raise ValueError(f"head width {head_dim} is not a multiple of 8; the Z-Image RoPE split needs one")
    return (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)


def config_from_checkpoint(layout: CheckpointLayout) -> L2PConfig:
    """Derive the configuration from the shapes of a recognised checkpoint.

    Raises CheckpointError when a required tensor is missing or has a shape that does not
    fit the others, naming the key, the shape found and the shape expected.
    """
    path = layout.path
    shape = _ShapeReader(layout)

    dim, values_per_patch = shape.require("x_embedder.weight", ndim=2)
    head_dim = shape.require("layers.0.attention.q_norm.weight", ndim=1)[0]
    cap_feat_dim = shape.require("cap_embedder.0.weight", ndim=1)[0]
    t_embed_hidden, t_freq_dim = shape.require("t_embedder.mlp.0.weight", ndim=2)
    adaln_dim = shape.require("t_embedder.mlp.2.weight", ndim=2)[0]
    ffn_hidden = shape.require("layers.0.feed_forward.w1.weight", ndim=2)[0]
    if head_dim == 0 or dim % head_dim:
        raise CheckpointError(f"'{path}': q_norm width {head_dim} does not divide the hidden size {dim}.")
    _check_decoder_levels(layout)

    try:
        config = L2PConfig(
            patch_size=layout.patch_size,
            in_channels=values_per_patch // layout.patch_size**2,
            dim=dim,
            n_heads=dim // head_dim,
            n_layers=_count_blocks(layout, "layers"),
            n_refiner_layers=_count_blocks(layout, "noise_refiner"),
            cap_feat_dim=cap_feat_dim,
            ffn_hidden=ffn_hidden,
            adaln_dim=adaln_dim,
            t_embed_hidden=t_embed_hidden,
            t_freq_dim=t_freq_dim,
            decoder=_decoder_config(layout, dim),
            axes_dims=rope_axes_for_head(head_dim),
        )
    except ValueError as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"'{path}' has inconsistent L2P tensor shapes: {error}.") from error

    released = RELEASED_BLOCK_COUNTS.get(dim)
    if released is not None and (config.n_layers, config.n_refiner_layers) != released:
        raise CheckpointError(
            f"'{path}' has {config.n_layers} joint and {config.n_refiner_layers} refiner blocks, but "
            f"released L2P models of hidden size {dim} have {released[0]} and {released[1]}. "
            "Blocks are missing: download the file again."
        )

    context_refiners = _count_blocks(layout, "context_refiner")
    if context_refiners != config.n_refiner_layers:
        raise CheckpointError(
            f"'{path}' has {config.n_refiner_layers} noise-refiner but {context_refiners} "
            "context-refiner blocks; L2P checkpoints have the same number of each."
        )
    return config


def _count_blocks(layout: CheckpointLayout, stack: str) -> int:
    pattern = re.compile(rf"^{stack}\.(\d+)\.")
    indices = {int(match[1]) for name in layout.tensors if (match := pattern.match(name))}
    if not indices:
        raise CheckpointError(f"'{layout.path}' has no '{stack}.*' blocks; the file is incomplete.")
    if max(indices) >= MAX_BLOCKS:
        raise CheckpointError(
            f"'{layout.path}' has a block '{stack}.{max(indices)}', far beyond any L2P model "
            f"({MAX_BLOCKS} blocks at most here). The file is damaged or not L2P."
        )
    missing = sorted(set(range(max(indices) + 1)) - indices)
    if missing:
        shown = ", ".join(f"{stack}.{index}" for index in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise CheckpointError(f"'{layout.path}' is incomplete: blocks {shown}{more} are missing. Download it again.")
    return max(indices) + 1


def _check_decoder_levels(layout: CheckpointLayout) -> None:
    """Require the local-decoder levels of the file's variant, before any channel arithmetic."""
    variant = VARIANTS[layout.patch_size]
    found = tuple(name for name in DECODER_LEVEL_ORDER if f"local_decoder.enc{name}.0.weight" in layout)
    if found != variant.decoder_levels:
        expected = ", ".join(f"enc{name}" for name in variant.decoder_levels)
        present = ", ".join(f"enc{name}" for name in found) or "none"
        raise CheckpointError(
            f"'{layout.path}' is the L2P {variant.name} variant (patch size {layout.patch_size}), whose "
            f"local decoder has the levels {expected}, but the file has {present}. Local-decoder "
            "weights are missing or belong to another variant: download the file again."
        )


def _decoder_config(layout: CheckpointLayout, dim: int) -> DecoderConfig:
    shape = _ShapeReader(layout)
    names = [name for name in DECODER_LEVEL_ORDER if f"local_decoder.enc{name}.0.weight" in layout]
    if not names:
        raise CheckpointError(f"'{layout.path}' has no local decoder encoder weights (local_decoder.enc*.0.weight).")

    bottleneck_out, bottleneck_in, *_ = shape.require("local_decoder.bottleneck.0.weight", ndim=4)
    levels = []
    up_in = bottleneck_out
    for name in reversed(names):
        enc_out, enc_in, *_ = shape.require(f"local_decoder.enc{name}.0.weight", ndim=4)
        up_out = shape.require(f"local_decoder.up{name}.1.weight", ndim=4)[0]
        dec_out = shape.require(f"local_decoder.dec{name}.0.weight", ndim=4)[0]
        levels.append(DecoderLevel(name, enc_in, enc_out, up_in, up_out, dec_out))
        up_in = dec_out
    levels.reverse()
    out_channels = shape.require("local_decoder.out_conv.weight", ndim=4)[0]
    return DecoderConfig(tuple(levels), bottleneck_out, out_channels)


class _ShapeReader:
    def __init__(self, layout: CheckpointLayout) -> None:
        self.layout = layout

    def require(self, name: str, ndim: int) -> tuple[int, ...]:
        if name not in self.layout:
            raise CheckpointError(
                f"'{self.layout.path}' is missing '{name}', which every L2P checkpoint has. The file "
                "is incomplete or damaged; the network is never run with random weights in its "
                "place. Download the file again."
            )
        shape = self.layout.shape(name)
        if len(shape) != ndim:
            raise CheckpointError(
                f"'{self.layout.path}': '{name}' has shape {list(shape)}, expected a {ndim}-D tensor."
            )
        return shape


def expected_shapes(config: L2PConfig) -> dict[str, tuple[int, ...]]:
    """Return the canonical name and shape of every parameter a network of this config has."""
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (config.dim, config.in_channels * config.patch_size**2),
        "x_embedder.bias": (config.dim,),
        "t_embedder.mlp.0.weight": (config.t_embed_hidden, config.t_freq_dim),
        "t_embedder.mlp.0.bias": (config.t_embed_hidden,),
        "t_embedder.mlp.2.weight": (config.adaln_dim, config.t_embed_hidden),
        "t_embedder.mlp.2.bias": (config.adaln_dim,),
        "cap_embedder.0.weight": (config.cap_feat_dim,),
        "cap_embedder.1.weight": (config.dim, config.cap_feat_dim),
        "cap_embedder.1.bias": (config.dim,),
        "x_pad_token": (1, config.dim),
        "cap_pad_token": (1, config.dim),
    }
    blocks = [(f"noise_refiner.{i}", True) for i in range(config.n_refiner_layers)]
    blocks += [(f"context_refiner.{i}", False) for i in range(config.n_refiner_layers)]
    blocks += [(f"layers.{i}", True) for i in range(config.n_layers)]
    for block, modulated in blocks:
        shapes |= _block_shapes(config, block, modulated)
    shapes |= _decoder_shapes(config)
    return shapes


def _block_shapes(config: L2PConfig, block: str, modulated: bool) -> dict[str, tuple[int, ...]]:
    dim, hidden = config.dim, config.ffn_hidden
    shapes = {
        f"{block}.attention.qkv.weight": (3 * dim, dim),
        f"{block}.attention.out.weight": (dim, dim),
        f"{block}.attention.q_norm.weight": (config.head_dim,),
        f"{block}.attention.k_norm.weight": (config.head_dim,),
        f"{block}.feed_forward.w1.weight": (hidden, dim),
        f"{block}.feed_forward.w2.weight": (dim, hidden),
        f"{block}.feed_forward.w3.weight": (hidden, dim),
    }
    for norm in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
        shapes[f"{block}.{norm}.weight"] = (dim,)
    if modulated:
        shapes[f"{block}.adaLN_modulation.0.weight"] = (4 * dim, config.adaln_dim)
        shapes[f"{block}.adaLN_modulation.0.bias"] = (4 * dim,)
    return shapes


def _decoder_shapes(config: L2PConfig) -> dict[str, tuple[int, ...]]:
    decoder = config.decoder
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out_channels: int, in_channels: int, kernel: int) -> None:
        shapes[f"local_decoder.{name}.weight"] = (out_channels, in_channels, kernel, kernel)
        shapes[f"local_decoder.{name}.bias"] = (out_channels,)

    for level in decoder.levels:
        conv(f"enc{level.name}.0", level.enc_out, level.enc_in, 3)
        conv(f"up{level.name}.1", level.up_out, level.up_in, 3)
        conv(f"dec{level.name}.0", level.dec_out, level.up_out + level.enc_out, 3)
    conv("bottleneck.0", decoder.bottleneck_out, decoder.levels[-1].enc_out + config.dim, 1)
    conv("out_conv", config.in_channels, decoder.levels[0].dec_out, 1)
    return shapes
