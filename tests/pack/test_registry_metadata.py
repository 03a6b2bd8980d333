"""Comfy Registry metadata in pyproject.toml, the changelog and the web directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

REPOSITORY = Path(__file__).resolve().parents[2]
RAW_MAIN = "https://raw.githubusercontent.com/comfyui-l2p/ComfyUI-L2P/main/"


def pyproject() -> dict:
    return tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))


def test_tool_comfy_names_publisher_and_display_name():
    comfy = pyproject()["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"] == "ComfyUI-L2P"


def test_icon_is_a_file_of_this_repository():
    icon = pyproject()["tool"]["comfy"]["Icon"]
    assert icon.startswith(RAW_MAIN)
    assert (REPOSITORY / icon.removeprefix(RAW_MAIN)).is_file()


def test_minimum_comfyui_version_is_the_tested_one():
    assert pyproject()["tool"]["comfy"]["requires-comfyui"] == ">=0.33.0"


def test_changelog_covers_the_version():
    version = pyproject()["project"]["version"]
    changelog = (REPOSITORY / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"({version})" in changelog or f"## {version}" in changelog


def test_browser_extra_is_separate_from_test_extra():
    extras = pyproject()["project"]["optional-dependencies"]
    assert any(requirement.startswith("playwright") for requirement in extras["browser"])
    assert not any(requirement.startswith("playwright") for requirement in extras["test"])


def test_web_directory_holds_the_help_pages(pack):
    assert (REPOSITORY / pack.WEB_DIRECTORY / "docs").is_dir()
