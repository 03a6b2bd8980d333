"""Run the L2P model through ComfyUI's own low-VRAM mechanisms: fp8 weight storage and partial loading.

Run by test_low_vram.py with ComfyUI's Python, in the checkout:

    python low_vram_probe.py PACK_FOLDER WORK_DIRECTORY

It imports ComfyUI as main.py does (--cpu, WORK_DIRECTORY as --base-directory), loads the
pack through the host's custom-node loader and a tiny L2P checkpoint through the L2P Model
Loader, and prints a JSON report:

- fp8: the same prompt sampled with weight_dtype default and fp8_e4m3fn through the pack's
  sampler, the weights' storage dtypes, and the images' difference.
- partial: the model loaded the way ComfyUI's load_models_gpu loads it when the weights do
  not fit (`LoadedModel.model_load` with a memory budget below the model's size), which
  modules the ModelPatcher left offloaded with `comfy_cast_weights`, how often
  `comfy.ops.cast_bias_weight` ran for them while sampling, and the difference to the
  fully loaded model's images. On a CPU-only host load_models_gpu itself always loads fully,
  so the probe calls the step it would take on a GPU short of memory.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import json
import os
import sys

N_LAYERS = 4
CAPTION_WIDTH = 64
WIDTH, HEIGHT, STEPS, CFG, SEED = 32, 32, 3, 2.0, 5
# Fraction of the model's bytes the partial load may use. The host keeps the largest layers
# that fit, with room for casting the next offloaded ones, and offloads the rest.
PARTIAL_BUDGET_FRACTION = 0.6


def conditioning(torch, seed: int, tokens: int):
    features = torch.randn(1, tokens, CAPTION_WIDTH, generator=torch.Generator().manual_seed(seed))
    return [[features, {}]]


def relative_error(torch, value, reference) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def block_of(name: str) -> str:
    """Return `layers.3` for `diffusion_model.layers.3.attention.qkv`, else the first part after the model."""
    parts = name.split(".")[1:]
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def main() -> None:
    pack_folder, work_directory = sys.argv[1:3]
    sys.argv = ["main.py", "--cpu", "--base-directory", work_directory]
    sys.path.insert(0, os.getcwd())

    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management
    import comfy.ops
    import folder_paths
    import torch
    from safetensors.torch import save_file

    import nodes

    assert asyncio.run(nodes.load_custom_node(pack_folder)), "the pack failed to load"
    # The host's custom-node loader names the pack's package after its folder path.
    synthetic = importlib.import_module(f"{pack_folder}.l2p_core.synthetic")
    l2p_core = importlib.import_module(f"{pack_folder}.l2p_core")
    pixel_sampling = importlib.import_module(f"{pack_folder}.nodes.pixel_sampling")

    config = synthetic.tiny_config(n_layers=N_LAYERS, cap_feat_dim=CAPTION_WIDTH)
    checkpoint = os.path.join(work_directory, "tiny-l2p-low-vram.safetensors")
    official = synthetic.to_official_layout(
        synthetic.random_state_dict(config, seed=11), config.patch_size, float32_layers=range(1, 3)
    )
    save_file({name: tensor.contiguous() for name, tensor in official.items()}, checkpoint)
    folder_paths.add_model_folder_path("diffusion_models", work_directory)
    loader = nodes.NODE_CLASS_MAPPINGS["L2PModelLoader"]

    def load(weight_dtype: str):
        return loader.execute(model_name=os.path.basename(checkpoint), weight_dtype=weight_dtype).args[0]

    positive, negative = conditioning(torch, 1, 12), conditioning(torch, 2, 5)

    def sample_node(model):
        return pixel_sampling.sample_images(
            model, positive, negative, width=WIDTH, height=HEIGHT, batch_size=1, seed=SEED, steps=STEPS, cfg=CFG,
            shift=3.0,
        )  # fmt: skip

    def sample_direct(model):
        """Sample without load_models_gpu, which would turn a partial load back into a full one on the CPU."""
        network = model.model.diffusion_model
        with torch.inference_mode():
            return l2p_core.sample(
                network, [positive[0][0][0]], [negative[0][0][0]], width=WIDTH, height=HEIGHT, seed=SEED,
                steps=STEPS, cfg=CFG, device=model.load_device,
            )  # fmt: skip

    report = {}

    # fp8 storage against the default (float32 on the CPU).
    default_model = load("default")
    fp8_model = load("fp8_e4m3fn")
    default_images = sample_node(default_model)
    fp8_images = sample_node(fp8_model)
    fp8_state = fp8_model.model.diffusion_model.state_dict()
    report["fp8"] = {
        "relative_error": relative_error(torch, fp8_images, default_images),
        "max_abs_difference": (fp8_images - default_images).abs().max().item(),
        "default_dtype": str(default_model.model.diffusion_model.layers[0].attention.qkv.weight.dtype),
        "storage_dtypes": sorted({str(tensor.dtype) for tensor in fp8_state.values()}),
        "compute_dtype": str(fp8_model.model.diffusion_model.compute_dtype),
        "shape": list(fp8_images.shape),
    }

    # Partial loading: the host keeps part of the weights offloaded and casts them per layer.
    comfy.model_management.unload_all_models()
    calls = collections.Counter()
    original_cast = comfy.ops.cast_bias_weight

    def counting_cast(module, *args, **kwargs):
        calls[id(module)] += 1
        return original_cast(module, *args, **kwargs)

    comfy.ops.cast_bias_weight = counting_cast
    try:
        report["partial"] = {}
        for weight_dtype, model in (("default", default_model), ("fp8_e4m3fn", fp8_model)):
            comfy.model_management.unload_all_models()
            full_images = sample_direct(model)  # the loader leaves the weights in place on the CPU
            budget = int(model.model_size() * PARTIAL_BUDGET_FRACTION)
            loaded = comfy.model_management.LoadedModel(model)
            loaded.model_load(budget)

            modules = dict(model.model.named_modules())
            offloaded = sorted(
                name for name, module in modules.items() if getattr(module, "prev_comfy_cast_weights", None) is not None
            )
            cast_layers = [name for name, module in modules.items() if hasattr(module, "comfy_cast_weights")]
            loaded_layers = sorted(
                name for name, module in modules.items() if getattr(module, "comfy_patched_weights", False)
            )
            calls.clear()
            partial_images = sample_direct(model)
            report["partial"][weight_dtype] = {
                "budget_bytes": budget,
                "model_bytes": model.model_size(),
                "loaded_bytes": model.model.model_loaded_weight_memory,
                "model_lowvram": bool(model.model.model_lowvram),
                "offloaded": offloaded,
                "offloaded_blocks": sorted({block_of(name) for name in offloaded}),
                "cast_layers": len(cast_layers),
                "loaded_layers": loaded_layers,
                "offloaded_cast_flags": sorted({bool(modules[name].comfy_cast_weights) for name in offloaded}),
                "offloaded_patched": sorted(
                    name for name in offloaded if getattr(modules[name], "comfy_patched_weights", False)
                ),
                "offloaded_without_casts": sorted(name for name in offloaded if calls[id(modules[name])] == 0),
                "max_abs_difference": (partial_images - full_images).abs().max().item(),
                "equal": bool(torch.equal(partial_images, full_images)),
            }
            model.detach()
    finally:
        comfy.ops.cast_bias_weight = original_cast
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
