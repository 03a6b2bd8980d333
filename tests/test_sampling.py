"""Sampler behaviour beyond the reference runs: schedule, guidance, batches, callbacks, errors."""

from __future__ import annotations

import math

import pytest
import torch

import l2p_core
from l2p_core import synthetic


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return l2p_core.load_model(tiny_checkpoint)


def captions(length: int, seed: int, width: int = 32) -> list[torch.Tensor]:
    return [torch.randn(length, width, generator=torch.Generator().manual_seed(seed))]


class CallCounter:
    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.calls = 0

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x, sigma, context):
        self.calls += 1
        return self.model(x, sigma, context)


def test_schedule_defaults_to_thirty_shifted_steps():
    sigmas = l2p_core.flow_sigmas(30)
    assert len(sigmas) == 31
    assert sigmas[0].item() == 1.0
    assert sigmas[-1].item() == 0.0
    assert math.isclose(sigmas[-2].item(), 3 * (1 / 30) / (1 + 2 * (1 / 30)), rel_tol=1e-6)


def test_img2img_start_applies_shift_after_strength():
    sigmas = l2p_core.flow_sigmas(4, shift=3.0, denoise=0.6)
    assert math.isclose(sigmas[0].item(), 3 * 0.6 / (1 + 2 * 0.6), rel_tol=1e-6)
    assert math.isclose(sigmas[0].item(), 0.8181818, rel_tol=1e-6)


@pytest.mark.parametrize(
    "bad", [{"steps": 0}, {"steps": 4, "denoise": 0.0}, {"steps": 4, "denoise": 1.5}, {"steps": 4, "shift": 0.0}]
)
def test_schedule_rejects_invalid_settings(bad):
    with pytest.raises(ValueError):
        l2p_core.flow_sigmas(**bad)


def test_sample_defaults_are_reference_settings():
    import inspect

    parameters = inspect.signature(l2p_core.sample).parameters
    assert parameters["steps"].default == 30
    assert parameters["cfg"].default == 2.0
    assert parameters["shift"].default == 3.0


def test_cfg_one_skips_negative_pass(model):
    counter = CallCounter(model)
    l2p_core.sample(counter, captions(5, 1), captions(3, 2), width=32, height=32, seed=0, steps=3, cfg=1.0)
    assert counter.calls == 3


def test_cfg_above_one_runs_both_passes(model):
    counter = CallCounter(model)
    l2p_core.sample(counter, captions(5, 1), captions(3, 2), width=32, height=32, seed=0, steps=3, cfg=2.0)
    assert counter.calls == 6


def test_batch_noise_is_one_draw_over_batch(model):
    batch = l2p_core.sample(model, captions(5, 1), captions(3, 2), width=32, height=48, seed=7, steps=2, batch_size=3)
    single = l2p_core.sample(model, captions(5, 1), captions(3, 2), width=32, height=48, seed=7, steps=2)
    expected_noise = torch.randn((3, 3, 48, 32), generator=torch.manual_seed(7), dtype=torch.float32)
    assert batch.shape == (3, 3, 48, 32)
    assert torch.allclose(batch[:1], single, atol=1e-5)
    assert torch.equal(l2p_core.draw_noise(7, (3, 3, 48, 32)), expected_noise)
    assert not torch.allclose(batch[0], batch[1])


def test_batch_with_different_captions_matches_separate_runs(model):
    positives = captions(5, 1) + captions(37, 3)
    batch = l2p_core.sample(model, positives, captions(3, 2), width=32, height=32, seed=3, steps=2)
    noise = l2p_core.draw_noise(3, (2, 3, 32, 32))
    for index in range(2):
        alone = l2p_core.euler(
            l2p_core.guided_velocity(model, [positives[index]], captions(3, 2), 2.0),
            noise[index : index + 1], l2p_core.flow_sigmas(2),
        )  # fmt: skip
        assert torch.allclose(batch[index : index + 1], alone.clamp(-1, 1), atol=1e-5)


def test_odd_token_grids_work(model):
    # 1008×16 is a 63×1 token grid: not a multiple of 32, where the official 1K code crashes.
    image = l2p_core.sample(model, captions(5, 1), captions(3, 2), width=1008, height=16, seed=0, steps=1)
    assert image.shape == (1, 3, 16, 1008)
    assert torch.isfinite(image).all()


def test_output_is_clamped(model):
    image = l2p_core.sample(model, captions(5, 1), captions(3, 2), width=32, height=32, seed=0, steps=2, cfg=8.0)
    assert image.min() >= -1
    assert image.max() <= 1


