"""Apply tiny LoRAs in each Z-Image format to an L2P model through ComfyUI's own LoRA loading.

Run by test_lora.py with ComfyUI's Python, in the checkout:

    python lora_probe.py PACK_FOLDER WORK_DIRECTORY

It imports ComfyUI as main.py does (--cpu, WORK_DIRECTORY as --base-directory). It loads
the pack through the host's custom-node loader and a tiny bfloat16 L2P model through the
L2P Model Loader. For each LoRA format it then calls `comfy.sd.load_lora_for_models` (what
LoraLoaderModelOnly runs), patches the weights, reads them and unpatches. It prints a JSON
report: the expected and patched weights' differences, the untouched weights and the log.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys

STRENGTH = 0.75
RANK = 4
ALPHA = 2.0
N_LAYERS = 4
# Joint blocks the probe's checkpoint stores in float32, as the released file stores 5–24.
SHARED_BLOCKS = range(1, 3)
UNKNOWN_STEM = "caption_projector.0"


class LogRecords(logging.Handler):
    """Collects every log message, so the report shows what the host and the pack logged."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.getMessage()}")


def lora_pair(torch, generator, out_features: int, in_features: int):
    """Return (up, down) factors of one LoRA target, large enough to change bfloat16 weights."""
    up = torch.randn(out_features, RANK, generator=generator)
    down = torch.randn(RANK, in_features, generator=generator)
    return up, down


# Naming of each Z-Image LoRA format: key prefix, up and down factor suffixes, and whether
# attention uses the fused `qkv` (ComfyUI names) or split `to_q`/`to_k`/`to_v` with
# `to_out.0` (diffusers/PEFT names and the bare DiffSynth/ModelScope names).
Z_IMAGE_FORMATS = {
    "comfyui": ("diffusion_model.", "lora_up.weight", "lora_down.weight", True),
    "diffusers": ("transformer.", "lora_B.weight", "lora_A.weight", False),
    "diffsynth": ("", "lora_B.weight", "lora_A.weight", False),
}


def build_loras(torch, dim: int, hidden: int, adaln_shape: tuple[int, int]):
    """Return {format: (lora state dict, [(model key, row offset, up, down)], [latent-only LoRA keys])}."""
    generator = torch.Generator().manual_seed(7)
    formats = {
        name: build_z_image_lora(torch, generator, naming, dim, hidden, adaln_shape)
        for name, naming in Z_IMAGE_FORMATS.items()
    }
    formats["l2p_parts"] = build_l2p_parts_lora(torch, generator, dim)
    return formats


