"""Check a UI-format workflow against node schemas in ComfyUI's /object_info format.

A saved workflow stores widget values by position and links by input name and type, so a
renamed, removed, reordered or narrowed input breaks users' files without any error at
load time. `workflow_problems` lists every such mismatch: unknown node types, a widget
count that differs from the schema's widgets, values outside a range or not among a
combo's options, and links to inputs or outputs that no longer exist or changed type.

The host-free tests pass schemas built from the pack's own definitions; the host tests pass
a live server's /object_info.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

# The folder of the UI workflows, relative to the repository root, in every release.
WORKFLOW_FOLDER = "workflows"
# Frontend-only nodes, which have no backend class and no schema.
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
# Input types that the frontend shows as widgets (values stored in widgets_values); every
# other type is a link-only input.
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Combos whose options are the files installed on one machine: a saved name need not be
# among this host's options, only be a string.
FILE_WIDGETS = {"model_name", "clip_name", "vae_name", "unet_name", "ckpt_name", "lora_name", "image"}
# Slack for float ranges: the frontend rounds FLOAT widgets to their step.
FLOAT_TOLERANCE = 1e-6


def _input_type(spec: list) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _combo_choices(spec: list) -> list:
    return spec[0] if isinstance(spec[0], list) else _options(spec).get("options", [])


def widget_slots(node_info: dict) -> list[tuple[str | None, list | None]]:
    """Return the (input name, spec) of each widgets_values slot, in order; None marks a UI-only slot.

    Seeds with control_after_generate and image uploads store one extra UI-only value after
    their own, as the frontend saves them.
    """
    slots: list[tuple[str | None, list | None]] = []
    inputs = node_info["input"]
    for section in ("required", "optional"):
        for name in node_info.get("input_order", {}).get(section, list(inputs.get(section, {}))):
            spec = inputs[section][name]
            if _input_type(spec) not in WIDGET_TYPES:
                continue
            slots.append((name, spec))
            options = _options(spec)
            if options.get("control_after_generate") or options.get("image_upload"):
                slots.append((None, None))
    return slots


def _value_problem(name: str, spec: list, value) -> str | None:
    kind = _input_type(spec)
    options = _options(spec)
    if kind == "COMBO":
        if name in FILE_WIDGETS:
            return None if isinstance(value, str) else f"'{name}' is {value!r}, expected a file name"
        choices = _combo_choices(spec)
        return None if value in choices else f"'{name}' is {value!r}, not one of {choices}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"'{name}' is {value!r}, expected true or false"
    if kind == "STRING":
        return None if isinstance(value, str) else f"'{name}' is {value!r}, expected text"

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"'{name}' is {value!r}, expected a number"
    if kind == "INT" and value != int(value):
        return f"'{name}' is {value!r}, expected an integer"
    low, high = options.get("min"), options.get("max")
    if low is not None and value < low - FLOAT_TOLERANCE:
        return f"'{name}' is {value}, below the minimum {low}"
    if high is not None and value > high + FLOAT_TOLERANCE:
        return f"'{name}' is {value}, above the maximum {high}"
    return None


def _link_types(workflow: dict) -> dict[int, str]:
    return {link[0]: link[5] for link in workflow.get("links", [])}


def node_problems(node: dict, node_info: dict, link_types: dict[int, str]) -> list[str]:
    """Return the mismatches of one UI-format node against its schema."""
    where = f"node {node['id']} ({node['type']})"
    problems = []

    slots = widget_slots(node_info)
    values = node.get("widgets_values", [])
    if isinstance(values, dict):
        problems.append(f"{where}: widgets_values is a mapping; this check reads the positional list")
        values = []
    if len(values) != len(slots):
        names = [name or "(UI-only)" for name, _ in slots]
        problems.append(f"{where}: {len(values)} widget values saved, the schema has {len(slots)}: {names}")
    else:
        for (name, spec), value in zip(slots, values, strict=True):
            if name is not None and (problem := _value_problem(name, spec, value)):
                problems.append(f"{where}: {problem}")

    inputs = node_info["input"].get("required", {}) | node_info["input"].get("optional", {})
    for slot in node.get("inputs", []):
        if slot.get("link") is None:
            continue
        name = slot["name"]
        if name not in inputs:
            problems.append(f"{where}: linked input '{name}' is not in the schema (inputs: {sorted(inputs)})")
            continue
        expected = _input_type(inputs[name])
        actual = link_types.get(slot["link"], slot.get("type"))
        if expected not in ("*", actual) and actual != "*":
            problems.append(f"{where}: input '{name}' takes {expected}, the saved link carries {actual}")

    linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
    for name, spec in node_info["input"].get("required", {}).items():
        if _input_type(spec) not in WIDGET_TYPES and name not in linked:
            problems.append(f"{where}: required input '{name}' ({_input_type(spec)}) is not connected")

    outputs = node_info.get("output", [])
    for index, slot in enumerate(node.get("outputs", [])):
        if not slot.get("links"):
            continue
        if index >= len(outputs):
            problems.append(f"{where}: linked output {index} ('{slot.get('name')}') is not in the schema")
            continue
        expected = _input_type([outputs[index]])
        if slot.get("type") not in (expected, "*"):
            problems.append(f"{where}: output {index} is {expected}, the saved link carries {slot.get('type')}")
    return problems


def workflow_problems(workflow: dict, object_info: dict, *, unchecked_types: frozenset[str] = frozenset()) -> list[str]:
    """Return every mismatch of a UI-format workflow against `object_info`.

    Node types in `unchecked_types` are skipped (the host-free tests have no schemas of
    ComfyUI's own nodes); any other type missing from `object_info` is reported.
    """
    link_types = _link_types(workflow)
    problems = []
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or kind in unchecked_types:
            continue
        if kind not in object_info:
            problems.append(f"node {node['id']}: type '{kind}' is not a registered node")
            continue
        problems.extend(node_problems(node, object_info[kind], link_types))
    return problems


def latest_release_tag(repository: Path) -> str | None:
    """Return the highest `v*` tag of the repository by version order, or None when it has none."""
    result = subprocess.run(
        ["git", "tag", "--list", "v*", "--sort=-v:refname"],
        cwd=repository,
        capture_output=True,
        text=True,
        check=True,
    )
    tags = result.stdout.split()
    return tags[0] if tags else None


def release_workflows(repository: Path, tag: str) -> dict[str, dict]:
    """Return the UI workflows of `tag` by file name, read with git without touching the work tree.

    A tag without the workflow folder gives an empty mapping.
    """
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{tag}:{WORKFLOW_FOLDER}"],
        cwd=repository,
        capture_output=True,
        text=True,
        check=False,
    )
    if listing.returncode != 0:
        return {}
    workflows = {}
    for name in listing.stdout.split():
        if name.endswith(".json"):
            text = subprocess.run(
                ["git", "show", f"{tag}:{WORKFLOW_FOLDER}/{name}"],
                cwd=repository,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            workflows[name] = json.loads(text)
    return workflows
