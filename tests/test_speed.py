"""Speed settings against the plain computation: same results, and the work they skip is skipped.

Tolerances (float32):
- Settings that only reorder or batch work (batched guidance, channels-last convolutions)
  must match within 5e-5 absolute on velocities of order 1. That is about ten times the
  4e-6 by which a batch-2 pass and a batch-1 pass of the same image differ.
- Caching must match bit for bit.
- torch.compile must match within 1e-4, the rounding of fused kernels.
The FLOP count must equal what torch's FLOP counter sees in a real forward pass.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import l2p_core
from l2p_core import flops, network, synthetic
from l2p_core.sampling import guided_velocity

from .conftest import OFFICIAL_1K

REORDER_ATOL = 5e-5
COMPILE_ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return l2p_core.load_model(OFFICIAL_1K, dtype=torch.float32)


def caption(length: int, seed: int, width: int) -> torch.Tensor:
    return torch.randn(length, width, generator=torch.Generator().manual_seed(seed))


def image(size: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class RefinerCalls:
    """Count calls of the first context-refiner block."""

    def __init__(self, model) -> None:
        self.count = 0
        self.handle = model.context_refiner[0].register_forward_hook(self._count)

    def _count(self, *_) -> None:
        self.count += 1


@pytest.mark.parametrize(("size", "caption_tokens", "batch"), [(64, 7, 1), (96, 40, 2), (128, 33, 1)])
def test_flop_count_matches_torch_counter(model, size, caption_tokens, batch):
    config = model.config
    context = [caption(caption_tokens, index, config.cap_feat_dim) for index in range(batch)]
    counter = FlopCounterMode(display=False)
    # The counter counts attention only as the math backend's matrix products. It does not
    # count the fused CPU kernel.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        model(image(size, batch=batch), torch.full((batch,), 0.5), context)

    expected = flops.forward_flops(config, size, size, caption_tokens, batch)
    assert counter.get_total_flops() == expected.total


def test_flop_count_of_released_1k_step():
    config = synthetic.released_1k_config()
    forward = flops.forward_flops(config, 1024, 1024, 128)
    step = flops.step_flops(config, 1024, 1024, 128, cfg=2.0)

    assert 55e12 < forward.total < 60e12
    assert forward.decoder / forward.total < 0.02
    assert step == pytest.approx(2 * (forward.total - forward.captions))
    assert flops.step_flops(config, 1024, 1024, 128, cfg=1.0) == pytest.approx(step / 2)


def test_batched_guidance_matches_separate_passes(model):
    width = model.config.cap_feat_dim
    positive = [caption(40, 1, width), caption(9, 2, width)]
    negative = [caption(3, 3, width), caption(70, 4, width)]
    x = image(64, batch=2)
    sigma = torch.tensor(0.7)

    with torch.inference_mode():
        separate = guided_velocity(model, positive, negative, 2.5)(x, sigma)
        batched = guided_velocity(model, positive, negative, 2.5, batch_branches=True)(x, sigma)

    assert torch.allclose(batched, separate, rtol=0, atol=REORDER_ATOL)


def test_batched_guidance_sample_matches_separate(model):
    width = model.config.cap_feat_dim
    settings = {"width": 64, "height": 48, "seed": 5, "steps": 3, "cfg": 2.0}
    positive, negative = [caption(21, 1, width)], [caption(4, 2, width)]

    separate = l2p_core.sample(model, positive, negative, batch_cfg=False, **settings)
    batched = l2p_core.sample(model, positive, negative, batch_cfg=True, **settings)

    assert torch.allclose(batched, separate, rtol=0, atol=REORDER_ATOL)


def test_batched_guidance_tiled_counts_one_call_per_tile(model):
    width = model.config.cap_feat_dim
    reports = []
    settings = {"width": 96, "height": 64, "seed": 1, "steps": 2, "cfg": 2.0, "tile_size": 64, "tile_overlap": 32}
    positive, negative = [caption(12, 1, width)], [caption(5, 2, width)]

    separate = l2p_core.sample(model, positive, negative, batch_cfg=False, **settings)
    batched = l2p_core.sample(
        model, positive, negative, batch_cfg=True, tile_progress=lambda done, total: reports.append((done, total)),
        **settings,
    )  # fmt: skip

    assert torch.allclose(batched, separate, rtol=0, atol=REORDER_ATOL)
    # Guide: 2 steps at one call each; canvas: 2 tiles × 2 steps, both branches in each call.
    assert reports[-1] == (6, 6)


def test_captions_refined_once_per_sampling_run(model):
    width = model.config.cap_feat_dim
    calls = RefinerCalls(model)
    positive, negative = [caption(30, 1, width)], [caption(6, 2, width)]
    try:
        cached = l2p_core.sample(model, positive, negative, width=64, height=64, seed=2, steps=4, cfg=2.0)
        refined_with_reuse = calls.count
        calls.count = 0
        with torch.inference_mode():
            velocity = guided_velocity(model, positive, negative, 2.0)
            state = l2p_core.draw_noise(2, (1, 3, 64, 64))
            uncached = l2p_core.euler(velocity, state, l2p_core.flow_sigmas(4, shift=3.0)).clamp(-1, 1)
    finally:
        calls.handle.remove()

    assert refined_with_reuse == 2
    assert calls.count == 8
    assert torch.equal(cached, uncached)


def test_repeated_caption_in_batch_refined_once(model):
    width = model.config.cap_feat_dim
    shared = caption(17, 1, width)
    calls = RefinerCalls(model)
    try:
        with torch.inference_mode():
            model(image(32, batch=3), torch.full((3,), 0.4), [shared, shared, shared])
    finally:
        calls.handle.remove()

    assert calls.count == 1


def test_caption_reuse_sees_changed_values(model):
    width = model.config.cap_feat_dim
    features = caption(11, 1, width)
    x, sigma = image(32), torch.tensor([0.6])
    with torch.inference_mode(), model.reuse_captions():
        before = model(x, sigma, [features])
        features += 0.5
        after = model(x, sigma, [features])
    with torch.inference_mode():
        fresh = model(x, sigma, [features])

    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


def test_caption_cache_dropped_after_outermost_block(model):
    with model.reuse_captions():
        with model.reuse_captions():
            pass
        assert model._caption_cache is not None
    assert model._caption_cache is None


def test_position_cache_matches_rebuilt_tables(model):
    width = model.config.cap_feat_dim
    context = [caption(20, 1, width), caption(52, 2, width)]
    x, sigma = image(64, batch=2), torch.tensor([0.3, 0.8])
    offsets = torch.tensor([[3, 5], [0, 9]])
    try:
        model.cache_positions = False
        with torch.inference_mode():
            rebuilt = model(x, sigma, context, token_offsets=offsets)
        model.cache_positions = True
        with torch.inference_mode():
            first = model(x, sigma, context, token_offsets=offsets)
            second = model(x, sigma, context, token_offsets=offsets)
    finally:
        model.cache_positions = True

    assert torch.equal(first, rebuilt)
    assert torch.equal(second, rebuilt)


def test_position_cache_keys_on_offsets(model):
    width = model.config.cap_feat_dim
    context = [caption(20, 1, width)]
    x, sigma = image(64), torch.tensor([0.3])
    with torch.inference_mode():
        shifted = model(x, sigma, context, token_offsets=torch.tensor([[4, 0]]))
        unshifted = model(x, sigma, context)

    assert not torch.equal(shifted, unshifted)


def test_position_cache_stays_within_budget(model, monkeypatch):
    monkeypatch.setattr(network, "POSITION_CACHE_BYTES", 40_000)
    model._position_cache.clear()
    context = [caption(8, 1, model.config.cap_feat_dim)]
    with torch.inference_mode():
        for size in (32, 48, 64, 80, 96, 112):
            model(image(size), torch.tensor([0.5]), context)
    cached = sum(tables.cos.nbytes + tables.sin.nbytes for tables in model._position_cache.values())

    assert 0 < cached <= 40_000
    assert len(model._position_cache) < 13


def test_channels_last_decoder_matches(model):
    context = [caption(15, 1, model.config.cap_feat_dim)]
    x, sigma = image(128, batch=2), torch.tensor([0.2, 0.9])
    assert model.local_decoder.channels_last
    with torch.inference_mode():
        channels_last = model(x, sigma, context * 2)
        model.local_decoder.channels_last = False
        try:
            contiguous = model(x, sigma, context * 2)
        finally:
            model.local_decoder.channels_last = True

    assert channels_last.is_contiguous()
    assert torch.allclose(channels_last, contiguous, rtol=0, atol=REORDER_ATOL)


def test_compiled_network_matches_eager():
    compiled = l2p_core.load_model(OFFICIAL_1K, dtype=torch.float32)
    eager = l2p_core.load_model(OFFICIAL_1K, dtype=torch.float32)
    compiled.compile_blocks()
    width = eager.config.cap_feat_dim
    context = [caption(25, 1, width)]
    x, sigma = image(64), torch.tensor([0.45])

    with torch.inference_mode():
        expected = eager(x, sigma, context)
        actual = compiled(x, sigma, context)

    assert set(compiled.state_dict()) == set(eager.state_dict())
    assert torch.allclose(actual, expected, rtol=0, atol=COMPILE_ATOL)
