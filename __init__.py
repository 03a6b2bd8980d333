"""ComfyUI-L2P: L2P pixel-space image generation as ComfyUI nodes (V3 node schema).

ComfyUI imports this file from custom_nodes/ and calls `comfy_entrypoint`. The pack
defines no NODE_CLASS_MAPPINGS, because ComfyUI would then take the V1 path and never call
the entrypoint. Importing this file imports nothing, so tools that import the repository
root as a package outside ComfyUI (pytest does) work without the host.

WEB_DIRECTORY is served at /extensions/<folder name>/; the frontend's node help panel reads
web/docs/<node id>.md from there.
"""

WEB_DIRECTORY = "web"


async def comfy_entrypoint():
    """Return the pack's ComfyExtension; the node modules load no model code."""
    from .nodes.extension import L2PExtension

    return L2PExtension()
