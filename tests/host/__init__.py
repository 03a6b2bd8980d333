"""Host tests: the pack inside a real ComfyUI server (skipped unless COMFYUI_PATH is set)."""
