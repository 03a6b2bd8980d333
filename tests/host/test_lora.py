"""Z-Image LoRA formats on the L2P model, through ComfyUI's own key mapping and patches.

`lora_probe.py` runs in the host's Python without a server (see its docstring), and these
tests check its report. The graph tests with LoraLoaderModelOnly alone are in test_generation.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import PACK_FOLDER_NAME, REPOSITORY, host_settings
from .graphs import PIXEL_SAMPLER, pixel_sampler_graph
from .test_generation import only_png, pixels, with_lora

PROBE = Path(__file__).with_name("lora_probe.py")
Z_IMAGE_FORMATS = ("comfyui", "diffusers", "diffsynth")
ALL_FORMATS = (*Z_IMAGE_FORMATS, "l2p_parts")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    checkout, python = host_settings()
    work = tmp_path_factory.mktemp("lora-probe")
    pack = work / "custom_nodes" / PACK_FOLDER_NAME
    pack.parent.mkdir()
    pack.symlink_to(REPOSITORY, target_is_directory=True)
    result = subprocess.run(
        [python, str(PROBE), str(pack), str(work)],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"},
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert reports, f"probe failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(reports[-1].removeprefix("REPORT "))


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


@pytest.mark.parametrize("lora_format", Z_IMAGE_FORMATS)
def test_latent_only_keys_skipped_with_summary(report, lora_format):
    log = report["formats"][lora_format]["log"]
    summaries = [line for line in log if "L2P:" in line and "LoRA patches skipped" in line]
    assert len(summaries) == 1, log
    assert "x_embedder takes 64 values per token" in summaries[0]
    assert [line for line in log if line.startswith("ERROR")] == []
    assert "NOT LOADED diffusion_model.x_embedder.weight" in " ".join(log)


@pytest.mark.parametrize("lora_format", ("diffusers", "diffsynth"))
def test_latent_final_layer_counted(report, lora_format):
    log = report["formats"][lora_format]["log"]
    summary = next(line for line in log if "LoRA patches skipped" in line)
    assert "2 of 18 LoRA patches skipped" in summary
    assert "1 aimed at the latent final layer" in summary
    assert "WARNING NOT LOADED diffusion_model.final_layer.linear.weight" in log


def test_comfyui_final_layer_logged_by_host(report):
    # With ComfyUI names the host's key map has no entry for a final layer L2P lacks, so
    # the host drops those tensors before the pack receives them and logs each one.
    log = report["formats"]["comfyui"]["log"]
    assert "WARNING lora key not loaded: diffusion_model.final_layer.linear.lora_up.weight" in log
    assert "WARNING lora key not loaded: diffusion_model.final_layer.linear.lora_down.weight" in log


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
