"""Patch tiling: tile plans, seamless blending, RoPE positions, guide pass, cancel and OOM retry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import l2p_core
from l2p_core import synthetic
from l2p_core.patch_tiling import MAX_POSITION_TOKENS, PatchTiler, plan_starts, plan_tiles, token_offset

CONFIG_1K = SimpleNamespace(size_multiple=16, patch_size=16, in_channels=3, variant="1K")


class FakeModel:
    """A network stand-in: `output(window, offsets)` gives the velocity; calls are recorded."""

    def __init__(self, output, fail_above_batch: int | None = None):
        self.config = CONFIG_1K
        self.output = output
        self.fail_above_batch = fail_above_batch
        self.calls: list[tuple[tuple[int, ...], list[tuple[int, int]]]] = []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.weight])

    def __call__(self, x, sigma, context, token_offsets=None):
        if self.fail_above_batch is not None and x.shape[0] > self.fail_above_batch:
            raise torch.OutOfMemoryError("fake out of memory")
        offsets = [] if token_offsets is None else [tuple(row) for row in token_offsets.tolist()]
        self.calls.append((tuple(x.shape), offsets))
        return self.output(x, sigma, token_offsets)


def restoring_denoiser(x, sigma, _offsets):
    """Velocity of a stand-in denoiser: x₀ is predicted as a 33×33 box blur of x, rescaled by 1/(1 − σ).

    Like a real denoiser it keeps large-scale structure and restores its amplitude, and like
    a network it only sees the window it is given.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
    blurred = F.avg_pool2d(F.pad(x, (16, 16, 0, 0), mode="replicate"), (1, 33), stride=1)
    blurred = F.avg_pool2d(F.pad(blurred, (0, 0, 16, 16), mode="replicate"), (33, 1), stride=1)
    x0 = blurred / (1 - sigma).clamp(min=0.05)
    return (x - x0) / sigma.clamp(min=1e-3)


def captions() -> list[torch.Tensor]:
    return [torch.zeros(4, 32)]


# --- plans and weights ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(4096, 1024, 256), (3008, 1024, 128), (1040, 1024, 16), (2048, 512, 0)]
)
def test_plan_covers_canvas_on_grid(length, tile, overlap):
    starts = plan_starts(length, tile, overlap, 16)
    assert starts[0] == 0
    assert starts[-1] + tile == length
    assert all(start % 16 == 0 for start in starts)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_canvas_within_one_tile_is_one_tile():
    assert plan_starts(1024, 1024, 256, 16) == [0]
    assert len(plan_tiles(512, 768, 1024, 256, 16, 16)) == 1


