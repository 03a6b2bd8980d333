"""Randomly initialised L2P checkpoints in the real file layouts, for tests and benchmarks.

The weights are random, so the images are noise. What matters is that the files have the
key names, shapes and dtypes of released checkpoints and go through the real loader.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import DecoderConfig, DecoderLevel, L2PConfig, expected_shapes, rope_axes_for_head
from .variants import VARIANTS

COMFYUI_PREFIX = "model.diffusion_model."


# Small encoder widths per variant, one per non-wrapper decoder level, outermost first.
TINY_DECODER_CHANNELS = {
    16: (8, 16, 16, 32),
    64: (4, 4, 8, 8, 16, 16),
    128: (4, 4, 8, 8, 16, 16),
    160: (4, 4, 8, 8, 16),
}


def tiny_config(
    *,
    patch_size: int = 16,
    dim: int = 64,
    n_heads: int = 2,
    n_layers: int = 2,
    n_refiner_layers: int = 1,
    cap_feat_dim: int = 32,
    decoder_channels: tuple[int, ...] | None = None,
) -> L2PConfig:
    """Return a small configuration of the variant with this patch size (16, 64, 128 or 160).

    The decoder has the variant's levels with narrow channels, in the released pattern.
    Wrapper levels (8K, 10K) keep 3 channels. Each level's dec conv narrows to the
    next-outer level's encoder width. The 10K bottleneck is twice as wide as its innermost
    encoder, like the released 512 after 256.
    """
    names = VARIANTS[patch_size].decoder_levels
    channels = iter(decoder_channels or TINY_DECODER_CHANNELS[patch_size])
    enc_out = [3 if name.startswith("_") else next(channels) for name in names]
    bottleneck_out = 2 * enc_out[-1] if patch_size == 160 else enc_out[-1]

    levels = []
    up_in = bottleneck_out
    for index in reversed(range(len(names))):
        wrapper = names[index].startswith("_")
        up_out = enc_out[index] if index == len(names) - 1 else up_in
        if wrapper:
            dec_out = up_out
        elif index > 0 and not names[index - 1].startswith("_"):
            dec_out = enc_out[index - 1]
        else:
            dec_out = enc_out[index]
        enc_in = 3 if index == 0 else enc_out[index - 1]
        levels.append(DecoderLevel(names[index], enc_in, enc_out[index], up_in, up_out, dec_out))
        up_in = dec_out
    levels.reverse()

    head_dim = dim // n_heads
    return L2PConfig(
        patch_size=patch_size,
        in_channels=3,
        dim=dim,
        n_heads=n_heads,
        n_layers=n_layers,
        n_refiner_layers=n_refiner_layers,
        cap_feat_dim=cap_feat_dim,
        ffn_hidden=int(dim / 3 * 8),
        adaln_dim=min(dim, 256),
        t_embed_hidden=1024,
        t_freq_dim=256,
        decoder=DecoderConfig(tuple(levels), bottleneck_out, 3),
        axes_dims=rope_axes_for_head(head_dim),
    )


def released_1k_config() -> L2PConfig:
    """Return the configuration of the released 1K model (model-1k-merge.safetensors), from its tensor shapes.

    dim 3840, 30 heads, 30 joint and 2 + 2 refiner blocks, 2560-wide captions and a
    64/128/256/512-channel local decoder: 6.17 B parameters. For benchmarks with random
    weights of the real size.
    """
    return tiny_config(
        dim=3840, n_heads=30, n_layers=30, n_refiner_layers=2, cap_feat_dim=2560, decoder_channels=(64, 128, 256, 512)
    )


def random_state_dict(
    config: L2PConfig, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Return random weights under canonical names, scaled so activations stay in a sane range."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: _random_tensor(name, shape, generator, "cpu").to(dtype) for name, shape in expected_shapes(config).items()
    }


@torch.no_grad()
def randomize_(model: torch.nn.Module, *, seed: int = 0) -> torch.nn.Module:
    """Fill a network's parameters in place with random weights scaled as in `random_state_dict`.

    Each tensor is drawn on its own device, so a full-size network built on a GPU gets its
    weights there without a 25 GB float32 detour through CPU memory.
    """
    generators: dict[torch.device, torch.Generator] = {}
    for name, parameter in model.named_parameters():
        device = parameter.device
        if device not in generators:
            generators[device] = torch.Generator(device).manual_seed(seed)
        parameter.copy_(_random_tensor(name, tuple(parameter.shape), generators[device], device))
    return model


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator, device) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator, device=device)
    if name.endswith("_pad_token"):
        return 0.5 * noise
    if "norm" in name or name == "cap_embedder.0.weight":
        return 1 + 0.1 * noise
    if name.endswith(".bias"):
        return 0.02 * noise
    if len(shape) == 4:
        return noise * math.sqrt(2 / math.prod(shape[1:])) * (0.2 if "out_conv" in name else 1.0)
    return noise / math.sqrt(shape[1])


def to_official_layout(
    state: dict[str, torch.Tensor], patch_size: int, float32_layers: range | None = None
) -> dict[str, torch.Tensor]:
    """Rename canonical weights to the official (DiffSynth) layout and split the fused q/k/v.

    `float32_layers` stores those joint blocks in float32, as the released 1K file stores
    the blocks 5–24 that were frozen during the transfer from Z-Image-Turbo.
    """
    official = {}
    for name, tensor in state.items():
        block = re.match(r"^layers\.(\d+)\.", name)
        if float32_layers is not None and block and int(block[1]) in float32_layers:
            tensor = tensor.float()
        if name.endswith(".attention.qkv.weight"):
            stem = name.removesuffix(".qkv.weight")
            for part, rows in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                official[f"{stem}.to_{part}.weight"] = rows.contiguous()
            continue
        name = (
            name.replace("x_embedder.", f"all_x_embedder.{patch_size}-1.", 1)
            if name.startswith("x_embedder.")
            else name
        )
        name = name.replace(".attention.out.", ".attention.to_out.0.")
        name = name.replace(".attention.q_norm.", ".attention.norm_q.").replace(
            ".attention.k_norm.", ".attention.norm_k."
        )
        official[name] = tensor
    return official


def to_comfyui_layout(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert the official layout to ComfyUI's: prefix, `x_embedder`, fused `qkv`, `out`, `q_norm`/`k_norm`."""
    converted = {}
    for name, tensor in official.items():
        if ".attention.to_k." in name or ".attention.to_v." in name:
            continue
        if ".attention.to_q." in name:
            stem = name.removesuffix(".to_q.weight")
            parts = [official[f"{stem}.to_{part}.weight"] for part in "qkv"]
            converted[f"{COMFYUI_PREFIX}{stem}.qkv.weight"] = torch.cat(parts, dim=0)
            continue
        name = re.sub(r"^all_x_embedder\.\d+-1\.", "x_embedder.", name)
        name = name.replace(".attention.to_out.0.", ".attention.out.")
        name = name.replace(".attention.norm_q.", ".attention.q_norm.").replace(
            ".attention.norm_k.", ".attention.k_norm."
        )
        converted[COMFYUI_PREFIX + name] = tensor
    return converted


def save_sharded(state: dict[str, torch.Tensor], folder: Path, stem: str, shards: int, *, index: bool) -> list[Path]:
    """Write `state` as `stem-0000N-of-0000M.safetensors` shards, with a Hugging Face index if asked."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    paths = []
    weight_map = {}
    for shard in range(shards):
        path = folder / f"{stem}-{shard + 1:05d}-of-{shards:05d}.safetensors"
        chunk = names[shard::shards]
        save_file({name: state[name].contiguous() for name in chunk}, str(path))
        weight_map |= {name: path.name for name in chunk}
        paths.append(path)
    if index:
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return paths


def write_checkpoint(path: Path, config: L2PConfig, *, layout: str = "official", seed: int = 0) -> Path:
    """Write a random checkpoint of `config` in the "official" or "comfyui" layout."""
    official = to_official_layout(random_state_dict(config, seed=seed), config.patch_size, float32_layers=range(1, 2))
    state = official if layout == "official" else to_comfyui_layout(official)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    return path
