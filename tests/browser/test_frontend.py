"""The pack as users meet it in ComfyUI's web page: templates, workflows, queueing, node help.

Each workflow in workflows/ is loaded into the real frontend as a dragged-in file is. The
tests check it for missing or invalid nodes and for model files the README does not list,
take a screenshot, compare the frontend's own graphToPrompt output with the API twin, and
queue it at the host tests' tiny sizes.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.conftest import PHOTO_SIZE
from tests.host.comfy_client import png_size, status_message

REPOSITORY = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPOSITORY / "workflows").glob("*.json"))
WORKFLOW_NAMES = [path.stem for path in WORKFLOWS]
PACK_FOLDER_NAME = "ComfyUI-L2P"
NODE_IDS = ["L2PModelLoader", "L2PPixelSampler", "L2PEdit", "L2PEmptyImage", "L2PPatchTiling", "L2PLoraScope"]

# Widgets that name a model file. ComfyUI's VAELoader offers `pixel_space` without a file.
MODEL_WIDGETS = {"model_name", "clip_name", "unet_name", "ckpt_name", "vae_name", "lora_name"}
BUILT_IN_MODELS = {"pixel_space"}
SETTLE_MS = 2500
SCREENSHOT_COLOURS = 128

TILE, OVERLAP = 64, 16
# Every run encodes the same empty prompt, so the 8 GB random text encoder runs once per
# session (about 90 s on two CPU cores) instead of once per workflow.
SAME_PROMPTS = {"CLIPTextEncode": {"text": ""}}
FAST_EDIT = SAME_PROMPTS | {"L2PEdit": {"steps": 2, "cfg": 1.0}}
# Widget values a user would change to try each workflow on the tiny test models (the sizes
# the host tests use), and the sizes of the PNGs it then saves.
TINY_RUNS: dict[str, tuple[dict, list[tuple[int, int]]]] = {
    "l2p_1k_text_to_image": (SAME_PROMPTS | {"L2PPixelSampler": {"width": 64, "height": 48, "steps": 2}}, [(64, 48)]),
    "l2p_4k_tiled": (
        SAME_PROMPTS
        | {
            "L2PPixelSampler": {"width": 160, "height": 128, "steps": 2},
            "L2PPatchTiling": {"tile_size": TILE, "tile_overlap": OVERLAP},
        },
        [(160, 128)],
    ),
    "l2p_4k_native_hr": (SAME_PROMPTS | {"L2PPixelSampler": {"width": 128, "height": 128, "steps": 2}}, [(128, 128)]),
    "l2p_upscale_1k_to_4k": (
        SAME_PROMPTS
        | {
            "L2PPixelSampler": {"width": 64, "height": 48, "steps": 2},
            "ImageScaleBy": {"scale_by": 2.0},
            "L2PPatchTiling": {"tile_size": TILE, "tile_overlap": OVERLAP},
            "KSampler": {"steps": 2},
        },
        [(64, 48), (128, 96)],
    ),
    "l2p_edit_inpaint": (FAST_EDIT, [PHOTO_SIZE]),
    "l2p_img2img": (FAST_EDIT, [PHOTO_SIZE]),
    "l2p_outpaint": (FAST_EDIT, [(PHOTO_SIZE[0] + 512, PHOTO_SIZE[1])]),
}

LOAD_AND_REPORT = """
async ([workflow, name, settleMs]) => {
    await app.loadGraphData(workflow, true, true, name);
    await new Promise((resolve) => setTimeout(resolve, settleMs));
    const overlay = document.querySelector('[data-testid="error-overlay"]');
    return {
        nodes: app.graph.nodes.map((node) => ({
            id: node.id,
            type: node.type,
            registered: Boolean(LiteGraph.registered_node_types[node.type]),
            hasErrors: Boolean(node.has_errors),
            widgets: Object.fromEntries((node.widgets || []).map((widget) => [widget.name, widget.value])),
        })),
        errorOverlay: overlay ? overlay.innerText : null,
    };
}
"""

SET_WIDGETS_AND_QUEUE = """
async (overrides) => {
    for (const [type, values] of Object.entries(overrides)) {
        const nodes = app.graph.nodes.filter((node) => node.type === type);
        if (nodes.length === 0) throw new Error(`the workflow has no ${type} node`);
        for (const node of nodes) {
            for (const [name, value] of Object.entries(values)) {
                const widget = node.widgets.find((candidate) => candidate.name === name);
                if (!widget) throw new Error(`${type} has no widget ${name}`);
                widget.value = value;
            }
        }
    }
    const prompt = await app.graphToPrompt();
    try {
        const response = await window.comfyAPI.api.api.queuePrompt(0, prompt);
        return { promptId: response.prompt_id, nodeErrors: response.node_errors };
    } catch (error) {
        return { error: String(error), response: error.response ?? null };
    }
}
"""


def readme_model_files() -> set[str]:
    """Return the file names in the README's **Files** table, the models it lists for installation."""
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    table = readme.split("**Files**", 1)[1].strip().split("\n\n", 1)[0]
    return set(re.findall(r"`([^`]+\.safetensors)`", table))


