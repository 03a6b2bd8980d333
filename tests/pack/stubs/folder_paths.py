"""Stand-in for ComfyUI's folder_paths with one diffusion model listed."""

LISTED = {"diffusion_models": ["model-1k-merge.safetensors"]}


def get_filename_list(folder_name: str) -> list[str]:
    return list(LISTED.get(folder_name, []))


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    raise FileNotFoundError(f"The stand-in folder_paths has no files ({folder_name}/{filename}).")