def build_z_image_lora(torch, generator, naming: tuple, dim: int, hidden: int, adaln_shape: tuple[int, int]):
    """Return one Z-Image LoRA in `naming`, its expected patches and its latent-only keys.

    It covers a joint block's attention, output projection and feed-forward, the same in a
    noise and a context refiner block, and another joint block's adaLN. Two more targets
    (up, down and alpha each) aim at latent Z-Image parts L2P does not have in that shape:
    the final layer and the 64-wide patch embedder. A last one (up and down) aims at a
    module neither model has.
    """
    prefix, up_name, down_name, fused = naming
    lora, expected = {}, []

    def add(stem: str, model_key: str, out_features: int, in_features: int, offset: int = 0) -> None:
        up, down = lora_pair(torch, generator, out_features, in_features)
        lora[f"{prefix}{stem}.{up_name}"] = up
        lora[f"{prefix}{stem}.{down_name}"] = down
        lora[f"{prefix}{stem}.alpha"] = torch.tensor(ALPHA)
        expected.append((model_key, offset, up, down))

    out_name = "attention.out" if fused else "attention.to_out.0"
    for block in ("layers.2", "noise_refiner.0", "context_refiner.0"):
        qkv = f"diffusion_model.{block}.attention.qkv.weight"
        if fused:
            add(f"{block}.attention.qkv", qkv, 3 * dim, dim)
        else:
            for index, part in enumerate("qkv"):
                add(f"{block}.attention.to_{part}", qkv, dim, dim, offset=index * dim)
        add(f"{block}.{out_name}", f"diffusion_model.{block}.attention.out.weight", dim, dim)
        add(f"{block}.feed_forward.w1", f"diffusion_model.{block}.feed_forward.w1.weight", hidden, dim)
    add("layers.1.adaLN_modulation.0", "diffusion_model.layers.1.adaLN_modulation.0.weight", *adaln_shape)

    latent_only = []
    final_stem = "final_layer.linear" if fused else "all_final_layer.2-1.linear"
    embedder_stem = "x_embedder" if fused else "all_x_embedder.2-1"
    for stem, out_features, in_features in ((final_stem, 64, dim), (embedder_stem, dim, 64)):
        up, down = lora_pair(torch, generator, out_features, in_features)
        lora[f"{prefix}{stem}.{up_name}"] = up
        lora[f"{prefix}{stem}.{down_name}"] = down
        lora[f"{prefix}{stem}.alpha"] = torch.tensor(ALPHA)
        latent_only.append(f"{prefix}{stem}")

    # A target that neither L2P nor latent Z-Image has, without an alpha.
    up, down = lora_pair(torch, generator, dim, dim)
    lora[f"{prefix}{UNKNOWN_STEM}.{up_name}"] = up
    lora[f"{prefix}{UNKNOWN_STEM}.{down_name}"] = down
    return lora, expected, latent_only


def build_l2p_parts_lora(torch, generator, dim: int):
    """Return a LoRA on L2P's own parts, as trainers that support L2P name them.

    It targets the 768-wide pixel patch embedder and two local-decoder convolutions
    (a 3×3 down factor with a 1×1 up factor, the usual LoCon shape).
    """
    lora, expected = {}, []
    for stem, out_features, in_shape in (
        ("x_embedder", dim, (768,)),
        ("local_decoder.enc1.0", 8, (3, 3, 3)),
        ("local_decoder.dec2.0", 8, (32, 3, 3)),
    ):
        up = torch.randn(out_features, RANK, *([1] * (len(in_shape) - 1)), generator=generator)
        down = torch.randn(RANK, *in_shape, generator=generator)
        lora[f"diffusion_model.{stem}.lora_up.weight"] = up
        lora[f"diffusion_model.{stem}.lora_down.weight"] = down
        lora[f"diffusion_model.{stem}.alpha"] = torch.tensor(ALPHA)
        expected.append((f"diffusion_model.{stem}.weight", 0, up, down))
    return lora, expected, []


def expected_weights(torch, originals: dict, expected: list) -> dict:
    """Compute W + strength·(up @ down)·alpha/rank per model key in float32, then cast, as the host does."""
    results = {}
    for key, offset, up, down in expected:
        weight = results.get(key, originals[key].to(torch.float32))
        rows = up.shape[0]
        update = (STRENGTH * (ALPHA / RANK)) * torch.mm(up.flatten(1), down.flatten(1))
        update = update.reshape(rows, *weight.shape[1:])
        weight = weight.clone()
        weight[offset : offset + rows] += update
        results[key] = weight
    return {key: weight.to(originals[key].dtype) for key, weight in results.items()}


def joint_block(key: str) -> int | None:
    """Return N for a weight of joint block N (`diffusion_model.layers.N.…`), else None."""
    parts = key.split(".")
    return int(parts[2]) if parts[1] == "layers" else None


