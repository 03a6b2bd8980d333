"""Host-free tests of the node pack: its modules imported with stand-ins for ComfyUI.

The stand-ins in stubs/ go first on sys.path, and the repository is imported as the
package `comfyui_l2p`, the way ComfyUI imports a folder in custom_nodes/.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().with_name("stubs")
PACKAGE = "comfyui_l2p"

sys.path.insert(0, str(STUBS))


def import_pack():
    """Import the repository root as the package PACKAGE (once) and return it."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, REPOSITORY / "__init__.py", submodule_search_locations=[str(REPOSITORY)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def pack_module(pack):
    """Return a function that imports a submodule of the pack, e.g. pack_module("nodes.latent")."""
    return lambda name: importlib.import_module(f"{PACKAGE}.{name}")
