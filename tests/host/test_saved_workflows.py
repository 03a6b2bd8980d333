"""Saved workflows against the live server's /object_info: every node type, ComfyUI's own included.

The same check as tests/pack/test_saved_workflows.py, with the real schemas of this host,
for the workflows in workflows/ and those of the latest `v*` release tag.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPOSITORY / "workflows").glob("*.json"))

_spec = importlib.util.spec_from_file_location(
    "l2p_schema_check", REPOSITORY / "tests" / "workflows" / "schema_check.py"
)
schema_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(schema_check)


@pytest.fixture(scope="module")
def object_info(host) -> dict:
    return host.client.get_json("/object_info")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_workflow_matches_host_schemas(path, object_info):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert schema_check.workflow_problems(workflow, object_info) == []


def test_previous_release_workflows_match_host_schemas(object_info):
    tag = schema_check.latest_release_tag(REPOSITORY)
    if tag is None:
        pytest.skip("No v* release tag yet: there are no released workflows to check against the current schemas.")
    workflows = schema_check.release_workflows(REPOSITORY, tag)
    assert workflows, f"release {tag} has no {schema_check.WORKFLOW_FOLDER}/*.json"
    problems = {name: schema_check.workflow_problems(workflow, object_info) for name, workflow in workflows.items()}
    assert {name: found for name, found in problems.items() if found} == {}, f"workflows of {tag} no longer validate"
