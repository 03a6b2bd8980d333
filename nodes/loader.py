"""L2P Model Loader: an L2P checkpoint from models/diffusion_models as a native MODEL."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

# Keys of nodes.host_model.WEIGHT_DTYPES, listed here so that registering the node imports
# no torch model code.
WEIGHT_DTYPE_CHOICES = ("default", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


class L2PModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2PModelLoader",
            display_name="L2P Model Loader",
            category="L2P",
            search_aliases=["l2p", "pixel space z-image", "load l2p"],
            description=(
                "Loads an L2P pixel-space checkpoint (for example model-1k-merge.safetensors) as a MODEL "
                "that the L2P Pixel Sampler and the stock samplers accept. L2P needs no VAE."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=folder_paths.get_filename_list("diffusion_models"),
                    tooltip=(
                        "L2P checkpoint from models/diffusion_models (or a folder added there with "
                        "extra_model_paths.yaml). Official and ComfyUI key layouts and sharded sets load."
                    ),
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPE_CHOICES),
                    default="default",
                    tooltip=(
                        "Storage type of the weights. default: ComfyUI chooses for the device (bf16 on "
                        "recent GPUs, 12 GB for the 1K model). fp16: same memory as bf16, stopped with an "
                        "error if values overflow. fp32: exact, about 25 GB. fp8_*: 6 GB, each layer cast to "
                        "bf16 or fp32 when it runs; _fast uses fp8 matrix multiplication where the GPU supports "
                        "it. Weights that do not fit in VRAM stay in RAM and ComfyUI copies them in layer by "
                        "layer: slower, but by estimate 8 GB cards can run fp8_e4m3fn and 12 GB cards hold it "
                        "whole."
                    ),
                ),
            ],
            outputs=[io.Model.Output(tooltip="The L2P diffusion model. Its latent is the RGB image itself.")],
        )

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str = "default") -> io.NodeOutput:
        from .host_model import load_l2p_patcher

        path = folder_paths.get_full_path_or_raise("diffusion_models", model_name)
        return io.NodeOutput(load_l2p_patcher(path, weight_dtype))
