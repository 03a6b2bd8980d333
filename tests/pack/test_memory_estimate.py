"""The working-memory estimate that the model gives ComfyUI, against measured peaks.

The measurements come from `python benchmarks/tiling_memory.py` (docs/benchmarks.md) on a 2-core CPU
in float32 with PyTorch's CPU attention. They are the peak growth of anonymous resident
memory while sampling one step at cfg 1 with the script's mid-size network (1024-px
tiles, 256-px overlap), and while running the local decoder alone at 4096². The estimate is checked in both of
ComfyUI's cases: memory-efficient attention (GPUs with flash attention or xformers) and
the other one (the CPU, and GPUs without those kernels), which is several times larger.
"""

from __future__ import annotations

import pytest

MIB = 2**20

# benchmarks/tiling_memory.py's NETWORK.
BENCHMARK_NETWORK = {
    "dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "n_refiner_layers": 1,
    "cap_feat_dim": 64,
    "decoder_channels": (16, 32, 64, 128),
}
# Peak growth in MiB of l2p_core.sample at each canvas side, tiled and untiled (with the
# network's default 1024-px decoder tiles).
MEASURED_TILED_MIB = {2048: 835, 4096: 1555, 8192: 6074}
MEASURED_UNTILED_MIB = {2048: 813}
# Measured growth per canvas between 4096² and 8192², in float32 RGB canvas buffers.
MEASURED_CANVAS_BUFFERS = 7.8
# The local decoder alone on a 4096² image, whole and in 1024-px tiles. The script's own
# input image, feature map and output are part of these figures.
MEASURED_DECODER_MIB = {None: 8322, 1024: 1274}

# The estimate must cover each measurement, and may exceed it at most this many times.
# The headroom in the decoder's workspace and the canvas buffers allows 2.5 times; the
# host's formula for the other attention case is 0.15 / (0.01 × 4 bytes) = 3.75 times the
# efficient one in float32.
MAX_OVERESTIMATE = {True: 2.5, False: 4.0}


@pytest.fixture(scope="module")
def estimate(pack_module):
    return pack_module("nodes.memory_estimate")


@pytest.fixture(scope="module")
def settings(pack_module):
    return pack_module("nodes.tiling_settings")


@pytest.fixture(scope="module")
def config(pack_module):
    return pack_module("l2p_core.synthetic").tiny_config(**BENCHMARK_NETWORK)


@pytest.fixture(scope="module")
def benchmark_tiling(settings):
    return settings.TilingSettings(tile_px=1024, overlap_px=256, batch_size=1, decoder_tile_px=1024)


def estimated_mib(estimate, config, side, tiling, efficient_attention):
    return (
        estimate.activation_bytes(
            config, (1, 3, side, side), 4, efficient_attention=efficient_attention, decoder_tile_px=1024, tiling=tiling
        )
        / MIB
    )


@pytest.mark.parametrize("efficient_attention", [True, False])
@pytest.mark.parametrize("side", sorted(MEASURED_TILED_MIB))
def test_tiled_estimate_covers_measurement(estimate, config, benchmark_tiling, side, efficient_attention):
    measured = MEASURED_TILED_MIB[side]
    estimated = estimated_mib(estimate, config, side, benchmark_tiling, efficient_attention)
    assert estimated >= measured
    assert estimated <= MAX_OVERESTIMATE[efficient_attention] * measured


@pytest.mark.parametrize("efficient_attention", [True, False])
@pytest.mark.parametrize("side", sorted(MEASURED_UNTILED_MIB))
def test_untiled_estimate_covers_measurement(estimate, config, side, efficient_attention):
    measured = MEASURED_UNTILED_MIB[side]
    estimated = estimated_mib(estimate, config, side, None, efficient_attention)
    assert estimated >= measured
    assert estimated <= MAX_OVERESTIMATE[efficient_attention] * measured


@pytest.mark.parametrize("efficient_attention", [True, False])
def test_tiled_estimate_grows_by_canvas_buffers_only(estimate, config, benchmark_tiling, efficient_attention):
    canvas_mib = {side: 3 * side * side * 4 / MIB for side in (2048, 4096, 8192)}
    per_tile = {
        side: estimated_mib(estimate, config, side, benchmark_tiling, efficient_attention)
        - estimate.CANVAS_BUFFERS * canvas_mib[side]
        for side in canvas_mib
    }
    assert per_tile[4096] == pytest.approx(per_tile[2048])
    assert per_tile[8192] == pytest.approx(per_tile[2048])
    assert estimate.CANVAS_BUFFERS >= MEASURED_CANVAS_BUFFERS


@pytest.mark.parametrize("decoder_tile_px", sorted(MEASURED_DECODER_MIB, key=str))
def test_decoder_estimate_covers_measurement(estimate, config, decoder_tile_px):
    side = 4096
    # The script's input image and output (float32 RGB) and its feature map on the token grid.
    script_buffers = (2 * 3 * side * side + config.dim * (side // 16) ** 2) * 4 / MIB
    estimated = estimate.decoder_bytes(config, side, side, 4, decoder_tile_px=decoder_tile_px) / MIB
    measured = MEASURED_DECODER_MIB[decoder_tile_px]
    assert estimated + script_buffers >= measured
    assert estimated + script_buffers <= MAX_OVERESTIMATE[True] * measured


def test_efficient_attention_estimate_is_smaller(estimate, config):
    """Untiled at 4096², the backbone dominates, and there the host's two formulas differ 3.75 times."""
    efficient = estimated_mib(estimate, config, 4096, None, True)
    other = estimated_mib(estimate, config, 4096, None, False)
    assert other > 2 * efficient


def test_tile_batch_multiplies_tile_activations(estimate, config, benchmark_tiling, settings):
    batched = settings.TilingSettings(1024, 256, 4, 1024)
    canvas = estimate.CANVAS_BUFFERS * 3 * 4096 * 4096 * 4 / MIB
    one = estimated_mib(estimate, config, 4096, benchmark_tiling, True) - canvas
    four = estimated_mib(estimate, config, 4096, batched, True) - canvas
    assert four == pytest.approx(4 * one)


def test_full_size_1k_estimate(estimate, pack_module):
    """The released 1K shapes in bfloat16: a tiled 4096² pass works like one 1024² image plus its canvases."""
    config = pack_module("l2p_core.synthetic").tiny_config(
        dim=3840, n_heads=30, n_layers=1, n_refiner_layers=1, cap_feat_dim=2560, decoder_channels=(64, 128, 256, 512)
    )
    tiling = pack_module("nodes.tiling_settings").default_tiling(config)

    def gib_without_canvas(side, tiling):
        total = estimate.activation_bytes(
            config, (1, 3, side, side), 2, efficient_attention=True, decoder_tile_px=1024, tiling=tiling
        )
        return (total - estimate.CANVAS_BUFFERS * 3 * side * side * 4) / 2**30

    assert 1.0 < gib_without_canvas(1024, None) < 3.0
    assert gib_without_canvas(4096, tiling) == pytest.approx(gib_without_canvas(1024, None))
    assert gib_without_canvas(4096, None) > 4 * gib_without_canvas(4096, tiling)
