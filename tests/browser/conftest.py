"""Browser tests: ComfyUI's own web page in headless Chromium, served by a real ComfyUI host.

They start the server with the host tests' fixture (tests/host/conftest.py: a real ComfyUI
with this pack and tiny checkpoints named like the release files), so a session that runs
both tiers starts two servers. They open its page in the system's Chromium (Debian's
`chromium` package), driven by Playwright. Nothing is downloaded: Playwright only attaches
to the installed browser. They skip, saying what is missing, without COMFYUI_PATH,
without a Chromium executable (CHROMIUM_PATH, or `chromium` on PATH) or without the
`playwright` package (the `browser` extra).

L2P_UPDATE_SCREENSHOTS=1 writes the workflow screenshots to docs/screenshots/ (the README
links them); otherwise they go to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.host.conftest import Host, host, host_settings  # noqa: F401  (the session's server fixture)

REPOSITORY = Path(__file__).resolve().parents[2]
# Flags for a headless run on a machine without a display, a GPU or network access: the
# background services (updates, sync, QUIC) would otherwise try to reach remote hosts.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1920, "height": 1080}
PAGE_LOAD_TIMEOUT_MS = 180_000
# Frontend settings for a deterministic page and legible screenshots: no first-run template
# dialog, the properties panel closed, no minimap or canvas statistics, and text drawn at
# every zoom level.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.RightSidePanel.IsOpen": False,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}

# The photographs that the editing workflows' Load Image nodes name, written into the host's
# input folder. The inpaint one has a transparent rectangle, which Load Image turns into
# its MASK (1 − alpha).
PHOTO_SIZE = (128, 96)
INPAINT_PHOTO = "l2p_inpaint_example.png"
PLAIN_PHOTO = "l2p_photo_example.png"


def chromium_executable() -> str:
    """Return the Chromium to drive, or skip with what to install or set."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        if not Path(configured).is_file():
            pytest.fail(f"CHROMIUM_PATH is '{configured}', which is not a file; point it at a Chromium executable.")
        return configured
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "Browser tests need a system Chromium: install Debian's `chromium` package or set CHROMIUM_PATH "
            "(Playwright's own browser downloads are not used)."
        )
    return found


def write_photos(input_folder: Path) -> None:
    """Write the editing workflows' input photographs: smooth gradients with a little texture."""
    width, height = PHOTO_SIZE
    rows, columns = np.mgrid[0:height, 0:width]
    red = 255 * columns / (width - 1)
    green = 255 * rows / (height - 1)
    blue = 128 + 64 * np.sin(columns / 5) * np.cos(rows / 7)
    photo = np.dstack([red, green, blue]).round().astype(np.uint8)

    input_folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(input_folder / PLAIN_PHOTO)
    alpha = np.full((height, width), 255, dtype=np.uint8)
    alpha[32:64, 40:88] = 0
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(input_folder / INPAINT_PHOTO)


@pytest.fixture(scope="session")
def screenshot_folder(tmp_path_factory) -> Path:
    if os.environ.get("L2P_UPDATE_SCREENSHOTS") == "1":
        folder = REPOSITORY / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory):
    """A headless Chromium with a fresh profile; skips before the host starts if it cannot run."""
    host_settings()
    executable = chromium_executable()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Browser tests need Playwright: pip install -e '.[browser]'"
    )
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="session")
def comfy_page(browser_context, host: Host):  # noqa: F811  (the imported fixture)
    """The host's web page, loaded, with the pack's nodes registered in the frontend."""
    write_photos(host.base / "input")
    host.client.post_json("/settings", FRONTEND_SETTINGS)

    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    page.set_default_timeout(60_000)
    page.goto(host.client.base_url)
    page.wait_for_function(
        "() => window.app?.graph && window.LiteGraph?.registered_node_types?.L2PModelLoader",
        timeout=PAGE_LOAD_TIMEOUT_MS,
    )
    return page
