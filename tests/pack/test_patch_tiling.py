"""L2P Patch Tiling without a host: the node's checks, and the wrapper that stock samplers call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

DIFFUSION_MODEL = "diffusion_model"
PREPARE_SAMPLING = "prepare_sampling"


class FakePatcher:
    """The part of ComfyUI's ModelPatcher that the tiling node uses: clone and keyed wrappers."""

    def __init__(self, model, wrappers: dict | None = None) -> None:
        self.model = model
        self.wrappers = wrappers or {}

    def clone(self) -> FakePatcher:
        copied = {kind: {key: list(items) for key, items in keyed.items()} for kind, keyed in self.wrappers.items()}
        return FakePatcher(self.model, copied)

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper) -> None:
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: str) -> None:
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: str) -> list:
        return self.wrappers.get(wrapper_type, {}).get(key, [])


@pytest.fixture(scope="module")
def synthetic(pack_module):
    return pack_module("l2p_core.synthetic")


@pytest.fixture(scope="module")
def network(pack_module, synthetic):
    diffusion_model = pack_module("nodes.diffusion_model")
    config = synthetic.tiny_config()
    network = diffusion_model.L2PDiffusionModel(l2p_config=config, dtype=torch.float32, image_model="t", dim=config.dim)
    network.load_state_dict(synthetic.random_state_dict(config, dtype=torch.float32))
    return network.eval()


@pytest.fixture(scope="module")
def node(pack_module):
    return pack_module("nodes.tiling").L2PPatchTiling


@pytest.fixture(scope="module")
def tiled_model(pack_module):
    return pack_module("nodes.tiled_model")


@pytest.fixture
def interrupts():
    """The stand-in host's interrupt flag and ProgressBar log, reset around each test."""
    import comfy.model_management
    import comfy.utils

    comfy.model_management.interrupt_processing = False
    comfy.utils.UPDATES.clear()
    yield SimpleNamespace(management=comfy.model_management, updates=comfy.utils.UPDATES)
    comfy.model_management.interrupt_processing = False


def patcher_for(network) -> FakePatcher:
    return FakePatcher(SimpleNamespace(diffusion_model=network))


def tile(node, model, tile_size=64, tile_overlap=16, tile_batch_size=1, decoder_tile_size=1024):
    (patched,) = node.execute(model, tile_size, tile_overlap, tile_batch_size, decoder_tile_size).args
    return patched


