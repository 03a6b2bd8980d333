"""ComfyUI nodes of the pack: schemas and thin adapters over l2p_core.

The node modules (loader, sampler, latent, tiling) import only the host's node API, so
registering the pack loads no model code. The bridges to ComfyUI's model machinery
(host_model, pixel_sampling, tiled_model) are imported when a node runs.
"""

# ComfyUI's nodes.MAX_RESOLUTION, the largest image side its stock nodes accept.
MAX_RESOLUTION = 16384
