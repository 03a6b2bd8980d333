"""API-format graphs for the host tests, built on the workflows' API twins.

Every graph keeps the twin's text-encoder nodes (1: CLIPLoader, 2 and 3: CLIP Text Encode)
and model loader (4) unchanged, so ComfyUI's cache encodes the prompts and loads the
models once per session.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
TWINS = REPOSITORY / "tests" / "workflows"
TWIN = TWINS / "l2p_1k_text_to_image.api.json"

TEXT_ENCODER, POSITIVE, NEGATIVE, MODEL_LOADER, PIXEL_SAMPLER, SAVE = "1", "2", "3", "4", "5", "6"


def load_converter():
    """Import tests/workflows/to_api.py, the UI-to-API converter, by its path."""
    spec = importlib.util.spec_from_file_location(
        "l2p_workflow_to_api", REPOSITORY / "tests" / "workflows" / "to_api.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def workflow_twin(name: str = "l2p_1k_text_to_image") -> dict:
    """Return the API twin of workflows/<name>.json."""
    return json.loads((TWINS / f"{name}.api.json").read_text(encoding="utf-8"))


def node_of(graph: dict, class_type: str) -> str:
    """Return the id of the graph's only node of `class_type`."""
    (key,) = [key for key, node in graph.items() if node["class_type"] == class_type]
    return key


def tiling_node(tile_size: int, tile_overlap: int, tile_batch_size: int = 1, decoder_tile_size: int = 1024) -> dict:
    """Return an L2P Patch Tiling node without its model input (ksampler_graph's `model_patch`)."""
    return {
        "class_type": "L2PPatchTiling",
        "inputs": {
            "tile_size": tile_size,
            "tile_overlap": tile_overlap,
            "tile_batch_size": tile_batch_size,
            "decoder_tile_size": decoder_tile_size,
        },
    }


def with_tiling(graph: dict, sampler: str, tiling: dict) -> dict:
    """Insert `tiling` (node id "11") between the L2P loader and `sampler`'s model input."""
    graph = copy.deepcopy(graph)
    graph["11"] = tiling | {"inputs": tiling["inputs"] | {"model": [MODEL_LOADER, 0]}}
    graph[sampler]["inputs"]["model"] = ["11", 0]
    return graph


def pixel_sampler_graph(
    *, width: int, height: int, steps: int, seed: int = 42, model_file: str | None = None, **sampler
) -> dict:
    """Return the twin with the sampler's size, steps and seed (and other inputs) replaced."""
    graph = workflow_twin()
    graph[PIXEL_SAMPLER]["inputs"] |= {"width": width, "height": height, "steps": steps, "seed": seed} | sampler
    if model_file is not None:
        graph[MODEL_LOADER]["inputs"]["model_name"] = model_file
    return graph


def save_latent_of_image(graph: dict, image: list, prefix: str) -> dict:
    """Add VAE Encode (pixel_space) of an IMAGE output and Save Latent, to read the pixels as floats."""
    graph = dict(graph)
    graph["40"] = {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}}
    graph["41"] = {"class_type": "VAEEncode", "inputs": {"pixels": image, "vae": ["40", 0]}}
    graph["42"] = {"class_type": "SaveLatent", "inputs": {"samples": ["41", 0], "filename_prefix": prefix}}
    return graph


def _stock_base(model_file: str | None = None) -> dict:
    """Return the twin's encoder and loader nodes, without the Pixel Sampler and its SaveImage."""
    graph = {
        key: copy.deepcopy(node)
        for key, node in workflow_twin().items()
        if key in (TEXT_ENCODER, POSITIVE, NEGATIVE, MODEL_LOADER)
    }
    if model_file is not None:
        graph[MODEL_LOADER]["inputs"]["model_name"] = model_file
    graph["20"] = {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}}
    return graph


def ksampler_graph(
    *,
    latent: dict,
    steps: int,
    seed: int = 42,
    cfg: float = 2.0,
    scheduler: str = "simple",
    denoise: float = 1.0,
    model_patch: dict | None = None,
    extra_nodes: dict | None = None,
) -> dict:
    """Return encoders → L2P loader [→ model_patch] → KSampler(euler) → VAE Decode (pixel_space) → SaveImage.

    `latent` is the node (id "10") that makes the starting LATENT; `model_patch` an optional
    MODEL → MODEL node (id "11") between loader and sampler.
    """
    graph = _stock_base()
    graph["10"] = latent
    model = [MODEL_LOADER, 0]
    if model_patch is not None:
        graph["11"] = model_patch | {"inputs": model_patch["inputs"] | {"model": model}}
        model = ["11", 0]
    graph |= extra_nodes or {}
    graph["12"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "positive": [POSITIVE, 0],
            "negative": [NEGATIVE, 0],
            "latent_image": ["10", 0],
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": "euler",
            "scheduler": scheduler,
            "denoise": denoise,
        },
    }
    graph["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["20", 0]}}
    graph["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "l2p-ksampler"}}
    return graph


def recipe_graph(*, width: int, height: int, sigmas: str, seed: int = 42, cfg: float = 2.0) -> dict:
    """Return the documented stock-node recipe that reproduces the L2P Pixel Sampler.

    L2P Empty Image + RandomNoise + CFGGuider + KSamplerSelect(euler) + ManualSigmas (the
    exact σ grid) → SamplerCustomAdvanced → VAE Decode (pixel_space) → SaveImage. The
    sampled latent is saved as well, for a comparison in float.
    """
    graph = _stock_base()
    graph["10"] = {"class_type": "L2PEmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1}}
    graph["13"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    graph["14"] = {
        "class_type": "CFGGuider",
        "inputs": {"model": [MODEL_LOADER, 0], "positive": [POSITIVE, 0], "negative": [NEGATIVE, 0], "cfg": cfg},
    }
    graph["15"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["16"] = {"class_type": "ManualSigmas", "inputs": {"sigmas": sigmas}}
    graph["17"] = {
        "class_type": "SamplerCustomAdvanced",
        "inputs": {
            "noise": ["13", 0],
            "guider": ["14", 0],
            "sampler": ["15", 0],
            "sigmas": ["16", 0],
            "latent_image": ["10", 0],
        },
    }
    graph["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["17", 0], "vae": ["20", 0]}}
    graph["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "l2p-recipe"}}
    graph["23"] = {"class_type": "SaveLatent", "inputs": {"samples": ["17", 0], "filename_prefix": "l2p-recipe"}}
    return graph


def sigma_text(sigmas) -> str:
    """Format a float32 σ grid for ManualSigmas so that it parses back to the same values.

    Each value is the shortest decimal that rounds to the same float32, written without an
    exponent, because ManualSigmas's parser reads plain decimals only.
    """
    return ", ".join(np.format_float_positional(np.float32(value), unique=True, trim="-") for value in sigmas)