def test_blend_weights_sum_to_one():
    tiles = plan_tiles(1024, 1536, 512, 128, 16, 16)
    total = torch.zeros(1024, 1536)
    for tile in tiles:
        total[tile.top : tile.bottom, tile.left : tile.right] += tile.weight
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_blending_is_seamless_on_flat_gradient():
    # Each tile returns the right gradient plus its own constant error, as tiles that
    # disagree slightly would. A hard cut would jump by the full error difference (1.0).
    canvas = torch.linspace(-1, 1, 1024).expand(1, 3, 512, 1024).contiguous()

    def biased(window, _sigma, offsets):
        bias = torch.tensor([float(col // 8 % 2) for _, col in offsets.tolist()]).reshape(-1, 1, 1, 1)
        return window + bias

    tiler = PatchTiler(FakeModel(biased), tile_px=256, overlap_px=128)
    blended = tiler(canvas, torch.tensor([0.5]), captions()) - canvas
    steps = (blended[..., 1:] - blended[..., :-1]).abs().max()
    assert steps <= 3.2 / 128
    assert blended.max() - blended.min() > 0.5


def test_tiled_identity_reproduces_input():
    canvas = torch.randn(2, 3, 384, 640)
    tiler = PatchTiler(FakeModel(lambda window, _s, _o: window), tile_px=256, overlap_px=64, batch_size=3)
    assert torch.allclose(tiler(canvas, torch.tensor([0.5, 0.5]), captions() * 2), canvas, atol=1e-6)


# --- positions ---------------------------------------------------------------------------------


def test_tiles_keep_canvas_positions_within_tables():
    model = FakeModel(lambda window, _s, _o: window)
    PatchTiler(model, tile_px=1024, overlap_px=256)(torch.zeros(1, 3, 2048, 2048), torch.tensor([0.5]), captions())
    offsets = sorted(offset for _, call_offsets in model.calls for offset in call_offsets)
    # 2048 px in 1024-px tiles overlapping ≥ 256 px: starts 0, 512, 1024 px = tokens 0, 32, 64.
    assert offsets == [(row, col) for row in (0, 32, 64) for col in (0, 32, 64)]


def test_positions_beyond_tables_are_scaled():
    # 16384 px = 1024 tokens a side: the last 64-token tile must end at token 512.
    assert token_offset(16384 - 1024, 16384, 1024, 16) + 64 == MAX_POSITION_TOKENS
    offsets = [token_offset(start, 16384, 1024, 16) for start in plan_starts(16384, 1024, 256, 16)]
    assert offsets == sorted(offsets)
    assert token_offset(4096, 8192, 1024, 16) == 256


def test_network_applies_token_offsets():
    config = synthetic.tiny_config()
    model = l2p_core.L2PTransformer(config)
    model.load_state_dict(synthetic.random_state_dict(config, dtype=torch.float32))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x, torch.tensor([0.5]), captions())
        zero = model(x, torch.tensor([0.5]), captions(), token_offsets=torch.tensor([[0, 0]]))
        shifted = model(x, torch.tensor([0.5]), captions(), token_offsets=torch.tensor([[4, 8]]))
    assert torch.equal(plain, zero)
    assert not torch.allclose(plain, shifted)


# --- sampling ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    config = synthetic.tiny_config()
    model = l2p_core.L2PTransformer(config)
    model.load_state_dict(synthetic.random_state_dict(config, seed=3, dtype=torch.float32))
    return model.eval()


def test_single_tile_equals_untiled(tiny_model):
    settings = {"width": 256, "height": 192, "seed": 4, "steps": 2}
    untiled = l2p_core.sample(tiny_model, captions(), captions(), **settings)
    tiled = l2p_core.sample(tiny_model, captions(), captions(), tile_size=256, tile_overlap=64, **settings)
    assert torch.equal(untiled, tiled)


def test_tiled_img2img_follows_test_pattern():
    # Quadrants of four colours as the guide; the tiled result keeps each quadrant's colour.
    pattern = torch.zeros(1, 3, 512, 512)
    colours = [(0.8, -0.8, -0.8), (-0.8, 0.8, -0.8), (-0.8, -0.8, 0.8), (0.8, 0.8, -0.8)]
    quadrants = [
        (slice(0, 256), slice(0, 256)),
        (slice(0, 256), slice(256, 512)),
        (slice(256, 512), slice(0, 256)),
        (slice(256, 512), slice(256, 512)),
    ]
    for (rows, cols), colour in zip(quadrants, colours, strict=True):
        pattern[0, :, rows, cols] = torch.tensor(colour).reshape(3, 1, 1)

    model = FakeModel(restoring_denoiser)
    result = l2p_core.sample(
        model, captions(), captions(), width=512, height=512, seed=0, steps=8, cfg=1.0,
        init_image=pattern, denoise=0.7, tile_size=256, tile_overlap=64,
    )  # fmt: skip
    for (rows, cols), colour in zip(quadrants, colours, strict=True):
        mean = result[0, :, rows, cols].mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(colour), atol=0.25), f"quadrant {colour}: mean {mean.tolist()}"


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_tiled_text_to_image_follows_guide_layout():
    guides = []
    model = FakeModel(restoring_denoiser)
    captured = l2p_core.sampling._guide_image

    def keep_guide(*args, **kwargs):
        guides.append(captured(*args, **kwargs))
        return guides[-1]

    settings = {"width": 768, "height": 512, "seed": 9, "steps": 6, "cfg": 1.0, "tile_size": 256, "tile_overlap": 64}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(l2p_core.sampling, "_guide_image", keep_guide)
        guided = l2p_core.sample(model, captions(), captions(), **settings)
    unguided = l2p_core.sample(model, captions(), captions(), tile_guide_denoise=1.0, **settings)

    layout = F.avg_pool2d(guides[0], 64)
    assert correlation(F.avg_pool2d(guided, 64), layout) > 0.8
    assert correlation(F.avg_pool2d(unguided, 64), layout) < 0.5


def test_tile_progress_counts_tiles_times_steps():
    reports = []
    model = FakeModel(restoring_denoiser)
    l2p_core.sample(
        model, captions(), captions(), width=512, height=384, seed=0, steps=3, cfg=2.0,
        tile_size=256, tile_overlap=64, tile_batch_size=2,
        tile_progress=lambda done, total: reports.append((done, total)),
    )  # fmt: skip
    tiles = len(plan_tiles(384, 512, 256, 64, 16, 16))
    guide_calls, tiled_calls = 3 * 2, tiles * 3 * 2
    assert reports[-1] == (guide_calls + tiled_calls, guide_calls + tiled_calls)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_cancel_stops_within_one_tile():
    model = FakeModel(restoring_denoiser)
    checks = []

    def cancel_after_five() -> bool:
        checks.append(1)
        return len(checks) > 5

    tiler = PatchTiler(model, tile_px=256, overlap_px=64, cancel_check=cancel_after_five)
    with pytest.raises(l2p_core.SamplingCancelled):
        tiler(torch.zeros(1, 3, 512, 768), torch.tensor([0.5]), captions())
    assert len(model.calls) == 5


def test_out_of_memory_retries_with_smaller_batch():
    canvas = torch.randn(1, 3, 512, 512)
    reference = PatchTiler(FakeModel(restoring_denoiser), tile_px=256, overlap_px=64)(
        canvas, torch.tensor([0.5]), captions()
    )
    tiler = PatchTiler(FakeModel(restoring_denoiser, fail_above_batch=1), tile_px=256, overlap_px=64, batch_size=4)
    assert torch.allclose(tiler(canvas, torch.tensor([0.5]), captions()), reference, atol=1e-6)
    assert tiler.batch_size == 1


def test_out_of_memory_on_one_tile_is_explained():
    tiler = PatchTiler(FakeModel(restoring_denoiser, fail_above_batch=0), tile_px=256, overlap_px=64)
    with pytest.raises(l2p_core.L2PError, match=r"Out of memory on a single 256×256 px tile\. Lower the tile size"):
        tiler(torch.zeros(1, 3, 512, 512), torch.tensor([0.5]), captions())


@pytest.mark.parametrize(
    ("tile", "overlap", "message"),
    [
        (1000, 256, "Tile size 1000 px is not a positive multiple of 16"),
        (1024, 100, "overlap 100 px is not a multiple of 16"),
        (512, 512, "must be smaller than the tile size"),
    ],
)
def test_invalid_tile_settings_are_rejected_before_work(tile, overlap, message):
    model = FakeModel(restoring_denoiser)
    with pytest.raises(ValueError, match=message):
        l2p_core.sample(
            model,
            captions(),
            captions(),
            width=2048,
            height=2048,
            seed=0,
            steps=1,
            tile_size=tile,
            tile_overlap=overlap,
        )
    assert model.calls == []