def patch_and_compare(torch, model, patched_model, originals: dict, expected: list) -> dict:
    """Patch `patched_model`'s weights, compare them with the expected ones, unpatch, and check the restore."""
    patched_keys = sorted(patched_model.patches)
    patched_model.patch_model(device_to=torch.device("cpu"), force_patch_weights=True)
    patched = {key: value.clone() for key, value in patched_model.model.state_dict().items()}
    patched_model.unpatch_model(device_to=torch.device("cpu"))
    restored = model.model.state_dict()

    targets = expected_weights(torch, originals, expected)
    return {
        "patched_keys": patched_keys,
        "expected_keys": sorted(targets),
        "max_difference": {key: (patched[key].float() - targets[key].float()).abs().max().item() for key in targets},
        "changed_by_lora": {key: not torch.equal(patched[key], originals[key]) for key in targets},
        "changed_elsewhere": sorted(
            key for key in originals if key not in targets and not torch.equal(patched[key], originals[key])
        ),
        "not_restored": sorted(key for key in originals if not torch.equal(restored[key], originals[key])),
        "dtypes": sorted({str(originals[key].dtype) for key in targets}),
    }


def main() -> None:
    pack_folder, work_directory = sys.argv[1:3]
    sys.argv = ["main.py", "--cpu", "--base-directory", work_directory]
    sys.path.insert(0, os.getcwd())

    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.sd
    import folder_paths
    import torch

    import nodes

    records = LogRecords()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)

    assert asyncio.run(nodes.load_custom_node(pack_folder)), "the pack failed to load"
    # The host's custom-node loader names the pack's package after its folder path.
    synthetic = importlib.import_module(f"{pack_folder}.l2p_core.synthetic")

    from safetensors.torch import save_file

    config = synthetic.tiny_config(n_layers=N_LAYERS)
    checkpoint = os.path.join(work_directory, "tiny-l2p-lora-probe.safetensors")
    official = synthetic.to_official_layout(
        synthetic.random_state_dict(config, seed=3), config.patch_size, float32_layers=SHARED_BLOCKS
    )
    save_file({name: tensor.contiguous() for name, tensor in official.items()}, checkpoint)
    folder_paths.add_model_folder_path("diffusion_models", work_directory)
    model = (
        nodes.NODE_CLASS_MAPPINGS["L2PModelLoader"]
        .execute(model_name=os.path.basename(checkpoint), weight_dtype="bf16")
        .args[0]
    )

    originals = {key: value.clone() for key, value in model.model.state_dict().items()}
    formats = build_loras(
        torch,
        config.dim,
        originals["diffusion_model.layers.0.feed_forward.w1.weight"].shape[0],
        tuple(originals["diffusion_model.layers.1.adaLN_modulation.0.weight"].shape),
    )
    scope_node = nodes.NODE_CLASS_MAPPINGS["L2PLoraScope"]
    report = {"formats": {}, "scope": {}}
    for name, (lora, expected, latent_only) in formats.items():
        records.messages.clear()
        patched_model, _ = comfy.sd.load_lora_for_models(model, None, lora, STRENGTH, 0)
        report["formats"][name] = patch_and_compare(torch, model, patched_model, originals, expected)
        report["formats"][name] |= {
            "latent_only": latent_only,
            "log": list(records.messages),
            "root_filters_after": [type(item).__name__ for item in logging.getLogger().filters],
        }

    # Shared-blocks mode on a LoRA that also patches the refiners: only the joint blocks
    # stored in float32 (SHARED_BLOCKS) keep their patches.
    lora, expected, _ = formats["diffusers"]
    records.messages.clear()
    patched_model, _ = comfy.sd.load_lora_for_models(model, None, lora, STRENGTH, 0)
    scoped_model = scope_node.execute(model=patched_model, scope="shared blocks only").args[0]
    in_shared_blocks = [patch for patch in expected if joint_block(patch[0]) in SHARED_BLOCKS]
    report["scope"] = patch_and_compare(torch, model, scoped_model, originals, in_shared_blocks)
    report["scope"] |= {
        "float32_joint_blocks": list(model.model.float32_joint_blocks),
        "unscoped_keys": sorted(patched_model.patches),
        "log": list(records.messages),
    }
    # The state_dict override that observes LoRA loads must not change the model's keys.
    report["state_dict_keys_unchanged"] = sorted(model.model.state_dict()) == sorted(originals)
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
