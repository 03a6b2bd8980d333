"""Patch tiling, the HR 4K model and the 4K workflows in a real host, at sizes a CPU finishes.

The workflows' API twins run with their sizes, tiles and steps shrunk: 64-px tiles with a
16-px overlap on canvases of a few tiles, and the tiny 1K and HR 4K test checkpoints.
"""

from __future__ import annotations

import copy
import time
import uuid

import numpy as np

from l2p_core.patch_tiling import plan_tiles

from .comfy_client import png_size, status_message
from .conftest import HR_4K_FILE
from .graphs import (
    PIXEL_SAMPLER,
    ksampler_graph,
    node_of,
    pixel_sampler_graph,
    recipe_graph,
    sigma_text,
    tiling_node,
    with_tiling,
    workflow_twin,
)
from .test_generation import describe, only_png, pixels, succeeded

TILE, OVERLAP = 64, 16


def tile_count(width: int, height: int, tile: int = TILE, overlap: int = OVERLAP, multiple: int = 16) -> int:
    return len(plan_tiles(height, width, tile, overlap, multiple, multiple))


def run_with_progress(host, graph: dict, timeout: float = 600) -> tuple[dict, list[dict]]:
    """Run a graph and return (the final execution event's data, its progress events)."""
    client_id = uuid.uuid4().hex
    socket = host.client.open_websocket(client_id)
    try:
        prompt_id = host.client.queue_prompt(graph, client_id=client_id)
        progress = []
        while True:
            event = socket.receive(timeout=timeout)
            assert event is not None, f"no websocket message for {timeout} s"
            if event.kind == "progress" and event.data.get("prompt_id") == prompt_id:
                progress.append(event.data)
            elif event.kind in ("execution_success", "execution_error", "execution_interrupted"):
                if event.data.get("prompt_id") == prompt_id:
                    assert event.kind == "execution_success", event.data
                    return event.data, progress
    finally:
        socket.close()


def error_of(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", entry["status"]
    return status_message(entry, "execution_error")


def test_tiled_workflow_twin(host):
    """l2p_4k_tiled at 160×128: a guide pass, then 3×3 tiles. Progress counts every network call."""
    graph = workflow_twin("l2p_4k_tiled")
    sampler, tiling = node_of(graph, "L2PPixelSampler"), node_of(graph, "L2PPatchTiling")
    width, height, steps = 160, 128, 3
    graph[sampler]["inputs"] |= {"width": width, "height": height, "steps": steps}
    graph[tiling]["inputs"] |= {"tile_size": TILE, "tile_overlap": OVERLAP}

    _, progress = run_with_progress(host, graph)
    entry = host.client.wait_for_history(progress[-1]["prompt_id"])
    assert png_size(only_png(host, entry)) == (width, height)
    # Auto cfg is 2.0 for the 1K model: two passes per step, in the guide and in every tile.
    expected = 2 * steps + tile_count(width, height) * steps * 2
    last = [event for event in progress if event["node"] == sampler][-1]
    assert (last["value"], last["max"]) == (expected, expected)


def test_native_hr_workflow_twin(host):
    """l2p_4k_native_hr at 128×128 on the tiny HR 4K file, with the preset's 50 steps."""
    graph = workflow_twin("l2p_4k_native_hr")
    sampler = node_of(graph, "L2PPixelSampler")
    graph[sampler]["inputs"] |= {"width": 128, "height": 128}
    assert graph[node_of(graph, "L2PModelLoader")]["inputs"]["model_name"] == HR_4K_FILE

    _, progress = run_with_progress(host, graph)
    entry = host.client.wait_for_history(progress[-1]["prompt_id"])
    assert png_size(only_png(host, entry)) == (128, 128)
    assert [event["max"] for event in progress if event["node"] == sampler][-1] == 50


def test_hr_size_off_grid(host):
    graph = workflow_twin("l2p_4k_native_hr")
    sampler = node_of(graph, "L2PPixelSampler")
    graph[sampler]["inputs"] |= {"width": 96, "height": 128}
    error = error_of(host.client.run(graph))
    assert error["node_id"] == sampler
    assert "HR 4K" in error["exception_message"]
    assert "multiples of 64" in error["exception_message"]


def test_upscale_workflow_twin(host):
    """l2p_upscale_1k_to_4k: 64×48, ×2 in pixel space, tiled KSampler refinement at 128×96."""
    graph = workflow_twin("l2p_upscale_1k_to_4k")
    graph[node_of(graph, "L2PPixelSampler")]["inputs"] |= {"width": 64, "height": 48, "steps": 2}
    graph[node_of(graph, "ImageScaleBy")]["inputs"]["scale_by"] = 2.0
    graph[node_of(graph, "L2PPatchTiling")]["inputs"] |= {"tile_size": TILE, "tile_overlap": OVERLAP}
    graph[node_of(graph, "KSampler")]["inputs"]["steps"] = 2

    entry = host.client.run(graph)
    assert succeeded(entry), describe(entry)
    sizes = sorted(png_size(image) for image in host.client.output_files(entry))
    # PreviewImage shows the 1K stage, SaveImage the refined result.
    assert sizes == [(64, 48), (128, 96)]


def test_ksampler_single_tile_equals_untiled(host):
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}}
    untiled = ksampler_graph(latent=latent, steps=3, seed=31)
    tiled = ksampler_graph(latent=latent, steps=3, seed=31, model_patch=tiling_node(TILE, OVERLAP))
    assert np.array_equal(
        pixels(only_png(host, host.client.run(untiled))), pixels(only_png(host, host.client.run(tiled)))
    )


