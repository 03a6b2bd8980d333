"""Registration without a host: the extension's node list and every schema's metadata."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().with_name("stubs")

NODE_IDS = ["L2PModelLoader", "L2PPixelSampler", "L2PEdit", "L2PEmptyImage", "L2PPatchTiling", "L2PLoraScope"]


def node_classes(pack) -> list:
    extension = asyncio.run(pack.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def test_entrypoint_lists_the_nodes(pack):
    assert [cls.GET_SCHEMA().node_id for cls in node_classes(pack)] == NODE_IDS


def test_pack_defines_no_v1_mappings(pack):
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")


def test_schemas_have_category_names_and_tooltips(pack):
    for cls in node_classes(pack):
        schema = cls.GET_SCHEMA()
        assert schema.node_id.startswith("L2P")
        assert schema.category == "L2P"
        assert schema.display_name.startswith("L2P ")
        assert schema.description
        assert [item.id for item in schema.inputs if not item.tooltip] == []
        assert all(output.tooltip for output in schema.outputs)


def test_loader_lists_diffusion_models(pack):
    loader = next(cls for cls in node_classes(pack) if cls.__name__ == "L2PModelLoader")
    model_name = loader.GET_SCHEMA().inputs[0]
    assert model_name.options["options"] == ["model-1k-merge.safetensors"]


def test_registration_imports_no_model_code():
    """Importing the pack and building its schemas loads neither l2p_core nor ComfyUI's model code."""
    script = f"""
import asyncio, importlib.util, json, sys
sys.path.insert(0, {str(STUBS)!r})
spec = importlib.util.spec_from_file_location(
    "comfyui_l2p", {str(REPOSITORY / "__init__.py")!r}, submodule_search_locations=[{str(REPOSITORY)!r}]
)
pack = importlib.util.module_from_spec(spec)
sys.modules["comfyui_l2p"] = pack
spec.loader.exec_module(pack)
imported_by_import = sorted(sys.modules)
extension = asyncio.run(pack.comfy_entrypoint())
for cls in asyncio.run(extension.get_node_list()):
    cls.GET_SCHEMA()
print(json.dumps({{"import": imported_by_import, "register": sorted(sys.modules)}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    modules = json.loads(result.stdout.splitlines()[-1])
    heavy = ("comfyui_l2p.l2p_core", "comfyui_l2p.nodes.host_model", "comfyui_l2p.nodes.pixel_sampling", "safetensors")
    assert [name for name in modules["register"] if name.startswith(heavy)] == []
    assert [name for name in modules["import"] if name.startswith(("torch", "comfyui_l2p.nodes"))] == []
