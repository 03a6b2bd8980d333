"""The editing workflows: Load Image wiring, the edit settings, and the model downloads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
WORKFLOWS = REPOSITORY / "workflows"
EDIT_WORKFLOWS = ["l2p_edit_inpaint.json", "l2p_img2img.json", "l2p_outpaint.json"]


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


@pytest.mark.parametrize("name", EDIT_WORKFLOWS)
def test_edit_reads_load_image(to_api, name):
    graph = api_graph(to_api, name)
    loader, _ = only(graph, "L2PModelLoader")
    load_image, _ = only(graph, "LoadImage")
    _, edit = only(graph, "L2PEdit")
    _, save = only(graph, "SaveImage")
    assert edit["model"] == [loader, 0]
    assert edit["image"] == [load_image, 0]
    assert save["images"][1] == 0


@pytest.mark.parametrize(
    ("name", "mode", "denoise", "mask_linked"),
    [
        ("l2p_edit_inpaint.json", "inpaint", 1.0, True),
        ("l2p_img2img.json", "img2img", 0.6, False),
        ("l2p_outpaint.json", "outpaint", 1.0, False),
    ],
)
def test_edit_settings(to_api, name, mode, denoise, mask_linked):
    graph = api_graph(to_api, name)
    load_image, _ = only(graph, "LoadImage")
    _, edit = only(graph, "L2PEdit")
    assert edit["mode"] == mode
    assert edit["denoise"] == denoise
    assert (edit.get("mask") == [load_image, 1]) is mask_linked
    assert (edit["steps"], edit["cfg"], edit["shift"]) == (0, 0.0, 3.0)


def test_outpaint_margins_on_grid(to_api):
    _, edit = only(api_graph(to_api, "l2p_outpaint.json"), "L2PEdit")
    margins = [edit[side] for side in ("left", "top", "right", "bottom")]
    assert any(margins)
    assert [value % 16 for value in margins] == [0, 0, 0, 0]


@pytest.mark.parametrize("name", EDIT_WORKFLOWS)
def test_loaders_offer_downloads(name):
    workflow = json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))
    loaders = [node for node in workflow["nodes"] if node["type"] in ("CLIPLoader", "L2PModelLoader")]
    assert len(loaders) == 2
    for node in loaders:
        (model,) = node["properties"]["models"]
        assert model["name"] == node["widgets_values"][0]
        assert model["url"].startswith("https://huggingface.co/")
