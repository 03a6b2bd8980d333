"""Low-VRAM modes against the normal path on the CPU: float8 block weights and block streaming.

Tolerances, from measurements on a 2-core CPU (torch 2.13, float32 compute) with the
random test weights (`python benchmarks/low_vram.py` prints them):

- fp8 velocity, relative L2 error against float32: at most 0.076 on the reference tiny
  checkpoint (cases a–d; bfloat16 weights give 0.017) and 0.035 on the 256-wide, 4-layer
  random network below. Rounding to e4m3's 3 mantissa bits costs about 2.7 % per weight,
  and random networks amplify it. The tests allow 0.10.
- A whole 4-step, cfg 2 sampling run of that network with fp8 weights: relative L2 error
  0.014 of the image. The test allows 0.03.
- Block streaming copies weights without changing them, so its outputs must be bit-identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import l2p_core
from l2p_core import cli, memory_budget, synthetic
from l2p_core.block_streaming import BLOCK_STACKS, BlockStreamer
from l2p_core.errors import CheckpointError, SamplingCancelled
from l2p_core.fp8 import (
    FP8_MAX,
    Float8Linear,
    NonFiniteWeightError,
    fp8_scale,
    quantise_fp8,
)

from .conftest import FIXTURES, OFFICIAL_1K

FP8 = "fp8_e4m3fn"
CASES = ("a", "b", "c", "d")
FP8_VELOCITY_TOLERANCE = 0.10
FP8_IMAGE_TOLERANCE = 0.03
GIB = 2**30


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


@pytest.fixture(scope="module")
def forward_cases() -> list[tuple]:
    reference = load_file(FIXTURES / "reference-forward-1k.safetensors")
    return [(reference[f"{case}.x"], reference[f"{case}.sigma"], [reference[f"{case}.cap_feats"]]) for case in CASES]


@pytest.fixture(scope="module")
def mid_checkpoint(tmp_path_factory) -> Path:
    config = synthetic.tiny_config(dim=256, n_heads=4, n_layers=4, n_refiner_layers=2, cap_feat_dim=64)
    return synthetic.write_checkpoint(tmp_path_factory.mktemp("mid") / "mid.safetensors", config)


def mid_inputs() -> list[tuple]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(1, 3, 64, 64, generator=generator),
            torch.tensor([sigma]),
            [torch.randn(20, 64, generator=generator)],
        )
        for sigma in (0.9, 0.5, 0.1)
    ]


@pytest.fixture(scope="module")
def small_cases(forward_cases) -> list[tuple]:
    """Cases c and d (96×160 and 64×96 px), for checks of exact equality that need no large inputs."""
    return forward_cases[2:]


def velocities(model, cases) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(x, sigma, context) for x, sigma, context in cases]


# --- float8 quantisation -------------------------------------------------------------------


@pytest.mark.parametrize("absmax", [1e-6, 0.016, 0.5, 1.0, 448.0, 3000.0])
def test_fp8_scale_maps_absmax_into_top_binade(absmax):
    scale = fp8_scale(absmax)
    assert scale == 2.0 ** round(torch.log2(torch.tensor(scale)).item())
    assert FP8_MAX / 2 < absmax / scale <= FP8_MAX


def test_fp8_keeps_small_weights():
    """A 3840-wide projection's weights (std 3840^-½) lose 5 % of values to zero unscaled, none scaled."""
    weight = torch.randn(256, 3840, generator=torch.Generator().manual_seed(0)) / 3840**0.5
    quantised, scale = quantise_fp8(weight)
    scaled = quantised.float() * scale
    unscaled = weight.to(torch.float8_e4m3fn).float()

    assert (unscaled == 0).float().mean() > 0.01
    assert (scaled == 0).float().mean() < 1e-4
    assert relative_error(scaled, weight) < 0.03
    assert relative_error(scaled, weight) < relative_error(unscaled, weight)


def test_fp8_all_zero_weight():
    quantised, scale = quantise_fp8(torch.zeros(4, 8))
    assert scale == 1.0
    assert torch.equal(quantised.float(), torch.zeros(4, 8))


