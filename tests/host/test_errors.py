"""Errors and cancelling as users see them: the prompt's status in /history and the event stream."""

from __future__ import annotations

import time
import uuid

from .comfy_client import status_message
from .conftest import NARROW_CAPTION_FILE, NOT_L2P_FILE, TRUNCATED_FILE
from .graphs import MODEL_LOADER, PIXEL_SAMPLER, ksampler_graph, pixel_sampler_graph

WIDTH, HEIGHT = 64, 48


def error_of(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", entry["status"]
    error = status_message(entry, "execution_error")
    assert error is not None, entry["status"]
    return error


def test_file_of_another_model_family(host):
    entry = host.client.run(pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2, model_file=NOT_L2P_FILE))
    error = error_of(entry)
    assert error["node_id"] == MODEL_LOADER
    assert "is not an L2P model" in error["exception_message"]
    assert "FLUX" in error["exception_message"]
    assert error["exception_type"].endswith("CheckpointError")


def test_truncated_file(host):
    entry = host.client.run(pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2, model_file=TRUNCATED_FILE))
    error = error_of(entry)
    assert error["node_id"] == MODEL_LOADER
    assert "truncated" in error["exception_message"]
    assert "download the file again" in error["exception_message"].lower()


def test_caption_width_mismatch_in_pixel_sampler(host):
    entry = host.client.run(pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2, model_file=NARROW_CAPTION_FILE))
    error = error_of(entry)
    assert error["node_id"] == PIXEL_SAMPLER
    assert "2560" in error["exception_message"]
    assert "64-wide" in error["exception_message"]


def test_caption_width_mismatch_in_ksampler(host):
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
    graph = ksampler_graph(latent=latent, steps=2)
    graph[MODEL_LOADER]["inputs"]["model_name"] = NARROW_CAPTION_FILE
    error = error_of(host.client.run(graph))
    assert "2560" in error["exception_message"]
    assert "64" in error["exception_message"]


def test_size_not_multiple_of_patch(host):
    entry = host.client.run(pixel_sampler_graph(width=72, height=HEIGHT, steps=2))
    error = error_of(entry)
    assert error["node_id"] == PIXEL_SAMPLER
    assert "72×48" in error["exception_message"]
    assert "multiples of 16" in error["exception_message"]


def test_interrupt_stops_within_one_step(host):
    """/interrupt ends the run before the next step, and the next run works."""
    client_id = uuid.uuid4().hex
    socket = host.client.open_websocket(client_id)
    try:
        graph = pixel_sampler_graph(width=256, height=256, steps=1000, seed=99)
        prompt_id = host.client.queue_prompt(graph, client_id=client_id)

        progress = []
        while len(progress) < 3:
            event = socket.receive(timeout=300)
            assert event is not None, "no progress from the sampler for 300 s"
            if event.kind == "progress" and event.data.get("node") == PIXEL_SAMPLER:
                progress.append((event.received_at, event.data["value"]))
        (first_time, first_step), (last_time, last_step) = progress[0], progress[-1]
        seconds_per_step = (last_time - first_time) / max(1, last_step - first_step)

        host.client.interrupt()
        interrupted_at = time.monotonic()
        while True:
            event = socket.receive(timeout=120)
            assert event is not None, "the run did not stop within 120 s of /interrupt"
            if event.kind in ("execution_interrupted", "execution_success", "execution_error"):
                break
        assert event.kind == "execution_interrupted", event.data
        assert event.data["prompt_id"] == prompt_id
        # One step plus the time the server needs to report it.
        assert event.received_at - interrupted_at < seconds_per_step + 2.0
    finally:
        socket.close()

    entry = host.client.wait_for_history(prompt_id)
    assert status_message(entry, "execution_interrupted") is not None
    after = host.client.run(pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2, seed=100))
    assert after["status"]["status_str"] == "success"
