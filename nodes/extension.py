"""The pack's ComfyUI extension: the list of nodes it registers."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .edit import L2PEdit
from .latent import L2PEmptyImage
from .loader import L2PModelLoader
from .lora_scope import L2PLoraScope
from .sampler import L2PPixelSampler
from .tiling import L2PPatchTiling


class L2PExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [L2PModelLoader, L2PPixelSampler, L2PEdit, L2PEmptyImage, L2PPatchTiling, L2PLoraScope]