def test_callback_receives_step_total_and_estimate(model):
    calls = []
    l2p_core.sample(
        model, captions(5, 1), captions(3, 2), width=32, height=16, seed=0, steps=3,
        callback=lambda step, total, x0: calls.append((step, total, tuple(x0.shape))),
    )  # fmt: skip
    assert calls == [(1, 3, (1, 3, 16, 32)), (2, 3, (1, 3, 16, 32)), (3, 3, (1, 3, 16, 32))]


def test_cancel_check_stops_within_one_step(model):
    counter = CallCounter(model)
    checks = []

    def cancel_after_two() -> bool:
        checks.append(1)
        return len(checks) > 2

    with pytest.raises(l2p_core.SamplingCancelled, match="before step 3 of 5"):
        l2p_core.sample(
            counter, captions(5, 1), captions(3, 2), width=32, height=32, seed=0, steps=5, cancel_check=cancel_after_two
        )
    assert counter.calls == 4


def test_nan_state_names_step_and_dtype(model):
    class Poisoned(CallCounter):
        def __call__(self, x, sigma, context):
            out = super().__call__(x, sigma, context)
            return out * float("nan") if self.calls >= 3 else out

    with pytest.raises(l2p_core.SamplingError, match=r"step 2 of 4 .*float32"):
        l2p_core.sample(Poisoned(model), captions(5, 1), captions(3, 2), width=32, height=32, seed=0, steps=4, cfg=2.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"width": 40, "height": 32}, "not a positive multiple of 16 px, which the L2P 1K model needs"),
        ({"width": 32, "height": 0}, "not a positive multiple"),
        ({"width": 32, "height": 32, "denoise": 0.5}, "needs an init_image"),
        ({"width": 32, "height": 32, "cfg": float("nan")}, "cfg must be a finite number"),
        ({"width": 32, "height": 32, "init_image": torch.zeros(1, 3, 16, 32), "denoise": 0.5}, "init_image is 32×16"),
    ],
)
def test_sample_rejects_invalid_requests(model, settings, message):
    with pytest.raises(ValueError, match=message):
        l2p_core.sample(model, captions(5, 1), captions(3, 2), seed=0, steps=1, **settings)


def test_wrong_caption_width_names_both_sizes(model):
    with pytest.raises(ValueError, match="4096 wide but this model takes 32-wide"):
        l2p_core.sample(
            model, captions(5, 1, width=4096), captions(3, 2, width=4096), width=32, height=32, seed=0, steps=1
        )


def test_network_accepts_injected_operations(tiny_checkpoint):
    created = []

    class CountingLinear(torch.nn.Linear):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    operations = type(
        "Operations", (), {"Linear": CountingLinear, "Conv2d": torch.nn.Conv2d, "RMSNorm": torch.nn.RMSNorm}
    )
    model = l2p_core.load_model(tiny_checkpoint, operations=operations)
    config = model.config
    blocks = 2 * config.n_refiner_layers + config.n_layers
    modulated = config.n_refiner_layers + config.n_layers
    # Per block: qkv, out, w1, w2, w3 (+ adaLN); plus x_embedder, two t_embedder layers, cap_embedder.
    assert len(created) == 5 * blocks + modulated + 4
    assert all(isinstance(module, CountingLinear) for module in [model.x_embedder, model.layers[0].attention.qkv])


def test_synthetic_config_round_trips_through_loader(tmp_path):
    config = synthetic.tiny_config(dim=96, n_heads=3, n_layers=3, n_refiner_layers=2, cap_feat_dim=48)
    path = synthetic.write_checkpoint(tmp_path / "odd-name-4k.safetensors", config)
    assert l2p_core.load_model(path).config == config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"denoise": 1.5}, r"denoise must be in \(0, 1\]"),
        ({"denoise": float("nan")}, r"denoise must be in \(0, 1\]"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": 2**64}, r"seed must be in \[0, 2\^64 - 1\]"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"shift": float("nan")}, "shift must be a finite number"),
        ({"width": 32.0}, "width must be a whole number"),
        ({"init_image": torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "denoise": 0.5}, "floating-point torch tensor"),
        (
            {"init_image": torch.full((1, 3, 32, 32), 200.0), "denoise": 0.5},
            r"must lie in \[-1, 1\]; found \[200, 200\]",
        ),
        ({"init_image": torch.zeros(1, 32, 32, 3), "denoise": 0.5}, "channels last"),
    ],
)
def test_sample_validates_every_setting(model, settings, message):
    request = {"width": 32, "height": 32, "seed": 0, "steps": 1} | settings
    with pytest.raises(ValueError, match=message):
        l2p_core.sample(model, captions(5, 1), captions(3, 2), **request)
