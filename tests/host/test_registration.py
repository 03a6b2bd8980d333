"""Registration: a clean import, node definitions in /object_info, host registries untouched."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from .conftest import L2P_FILE, PACK_FOLDER_NAME
from .graphs import load_converter

NODE_IDS = ("L2PModelLoader", "L2PPixelSampler", "L2PEdit", "L2PEmptyImage", "L2PPatchTiling", "L2PLoraScope")
PROBE = Path(__file__).with_name("registry_probe.py")


def test_pack_imports_without_errors_or_warnings(host):
    # Only start-up counts: the error tests make the server log tracebacks later on.
    log = host.log().split("Starting server", 1)[0]
    import_line = re.search(
        rf"[\d.]+ seconds(?P<failed> \(IMPORT FAILED\))?: \S*{PACK_FOLDER_NAME}$", log, re.MULTILINE
    )
    assert import_line is not None, f"no import-time line for the pack in the log:\n{log[-3000:]}"
    assert import_line["failed"] is None, log[-3000:]
    assert "Traceback" not in log
    pack_warnings = [
        line
        for line in log.splitlines()
        if re.search(r"WARNING|ERROR", line) and re.search(r"l2p", line, re.IGNORECASE)
    ]
    assert pack_warnings == []


def test_object_info_lists_nodes_with_tooltips(host):
    info = host.client.get_json("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info"
        node = info[node_id]
        assert node["category"] == "L2P"
        assert node["display_name"].startswith("L2P ")
        assert node["description"]
        inputs = node["input"]["required"] | node["input"].get("optional", {})
        untipped = [name for name, spec in inputs.items() if len(spec) < 2 or not spec[1].get("tooltip")]
        assert untipped == [], f"{node_id} inputs without tooltip: {untipped}"
        assert all(node["output_tooltips"]), f"{node_id} has an output without tooltip"


def test_model_loader_lists_extra_model_paths(host):
    loader = host.client.get_json("/object_info/L2PModelLoader")["L2PModelLoader"]
    options = loader["input"]["required"]["model_name"][1]["options"]
    assert L2P_FILE in options


def test_converter_widget_names_match_object_info(host):
    """The UI-to-API converter's widget order must be the one this host's frontend uses."""
    info = host.client.get_json("/object_info")
    for node_type, expected in load_converter().WIDGET_NAMES.items():
        node = info[node_type]
        order = node["input_order"]["required"] + node["input_order"].get("optional", [])
        specs = node["input"]["required"] | node["input"].get("optional", {})
        widgets: list[str | None] = []
        for name in order:
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                widgets.append(name)
                # The seed's "control after generate" and Load Image's upload button are widgets
                # that only the frontend stores.
                if options.get("control_after_generate") or options.get("image_upload"):
                    widgets.append(None)
        assert widgets == expected, f"{node_type}: host widgets {widgets}, converter {expected}"


def test_registration_leaves_host_registries_untouched(host, tmp_path):
    checkpoint = host.base / "extra-models" / "diffusion_models" / L2P_FILE
    pack = host.base / "custom_nodes" / PACK_FOLDER_NAME
    result = subprocess.run(
        [host.python, str(PROBE), str(pack), str(checkpoint), str(tmp_path)],
        cwd=host.checkout,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"},
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert reports, f"probe failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    report = json.loads(reports[-1].removeprefix("REPORT "))
    assert report["loaded"] is True
    assert report["new_node_ids"] == sorted(NODE_IDS)
    assert report["changed"] == []
    assert report["model_class"] == "L2PModel"
    assert report["image_model"] != "zimage_l2p"