def stock_inputs(network, seed=0, width=128, height=96):
    """Inputs as ComfyUI's samplers pass them: a batch of two, padded context with a mask."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, height, width, generator=generator)
    context = torch.randn(2, 9, network.config.cap_feat_dim, generator=generator)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    return x, torch.tensor([0.5, 0.5]), context, mask


def run_stock(network, patched, inputs, **options):
    x, sigma, context, mask = inputs
    transformer_options = {"wrappers": patched.wrappers} | options
    with torch.inference_mode():
        return network(
            x, sigma, context=context, attention_mask=mask, num_tokens=9, transformer_options=transformer_options
        )


def test_node_clones_and_installs_wrappers(node, network, tiled_model):
    model = patcher_for(network)
    patched = tile(node, model)
    assert patched is not model
    assert model.wrappers == {}
    assert tiled_model.tiling_settings(patched) == tiled_model.TilingSettings(64, 16, 1, 1024)
    assert len(patched.get_wrappers(PREPARE_SAMPLING, tiled_model.WRAPPER_KEY)) == 1


def test_second_node_replaces_first(node, network, tiled_model):
    patched = tile(node, tile(node, patcher_for(network), tile_size=64), tile_size=128, decoder_tile_size=0)
    assert len(patched.get_wrappers(DIFFUSION_MODEL, tiled_model.WRAPPER_KEY)) == 1
    assert tiled_model.tiling_settings(patched) == tiled_model.TilingSettings(128, 16, 1, None)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tile_size": 100}, r"tile_size 100 px is not on the 16-px grid of the L2P 1K model.*for example 96"),
        ({"tile_overlap": 44}, r"tile_overlap 44 px is not on the 16-px grid.*for example 48"),
        ({"tile_size": 64, "tile_overlap": 64}, r"tile_overlap 64 px must be smaller than tile_size 64 px"),
        ({"decoder_tile_size": 1000}, r"decoder_tile_size 1000 px is not on the 16-px grid.*or 0"),
    ],
)
def test_invalid_settings_are_rejected(node, network, settings, message):
    with pytest.raises(ValueError, match=message):
        tile(node, patcher_for(network), **settings)


def test_hr_grid_is_named(node, pack_module, synthetic):
    diffusion_model = pack_module("nodes.diffusion_model")
    config = synthetic.tiny_config(patch_size=64)
    network = diffusion_model.L2PDiffusionModel(l2p_config=config, dtype=torch.float32, image_model="t", dim=config.dim)
    with pytest.raises(ValueError, match=r"64-px grid of the L2P HR 4K model.*4096 px is the model's trained 64×64"):
        tile(node, patcher_for(network), tile_size=1000)


def test_other_models_are_rejected(node):
    other = FakePatcher(SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="L2P Patch Tiling node needs a model from the L2P Model Loader"):
        tile(node, other)


def test_stock_call_equals_core_tiler(node, network, pack_module, interrupts):
    """The wrapper on ComfyUI's padded context gives l2p_core's tiled result on the unpadded captions."""
    patch_tiling = pack_module("l2p_core.patch_tiling")
    inputs = stock_inputs(network)
    x, sigma, context, _ = inputs
    tiled = run_stock(network, tile(node, patcher_for(network)), inputs)
    with torch.inference_mode():
        expected = patch_tiling.PatchTiler(network, tile_px=64, overlap_px=16)(x, sigma, [context[0], context[1, :5]])
    assert torch.equal(tiled, expected)


def test_single_tile_equals_untiled(node, network, interrupts):
    inputs = stock_inputs(network, width=64, height=48)
    tiled = run_stock(network, tile(node, patcher_for(network), tile_size=64), inputs)
    untiled = run_stock(network, patcher_for(network), inputs)
    assert torch.equal(tiled, untiled)


def test_tile_batches_equal_single_tiles(node, network, interrupts):
    inputs = stock_inputs(network, seed=1)
    one = run_stock(network, tile(node, patcher_for(network), tile_batch_size=1), inputs)
    four = run_stock(network, tile(node, patcher_for(network), tile_batch_size=4), inputs)
    torch.testing.assert_close(four, one)


def test_progress_counts_tiles_times_steps(node, network, interrupts):
    """Six tiles at the second of two steps: the bar runs from 7 to 12 of 12."""
    options = {"sample_sigmas": torch.tensor([1.0, 0.5, 0.0]), "sigmas": torch.tensor([0.5, 0.5])}
    run_stock(network, tile(node, patcher_for(network)), stock_inputs(network), **options)
    assert interrupts.updates == [(value, 12) for value in range(7, 13)]


def test_decoder_tile_applies_during_the_call(node, network, interrupts):
    seen = []

    def probe(executor, *args, **kwargs):
        seen.append(executor.class_obj.decoder_tile_px)
        return executor(*args, **kwargs)

    default = network.decoder_tile_px
    patched = tile(node, patcher_for(network), decoder_tile_size=32)
    patched.add_wrapper_with_key(DIFFUSION_MODEL, "probe", probe)
    run_stock(network, patched, stock_inputs(network))
    assert set(seen) == {32}
    assert network.decoder_tile_px == default


def test_cancel_stops_within_one_tile(node, network, interrupts):
    calls = []

    def cancel_after_first_tile(executor, *args, **kwargs):
        calls.append(args[0].shape)
        interrupts.management.interrupt_processing = True
        return executor(*args, **kwargs)

    patched = tile(node, patcher_for(network))
    patched.add_wrapper_with_key(DIFFUSION_MODEL, "cancel", cancel_after_first_tile)
    with pytest.raises(interrupts.management.InterruptProcessingException):
        run_stock(network, patched, stock_inputs(network))
    assert len(calls) == 1
    assert interrupts.management.interrupt_processing is False


def test_host_oom_retries_smaller_batches(node, network, interrupts, tiled_model):
    """An accelerator error that the host counts as OOM halves the tile batch until it fits."""

    def fail_above_one_tile(executor, *args, **kwargs):
        if args[0].shape[0] > 2:
            raise RuntimeError("CUDA error: out of memory")
        return executor(*args, **kwargs)

    inputs = stock_inputs(network, seed=2)
    patched = tile(node, patcher_for(network), tile_batch_size=4)
    patched.add_wrapper_with_key(DIFFUSION_MODEL, "oom", fail_above_one_tile)
    retried = run_stock(network, patched, inputs)
    expected = run_stock(network, tile(node, patcher_for(network)), inputs)
    torch.testing.assert_close(retried, expected)
    (wrapper,) = patched.get_wrappers(DIFFUSION_MODEL, tiled_model.WRAPPER_KEY)
    assert wrapper.batch_size == 1


def test_oom_on_one_tile_fails_with_advice(node, network, interrupts, pack_module):
    def always_oom(executor, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    patched = tile(node, patcher_for(network))
    patched.add_wrapper_with_key(DIFFUSION_MODEL, "oom", always_oom)
    with pytest.raises(pack_module("l2p_core").L2PError, match="Out of memory on a single 64×64 px tile"):
        run_stock(network, patched, stock_inputs(network))


def test_other_errors_pass_through(node, network, interrupts):
    def broken(executor, *args, **kwargs):
        raise RuntimeError("shape mismatch")

    patched = tile(node, patcher_for(network), tile_batch_size=4)
    patched.add_wrapper_with_key(DIFFUSION_MODEL, "broken", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_stock(network, patched, stock_inputs(network))


def test_estimate_sees_tiling_while_preparing(node, network, tiled_model):
    patched = tile(node, patcher_for(network))
    (prepare,) = patched.get_wrappers(PREPARE_SAMPLING, tiled_model.WRAPPER_KEY)
    seen = prepare(lambda: tiled_model.tiling_for_estimate(None))
    assert seen == tiled_model.tiling_settings(patched)
    assert tiled_model.tiling_for_estimate(None) is None


def test_estimate_sees_tiling_of_current_patcher(node, network, tiled_model):
    patched = tile(node, patcher_for(network))
    assert tiled_model.tiling_for_estimate(patched) == tiled_model.tiling_settings(patched)
    assert tiled_model.tiling_for_estimate(patcher_for(network)) is None


class RaisingNetwork:
    """A network stand-in whose every call raises `error`."""

    config = None

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


def test_host_network_translates_host_oom(tiled_model):
    wrapped = tiled_model.HostNetwork(RaisingNetwork(RuntimeError("HIP error: out of memory")))
    with pytest.raises(torch.OutOfMemoryError, match="HIP error: out of memory"):
        wrapped(torch.zeros(1), torch.zeros(1), [])


def test_host_network_passes_other_errors(tiled_model):
    wrapped = tiled_model.HostNetwork(RaisingNetwork(ValueError("caption width")))
    with pytest.raises(ValueError, match="caption width"):
        wrapped(torch.zeros(1), torch.zeros(1), [])
