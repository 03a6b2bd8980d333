"""Generation through the server: the 1K workflow, stock samplers, the recipe, previews, unloading."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from l2p_core import flow_sigmas

from .comfy_client import png_size, status_message
from .conftest import LORA_FILE
from .graphs import (
    MODEL_LOADER,
    PIXEL_SAMPLER,
    ksampler_graph,
    pixel_sampler_graph,
    recipe_graph,
    save_latent_of_image,
    sigma_text,
)

WIDTH, HEIGHT = 64, 48

# Tolerance of the stock-node recipe against the Pixel Sampler, float32 on the CPU: images
# in [-1, 1] agree to this (measured: about 1e-6), so the 8-bit PNGs are equal except where
# rounding crosses a quantisation step, by one level.
RECIPE_MAX_ABS_DIFFERENCE = 1e-5
RECIPE_MAX_LEVELS = 1


def succeeded(entry: dict) -> bool:
    return entry["status"]["status_str"] == "success"


def describe(entry: dict) -> str:
    error = status_message(entry, "execution_error")
    return error["exception_message"] if error else str(entry["status"])


def only_png(host, entry: dict) -> bytes:
    assert succeeded(entry), describe(entry)
    images = host.client.output_files(entry)
    assert len(images) == 1
    return images[0]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_workflow_twin_produces_png_of_requested_size(host):
    entry = host.client.run(pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2))
    assert png_size(only_png(host, entry)) == (WIDTH, HEIGHT)


def test_pixel_sampler_batch(host):
    entry = host.client.run(pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2, batch_size=2))
    assert succeeded(entry), describe(entry)
    images = host.client.output_files(entry)
    assert [png_size(image) for image in images] == [(WIDTH, HEIGHT)] * 2
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_ksampler_with_pixel_space_vae(host):
    """L2P Empty Image → KSampler → VAE Decode with the pixel_space VAE."""
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
    entry = host.client.run(ksampler_graph(latent=latent, steps=3))
    assert png_size(only_png(host, entry)) == (WIDTH, HEIGHT)


def test_ksampler_with_stock_empty_latent(host):
    """The stock empty latent (16 channels at 1/8) is rescaled to the model's pixel format."""
    latent = {"class_type": "EmptySD3LatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
    entry = host.client.run(ksampler_graph(latent=latent, steps=3))
    assert png_size(only_png(host, entry)) == (WIDTH, HEIGHT)


def test_ksampler_after_model_sampling_aura_flow(host):
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
    patch = {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.0}}
    plain = host.client.run(ksampler_graph(latent=latent, steps=4, seed=7))
    patched = host.client.run(ksampler_graph(latent=latent, steps=4, seed=7, model_patch=patch))
    # Shift 3 with multiplier 1 is the model's built-in sampling, so the image is the same.
    assert np.array_equal(pixels(only_png(host, plain)), pixels(only_png(host, patched)))


