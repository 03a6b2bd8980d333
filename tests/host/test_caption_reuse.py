"""The stock KSampler path refines each caption once per run, through the pack's OUTER_SAMPLE wrapper.

`caption_probe.py` runs in the host's Python without a server (see its docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import PACK_FOLDER_NAME, REPOSITORY, host_settings

PROBE = Path(__file__).with_name("caption_probe.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    checkout, python = host_settings()
    work = tmp_path_factory.mktemp("caption-probe")
    pack = work / "custom_nodes" / PACK_FOLDER_NAME
    pack.parent.mkdir()
    pack.symlink_to(REPOSITORY, target_is_directory=True)
    result = subprocess.run(
        [python, str(PROBE), str(pack), str(work)],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"},
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert reports, f"probe failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(reports[-1].removeprefix("REPORT "))


def test_ksampler_refines_each_caption_once(report):
    assert report["refiner_calls_with_reuse"] == 2


def test_without_wrapper_captions_refined_every_step(report):
    assert report["refiner_calls_without_reuse"] >= 2 * report["steps"]


def test_caption_reuse_leaves_images_unchanged(report):
    assert report["max_difference"] <= 1e-6


def test_caption_cache_dropped_after_sampling(report):
    assert report["cache_dropped"]
