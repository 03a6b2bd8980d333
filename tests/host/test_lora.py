"""Z-Image LoRA formats on the L2P model, through ComfyUI's own key mapping and patches.

`lora_probe.py` runs in the host's Python without a server (see its docstring), and these
tests check its report. The graph tests with LoraLoaderModelOnly alone are in test_generation.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import run_probe
from .graphs import PIXEL_SAMPLER, pixel_sampler_graph
from .test_generation import only_png, pixels, with_lora

PROBE = Path(__file__).with_name("lora_probe.py")
Z_IMAGE_FORMATS = ("comfyui", "diffusers", "diffsynth")
ALL_FORMATS = (*Z_IMAGE_FORMATS, "l2p_parts")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    return run_probe(PROBE, tmp_path_factory.mktemp("lora-probe"))


@pytest.mark.parametrize("lora_format", ALL_FORMATS)
def test_lora_maps_every_target(report, lora_format):
    result = report["formats"][lora_format]
    assert result["patched_keys"] == result["expected_keys"]


@pytest.mark.parametrize("lora_format", ALL_FORMATS)
def test_lora_patch_is_exact(report, lora_format):
    result = report["formats"][lora_format]
    assert result["dtypes"] == ["torch.bfloat16"]
    assert all(result["changed_by_lora"].values()), result["changed_by_lora"]
    assert {key: value for key, value in result["max_difference"].items() if value != 0.0} == {}


@pytest.mark.parametrize("lora_format", ALL_FORMATS)
def test_lora_changes_nothing_else(report, lora_format):
    assert report["formats"][lora_format]["changed_elsewhere"] == []


@pytest.mark.parametrize("lora_format", ALL_FORMATS)
def test_unpatch_restores_weights_exactly(report, lora_format):
    assert report["formats"][lora_format]["not_restored"] == []


# Per format: the LoRA tensors applied (up, down and alpha of each fitting target) and the
# names of the probe's unknown target's up and down tensors.
UNKNOWN = "caption_projector.0"
SUMMARY_CASES = {
    "comfyui": (30, f"diffusion_model.{UNKNOWN}.lora_up.weight", f"diffusion_model.{UNKNOWN}.lora_down.weight"),
    "diffusers": (48, f"transformer.{UNKNOWN}.lora_B.weight", f"transformer.{UNKNOWN}.lora_A.weight"),
    "diffsynth": (48, f"{UNKNOWN}.lora_B.weight", f"{UNKNOWN}.lora_A.weight"),
}


def skip_summaries(log: list[str]) -> list[str]:
    return [line for line in log if line.startswith("WARNING L2P: skipped")]


@pytest.mark.parametrize("lora_format", Z_IMAGE_FORMATS)
def test_skip_summary_counts_every_tensor(report, lora_format):
    applied, unknown_up, unknown_down = SUMMARY_CASES[lora_format]
    expected = (
        f"WARNING L2P: skipped 8 LoRA tensors and applied the other {applied}. "
        "Latent final layer: 3 (L2P decodes with its local decoder instead). "
        "Latent patch embedder: 3 (64 wide, L2P's is 768). "
        f"Unknown: 2 (no weight of that name in L2P or latent Z-Image: {unknown_up}, {unknown_down}). "
        'ComfyUI also logs each skipped key, as "lora key not loaded" or "NOT LOADED".'
    )
    assert skip_summaries(report["formats"][lora_format]["log"]) == [expected]


@pytest.mark.parametrize("lora_format", Z_IMAGE_FORMATS)
def test_host_still_logs_skipped_keys(report, lora_format):
    log = report["formats"][lora_format]["log"]
    _applied, unknown_up, unknown_down = SUMMARY_CASES[lora_format]
    assert f"WARNING lora key not loaded: {unknown_up}" in log
    assert f"WARNING lora key not loaded: {unknown_down}" in log
    assert "WARNING NOT LOADED diffusion_model.x_embedder.weight" in log
    assert [line for line in log if line.startswith("ERROR")] == []


def test_comfyui_final_layer_dropped_by_host(report):
    # With ComfyUI names the host's key map has no entry for a final layer L2P lacks, so
    # `comfy.lora.load_lora` drops these tensors and logs each, before any patch exists.
    log = report["formats"]["comfyui"]["log"]
    for suffix in ("lora_up.weight", "lora_down.weight", "alpha"):
        assert f"WARNING lora key not loaded: diffusion_model.final_layer.linear.{suffix}" in log


@pytest.mark.parametrize("lora_format", ("diffusers", "diffsynth"))
def test_mapped_final_layer_not_loaded(report, lora_format):
    # diffusers and DiffSynth names are in the key map, so the final layer becomes a patch
    # on a weight L2P lacks, which the host logs as NOT LOADED.
    log = report["formats"][lora_format]["log"]
    assert "WARNING NOT LOADED diffusion_model.final_layer.linear.weight" in log


@pytest.mark.parametrize("lora_format", ALL_FORMATS)
def test_log_observation_closed_after_load(report, lora_format):
    assert "DroppedLoraKeys" not in report["formats"][lora_format]["root_filters_after"]


def test_state_dict_keys_unchanged(report):
    assert report["state_dict_keys_unchanged"] is True


def test_l2p_parts_lora_loads_without_warnings(report):
    log = report["formats"]["l2p_parts"]["log"]
    assert [line for line in log if line.startswith(("WARNING", "ERROR"))] == []


def test_scope_reads_float32_blocks(report):
    assert report["scope"]["float32_joint_blocks"] == [1, 2]


def test_scope_keeps_shared_block_patches(report):
    scope = report["scope"]
    assert any("refiner" in key for key in scope["unscoped_keys"])
    assert scope["patched_keys"] == scope["expected_keys"]
    assert {key: value for key, value in scope["max_difference"].items() if value != 0.0} == {}
    assert all(scope["changed_by_lora"].values()), scope["changed_by_lora"]


def test_scope_leaves_other_weights_untouched(report):
    assert report["scope"]["changed_elsewhere"] == []


def test_scope_unpatch_restores_weights(report):
    assert report["scope"]["not_restored"] == []


def test_scope_logs_kept_blocks(report):
    log = report["scope"]["log"]
    assert (
        "INFO L2P LoRA Scope: kept the patches of 4 weights in joint blocks 1–2, removed those of 6 other weights."
        in log
    )


def with_scoped_lora(graph: dict, scope: str) -> dict:
    """Insert LoraLoaderModelOnly and the L2P LoRA Scope node between the L2P loader and the Pixel Sampler."""
    graph = with_lora(graph, 1.0, PIXEL_SAMPLER)
    graph["51"] = {"class_type": "L2PLoraScope", "inputs": {"model": ["50", 0], "scope": scope}}
    graph[PIXEL_SAMPLER] = graph[PIXEL_SAMPLER] | {"inputs": graph[PIXEL_SAMPLER]["inputs"] | {"model": ["51", 0]}}
    return graph


def test_scope_graph_in_host(host):
    # The test LoRA patches joint block 0; the test checkpoint stores only block 1 in
    # float32, so the shared-blocks mode removes the patch and the image is the plain one.
    graph = pixel_sampler_graph(width=64, height=48, steps=2, seed=31)
    plain = pixels(only_png(host, host.client.run(graph)))
    patched = pixels(only_png(host, host.client.run(with_lora(graph, 1.0, PIXEL_SAMPLER))))
    all_blocks = pixels(only_png(host, host.client.run(with_scoped_lora(graph, "all blocks"))))
    shared_only = pixels(only_png(host, host.client.run(with_scoped_lora(graph, "shared blocks only"))))
    assert not np.array_equal(plain, patched)
    assert np.array_equal(all_blocks, patched)
    assert np.array_equal(shared_only, plain)
    assert (
        "L2P LoRA Scope: kept the patches of 0 weights in joint blocks 1, removed those of 1 other weights."
        in host.log()
    )
