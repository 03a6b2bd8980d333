"""The LoRA skip summary and the observation of the host's "lora key not loaded" records, without the host."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

CLOSING = ' ComfyUI also logs each skipped key, as "lora key not loaded" or "NOT LOADED".'


@pytest.fixture(scope="module")
def skips(pack_module):
    return pack_module("nodes.lora_skips")


@pytest.fixture(scope="module")
def host_log(pack_module):
    return pack_module("nodes.lora_host_log")


@pytest.fixture
def recorder(host_log):
    """A fresh observation object, closed on every thread the test used when it ends."""
    recorder = host_log.DroppedLoraKeys()
    yield recorder
    logging.getLogger().removeFilter(recorder)


class Model:
    """Stand-in for the L2PModel a LoRA is loaded onto."""


def load_lora(key: str) -> None:
    """Log as `comfy.lora.load_lora` does for a LoRA tensor outside the key map (same function name)."""
    logging.warning(f"lora key not loaded: {key}")


def host_key_map_frame():
    """Return a frame of a function named and placed like `comfy.lora.model_lora_keys_unet`."""
    namespace = {"__name__": "comfy.lora", "sys": sys}
    exec("def model_lora_keys_unet():\n    return sys._getframe(0)", namespace)
    return namespace["model_lora_keys_unet"]()


def test_summary_comfyui_names(skips):
    embedder = skips.SkippedPatch("diffusion_model.x_embedder.weight", 3, 64, 768)
    dropped = [
        "diffusion_model.final_layer.linear.lora_up.weight",
        "diffusion_model.final_layer.linear.lora_down.weight",
        "diffusion_model.final_layer.linear.alpha",
        "diffusion_model.caption_projector.0.lora_up.weight",
    ]
    assert skips.summarize_skipped(30, [embedder], [], dropped) == (
        "L2P: skipped 7 LoRA tensors and applied the other 30. "
        "Latent final layer: 3 (L2P decodes with its local decoder instead). "
        "Latent patch embedder: 3 (64 wide, L2P's is 768). "
        "Unknown: 1 (no weight of that name in L2P or latent Z-Image: "
        "diffusion_model.caption_projector.0.lora_up.weight)." + CLOSING
    )


def test_summary_mapped_final_layer(skips):
    # diffusers and DiffSynth names reach the patcher as a patch on a weight L2P lacks.
    absent = [skips.SkippedPatch("diffusion_model.final_layer.linear.weight", 2)]
    assert skips.summarize_skipped(48, [], absent, []) == (
        "L2P: skipped 2 LoRA tensors and applied the other 48. "
        "Latent final layer: 2 (L2P decodes with its local decoder instead)." + CLOSING
    )


@pytest.mark.parametrize(
    "key",
    [
        "diffusion_model.final_layer.adaLN_modulation.1.lora_up.weight",
        "lora_unet_final_layer_linear.lora_down.weight",
        "transformer.all_final_layer.2-1.linear.lora_A.weight",
        "all_final_layer.2-1.linear.alpha",
    ],
)
def test_final_layer_in_every_naming(skips, key):
    assert "Latent final layer: 1 " in skips.summarize_skipped(0, [], [], [key])


def test_absent_non_final_weight_unknown(skips):
    absent = [skips.SkippedPatch("diffusion_model.context_refiner.0.adaLN_modulation.0.weight", 3)]
    summary = skips.summarize_skipped(0, [], absent, [])
    assert "Unknown: 3 (no weight of that name in L2P or latent Z-Image: " in summary
    assert "context_refiner.0.adaLN_modulation.0.weight" in summary
    assert "Latent final layer" not in summary


def test_other_shape_group(skips):
    # An x_embedder update of L2P's width but another hidden size, and a misfit elsewhere.
    misfits = [
        skips.SkippedPatch("diffusion_model.x_embedder.weight", 2, 768, 768),
        skips.SkippedPatch("diffusion_model.layers.0.feed_forward.w1.weight", 3, 2560, 3840),
    ]
    summary = skips.summarize_skipped(10, misfits, [], [])
    assert summary.startswith("L2P: skipped 5 LoRA tensors and applied the other 10. Other shape: 5 ")
    assert "Latent patch embedder" not in summary


def test_summary_none_without_skips(skips):
    assert skips.summarize_skipped(12, [], [], []) is None


def test_single_tensor_singular(skips):
    summary = skips.summarize_skipped(4, [], [], ["mystery.lora_up.weight"])
    assert summary.startswith("L2P: skipped 1 LoRA tensor and applied the other 4. ")


def test_long_name_list_shortened(skips):
    names = [f"unknown_{index}.lora_up.weight" for index in range(8)]
    summary = skips.summarize_skipped(0, [], [], names)
    assert "unknown_4.lora_up.weight and 3 more)." in summary
    assert "unknown_5" not in summary


def test_recorder_copies_dropped_keys(recorder):
    model = Model()
    recorder.open(model)
    load_lora("diffusion_model.final_layer.linear.lora_up.weight")
    logging.warning("another warning")
    assert recorder.close(model) == ["diffusion_model.final_layer.linear.lora_up.weight"]


def test_recorder_keeps_host_records(recorder, caplog):
    model = Model()
    recorder.open(model)
    with caplog.at_level(logging.WARNING):
        load_lora("diffusion_model.final_layer.linear.lora_up.weight")
    recorder.close(model)
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", "lora key not loaded: diffusion_model.final_layer.linear.lora_up.weight")
    ]


def test_recorder_ignores_other_threads(recorder):
    model = Model()
    recorder.open(model)
    other = threading.Thread(target=load_lora, args=("from_another_thread.lora_up.weight",))
    other.start()
    other.join()
    assert recorder.close(model) == []


def test_recorder_ignores_closed_thread(recorder):
    model = Model()
    load_lora("before_open.lora_up.weight")
    recorder.open(model)
    assert recorder.close(model) == []
    load_lora("after_close.lora_up.weight")
    assert recorder.close(model) is None


def test_recorder_filter_only_while_open(recorder):
    model = Model()
    root = logging.getLogger()
    recorder.open(model)
    assert recorder in root.filters
    recorder.close(model)
    assert recorder not in root.filters


def test_reopen_discards_earlier_keys(recorder):
    model = Model()
    recorder.open(model)
    load_lora("earlier_load.lora_up.weight")
    recorder.open(model)
    load_lora("this_load.lora_up.weight")
    assert recorder.close(model) == ["this_load.lora_up.weight"]


def test_keys_not_given_to_other_model(recorder):
    observed, other = Model(), Model()
    recorder.open(observed)
    load_lora("for_the_observed_model.lora_up.weight")
    assert recorder.close(other) is None
    assert recorder not in logging.getLogger().filters


def test_key_map_call_opens_observation(host_log):
    model = Model()
    host_log.observe_state_dict_call(model, host_key_map_frame())
    load_lora("diffusion_model.final_layer.linear.alpha")
    assert host_log.take_dropped_lora_keys(model) == ["diffusion_model.final_layer.linear.alpha"]


def test_other_state_dict_call_opens_nothing(host_log):
    model = Model()
    host_log.observe_state_dict_call(model, sys._getframe(0))
    load_lora("outside_a_lora_load.lora_up.weight")
    assert host_log.take_dropped_lora_keys(model) is None
    assert host_log.DROPPED_LORA_KEYS not in logging.getLogger().filters
