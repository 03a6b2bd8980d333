"""The 4K workflows: their settings and wiring, and the model downloads every loader offers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
WORKFLOWS = REPOSITORY / "workflows"
LOADER_DIRECTORIES = {"CLIPLoader": "text_encoders", "L2PModelLoader": "diffusion_models"}
HR_4K_URL = "https://huggingface.co/HaojunChen/PixVerve-L2P/resolve/main/l2p_4k_sft.safetensors"


@pytest.fixture(scope="module")
def to_api():
    spec = importlib.util.spec_from_file_location(
        "l2p_workflow_to_api", REPOSITORY / "tests" / "workflows" / "to_api.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def api_graph(to_api, name: str) -> dict:
    return to_api.ui_to_api(json.loads((WORKFLOWS / name).read_text(encoding="utf-8")))


def only(graph: dict, class_type: str) -> tuple[str, dict]:
    (found,) = [(key, node["inputs"]) for key, node in graph.items() if node["class_type"] == class_type]
    return found


def test_tiled_workflow(to_api):
    graph = api_graph(to_api, "l2p_4k_tiled.json")
    loader, loader_inputs = only(graph, "L2PModelLoader")
    tiling, tiling_inputs = only(graph, "L2PPatchTiling")
    _, sampler = only(graph, "L2PPixelSampler")
    assert loader_inputs["model_name"] == "model-1k-merge.safetensors"
    assert tiling_inputs["model"] == [loader, 0]
    assert sampler["model"] == [tiling, 0]
    assert (tiling_inputs["tile_size"], tiling_inputs["tile_overlap"]) == (1024, 256)
    assert (sampler["width"], sampler["height"], sampler["steps"], sampler["cfg"], sampler["shift"]) == (
        4096,
        4096,
        0,
        0.0,
        3.0,
    )


def test_native_hr_workflow(to_api):
    graph = api_graph(to_api, "l2p_4k_native_hr.json")
    loader, loader_inputs = only(graph, "L2PModelLoader")
    _, sampler = only(graph, "L2PPixelSampler")
    assert loader_inputs["model_name"] == "l2p_4k_sft.safetensors"
    assert sampler["model"] == [loader, 0]
    assert (sampler["width"], sampler["height"], sampler["steps"], sampler["cfg"]) == (4096, 4096, 0, 0.0)
    assert not any(node["class_type"] == "L2PPatchTiling" for node in graph.values())


def test_upscale_workflow(to_api):
    graph = api_graph(to_api, "l2p_upscale_1k_to_4k.json")
    _, sampler = only(graph, "L2PPixelSampler")
    _, scale = only(graph, "ImageScaleBy")
    _, vae = only(graph, "VAELoader")
    tiling, _ = only(graph, "L2PPatchTiling")
    _, refine = only(graph, "KSampler")
    assert sampler["width"] * scale["scale_by"] == 4096
    assert sampler["height"] * scale["scale_by"] == 4096
    assert scale["upscale_method"] == "lanczos"
    assert vae["vae_name"] == "pixel_space"
    assert refine["model"] == [tiling, 0]
    assert refine["denoise"] == 0.3
    assert graph[refine["latent_image"][0]]["class_type"] == "VAEEncode"


@pytest.mark.parametrize("name", sorted(path.name for path in WORKFLOWS.glob("*.json")))
def test_loaders_offer_downloads(name):
    workflow = json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))
    loaders = [node for node in workflow["nodes"] if node["type"] in LOADER_DIRECTORIES]
    assert loaders
    for node in loaders:
        (model,) = node["properties"]["models"]
        assert model["name"] == node["widgets_values"][0]
        assert model["directory"] == LOADER_DIRECTORIES[node["type"]]
        assert model["url"].startswith("https://huggingface.co/")
        assert model["url"].endswith("/" + model["name"])


def test_hr_download_url():
    workflow = json.loads((WORKFLOWS / "l2p_4k_native_hr.json").read_text(encoding="utf-8"))
    (loader,) = [node for node in workflow["nodes"] if node["type"] == "L2PModelLoader"]
    assert loader["properties"]["models"][0]["url"] == HR_4K_URL
