"""L2P as a native ComfyUI model: latent format, model config, BaseModel, and the loader.

The loader follows the host's own `comfy.sd.load_diffusion_model_state_dict` (dtype choice,
operations, ModelPatcher, weight loading) but builds the config from l2p_core's reading of
the file instead of the host's model detection, so nothing global is registered or patched.
The class names and the `image_model` id differ from the ones a future ComfyUI core with
built-in L2P would use (`ZImageL2P`, `zimage_l2p`), so both can coexist.

This module imports ComfyUI's model code, so the nodes import it only when they run.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
import torch

from ..l2p_core import inspect_checkpoint
from .caption_reuse import add_caption_reuse
from .diffusion_model import L2PDiffusionModel
from .lora_blocks import float32_joint_blocks
from .lora_host_log import observe_state_dict_call
from .lora_patches import l2p_patcher_class
from .memory_estimate import activation_bytes
from .tiled_model import tiling_for_estimate
from .tiling_settings import TilingSettings
from .weights import load_weights

logger = logging.getLogger(__name__)

IMAGE_MODEL_ID = "comfyui_l2p"

# Storage dtype of each `weight_dtype` choice of the L2P Model Loader. With "default",
# ComfyUI chooses from the device and the file, as its stock loader does.
WEIGHT_DTYPES = {
    "default": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class L2PPixels(comfy.latent_formats.ChromaRadiance):
    """RGB in [-1, 1] at full resolution: 3 channels, spatial ratio 1, identity preview factors."""


class L2PModelConfig(comfy.supported_models_base.BASE):
    """Model config of an L2P checkpoint; never added to the host's detection list."""

    unet_config = {"image_model": IMAGE_MODEL_ID}
    # BASE adds UNet head settings here, which the L2P network has no use for.
    unet_extra_config = {}
    # Flow matching with shift 3 on σ ∈ [0, 1], as in the L2P and Z-Image reference pipelines.
    sampling_settings = {"multiplier": 1.0, "shift": 3.0}
    latent_format = L2PPixels
    supported_inference_dtypes = [torch.bfloat16, torch.float32]
    memory_usage_factor = 1.0  # unused: L2PModel.memory_required has its own estimate

    def get_model(self, state_dict=None, prefix="", device=None):
        return L2PModel(self, device=device)

    def set_inference_dtype(self, dtype, manual_cast_dtype, device=None):
        super().set_inference_dtype(dtype, manual_cast_dtype, device=device)
        self.unet_config["compute_dtype"] = manual_cast_dtype or dtype


class L2PModel(comfy.model_base.Lumina2):
    """Flow-matching BaseModel whose diffusion_model is the L2P network.

    It derives from Lumina2 for its conditioning handling (caption features, attention
    mask) and because ComfyUI maps Z-Image LoRA keys for Lumina2 models.
    """

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, model_type, device=device, unet_model=L2PDiffusionModel)
        self.memory_usage_factor_conds = ()

    def state_dict(self, *args, **kwargs):
        # The host's LoRA loaders call this first (in `comfy.lora.model_lora_keys_unet`) and
        # then drop the LoRA tensors their key map lacks. This opens the observation that lets
        # the patcher count those tensors (see lora_host_log). The returned dict is unchanged.
        observe_state_dict_call(self, sys._getframe(1))
        return super().state_dict(*args, **kwargs)

    def process_timestep(self, timestep, **kwargs):
        # The network takes σ. ComfyUI passes σ·multiplier, which is σ with the built-in
        # sampling (multiplier 1, also after ModelSamplingAuraFlow) but 1000σ after
        # ModelSamplingSD3.
        return timestep / self.model_sampling.multiplier

    def memory_required(self, input_shape, cond_shapes=None):
        """Estimate the working memory of one forward pass over `input_shape` [B, C, H, W], in bytes.

        With the L2P Patch Tiling node on the model being sampled, the estimate counts one
        group of tiles (see `tiled_model.tiling_for_estimate`).
        """
        return self.working_memory(input_shape, tiling_for_estimate(getattr(self, "current_patcher", None)))

    def working_memory(self, input_shape, tiling: TilingSettings | None) -> float:
        """Estimate the working memory, in bytes, in the host's two attention cases (see `memory_estimate`)."""
        # NOTE: checked against CPU measurements of a mid-size network, not measured on a GPU.
        network = self.diffusion_model
        efficient_attention = (
            comfy.model_management.xformers_enabled() or comfy.model_management.pytorch_attention_flash_attention()
        )
        return activation_bytes(
            network.config,
            input_shape,
            comfy.model_management.dtype_size(self.get_dtype_inference()),
            efficient_attention=efficient_attention,
            decoder_tile_px=network.decoder_tile_px,
            tiling=tiling,
        )


