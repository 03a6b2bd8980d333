"""The L2P network as ComfyUI's `diffusion_model`: host operations, host calling convention."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import comfy.patcher_extension
import torch

from ..l2p_core import L2PConfig, L2PTransformer, SamplingError
from .conditioning import unpad_captions


class L2PDiffusionModel(L2PTransformer):
    """L2PTransformer that ComfyUI's BaseModel builds and calls.

    BaseModel constructs it as `unet_model(**unet_config, device=..., operations=...)`, so
    the layers are ComfyUI's operation classes (casting, offloading, LoRA patches) and the
    parameter names stay ComfyUI's Z-Image names. `dtype` is the storage dtype and
    `compute_dtype` the dtype activations run in (they differ when ComfyUI casts weights,
    for example fp8 storage computed in bfloat16).

    `forward` accepts two conventions: ComfyUI's padded context [B, tokens, width] with an
    optional attention mask (stock samplers), and l2p_core's list of unpadded caption tensors
    (the L2P Pixel Sampler through `l2p_core.sample`).
    """

    def __init__(
        self,
        *,
        l2p_config: L2PConfig,
        dtype: torch.dtype | None = None,
        compute_dtype: torch.dtype | None = None,
        device=None,
        operations=None,
        **unet_config_keys,
    ) -> None:
        # unet_config_keys: image_model, dim, n_layers and n_refiner_layers, which ComfyUI's
        # Z-Image LoRA key mapping reads from unet_config; the network takes them from l2p_config.
        super().__init__(l2p_config, dtype=dtype, device=device, operations=operations)
        self.dtype = dtype
        self.compute_dtype = compute_dtype or dtype or torch.float32

    def forward(self, x, timesteps, context, **kwargs):
        if isinstance(context, (list, tuple)):
            # l2p_core's convention; its keyword arguments (token_offsets) pass through.
            return self._check_finite(super().forward(x, timesteps, context, **kwargs))

        transformer_options = kwargs.setdefault("transformer_options", {})
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward_padded,
            self,
            comfy.patcher_extension.get_all_wrappers(
                comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options
            ),
        ).execute(x, timesteps, context, **kwargs)

    def _forward_padded(
        self,
        x,
        timesteps,
        context,
        attention_mask=None,
        control=None,
        ref_latents=None,
        transformer_options=None,
        token_offsets=None,
        **kwargs,
    ):
        """Run on ComfyUI's inputs; `timesteps` is σ (see `L2PModel.process_timestep`).

        `token_offsets` comes from the patch-tiling wrapper (see `nodes.tiled_model`).
        """
        # Other keyword arguments (num_tokens, clip_text_pooled) carry nothing the network uses.
        if control is not None:
            raise ValueError(
                "L2P takes no ControlNet or T2I-Adapter input; remove the ControlNet from the conditioning."
            )
        if ref_latents:
            raise ValueError("L2P takes no reference latents; remove the ReferenceLatent node from the conditioning.")
        captions = unpad_captions(context, attention_mask)
        return self._check_finite(super().forward(x, timesteps, captions, token_offsets=token_offsets))

    @contextmanager
    def decoder_tiles(self, tile_px: int | None) -> Iterator[None]:
        """Run the local decoder in tiles of `tile_px` (None: in one piece) within this block.

        The network object is shared by every clone of a MODEL, so a clone's setting
        applies only while that clone samples and the default comes back afterwards.
        """
        previous = self.decoder_tile_px
        self.decoder_tile_px = tile_px
        try:
            yield
        finally:
            self.decoder_tile_px = previous

    def _check_finite(self, velocity: torch.Tensor) -> torch.Tensor:
        """Stop a float16 run at the first overflow, which would otherwise give a black or noisy image."""
        if self.compute_dtype == torch.float16 and not torch.isfinite(velocity).all():
            raise SamplingError(
                "L2P produced NaN or Inf while computing in float16, whose range this network's "
                "activations exceed. Reload the model with weight_dtype bf16 (the same memory as fp16) "
                "or default."
            )
        return velocity


def l2p_network(model, node: str = "L2P Pixel Sampler") -> L2PDiffusionModel:
    """Return the L2P network of a MODEL, or raise ValueError naming `node` if it is another kind of model."""
    base_model = getattr(model, "model", None)
    network = getattr(base_model, "diffusion_model", None)
    if not isinstance(network, L2PDiffusionModel):
        kind = type(base_model).__name__ if base_model is not None else type(model).__name__
        raise ValueError(
            f"The {node} needs a model from the L2P Model Loader; this one is {kind}. "
            "Sample other models with KSampler."
        )
    return network
