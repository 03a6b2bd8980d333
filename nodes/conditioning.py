"""Convert ComfyUI CONDITIONING into the caption-feature lists that l2p_core takes.

A CONDITIONING value is a list of entries `[features, options]`: `features` is a
[B, tokens, width] tensor from the text encoder and `options` a dict. The Qwen3-4B encoder
of Z-Image (CLIPLoader type `lumina2`) adds an `attention_mask` [B, tokens] when a batch
has padding. l2p_core takes the captions without padding, one [tokens_i, width] tensor each.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# The reference pipeline tokenises the templated prompt to at most 512 tokens. Because
# Qwen3 is causal, the first 512 rows of ComfyUI's longer conditioning are exactly the
# features the reference computes, so keeping only those makes long prompts match it.
MAX_CAPTION_TOKENS = 512

# Options that change where or when a sampler applies an entry (regions, step ranges,
# control models, hooks). The L2P Pixel Sampler uses only the text features, so it rejects
# them instead of ignoring them; KSampler and SamplerCustomAdvanced apply them.
# Values are the neutral setting that may pass, or None where any value is rejected.
SAMPLER_OPTIONS = {
    "area": None,
    "mask": None,
    "control": None,
    "gligen": None,
    "hooks": None,
    "reference_latents": None,
    "timestep_start": None,
    "timestep_end": None,
    "strength": 1.0,
    "start_percent": 0.0,
    "end_percent": 1.0,
}


def unpad_captions(features: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Split padded features [B, tokens, width] into B tensors of their real tokens.

    `attention_mask` [B, tokens] marks real tokens with nonzero values. None means that no
    token is padding.
    """
    if features.ndim != 3:
        raise ValueError(f"Text features must have shape [batch, tokens, width]; got {list(features.shape)}.")
    if attention_mask is None:
        return [_truncate(row, index) for index, row in enumerate(features.unbind(0))]

    mask = attention_mask.reshape(attention_mask.shape[0], -1).to(features.device) != 0
    if mask.shape != features.shape[:2]:
        raise ValueError(
            f"The text attention mask has shape {list(attention_mask.shape)}, which does not match "
            f"the text features {list(features.shape)}."
        )
    captions = []
    for index, (row, keep) in enumerate(zip(features, mask, strict=True)):
        if not keep.any():
            raise ValueError(f"Caption {index} of the conditioning has no tokens: its attention mask is all zero.")
        captions.append(_truncate(row[keep], index))
    return captions


def _truncate(caption: torch.Tensor, index: int) -> torch.Tensor:
    if len(caption) <= MAX_CAPTION_TOKENS:
        return caption
    logger.warning(
        "Caption %d has %d tokens; L2P uses the first %d, as the reference pipeline does.",
        index, len(caption), MAX_CAPTION_TOKENS,
    )  # fmt: skip
    return caption[:MAX_CAPTION_TOKENS]


def caption_features(conditioning: list, name: str, width: int) -> list[torch.Tensor]:
    """Return the caption features of a CONDITIONING input as l2p_core expects them.

    `name` ("positive" or "negative") and the model's caption width `width` appear in the
    errors. Each error names what to change: the text encoder, the number of entries, or
    the options that only the stock samplers apply.
    """
    if not conditioning:
        raise ValueError(f"The {name} conditioning is empty. Connect a CLIP Text Encode node.")
    if len(conditioning) != 1:
        raise ValueError(
            f"The {name} conditioning has {len(conditioning)} entries (for example from Conditioning "
            "Combine or a scheduled prompt), but the L2P Pixel Sampler takes one entry per prompt. "
            "Use Conditioning (Concat) to join prompts, or sample with KSampler, which mixes entries."
        )

    features, options = conditioning[0]
    used = sorted(
        key
        for key, neutral in SAMPLER_OPTIONS.items()
        if key in options and (neutral is None or options[key] != neutral)
    )
    if used:
        raise ValueError(
            f"The {name} conditioning sets {', '.join(used)}, which the L2P Pixel Sampler does not apply. "
            "Sample with KSampler or SamplerCustomAdvanced, which do."
        )

    if features.ndim != 3:
        raise ValueError(f"The {name} conditioning has shape {list(features.shape)}; expected [batch, tokens, width].")
    if features.shape[-1] != width:
        raise ValueError(
            f"The {name} conditioning is {features.shape[-1]} wide, but this L2P model takes {width}-wide "
            "text features. Encode the prompt with Qwen3-4B: load qwen_3_4b.safetensors with CLIPLoader, "
            "type lumina2, and connect it to CLIP Text Encode."
        )
    return unpad_captions(features, options.get("attention_mask"))
