"""The stock KSampler path refines each caption once per run, through the pack's OUTER_SAMPLE wrapper.

`caption_probe.py` runs in the host's Python without a server (see its docstring).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_probe

PROBE = Path(__file__).with_name("caption_probe.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    return run_probe(PROBE, tmp_path_factory.mktemp("caption-probe"))


def test_ksampler_refines_each_caption_once(report):
    assert report["refiner_calls_with_reuse"] == 2


def test_without_wrapper_captions_refined_every_step(report):
    assert report["refiner_calls_without_reuse"] >= 2 * report["steps"]


def test_caption_reuse_leaves_images_unchanged(report):
    assert report["max_difference"] <= 1e-6


def test_caption_cache_dropped_after_sampling(report):
    assert report["cache_dropped"]
