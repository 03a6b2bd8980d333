"""Stand-in for ComfyUI's comfy package (see tests/pack/stubs/README.md)."""
