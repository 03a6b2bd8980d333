"""Check that registering the pack and loading an L2P model leave the host's registries alone.

Run by test_registration.py with ComfyUI's Python, in the checkout:

    python registry_probe.py PACK_FOLDER L2P_CHECKPOINT BASE_DIRECTORY

It imports ComfyUI as main.py does, with --cpu and BASE_DIRECTORY as --base-directory so
that nothing is written into the checkout. It records the host's model-detection and model
lists, loads the pack through ComfyUI's own custom-node loader and a checkpoint with the
L2P Model Loader, then prints a JSON report of every difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


def snapshot(modules: dict) -> dict:
    """Return the registries a pack could patch: model lists, detection functions, latent formats."""
    supported_models = modules["comfy.supported_models"]
    model_detection = modules["comfy.model_detection"]
    return {
        "supported_models.models": [id(item) for item in supported_models.models],
        "model_detection": {name: id(getattr(model_detection, name)) for name in sorted(vars(model_detection))},
        "model_base": sorted(vars(modules["comfy.model_base"])),
        "latent_formats": sorted(vars(modules["comfy.latent_formats"])),
        "supported_models": sorted(vars(supported_models)),
        "sd": {name: id(getattr(modules["comfy.sd"], name)) for name in sorted(vars(modules["comfy.sd"]))},
    }


def main() -> None:
    pack_folder, checkpoint, base_directory = sys.argv[1:4]
    sys.argv = ["main.py", "--cpu", "--base-directory", base_directory]
    sys.path.insert(0, os.getcwd())

    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_detection
    import comfy.sd
    import comfy.supported_models

    import nodes

    modules = {name: sys.modules[name] for name in sys.modules if name.startswith("comfy")}
    before = snapshot(modules)
    node_ids_before = set(nodes.NODE_CLASS_MAPPINGS)

    loaded = asyncio.run(nodes.load_custom_node(pack_folder))
    loader = nodes.NODE_CLASS_MAPPINGS["L2PModelLoader"]
    import folder_paths

    folder_paths.add_model_folder_path("diffusion_models", os.path.dirname(checkpoint))
    output = loader.execute(model_name=os.path.basename(checkpoint), weight_dtype="default")
    model = output.args[0]

    after = snapshot(modules)
    report = {
        "loaded": loaded,
        "new_node_ids": sorted(set(nodes.NODE_CLASS_MAPPINGS) - node_ids_before),
        "changed": sorted(key for key in before if before[key] != after[key]),
        "model_class": type(model.model).__name__,
        "patcher_class": type(model).__name__,
        "image_model": model.model.model_config.unet_config["image_model"],
    }
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
