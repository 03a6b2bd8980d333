"""Count caption-path runs of an L2P model sampled by the host's own KSampler code.

Run by test_caption_reuse.py with ComfyUI's Python, in the checkout:

    python caption_probe.py PACK_FOLDER WORK_DIRECTORY

It imports ComfyUI as main.py does (--cpu, WORK_DIRECTORY as --base-directory), loads the
pack through the host's custom-node loader and a tiny L2P model through the L2P Model
Loader, and samples with `nodes.common_ksampler` (what KSampler runs) twice: as loaded, and
with the pack's caption-reuse wrapper removed. A forward hook counts the calls of the first
context-refiner block. It prints one JSON report line.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from pathlib import Path

STEPS = 3


def main() -> None:
    pack_folder, work_directory = sys.argv[1:3]
    sys.argv = ["main.py", "--cpu", "--base-directory", work_directory]
    sys.path.insert(0, os.getcwd())

    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.patcher_extension
    import folder_paths
    import torch

    import nodes

    assert asyncio.run(nodes.load_custom_node(pack_folder)), "the pack failed to load"
    synthetic = importlib.import_module(f"{pack_folder}.l2p_core.synthetic")
    caption_reuse = importlib.import_module(f"{pack_folder}.nodes.caption_reuse")

    config = synthetic.tiny_config()
    checkpoint = synthetic.write_checkpoint(Path(work_directory) / "tiny-l2p-caption-probe.safetensors", config)
    folder_paths.add_model_folder_path("diffusion_models", work_directory)
    model = nodes.NODE_CLASS_MAPPINGS["L2PModelLoader"].execute(model_name=checkpoint.name, weight_dtype="fp32")
    model = model.args[0]

    generator = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 21, config.cap_feat_dim, generator=generator), {}]]
    negative = [[torch.randn(1, 5, config.cap_feat_dim, generator=generator), {}]]
    latent = {"samples": torch.zeros(1, 3, 64, 64)}

    calls = {"count": 0}

    def count(*_) -> None:
        calls["count"] += 1

    network = model.model.diffusion_model
    network.context_refiner[0].register_forward_hook(count)

    def run(patcher) -> tuple[int, torch.Tensor]:
        calls["count"] = 0
        (result,) = nodes.common_ksampler(patcher, 7, STEPS, 2.0, "euler", "simple", positive, negative, latent)
        return calls["count"], result["samples"]

    with_reuse, images = run(model)
    without = model.clone()
    without.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, caption_reuse.WRAPPER_KEY)
    without_reuse, images_without = run(without)

    report = {
        "steps": STEPS,
        "refiner_calls_with_reuse": with_reuse,
        "refiner_calls_without_reuse": without_reuse,
        "max_difference": float((images - images_without).abs().max()),
        "cache_dropped": network._caption_cache is None,
    }
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