@pytest.mark.parametrize("file_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_quantises_float8_file_weights(file_dtype):
    """A checkpoint already stored in float8 is rescaled without error (torch has no CPU max for float8)."""
    weight = (torch.randn(64, 32, generator=torch.Generator().manual_seed(1)) * 0.05).to(file_dtype)
    quantised, scale = quantise_fp8(weight)

    assert quantised.dtype == torch.float8_e4m3fn
    assert relative_error(quantised.float() * scale, weight.float()) < 0.05


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_fp8_rejects_non_finite(bad):
    weight = torch.ones(6, 4)
    weight[5, 2] = bad
    with pytest.raises(NonFiniteWeightError, match=r"'layers.0.w1' contains 1 NaN or Inf value\(s\) in rows 0 to 5"):
        quantise_fp8(weight, name="layers.0.w1")


def test_fp8_split_parts_equal_fused():
    parts = [torch.randn(3, 5) * factor for factor in (0.1, 1.0, 10.0)]
    fused_quantised, fused_scale = quantise_fp8(torch.cat(parts))
    split_quantised, split_scale = quantise_fp8(parts)
    assert split_scale == fused_scale
    assert torch.equal(split_quantised.float(), fused_quantised.float())


def test_fp8_chunked_equals_whole(monkeypatch):
    weight = torch.randn(37, 11)
    whole = quantise_fp8(weight)
    monkeypatch.setattr(l2p_core.fp8, "QUANTISE_CHUNK_VALUES", 20)
    chunked = quantise_fp8(weight)
    assert chunked[1] == whole[1]
    assert torch.equal(chunked[0].float(), whole[0].float())


def test_fp8_upcast_is_exact_in_bfloat16():
    layer = Float8Linear(16, 8, bias=False)
    layer.set_weight(*quantise_fp8(torch.randn(8, 16) * 0.01))
    assert torch.equal(layer.dequantised_weight(torch.bfloat16).float(), layer.dequantised_weight(torch.float32))


def test_fp8_layers_are_block_projections():
    model = l2p_core.load_model(OFFICIAL_1K, weight_storage=FP8)
    converted = {name for name, module in model.named_modules() if isinstance(module, Float8Linear)}
    config = model.config
    blocks = [f"noise_refiner.{i}" for i in range(config.n_refiner_layers)]
    blocks += [f"context_refiner.{i}" for i in range(config.n_refiner_layers)]
    blocks += [f"layers.{i}" for i in range(config.n_layers)]
    projections = ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
    assert converted == {f"{block}.{projection}" for block in blocks for projection in projections}
    float8 = {name for name, parameter in model.named_parameters() if parameter.dtype == torch.float8_e4m3fn}
    assert float8 == {f"{name}.weight" for name in converted}


def test_fp8_nan_in_checkpoint_names_tensor(tmp_path):
    state = load_file(OFFICIAL_1K)
    state["layers.1.feed_forward.w2.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"nan.safetensors'.*'layers.1.feed_forward.w2.weight' contains 1 NaN"):
        l2p_core.load_model(path, weight_storage=FP8)


def test_fp8_rejects_unknown_storage():
    with pytest.raises(ValueError, match="weight_storage must be None .* got 'fp8'"):
        l2p_core.load_model(OFFICIAL_1K, weight_storage="fp8")


def test_fp8_rejects_custom_operations():
    with pytest.raises(ValueError, match="cannot be combined with custom operations"):
        l2p_core.load_model(OFFICIAL_1K, weight_storage=FP8, operations=l2p_core.TORCH_OPERATIONS)


# --- float8 against the normal path ---------------------------------------------------------


def test_fp8_velocity_tiny_fixture(forward_cases):
    reference = velocities(l2p_core.load_model(OFFICIAL_1K), forward_cases)
    fp8 = velocities(l2p_core.load_model(OFFICIAL_1K, weight_storage=FP8), forward_cases)
    errors = [relative_error(value, expected) for value, expected in zip(fp8, reference, strict=True)]
    assert max(errors) < FP8_VELOCITY_TOLERANCE, errors


def test_fp8_velocity_mid_size(mid_checkpoint):
    cases = mid_inputs()
    reference = velocities(l2p_core.load_model(mid_checkpoint), cases)
    fp8 = velocities(l2p_core.load_model(mid_checkpoint, weight_storage=FP8), cases)
    errors = [relative_error(value, expected) for value, expected in zip(fp8, reference, strict=True)]
    assert max(errors) < FP8_VELOCITY_TOLERANCE, errors


def test_convert_to_fp8_equals_fp8_loading(small_cases):
    converted = l2p_core.convert_to_fp8(l2p_core.load_model(OFFICIAL_1K))
    loaded = l2p_core.load_model(OFFICIAL_1K, weight_storage=FP8)
    for value, expected in zip(velocities(converted, small_cases), velocities(loaded, small_cases), strict=True):
        assert torch.equal(value, expected)


# --- block streaming ------------------------------------------------------------------------


class ResidencyRecorder:
    """Records, while each block runs, which blocks have device copies instead of their CPU storage.

    The compute device is the CPU here, so a device copy is distinguished from the storage tensor by
    its data pointer, recorded right after the streamer attached. A pre-hook on the block's
    first norm runs inside the block's forward, after the streamer has loaded it.
    """

    def __init__(self, streamer: BlockStreamer) -> None:
        self.streamer = streamer
        self.storage = {
            key: {name: parameter.data_ptr() for name, parameter in block.named_parameters()}
            for key, block in streamer.blocks.items()
        }
        self.records: list[tuple[str, int, bool]] = []
        for key, block in streamer.blocks.items():
            block.attention_norm1.register_forward_pre_hook(self._observer(key))

    def device_copies(self) -> set[str]:
        return {
            key
            for key, block in self.streamer.blocks.items()
            if any(parameter.data_ptr() != self.storage[key][name] for name, parameter in block.named_parameters())
        }

    def _observer(self, key: str):
        def observe(module, args) -> None:
            resident = self.device_copies()
            self.records.append((key, len(resident), key in resident))

        return observe


def streamed(path, resident_blocks: int, **options):
    model = l2p_core.load_model(path, resident_blocks=resident_blocks, **options)
    return model, model.block_streamer


def test_streaming_outputs_bit_identical(small_cases):
    reference = velocities(l2p_core.load_model(OFFICIAL_1K), small_cases)
    for resident_blocks in (1, 3):
        model, _ = streamed(OFFICIAL_1K, resident_blocks)
        for value, expected in zip(velocities(model, small_cases), reference, strict=True):
            assert torch.equal(value, expected), resident_blocks


def test_streaming_batched_call_bit_identical():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 32, 48, generator=generator)
    sigma = torch.tensor([0.7, 0.3])
    context = [torch.randn(9, 32, generator=generator), torch.randn(40, 32, generator=generator)]
    normal = l2p_core.load_model(OFFICIAL_1K)
    model, streamer = streamed(OFFICIAL_1K, 2)
    with torch.no_grad():
        assert torch.equal(model(x, sigma, context), normal(x, sigma, context))
    assert streamer.resident() == []


@pytest.mark.parametrize("resident_blocks", [1, 2, 3])
def test_streaming_keeps_at_most_n_resident(small_cases, resident_blocks):
    model, streamer = streamed(OFFICIAL_1K, resident_blocks)
    recorder = ResidencyRecorder(streamer)
    velocities(model, small_cases)

    assert {key for key, _, _ in recorder.records} == set(streamer.blocks)
    assert max(count for _, count, _ in recorder.records) <= resident_blocks
    assert [key for key, _, own in recorder.records if not own] == []
    assert recorder.device_copies() == set()
    assert streamer.resident() == []


def test_streaming_any_call_order(small_cases):
    """Blocks called one by one in a shuffled order, twice, give the unstreamed blocks' outputs."""
    normal = l2p_core.load_model(OFFICIAL_1K)
    model, streamer = streamed(OFFICIAL_1K, 2)
    recorder = ResidencyRecorder(streamer)
    config = model.config
    tokens = torch.randn(1, 32, config.dim, generator=torch.Generator().manual_seed(2))
    rope = l2p_core.rope.RotaryTables.from_positions(
        torch.zeros(1, 32, 3, dtype=torch.int64), config.axes_dims, config.rope_theta, torch.device("cpu")
    )
    adaln = torch.randn(1, config.adaln_dim)
    order = ["layers.1", "context_refiner.0", "noise_refiner.0", "layers.0", "layers.1", "noise_refiner.0"]

    with torch.no_grad():
        for _ in range(2):
            for key in order:
                stack, index = key.split(".")
                modulation = None if stack == "context_refiner" else adaln
                value = getattr(model, stack)[int(index)](tokens, rope, None, modulation)
                expected = getattr(normal, stack)[int(index)](tokens, rope, None, modulation)
                assert torch.equal(value, expected), key
        # A full forward pass after the out-of-order calls still matches and evicts everything.
        x, sigma, context = small_cases[0]
        assert torch.equal(model(x, sigma, context), normal(x, sigma, context))

    assert max(count for _, count, _ in recorder.records) <= 2
    assert [key for key, _, own in recorder.records if not own] == []
    assert recorder.device_copies() == set()


def test_streaming_error_mid_forward_evicts_all(small_cases):
    model, streamer = streamed(OFFICIAL_1K, 2)
    recorder = ResidencyRecorder(streamer)
    attention = model.layers[1].attention

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure")

    attention.forward = fail
    x, sigma, context = small_cases[0]
    with pytest.raises(RuntimeError, match="injected failure"), torch.no_grad():
        model(x, sigma, context)
    assert recorder.records[-1][0] == "layers.1"
    assert recorder.device_copies() == set()
    assert streamer.resident() == []

    del attention.forward
    reference = l2p_core.load_model(OFFICIAL_1K)
    with torch.no_grad():
        assert torch.equal(model(x, sigma, context), reference(x, sigma, context))


def test_streaming_error_before_block_evicts_all(small_cases):
    """A forward pre-hook runs outside the block's streamed forward; the network's wrapper still evicts."""
    model, streamer = streamed(OFFICIAL_1K, 3)
    recorder = ResidencyRecorder(streamer)

    def fail(module, args):
        raise RuntimeError("injected hook failure")

    model.layers[1].register_forward_pre_hook(fail)
    x, sigma, context = small_cases[0]
    with pytest.raises(RuntimeError, match="injected hook failure"), torch.no_grad():
        model(x, sigma, context)
    assert recorder.records
    assert recorder.device_copies() == set()


def test_streaming_cancel_evicts_all():
    model, streamer = streamed(OFFICIAL_1K, 2)
    recorder = ResidencyRecorder(streamer)
    steps_run = []
    caption = [torch.randn(7, model.config.cap_feat_dim, generator=torch.Generator().manual_seed(4))]
    with pytest.raises(SamplingCancelled):
        l2p_core.sample(
            model, caption, caption, width=32, height=32, seed=1, steps=4,
            callback=lambda step, total, x0: steps_run.append(step), cancel_check=lambda: len(steps_run) >= 1,
        )  # fmt: skip
    assert steps_run == [1]
    assert recorder.records
    assert recorder.device_copies() == set()


def test_stream_blocks_context_manager_detaches(small_cases):
    model = l2p_core.load_model(OFFICIAL_1K)
    reference = velocities(model, small_cases)
    with l2p_core.stream_blocks(model, "cpu", resident_blocks=1) as streamer:
        assert model.block_streamer is streamer
        streamed_values = velocities(model, small_cases)
    assert model.block_streamer is None
    assert "forward" not in vars(model)
    assert all("forward" not in vars(block) for block in streamer.blocks.values())
    for value, expected in zip(streamed_values, reference, strict=True):
        assert torch.equal(value, expected)
    for value, expected in zip(velocities(model, small_cases), reference, strict=True):
        assert torch.equal(value, expected)


def test_streaming_twice_rejected():
    model, _ = streamed(OFFICIAL_1K, 2)
    with pytest.raises(RuntimeError, match="already streams its blocks"):
        l2p_core.stream_blocks(model, "cpu")


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2"])
def test_resident_blocks_invalid(value):
    with pytest.raises(ValueError, match="resident_blocks must be a whole number ≥ 1"):
        l2p_core.load_model(OFFICIAL_1K, resident_blocks=value)


# --- both modes and whole sampling runs ----------------------------------------------------


def test_fp8_streaming_velocity_equals_fp8(small_cases):
    fp8 = velocities(l2p_core.load_model(OFFICIAL_1K, weight_storage=FP8), small_cases)
    model, streamer = streamed(OFFICIAL_1K, 2, weight_storage=FP8)
    recorder = ResidencyRecorder(streamer)
    for value, expected in zip(velocities(model, small_cases), fp8, strict=True):
        assert torch.equal(value, expected)
    assert max(count for _, count, _ in recorder.records) <= 2


@pytest.fixture(scope="module")
def sampled_images(mid_checkpoint) -> dict[str, torch.Tensor]:
    """4-step, cfg 2 images of the mid-size network in each mode."""
    generator = torch.Generator().manual_seed(1)
    positive, negative = [torch.randn(20, 64, generator=generator)], [torch.randn(7, 64, generator=generator)]
    modes = {
        "float32": {},
        "fp8": {"weight_storage": FP8},
        "streaming": {"resident_blocks": 2},
        "fp8 + streaming": {"weight_storage": FP8, "resident_blocks": 2},
    }
    images = {}
    for mode, options in modes.items():
        model = l2p_core.load_model(mid_checkpoint, **options)
        images[mode] = l2p_core.sample(model, positive, negative, width=64, height=64, seed=3, steps=4, cfg=2.0)
    return images


def test_sampling_fp8_close_to_float32(sampled_images):
    assert relative_error(sampled_images["fp8"], sampled_images["float32"]) < FP8_IMAGE_TOLERANCE


def test_sampling_streaming_equals_float32(sampled_images):
    assert torch.equal(sampled_images["streaming"], sampled_images["float32"])


def test_sampling_fp8_streaming_equals_fp8(sampled_images):
    assert torch.equal(sampled_images["fp8 + streaming"], sampled_images["fp8"])


# --- command line --------------------------------------------------------------------------


class StubTextEncoder:
    """Stands in for Qwen3-4B: fixed random caption features of the tiny model's width."""

    def __init__(self, width: int) -> None:
        self.width = width

    def encode(self, prompt: str) -> torch.Tensor:
        return torch.randn(5 + len(prompt) % 3, self.width, generator=torch.Generator().manual_seed(len(prompt)))


def run_cli(tmp_path, monkeypatch, name: str, *options: str) -> tuple[int, Path, object]:
    """Run l2p-generate on a tiny model with a stub encoder; return (exit status, PNG, loaded model)."""
    config = synthetic.tiny_config()
    checkpoint = tmp_path / "l2p.safetensors"
    if not checkpoint.exists():
        synthetic.write_checkpoint(checkpoint, config)
    loaded = {}

    def load_and_keep(*args, **kwargs):
        loaded["model"] = l2p_core.load_model(*args, **kwargs)
        return loaded["model"]

    monkeypatch.setattr(cli, "load_text_encoder", lambda *args, **kwargs: StubTextEncoder(config.cap_feat_dim))
    monkeypatch.setattr(cli, "load_model", load_and_keep)
    output = tmp_path / f"{name}.png"
    arguments = [
        "--model",
        str(checkpoint),
        "--text-encoder",
        str(tmp_path),
        "--prompt",
        "a red cat",
        "-o",
        str(output),
    ]
    status = cli.main([*arguments, "--width", "32", "--height", "32", "--steps", "2", *options])
    return status, output, loaded.get("model")


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def png_settings(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text[cli.SETTINGS_CHUNK])


def test_cli_fp8_and_streaming(tmp_path, monkeypatch):
    status, output, model = run_cli(tmp_path, monkeypatch, "low-vram", "--fp8", "--stream-blocks", "2")
    assert status == 0
    assert png_settings(output)["block_weights"] == FP8
    assert isinstance(model.layers[0].feed_forward.w1, Float8Linear)
    assert model.block_streamer.resident_blocks == 2


def test_cli_streaming_same_pixels(tmp_path, monkeypatch):
    plain_status, plain, _ = run_cli(tmp_path, monkeypatch, "plain")
    streamed_status, streamed_output, _ = run_cli(tmp_path, monkeypatch, "streamed", "--stream-blocks", "1")
    assert (plain_status, streamed_status) == (0, 0)
    assert png_settings(plain)["block_weights"] == "float32"
    assert np.array_equal(png_pixels(streamed_output), png_pixels(plain))


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_cli_stream_blocks_invalid(tmp_path, monkeypatch, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tmp_path, monkeypatch, "invalid", "--stream-blocks", value)
    assert exit_info.value.code == 2
    assert "--stream-blocks" in capsys.readouterr().err


# --- memory accounting ---------------------------------------------------------------------


def tensor_bytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@pytest.mark.parametrize("fp8", [False, True])
def test_weight_bytes_match_loaded_model(fp8):
    model = l2p_core.load_model(OFFICIAL_1K, dtype=torch.bfloat16, weight_storage=FP8 if fp8 else None)
    estimate = memory_budget.device_memory(model.config, fp8=fp8)
    assert estimate.weight_bytes == tensor_bytes(model.parameters())


@pytest.mark.parametrize("fp8", [False, True])
def test_streaming_weight_bytes_bound_resident_copies(small_cases, fp8):
    model, streamer = streamed(OFFICIAL_1K, 2, weight_storage=FP8 if fp8 else None)
    outside = tensor_bytes(
        parameter for name, parameter in model.named_parameters() if not name.startswith(BLOCK_STACKS)
    )
    peaks = []
    for block in streamer.blocks.values():
        block.attention_norm1.register_forward_pre_hook(
            lambda module, args: peaks.append(
                outside + sum(tensor_bytes(copies.values()) for copies, _ in streamer._resident.values())
            )
        )
    velocities(model, small_cases)
    estimate = memory_budget.device_memory(model.config, fp8=fp8, resident_blocks=2, dtype_bytes=4)
    assert max(peaks) <= estimate.weight_bytes
    assert estimate.host_bytes == tensor_bytes(
        parameter for name, parameter in model.named_parameters() if name.startswith(BLOCK_STACKS)
    )


def test_released_1k_parameter_count():
    counts = memory_budget.count_weights(synthetic.released_1k_config())
    assert counts.total_values == 6_166_464_515
    assert counts.fp8_block_values / counts.total_values > 0.97


@pytest.mark.parametrize(
    "budget_gib, fp8, resident_blocks",
    [(8, True, 4), (8, False, 4), (12, True, None)],
)
def test_released_1k_fits_budget(budget_gib, fp8, resident_blocks):
    estimate = memory_budget.device_memory(synthetic.released_1k_config(), fp8=fp8, resident_blocks=resident_blocks)
    assert estimate.fits(budget_gib * GIB), memory_budget.memory_table(synthetic.released_1k_config())


@pytest.mark.parametrize("budget_gib, fp8", [(8, True), (12, False)])
def test_released_1k_needs_low_vram_mode(budget_gib, fp8):
    """Without streaming, fp8 alone does not fit 8 GB and bfloat16 does not fit 12 GB."""
    estimate = memory_budget.device_memory(synthetic.released_1k_config(), fp8=fp8)
    assert not estimate.fits(budget_gib * GIB)


# --- loading memory ------------------------------------------------------------------------

MEASURE_FP8_LOAD = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch
    import l2p_core

    def rss_anon_kb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])

    torch.ones(1) + 1
    baseline = rss_anon_kb()
    peak = baseline
    running = True

    def sample():
        global peak
        while running:
            peak = max(peak, rss_anon_kb())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    model = l2p_core.load_model(sys.argv[1], dtype=torch.bfloat16, weight_storage="fp8_e4m3fn")
    running = False
    sampler.join()
    tensor_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"growth_bytes": (peak - baseline) * 1024, "tensor_bytes": tensor_bytes}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read RssAnon")
def test_fp8_loading_never_holds_full_precision(tmp_path):
    """Peak anonymous memory while loading fp8 stays far below the bfloat16 model's size."""
    config = synthetic.tiny_config(dim=1024, n_heads=8, n_layers=4, n_refiner_layers=1, cap_feat_dim=256)
    checkpoint = synthetic.write_checkpoint(tmp_path / "large.safetensors", config)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_FP8_LOAD, str(checkpoint)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    bf16_bytes = 2 * memory_budget.count_weights(config).total_values
    assert figures["tensor_bytes"] < 0.6 * bf16_bytes
    assert figures["growth_bytes"] <= figures["tensor_bytes"] + 48 * 2**20
