"""Stand-in for ComfyUI's comfy_api package (see tests/pack/stubs/README.md)."""
