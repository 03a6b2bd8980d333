"""The 1K workflow: what users drag in, and its API twin that the host tests run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
UI_WORKFLOW = REPOSITORY / "workflows" / "l2p_1k_text_to_image.json"


@pytest.fixture(scope="module")
def to_api():
    spec = importlib.util.spec_from_file_location(
        "l2p_workflow_to_api", REPOSITORY / "tests" / "workflows" / "to_api.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nodes_by_type() -> dict:
    workflow = json.loads(UI_WORKFLOW.read_text(encoding="utf-8"))
    return {node["type"]: node for node in workflow["nodes"] if node["type"] != "CLIPTextEncode"}


def test_every_twin_is_current(to_api):
    stale = [
        path.name
        for path in sorted((REPOSITORY / "workflows").glob("*.json"))
        if not to_api.twin_path(path).is_file()
        or to_api.twin_path(path).read_text(encoding="utf-8") != to_api.render(path)
    ]
    assert stale == [], "run: python tests/workflows/to_api.py"


def test_settings_match_the_reference(to_api):
    api = to_api.ui_to_api(json.loads(UI_WORKFLOW.read_text(encoding="utf-8")))
    sampler = next(node["inputs"] for node in api.values() if node["class_type"] == "L2PPixelSampler")
    assert (sampler["width"], sampler["height"], sampler["steps"], sampler["cfg"], sampler["shift"]) == (
        1024,
        1024,
        30,
        2.0,
        3.0,
    )
    encoders = {
        node["_meta"]["title"]: node["inputs"]["text"]
        for node in api.values()
        if node["class_type"] == "CLIPTextEncode"
    }
    assert len(encoders) == 2
    assert "" in encoders.values()
    clip_loader = next(node["inputs"] for node in api.values() if node["class_type"] == "CLIPLoader")
    assert (clip_loader["clip_name"], clip_loader["type"]) == ("qwen_3_4b.safetensors", "lumina2")


@pytest.mark.parametrize(
    ("node_type", "name", "directory", "url"),
    [
        (
            "CLIPLoader",
            "qwen_3_4b.safetensors",
            "text_encoders",
            "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files/text_encoders/qwen_3_4b.safetensors",
        ),
        (
            "L2PModelLoader",
            "model-1k-merge.safetensors",
            "diffusion_models",
            "https://huggingface.co/zhen-nan/L2P/resolve/main/model-1k-merge.safetensors",
        ),
    ],
)
def test_loaders_carry_model_downloads(nodes_by_type, node_type, name, directory, url):
    node = nodes_by_type[node_type]
    assert node["widgets_values"][0] == name
    assert node["properties"]["models"] == [{"name": name, "url": url, "directory": directory}]
