"""Checkpoint key layouts: identify what a file contains and map it to canonical names.

Canonical names are ComfyUI's Z-Image (NextDiT) parameter names plus `local_decoder.*`,
so the host's LoRA key mapping and weight tools work on the network unchanged:

| official (DiffSynth) name          | canonical name              |
|------------------------------------|-----------------------------|
| `all_x_embedder.{p}-1.*`           | `x_embedder.*`              |
| `*.attention.to_q/to_k/to_v.weight`| `*.attention.qkv.weight` (rows q, k, v) |
| `*.attention.to_out.0.*`           | `*.attention.out.*`         |
| `*.attention.norm_q/norm_k.*`      | `*.attention.q_norm/k_norm.*` |

Identification works on key names and shapes only, never on file names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, UnsupportedCheckpointError
from .safetensors_files import FLOAT_DTYPES, TensorEntry
from .variants import VARIANTS

# Prefixes that wrap a diffusion model's own keys in the files users have.
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "pipe.dit.", "dit.")

# Official-to-canonical renames applied to every key after the prefix is removed.
RENAMES = (
    (re.compile(r"^all_x_embedder\.\d+-1\."), "x_embedder."),
    (re.compile(r"\.attention\.to_out\.0\."), ".attention.out."),
    (re.compile(r"\.attention\.norm_q\."), ".attention.q_norm."),
    (re.compile(r"\.attention\.norm_k\."), ".attention.k_norm."),
)
SPLIT_QKV = re.compile(r"^(?P<block>.+\.attention)\.to_(?P<part>[qkv])\.weight$")

# A Z-Image-family backbone has these (after prefix removal, in either layout).
ZIMAGE_TELLTALES = ("cap_embedder.1.weight", "context_refiner.0.attention_norm1.weight")

# Telltale key fragments of other model families, for a helpful rejection message.
OTHER_FAMILIES = (
    (
        "double_blocks.0.img_attn",
        "a FLUX-family diffusion model",
        "Load it with ComfyUI's stock 'Load Diffusion Model' node.",
    ),
    ("joint_blocks.0.", "a Stable Diffusion 3 diffusion model", "Load it with ComfyUI's stock loaders."),
    (
        "input_blocks.0.0.weight",
        "a Stable Diffusion 1.x/2.x/XL UNet",
        "Load it with ComfyUI's stock checkpoint loader.",
    ),
    (
        "self_attn.q_proj.weight",
        "a language model / text encoder (for example Qwen3-4B)",
        "Text encoders go in models/text_encoders and load with CLIPLoader (type lumina2), "
        "or as --text-encoder on the command line.",
    ),
    ("decoder.conv_in.weight", "a VAE", "L2P needs no VAE; VAEs load with ComfyUI's VAELoader."),
    ("lora_", "a LoRA", "Apply LoRAs with a LoRA loader node on top of the L2P model."),
    ("lora.down", "a LoRA", "Apply LoRAs with a LoRA loader node on top of the L2P model."),
)

L2P_DOWNLOAD_HINT = "For L2P, use model-1k-merge.safetensors from huggingface.co/zhen-nan/L2P."


@dataclass(frozen=True)
class CanonicalSource:
    """Source of one canonical parameter: one stored tensor, or several concatenated on dim 0."""

    parts: tuple[TensorEntry, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.parts[0].shape
        return (sum(part.shape[0] for part in self.parts), *first[1:])

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(part.dtype for part in self.parts)


@dataclass(frozen=True)
class CheckpointLayout:
    """A recognised L2P checkpoint: its layout name, key prefix and canonical tensor map."""

    path: Path
    layout: str
    prefix: str
    patch_size: int
    tensors: dict[str, CanonicalSource]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def __contains__(self, name: str) -> bool:
        return name in self.tensors


def identify_checkpoint(path: Path, entries: dict[str, TensorEntry]) -> CheckpointLayout:
    """Recognise an L2P checkpoint in any supported layout and map it to canonical names.

    Raises CheckpointError naming what the file looks like when it is not an L2P model,
    and UnsupportedCheckpointError for a patch size no released L2P variant uses.
    """
    if not entries:
        raise CheckpointError(f"'{path}' contains no tensors. Download the file again.")

    prefix = _find_prefix(entries)
    keys = {name[len(prefix) :]: entry for name, entry in entries.items() if name.startswith(prefix)}
    _reject_other_architectures(path, keys)

    layout = "official" if any(key.startswith("all_x_embedder.") for key in keys) else "comfyui"
    if prefix:
        layout += f" (prefix '{prefix}')"
    tensors = _to_canonical(path, keys)
    _reject_quantised(path, tensors)

    patch_size = _patch_size(path, tensors)
    if patch_size not in VARIANTS:
        known = ", ".join(f"{variant.patch_size} ({variant.name})" for variant in VARIANTS.values())
        raise UnsupportedCheckpointError(
            f"'{path}' is an L2P variant with {patch_size}-px patches (read from x_embedder), "
            f"which no released L2P model uses. Supported patch sizes: {known}. Use one of the "
            "released checkpoints."
        )
    return CheckpointLayout(path, layout, prefix, patch_size, tensors)


def _find_prefix(entries: dict[str, TensorEntry]) -> str:
    """Return the prefix in front of the Z-Image keys: a known one, else any that fits both telltales."""
    for prefix in ("", *KNOWN_PREFIXES):
        if all(prefix + telltale in entries for telltale in ZIMAGE_TELLTALES):
            return prefix
    first, second = ZIMAGE_TELLTALES
    for name in entries:
        if name.endswith("." + first):
            prefix = name[: -len(first)]
            if prefix + second in entries:
                return prefix
    return ""


def _reject_other_architectures(path: Path, keys: dict[str, TensorEntry]) -> None:
    if not all(telltale in keys for telltale in ZIMAGE_TELLTALES):
        for fragment, family, advice in OTHER_FAMILIES:
            if any(fragment in key for key in keys):
                raise CheckpointError(
                    f"'{path}' is not an L2P model: it looks like {family}. {advice} {L2P_DOWNLOAD_HINT}"
                )
        sample = ", ".join(sorted(keys)[:5])
        raise CheckpointError(
            f"'{path}' is not an L2P model: none of the Z-Image backbone keys "
            f"({', '.join(ZIMAGE_TELLTALES)}) were found. First keys in the file: {sample}. "
            f"{L2P_DOWNLOAD_HINT}"
        )

    if any(key.startswith("dec_net.") for key in keys):
        raise CheckpointError(
            f"'{path}' is a Z-Image pixel-space model with a DCT decoder head ('dec_net.*', for "
            "example Zeta Chroma), not L2P. ComfyUI loads it with the stock 'Load Diffusion Model' "
            f"node. {L2P_DOWNLOAD_HINT}"
        )

    if not any(key.startswith("local_decoder.") for key in keys):
        pixel_embedders = [
            key for key in keys if re.match(r"^(all_x_embedder\.(16|64|128|160)-1|x_embedder)\.weight$", key)
        ]
        if any(keys[key].shape[-1] >= 3 * 16 * 16 for key in pixel_embedders):
            raise CheckpointError(
                f"'{path}' has an L2P pixel patch embedder but no local decoder weights "
                "('local_decoder.*'). The file is incomplete; the decoder is never replaced by "
                f"random weights. Download the file again. {L2P_DOWNLOAD_HINT}"
            )
        final_layer = any(key.startswith(("final_layer.", "all_final_layer.")) for key in keys)
        evidence = "it has a final layer and no local decoder" if final_layer else "it has no local decoder"
        raise CheckpointError(
            f"'{path}' is a latent Z-Image checkpoint ({evidence}), not L2P. It generates through "
            "a VAE: load it with ComfyUI's stock 'Load Diffusion Model' node. "
            f"{L2P_DOWNLOAD_HINT}"
        )

    caption_embedder = keys["cap_embedder.1.weight"]
    if len(caption_embedder.shape) != 2:
        raise CheckpointError(
            f"'{path}': 'cap_embedder.1.weight' has shape {list(caption_embedder.shape)}, expected a "
            "[hidden, caption width] matrix. The file is damaged: download it again."
        )
    dim = caption_embedder.shape[0]
    for name in ("all_x_embedder.2-1.weight", "x_embedder.weight"):
        entry = keys.get(name)
        if entry is not None and len(entry.shape) == 2 and entry.shape[1] == 64 and dim > 64:
            raise CheckpointError(
                f"'{path}' mixes a latent Z-Image patch embedder ('{name}' takes 64 values per "
                "token) with L2P decoder weights. The file is not a usable L2P checkpoint. "
                f"{L2P_DOWNLOAD_HINT}"
            )


def _to_canonical(path: Path, keys: dict[str, TensorEntry]) -> dict[str, CanonicalSource]:
    tensors: dict[str, CanonicalSource] = {}
    split: dict[str, dict[str, TensorEntry]] = {}

    for key, entry in keys.items():
        match = SPLIT_QKV.match(key)
        if match:
            split.setdefault(match["block"], {})[match["part"]] = entry
            continue
        name = key
        for pattern, replacement in RENAMES:
            name = pattern.sub(replacement, name)
        _add(path, tensors, name, CanonicalSource((entry,)), key)

    for block, parts in split.items():
        missing = [f"{block}.to_{part}.weight" for part in "qkv" if part not in parts]
        if missing:
            raise CheckpointError(
                f"'{path}' is incomplete: {', '.join(missing)} missing while the other attention "
                "projections of that block are present. Download the file again."
            )
        shapes = {parts[part].shape for part in "qkv"}
        if len(shapes) != 1:
            raise CheckpointError(
                f"'{path}': the q/k/v projections of '{block}' have different shapes "
                f"{[list(parts[part].shape) for part in 'qkv']}; expected three equal [dim, dim] matrices."
            )
        _add(
            path,
            tensors,
            f"{block}.qkv.weight",
            CanonicalSource(tuple(parts[part] for part in "qkv")),
            f"{block}.to_q/k/v",
        )
    return tensors


def _add(path: Path, tensors: dict[str, CanonicalSource], name: str, source: CanonicalSource, key: str) -> None:
    if name in tensors:
        raise CheckpointError(
            f"'{path}' stores '{name}' twice (once as '{key}'): it mixes the official and the "
            "ComfyUI key layouts. Use a file in one layout."
        )
    tensors[name] = source


def _reject_quantised(path: Path, tensors: dict[str, CanonicalSource]) -> None:
    for name, source in tensors.items():
        odd = [dtype for dtype in source.dtypes if dtype not in FLOAT_DTYPES]
        if odd:
            raise CheckpointError(
                f"'{path}' stores '{name}' as {odd[0]}: it is a quantised repack (for example "
                "INT8), which this loader does not read. Use the original bf16/fp32 release "
                "and pick a low-memory weight dtype when loading."
            )


def _patch_size(path: Path, tensors: dict[str, CanonicalSource]) -> int:
    embedder = tensors.get("x_embedder.weight")
    if embedder is None or len(embedder.shape) != 2:
        raise CheckpointError(
            f"'{path}' has L2P decoder weights but no pixel patch embedder "
            "('all_x_embedder.16-1.weight' or 'x_embedder.weight'). The file is incomplete: "
            "download it again."
        )
    values_per_patch = embedder.shape[1]
    patch = math.isqrt(values_per_patch // 3)
    if patch * patch * 3 != values_per_patch:
        raise CheckpointError(
            f"'{path}': x_embedder takes {values_per_patch} values per token, which is not "
            "3·p² for a square RGB patch. This is not an L2P checkpoint."
        )
    return patch
