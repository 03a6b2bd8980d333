"""Generate the API-format twins of the UI-format workflows in workflows/.

The UI format (what users drag into ComfyUI) lists widget values by position; the API
format (what POST /prompt takes) names them. The names come from WIDGET_NAMES, which the
host tests compare with a live server's /object_info. Run

    python tests/workflows/to_api.py

after changing a workflow; tests check that every twin is current.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
UI_FOLDER = REPOSITORY / "workflows"
API_FOLDER = Path(__file__).resolve().parent

# Widget names of each node type in the order of its widgets_values. None stands for the
# UI-only "control after generate" value that the frontend stores after a seed.
WIDGET_NAMES: dict[str, list[str | None]] = {
    "CLIPLoader": ["clip_name", "type", "device"],
    "CLIPTextEncode": ["text"],
    "SaveImage": ["filename_prefix"],
    "L2PModelLoader": ["model_name", "weight_dtype"],
    "L2PPixelSampler": ["width", "height", "batch_size", "seed", None, "steps", "cfg", "shift"],
    "L2PEmptyImage": ["width", "height", "batch_size"],
    "L2PPatchTiling": ["tile_size", "tile_overlap", "tile_batch_size", "decoder_tile_size"],
    "L2PEdit": [
        "mode",
        "seed",
        None,
        "steps",
        "cfg",
        "shift",
        "denoise",
        "grow_mask",
        "feather",
        "left",
        "top",
        "right",
        "bottom",
        "crop_and_stitch",
        "context",
    ],  # fmt: skip
    "LoadImage": ["image", None],
    "ImageScaleBy": ["upscale_method", "scale_by"],
    "VAELoader": ["vae_name"],
    "VAEEncode": [],
    "VAEDecode": [],
    "KSampler": ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "PreviewImage": [],
}

# Frontend-only nodes, which have no backend class and are left out of the API graph.
FRONTEND_ONLY = {"Note", "MarkdownNote"}
# Node modes that do not execute: 2 muted, 4 bypassed.
SKIPPED_MODES = {2, 4}


def ui_to_api(workflow: dict) -> dict:
    """Convert a UI-format workflow (no subgraphs) to the API format, node ids as strings."""
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in sorted(workflow["nodes"], key=lambda item: item["id"]):
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) in SKIPPED_MODES:
            continue
        if kind not in WIDGET_NAMES:
            raise KeyError(f"No widget names for node type '{kind}'; add them to WIDGET_NAMES.")

        inputs: dict = {}
        names = WIDGET_NAMES[kind]
        values = node.get("widgets_values", [])
        if len(values) != len(names):
            raise ValueError(f"Node {node['id']} ({kind}) has {len(values)} widget values; expected {len(names)}.")
        for name, value in zip(names, values, strict=True):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs", []):
            link = slot.get("link")
            if link is not None:
                _, origin, origin_slot, *_ = links[link]
                inputs[slot["name"]] = [str(origin), origin_slot]

        api[str(node["id"])] = {"inputs": inputs, "class_type": kind, "_meta": {"title": node.get("title", kind)}}
    return api


def twin_path(ui_path: Path) -> Path:
    return API_FOLDER / f"{ui_path.stem}.api.json"


def render(ui_path: Path) -> str:
    """Return the text of the API twin of one UI workflow file."""
    return json.dumps(ui_to_api(json.loads(ui_path.read_text(encoding="utf-8"))), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    for ui_path in sorted(UI_FOLDER.glob("*.json")):
        twin_path(ui_path).write_text(render(ui_path), encoding="utf-8")
        print(f"wrote {twin_path(ui_path).relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
