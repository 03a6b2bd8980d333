"""The editing workflows in the real host, on scikit-image photographs: pixels outside the mask stay exact.

Each test copies a photograph into the host's input folder under the name that the
workflow's Load Image node uses, runs the workflow's API twin with 2 steps at cfg 1, and
compares the saved PNG with the input PNG.
"""

from __future__ import annotations

import copy
import uuid

import numpy as np
import pytest
from PIL import Image

from .graphs import node_of, workflow_twin
from .test_generation import describe, only_png, pixels, succeeded

skimage_data = pytest.importorskip("skimage.data", reason="photographs come from scikit-image (the test extra)")

FAST = {"steps": 2, "cfg": 1.0}
# The inpaint mask: a rectangle (top, bottom, left, right) of the astronaut's 512×512 photo.
MASK_BOX = (200, 260, 180, 250)


def edit_graph(name: str, **edit_inputs) -> dict:
    graph = copy.deepcopy(workflow_twin(name))
    graph[node_of(graph, "L2PEdit")]["inputs"] |= FAST | edit_inputs
    return graph


def write_photo(host, file_name: str, photo: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Save `photo` (RGB uint8) into the host's input folder, with `alpha` if given; return its RGB pixels."""
    image = Image.fromarray(photo) if alpha is None else Image.fromarray(np.dstack([photo, alpha]), "RGBA")
    image.save(host.base / "input" / file_name)
    return photo.astype(np.int16)


def inpaint_photo(host) -> np.ndarray:
    """Write the astronaut with the mask box as transparent alpha; Load Image's MASK is 1 − alpha."""
    photo = skimage_data.astronaut()
    alpha = np.full(photo.shape[:2], 255, dtype=np.uint8)
    top, bottom, left, right = MASK_BOX
    alpha[top:bottom, left:right] = 0
    return write_photo(host, "l2p_inpaint_example.png", photo, alpha)


def outside_box(shape: tuple[int, ...], grow_px: int) -> np.ndarray:
    top, bottom, left, right = MASK_BOX
    outside = np.ones(shape[:2], dtype=bool)
    outside[max(0, top - grow_px) : bottom + grow_px, max(0, left - grow_px) : right + grow_px] = False
    return outside


@pytest.mark.parametrize("crop_and_stitch", [True, False])
def test_inpaint_workflow_keeps_unmasked_pixels(host, crop_and_stitch):
    original = inpaint_photo(host)
    # Context 64 makes the crop-and-stitch window (about 200 px) smaller than the photo.
    graph = edit_graph("l2p_edit_inpaint", context=64, crop_and_stitch=crop_and_stitch)
    edited = pixels(only_png(host, host.client.run(graph)))
    outside = outside_box(original.shape, graph[node_of(graph, "L2PEdit")]["inputs"]["grow_mask"])

    assert edited.shape == original.shape
    assert np.array_equal(edited[outside], original[outside])
    top, bottom, left, right = MASK_BOX
    assert not np.array_equal(edited[top:bottom, left:right], original[top:bottom, left:right])


def test_outpaint_workflow_keeps_original(host):
    original = write_photo(host, "l2p_photo_example.png", skimage_data.chelsea())
    graph = edit_graph("l2p_outpaint", left=64, right=32, top=16, bottom=0)
    edited = pixels(only_png(host, host.client.run(graph)))
    height, width = original.shape[:2]

    assert edited.shape == (height + 16, width + 64 + 32, 3)
    assert np.array_equal(edited[16 : 16 + height, 64 : 64 + width], original)


def test_img2img_workflow_keeps_size(host):
    original = write_photo(host, "l2p_photo_example.png", skimage_data.chelsea())
    edited = pixels(only_png(host, host.client.run(edit_graph("l2p_img2img"))))
    assert edited.shape == original.shape
    assert not np.array_equal(edited, original)


def test_inpaint_without_alpha_asks_for_mask(host):
    write_photo(host, "l2p_inpaint_example.png", skimage_data.astronaut())
    entry = host.client.run(edit_graph("l2p_edit_inpaint", seed=99))
    assert not succeeded(entry)
    assert "mask editor" in describe(entry)


def test_inpaint_with_patch_tiling(host):
    original = inpaint_photo(host)
    graph = edit_graph("l2p_edit_inpaint", context=64, seed=7)
    graph["11"] = {
        "class_type": "L2PPatchTiling",
        "inputs": {
            "model": ["4", 0],
            "tile_size": 128,
            "tile_overlap": 32,
            "tile_batch_size": 2,
            "decoder_tile_size": 0,
        },
    }
    graph[node_of(graph, "L2PEdit")]["inputs"]["model"] = ["11", 0]
    entry = host.client.run(graph)
    assert succeeded(entry), describe(entry)
    edited = pixels(only_png(host, entry))
    outside = outside_box(original.shape, graph[node_of(graph, "L2PEdit")]["inputs"]["grow_mask"])
    assert np.array_equal(edited[outside], original[outside])


def test_edit_progress_and_previews(host):
    inpaint_photo(host)
    graph = edit_graph("l2p_edit_inpaint", context=64, seed=13)
    edit = node_of(graph, "L2PEdit")
    client_id = uuid.uuid4().hex
    socket = host.client.open_websocket(client_id)
    try:
        prompt_id = host.client.queue_prompt(graph, client_id=client_id, extra_data={"preview_method": "latent2rgb"})
        previews, progress_nodes = 0, set()
        while True:
            event = socket.receive(timeout=300)
            assert event is not None, "no websocket message for 300 s"
            if event.binary is not None:
                previews += 1
            elif event.kind == "progress" and event.data.get("prompt_id") == prompt_id:
                progress_nodes.add(event.data["node"])
            elif event.kind in ("execution_success", "execution_error") and event.data.get("prompt_id") == prompt_id:
                assert event.kind == "execution_success", event.data
                break
    finally:
        socket.close()
    assert edit in progress_nodes
    assert previews > 0