def load_converter():
    spec = importlib.util.spec_from_file_location(
        "l2p_workflow_to_api", REPOSITORY / "tests" / "workflows" / "to_api.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_workflow(page, name: str, workflow: dict | None = None) -> dict:
    if workflow is None:
        workflow = json.loads((REPOSITORY / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    return page.evaluate(LOAD_AND_REPORT, [workflow, name, SETTLE_MS])


# Zoom the view, at most to 100 %, so the graph fills the canvas between the page's floating
# menus: the sidebar on the left, the tab bar and toolbars at the top and the zoom controls
# at the bottom right. Return the graph's rectangle on the page.
FRAME_GRAPH = """
() => {
    const left = 72, top = 100, bottom = 72, margin = 16;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of app.graph.nodes) {
        const [x, y, width, height] = node.boundingRect;
        [x0, y0] = [Math.min(x0, x), Math.min(y0, y)];
        [x1, y1] = [Math.max(x1, x + width), Math.max(y1, y + height)];
    }
    const canvas = app.canvas.canvas;
    const fitWidth = (canvas.clientWidth - left - margin) / (x1 - x0);
    const fitHeight = (canvas.clientHeight - top - bottom) / (y1 - y0);
    const scale = Math.min(1, fitWidth, fitHeight);
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [left / scale - x0, top / scale - y0];
    app.canvas.setDirty(true, true);
    const [width, height] = [(x1 - x0) * scale + 2 * margin, (y1 - y0) * scale + 2 * margin];
    return { x: left - margin, y: top - margin, width, height };
}
"""


def save_screenshot(page, path: Path) -> None:
    """Frame the graph and save it as a palette PNG, which keeps the file small."""
    clip = page.evaluate(FRAME_GRAPH)
    page.wait_for_timeout(500)
    image = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
    image.quantize(colors=SCREENSHOT_COLOURS).save(path, optimize=True)


def test_template_browser_lists_the_workflows(comfy_page):
    page = comfy_page
    page.get_by_role("button", name="Templates").first.click()
    page.get_by_text(PACK_FOLDER_NAME, exact=True).first.click()
    for name in WORKFLOW_NAMES:
        page.get_by_test_id(f"template-workflow-{name}").wait_for(state="visible")
    listed = page.evaluate(
        "() => Array.from(document.querySelectorAll('[data-testid^=\"template-workflow-\"]'))"
        ".map((card) => card.dataset.testid.slice('template-workflow-'.length))"
    )
    assert sorted(listed) == WORKFLOW_NAMES

    page.get_by_test_id("template-workflow-l2p_1k_text_to_image").click()
    page.wait_for_function("() => app.graph.nodes.some((node) => node.type === 'L2PPixelSampler')")
    assert page.get_by_test_id("template-workflow-l2p_1k_text_to_image").count() == 0, "the dialog stayed open"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_loads_without_missing_nodes_or_models(comfy_page, screenshot_folder, name):
    report = load_workflow(comfy_page, name)
    save_screenshot(comfy_page, screenshot_folder / f"{name}.png")

    assert [node["type"] for node in report["nodes"] if not node["registered"]] == []
    assert [f"{node['id']} {node['type']}" for node in report["nodes"] if node["hasErrors"]] == []
    assert report["errorOverlay"] is None

    allowed = readme_model_files() | BUILT_IN_MODELS
    model_values = {
        f"{node['type']}.{widget}": value
        for node in report["nodes"]
        for widget, value in node["widgets"].items()
        if widget in MODEL_WIDGETS
    }
    assert model_values, "the workflow loads no model"
    assert {key: value for key, value in model_values.items() if value not in allowed} == {}


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_frontend_prompt_matches_api_twin(comfy_page, name):
    """The frontend's own UI-to-API conversion gives the twin that the host tests run."""
    load_workflow(comfy_page, name)
    prompt = comfy_page.evaluate("async () => (await app.graphToPrompt()).output")
    twin = json.loads(load_converter().twin_path(REPOSITORY / "workflows" / f"{name}.json").read_text("utf-8"))
    simplify = lambda graph: {key: (node["class_type"], node["inputs"]) for key, node in graph.items()}  # noqa: E731
    assert simplify(prompt) == simplify(twin)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_queues_from_the_page(comfy_page, host, name):
    overrides, expected_sizes = TINY_RUNS[name]
    load_workflow(comfy_page, name)
    queued = comfy_page.evaluate(SET_WIDGETS_AND_QUEUE, overrides)
    assert "error" not in queued, queued
    assert queued["nodeErrors"] == {}

    entry = host.client.wait_for_history(queued["promptId"])
    error = status_message(entry, "execution_error")
    assert entry["status"]["status_str"] == "success", error["exception_message"] if error else entry["status"]
    sizes = sorted(png_size(image) for image in host.client.output_files(entry))
    assert sizes == sorted(expected_sizes)


def help_page_text(node_id: str) -> tuple[list[str], str]:
    """Return a help page's headings and its first paragraph, the latter with its lines joined."""
    text = (REPOSITORY / "web" / "docs" / f"{node_id}.md").read_text(encoding="utf-8")
    headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    first_paragraph = " ".join(re.sub(r"[`*]", "", text.split("\n\n")[1]).split())
    return headings, first_paragraph


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_node_info_panel_shows_help_page(comfy_page, node_id):
    page = comfy_page
    page.evaluate(
        """(nodeId) => {
            app.graph.clear();
            const node = LiteGraph.createNode(nodeId);
            // Left of the view's centre, clear of the menus, with room for the selection toolbox above.
            node.pos = app.canvas.ds.convertOffsetToCanvas([600, 450]);
            app.graph.add(node);
            app.canvas.deselectAll();
            app.canvas.selectNode(node);
            app.canvas.setDirty(true, true);
        }""",
        node_id,
    )
    # The properties panel on the right shows the selected node; its Info tab is the help page.
    if page.locator(".node-help-content").count() == 0:
        if page.get_by_role("tab", name="Info").count() == 0:
            page.get_by_role("button", name="Toggle properties panel").click()
        page.get_by_role("tab", name="Info").click()
    headings, first_paragraph = help_page_text(node_id)
    help_content = page.locator(".node-help-content")
    help_content.get_by_text(headings[0], exact=True).first.wait_for(state="visible")
    shown = " ".join(help_content.inner_text().split())
    # Without the page the panel falls back to the schema's description and input list, so
    # the page's own first paragraph shows that the file was fetched and rendered.
    assert first_paragraph in shown
    assert [heading for heading in headings if heading not in shown] == []


def test_missing_model_and_node_are_reported(comfy_page):
    """The checks above can fail: a renamed node and an uninstalled model file show up as errors."""
    workflow = json.loads((REPOSITORY / "workflows" / "l2p_1k_text_to_image.json").read_text(encoding="utf-8"))
    broken = copy.deepcopy(workflow)
    loader = next(node for node in broken["nodes"] if node["type"] == "L2PModelLoader")
    loader["widgets_values"][0] = "not-installed.safetensors"
    loader["properties"]["models"][0]["name"] = "not-installed.safetensors"
    sampler = next(node for node in broken["nodes"] if node["type"] == "L2PPixelSampler")
    sampler["type"] = "L2PRenamedSampler"

    report = load_workflow(comfy_page, "broken", broken)
    assert [node["type"] for node in report["nodes"] if not node["registered"]] == ["L2PRenamedSampler"]
    assert report["errorOverlay"] is not None
    assert "not-installed.safetensors" in report["errorOverlay"] or any(
        node["hasErrors"] for node in report["nodes"] if node["type"] == "L2PModelLoader"
    )