def choose_dtypes(weight_dtype: str, parameters: int, file_dtype: torch.dtype | None, load_device):
    """Return (storage dtype, compute dtype or None) the way ComfyUI's diffusion-model loader does."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"Unknown weight_dtype '{weight_dtype}'; choose one of {', '.join(WEIGHT_DTYPES)}.")
    supported = L2PModelConfig.supported_inference_dtypes
    storage = WEIGHT_DTYPES[weight_dtype]
    if storage is None:
        storage = comfy.model_management.unet_dtype(
            model_params=parameters, supported_dtypes=supported, weight_dtype=file_dtype
        )
    compute = comfy.model_management.unet_manual_cast(storage, load_device, supported)
    return storage, compute


def load_l2p_patcher(path: str, weight_dtype: str = "default", disable_dynamic: bool = False):
    """Load an L2P checkpoint as a ModelPatcher over an L2PModel.

    Raises l2p_core's CheckpointError (wrong, truncated or unsupported file) before any
    weight is read, and ValueError for a weight_dtype that cannot hold the weights.
    `disable_dynamic` is ComfyUI's switch for a non-dynamic-VRAM copy (see
    ModelPatcher.cached_patcher_init).
    """
    info = inspect_checkpoint(path)
    config = info.config
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()

    storage, compute = choose_dtypes(weight_dtype, info.parameter_count, _file_dtype(info), load_device)
    model_config = L2PModelConfig(
        {
            "image_model": IMAGE_MODEL_ID,
            "l2p_config": config,
            # Read by ComfyUI's Z-Image LoRA key mapping.
            "dim": config.dim,
            "n_layers": config.n_layers,
            "n_refiner_layers": config.n_refiner_layers,
        }
    )
    model_config.set_inference_dtype(storage, compute, device=load_device)
    if weight_dtype == "fp8_e4m3fn_fast":
        model_config.optimizations["fp8"] = True

    model = model_config.get_model()
    # Read by the L2P LoRA Scope node, since the loaded weights all share the storage dtype.
    model.float32_joint_blocks = float32_joint_blocks(
        {name: source.dtypes for name, source in info.layout.tensors.items()}
    )
    patcher_class = l2p_patcher_class(
        comfy.model_patcher.ModelPatcher if disable_dynamic else comfy.model_patcher.CoreModelPatcher
    )
    patcher = patcher_class(model, load_device=load_device, offload_device=offload_device)
    if not comfy.model_management.is_device_cpu(offload_device):
        model.to(offload_device)
    load_weights(model.diffusion_model, info, storage, assign=patcher.is_dynamic())
    patcher.cached_patcher_init = (load_l2p_patcher, (path, weight_dtype))
    add_caption_reuse(patcher)

    logger.info(
        "L2P %s loaded from %s: %.2fB parameters stored in %s, computed in %s, on %s",
        config.variant,
        Path(path).name,
        info.parameter_count / 1e9,
        _name(storage),
        _name(compute or storage),
        load_device,
    )
    return patcher


def _file_dtype(info) -> torch.dtype | None:
    """Return the dtype of most of the checkpoint's values, the host's hint for "default"."""
    counts: dict[str, int] = {}
    for source in info.layout.tensors.values():
        for part in source.parts:
            counts[part.dtype] = counts.get(part.dtype, 0) + math.prod(part.shape)
    return SAFETENSORS_DTYPES.get(max(counts, key=counts.get)) if counts else None


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