def test_pixel_sampler_single_tile_equals_untiled(host):
    graph = pixel_sampler_graph(width=64, height=48, steps=2, seed=32)
    tiled = with_tiling(graph, PIXEL_SAMPLER, tiling_node(TILE, OVERLAP))
    assert np.array_equal(
        pixels(only_png(host, host.client.run(graph))), pixels(only_png(host, host.client.run(tiled)))
    )


def test_ksampler_tiled_progress_counts_tiles_times_steps(host):
    width, height, steps = 160, 96, 3
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1}}
    graph = ksampler_graph(latent=latent, steps=steps, seed=33, model_patch=tiling_node(TILE, OVERLAP))
    _, progress = run_with_progress(host, graph)
    entry = host.client.wait_for_history(progress[-1]["prompt_id"])
    assert png_size(only_png(host, entry)) == (width, height)

    # KSampler batches the prompt and the negative into one evaluation per step.
    expected = tile_count(width, height) * steps
    tile_events = [event for event in progress if event["node"] == "12" and event["max"] == expected]
    assert tile_events, f"no progress out of {expected} in {progress}"
    assert max(event["value"] for event in tile_events) == expected


def test_tiled_sampler_custom_advanced(host):
    """SamplerCustomAdvanced with a CFGGuider on the tiled model."""
    graph = recipe_graph(width=160, height=96, seed=34, sigmas=sigma_text([1.0, 0.75, 0.5, 0.0]))
    graph = with_tiling(graph, "14", tiling_node(TILE, OVERLAP, tile_batch_size=4))
    entry = host.client.run(graph)
    assert png_size(only_png(host, entry)) == (160, 96)


def test_invalid_tile_size(host):
    graph = with_tiling(pixel_sampler_graph(width=64, height=48, steps=2), PIXEL_SAMPLER, tiling_node(100, OVERLAP))
    error = error_of(host.client.run(graph))
    assert error["node_id"] == "11"
    assert "tile_size 100 px is not on the 16-px grid" in error["exception_message"]


