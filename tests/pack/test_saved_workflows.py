"""Saved workflows against the current node schemas, without a host.

Users keep workflow files for a long time. These tests check the workflows in workflows/,
and those of the latest `v*` release tag, against the schemas the pack defines now, so a
renamed or removed input, a reordered widget or a narrowed range fails here instead of in
users' files. ComfyUI's own nodes are checked by widget count against the converter's
table here, and fully against a live /object_info in tests/host/test_saved_workflows.py.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPOSITORY / "workflows").glob("*.json"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"l2p_{name}", REPOSITORY / "tests" / "workflows" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


schema_check = _load("schema_check")
to_api = _load("to_api")


def _io_types(io) -> dict[type, str]:
    kinds = (io.Model, io.Conditioning, io.Image, io.Mask, io.Latent, io.Int, io.Float, io.String, io.Boolean, io.Combo)
    return {kind.Input: kind.io_type for kind in kinds} | {kind.Output: kind.io_type for kind in kinds}


def _input_spec(item, io_type: str) -> list:
    options = {key: value for key, value in item.options.items() if key != "optional"}
    return [io_type, options]


@pytest.fixture(scope="module")
def pack_object_info(pack, pack_module) -> dict:
    """Return the pack's schemas in /object_info form, built from the nodes' define_schema."""
    io = pack_module("nodes.extension").io
    types = _io_types(io)
    extension = asyncio.run(pack.comfy_entrypoint())
    info = {}
    for cls in asyncio.run(extension.get_node_list()):
        schema = cls.GET_SCHEMA()
        required = {
            item.id: _input_spec(item, types[type(item)]) for item in schema.inputs if not item.options.get("optional")
        }
        optional = {
            item.id: _input_spec(item, types[type(item)]) for item in schema.inputs if item.options.get("optional")
        }
        info[schema.node_id] = {
            "input": {"required": required, "optional": optional},
            "input_order": {"required": list(required), "optional": list(optional)},
            "output": [types[type(output)] for output in schema.outputs],
        }
    return info


def stock_problems(workflow: dict, pack_types: set[str]) -> list[str]:
    """Compare ComfyUI's own nodes with the converter's widget table, by widget count."""
    problems = []
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in pack_types or kind in schema_check.FRONTEND_ONLY:
            continue
        names = to_api.WIDGET_NAMES.get(kind)
        if names is None:
            problems.append(f"node {node['id']}: no widget table for '{kind}' in tests/workflows/to_api.py")
        elif len(node.get("widgets_values", [])) != len(names):
            problems.append(
                f"node {node['id']} ({kind}): {len(node['widgets_values'])} widget values, expected {len(names)}"
            )
    return problems


def problems_of(workflow: dict, pack_object_info: dict) -> list[str]:
    stock = frozenset(node["type"] for node in workflow["nodes"] if node["type"] not in pack_object_info)
    return schema_check.workflow_problems(workflow, pack_object_info, unchecked_types=stock) + stock_problems(
        workflow, set(pack_object_info)
    )


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_workflow_matches_current_schemas(path, pack_object_info):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert problems_of(workflow, pack_object_info) == []


def test_previous_release_workflows_match_current_schemas(pack_object_info):
    tag = schema_check.latest_release_tag(REPOSITORY)
    if tag is None:
        pytest.skip("No v* release tag yet: there are no released workflows to check against the current schemas.")
    workflows = schema_check.release_workflows(REPOSITORY, tag)
    assert workflows, f"release {tag} has no {schema_check.WORKFLOW_FOLDER}/*.json"
    problems = {name: problems_of(workflow, pack_object_info) for name, workflow in workflows.items()}
    assert {name: found for name, found in problems.items() if found} == {}, f"workflows of {tag} no longer validate"


@pytest.fixture()
def edit_workflow() -> dict:
    return json.loads((REPOSITORY / "workflows" / "l2p_edit_inpaint.json").read_text(encoding="utf-8"))


def _edit_node(workflow: dict) -> dict:
    return next(node for node in workflow["nodes"] if node["type"] == "L2PEdit")


def test_check_reports_renamed_input(edit_workflow, pack_object_info):
    schemas = copy.deepcopy(pack_object_info)
    required = schemas["L2PEdit"]["input"]["required"]
    required["model_in"] = required.pop("model")
    order = schemas["L2PEdit"]["input_order"]["required"]
    order[order.index("model")] = "model_in"
    problems = problems_of(edit_workflow, schemas)
    assert any("linked input 'model'" in problem for problem in problems), problems
    assert any("required input 'model_in'" in problem for problem in problems), problems


def test_check_reports_added_widget(edit_workflow, pack_object_info):
    schemas = copy.deepcopy(pack_object_info)
    schemas["L2PEdit"]["input"]["required"]["strength"] = ["FLOAT", {"default": 1.0}]
    schemas["L2PEdit"]["input_order"]["required"].append("strength")
    problems = problems_of(edit_workflow, schemas)
    assert any("15 widget values saved, the schema has 16" in problem for problem in problems), problems


def test_check_reports_value_out_of_range(edit_workflow, pack_object_info):
    _edit_node(edit_workflow)["widgets_values"][6] = 1.5  # denoise, at most 1
    problems = problems_of(edit_workflow, pack_object_info)
    assert problems == ["node 6 (L2PEdit): 'denoise' is 1.5, above the maximum 1.0"]


def test_check_reports_removed_combo_option(edit_workflow, pack_object_info):
    _edit_node(edit_workflow)["widgets_values"][0] = "erase"
    problems = problems_of(edit_workflow, pack_object_info)
    assert problems == ["node 6 (L2PEdit): 'mode' is 'erase', not one of ['inpaint', 'img2img', 'outpaint']"]


def test_check_reports_unknown_node(edit_workflow, pack_object_info):
    schemas = {key: value for key, value in pack_object_info.items() if key != "L2PEdit"}
    problems = schema_check.workflow_problems(
        edit_workflow, schemas, unchecked_types=frozenset(to_api.WIDGET_NAMES) - {"L2PEdit"}
    )
    assert problems == ["node 6: type 'L2PEdit' is not a registered node"]