def test_ksampler_after_model_sampling_sd3(host):
    """ModelSamplingSD3 feeds timesteps as 1000σ; the model converts them back to σ."""
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
    aura = {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.0}}
    sd3 = {"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}}
    reference = pixels(
        only_png(host, host.client.run(ksampler_graph(latent=latent, steps=4, seed=7, model_patch=aura)))
    )
    converted = pixels(only_png(host, host.client.run(ksampler_graph(latent=latent, steps=4, seed=7, model_patch=sd3))))
    assert np.abs(reference - converted).max() <= 1


def test_vae_encode_img2img(host):
    image = Image.fromarray(np.linspace(0, 255, WIDTH * HEIGHT * 3).reshape(HEIGHT, WIDTH, 3).astype(np.uint8))
    image.save(host.base / "input" / "l2p-test-input.png")
    load = {"30": {"class_type": "LoadImage", "inputs": {"image": "l2p-test-input.png"}}}
    latent = {"class_type": "VAEEncode", "inputs": {"pixels": ["30", 0], "vae": ["20", 0]}}
    entry = host.client.run(ksampler_graph(latent=latent, steps=4, denoise=0.5, extra_nodes=load))
    assert png_size(only_png(host, entry)) == (WIDTH, HEIGHT)


def saved_latent(host, entry: dict) -> torch.Tensor:
    (data,) = host.client.output_files(entry, "latents")
    return safetensors.torch.load(data)["latent_tensor"]


def test_stock_recipe_reproduces_pixel_sampler(host):
    steps, seed = 30, 1234
    graph = pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=steps, seed=seed)
    sampler = host.client.run(save_latent_of_image(graph, [PIXEL_SAMPLER, 0], "l2p-pixel-sampler"))
    recipe = host.client.run(
        recipe_graph(width=WIDTH, height=HEIGHT, seed=seed, sigmas=sigma_text(flow_sigmas(steps, shift=3.0)))
    )
    assert succeeded(sampler), describe(sampler)
    assert succeeded(recipe), describe(recipe)

    # The Pixel Sampler clamps its result to [-1, 1]; the stock samplers leave that to VAE Decode.
    expected = saved_latent(host, sampler)
    reproduced = saved_latent(host, recipe).clamp(-1, 1)
    assert (expected - reproduced).abs().max() <= RECIPE_MAX_ABS_DIFFERENCE
    levels = np.abs(pixels(host.client.output_files(sampler)[0]) - pixels(only_png(host, recipe)))
    assert levels.max() <= RECIPE_MAX_LEVELS


def with_lora(graph: dict, strength: float, sampler: str) -> dict:
    """Insert LoraLoaderModelOnly between the L2P loader and `sampler`'s model input."""
    graph = dict(graph)
    graph["50"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": [MODEL_LOADER, 0], "lora_name": LORA_FILE, "strength_model": strength},
    }
    graph[sampler] = graph[sampler] | {"inputs": graph[sampler]["inputs"] | {"model": ["50", 0]}}
    return graph


def test_pixel_sampler_uses_lora_patched_weights(host):
    graph = pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=3, seed=21)
    plain = pixels(only_png(host, host.client.run(graph)))
    patched = pixels(only_png(host, host.client.run(with_lora(graph, 1.0, PIXEL_SAMPLER))))
    neutral = pixels(only_png(host, host.client.run(with_lora(graph, 0.0, PIXEL_SAMPLER))))
    assert not np.array_equal(plain, patched)
    assert np.array_equal(plain, neutral)
    assert "lora key not loaded" not in host.log()


def test_ksampler_with_lora(host):
    latent = {"class_type": "L2PEmptyImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
    graph = ksampler_graph(latent=latent, steps=3, seed=22)
    plain = pixels(only_png(host, host.client.run(graph)))
    patched = pixels(only_png(host, host.client.run(with_lora(graph, 1.0, "12"))))
    assert not np.array_equal(plain, patched)


def test_unload_models_then_generate_again(host):
    graph = pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2, seed=5)
    first = pixels(only_png(host, host.client.run(graph)))
    host.client.free(unload_models=True, free_memory=True)
    # A new seed makes the sampler run again on the reloaded model; the old seed then
    # reproduces the first image.
    assert succeeded(host.client.run(pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=2, seed=6)))
    again = pixels(only_png(host, host.client.run(graph)))
    assert np.array_equal(first, again)


@pytest.mark.parametrize(("preview_method", "seed", "expect_previews"), [("none", 11, False), ("latent2rgb", 12, True)])
def test_previews_follow_preview_setting(host, preview_method, seed, expect_previews):
    client_id = uuid.uuid4().hex
    socket = host.client.open_websocket(client_id)
    try:
        graph = pixel_sampler_graph(width=WIDTH, height=HEIGHT, steps=3, seed=seed)
        prompt_id = host.client.queue_prompt(graph, client_id=client_id, extra_data={"preview_method": preview_method})
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
    assert PIXEL_SAMPLER in progress_nodes
    assert (previews > 0) is expect_previews