def test_memory_estimate_exceeding_device(host):
    """A 16384² batch of 64 stops at the sampler, before any step, naming the estimate and the fix."""
    graph = pixel_sampler_graph(width=16384, height=16384, steps=2, batch_size=64)
    started = time.monotonic()
    error = error_of(host.client.run(graph))
    assert error["node_id"] == PIXEL_SAMPLER
    assert error["exception_type"].endswith("MemoryEstimateError")
    assert "GiB of working memory" in error["exception_message"]
    assert "Add an L2P Patch Tiling node" in error["exception_message"]
    # Allocating the 192 GiB noise tensor alone would take far longer (or fail).
    assert time.monotonic() - started < 30


def test_interrupt_stops_within_one_tile(host):
    """/interrupt during one long step of many tiles ends the run after the current tile."""
    width = height = 2048
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1}}
    graph = ksampler_graph(latent=latent, steps=1, seed=35, model_patch=tiling_node(TILE, OVERLAP))
    tiles = tile_count(width, height)

    client_id = uuid.uuid4().hex
    socket = host.client.open_websocket(client_id)
    try:
        prompt_id = host.client.queue_prompt(copy.deepcopy(graph), client_id=client_id)
        progress = []
        while len(progress) < 3:
            event = socket.receive(timeout=300)
            assert event is not None, "no tile progress for 300 s"
            if event.kind == "progress" and event.data.get("max") == tiles and event.data["value"] < tiles:
                progress.append((event.received_at, event.data["value"]))
        (first_time, first_tile), (last_time, last_tile) = progress[0], progress[-1]
        seconds_per_tile = (last_time - first_time) / max(1, last_tile - first_tile)

        host.client.interrupt()
        interrupted_at = time.monotonic()
        while True:
            event = socket.receive(timeout=120)
            assert event is not None, "the run did not stop within 120 s of /interrupt"
            if event.kind in ("execution_interrupted", "execution_success", "execution_error"):
                break
        assert event.kind == "execution_interrupted", event.data
        assert event.data["prompt_id"] == prompt_id
        stopped_after = event.received_at - interrupted_at
    finally:
        socket.close()

    # One tile plus the time the server needs to report it; the rest of the step takes far longer.
    allowed = seconds_per_tile + 2.0
    assert stopped_after < allowed
    assert seconds_per_tile * (tiles - last_tile) > 2 * allowed
    after = host.client.run(pixel_sampler_graph(width=64, height=48, steps=2, seed=36))
    assert succeeded(after), describe(after)


def test_hr_model_tiles_on_its_grid(host):
    graph = pixel_sampler_graph(width=192, height=128, steps=2, cfg=1.0, model_file=HR_4K_FILE)
    graph = with_tiling(graph, PIXEL_SAMPLER, tiling_node(128, 64, decoder_tile_size=128))
    entry = host.client.run(graph)
    assert png_size(only_png(host, entry)) == (192, 128)


def test_hr_tile_off_its_grid(host):
    graph = pixel_sampler_graph(width=192, height=128, steps=2, model_file=HR_4K_FILE)
    graph = with_tiling(graph, PIXEL_SAMPLER, tiling_node(96, 32))
    error = error_of(host.client.run(graph))
    assert error["node_id"] == "11"
    assert "tile_size 96 px is not on the 64-px grid of the L2P HR 4K model" in error["exception_message"]


def test_tiled_pixel_sampler_sends_previews(host):
    graph = with_tiling(
        pixel_sampler_graph(width=160, height=96, steps=2, seed=37), PIXEL_SAMPLER, tiling_node(TILE, OVERLAP)
    )
    client_id = uuid.uuid4().hex
    socket = host.client.open_websocket(client_id)
    try:
        prompt_id = host.client.queue_prompt(graph, client_id=client_id, extra_data={"preview_method": "latent2rgb"})
        previews = 0
        while True:
            event = socket.receive(timeout=300)
            assert event is not None, "no websocket message for 300 s"
            if event.binary is not None:
                previews += 1
            elif event.kind in ("execution_success", "execution_error") and event.data.get("prompt_id") == prompt_id:
                assert event.kind == "execution_success", event.data
                break
    finally:
        socket.close()
    # One preview per step of the guide and of the tiled pass.
    assert previews == 4
