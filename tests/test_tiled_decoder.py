"""The tiled local decoder: same output as one piece, activation size bounded by the tile."""

from __future__ import annotations

import pytest
import torch

import l2p_core
from l2p_core import synthetic
from l2p_core.tiling import decode_tiled, plan_spans, receptive_radius


def random_model(patch: int = 16) -> l2p_core.L2PTransformer:
    config = synthetic.tiny_config(patch_size=patch)
    model = l2p_core.L2PTransformer(config)
    model.load_state_dict(synthetic.random_state_dict(config, seed=5, dtype=torch.float32))
    return model.eval()


def decoder_inputs(model, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grid = size // model.config.patch_size
    image = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    features = torch.randn(1, model.config.dim, grid, grid, generator=generator)
    return image, features


def largest_activation(model, run) -> int:
    """Return the element count of the largest tensor any decoder layer produced during `run()`."""
    sizes = []
    hooks = [
        module.register_forward_hook(lambda _m, _a, out: sizes.append(out.numel()))
        for module in model.local_decoder.modules()
        if not list(module.children())
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


def test_plan_covers_axis_once():
    spans = plan_spans(2048, 768, 64, 16)
    assert [(span.start, span.end) for span in spans] == [(0, 768), (768, 1536), (1536, 2048)]
    assert [(span.window_start, span.window_end) for span in spans] == [(0, 832), (704, 1600), (1472, 2048)]


def test_plan_rejects_unaligned_sizes():
    with pytest.raises(ValueError, match="tile 100 is not a multiple of 16 px"):
        plan_spans(2048, 100, 64, 16)


def test_tiled_decoder_matches_untiled_at_2048():
    model = random_model()
    image, features = decoder_inputs(model, 2048)
    with torch.no_grad():
        whole = model.local_decoder(image, features)
        tiled = decode_tiled(model.local_decoder, image, features, tile_px=512, align_px=16, token_px=16)
    assert (tiled - whole).abs().max() <= 1e-3
    assert (tiled - whole).abs().max() <= 1e-5


@pytest.mark.parametrize("patch", [64, 128, 160])
def test_tiled_decoder_matches_untiled_for_hr(patch):
    model = random_model(patch)
    multiple = model.config.size_multiple
    image, features = decoder_inputs(model, 4 * multiple)
    with torch.no_grad():
        whole = model.local_decoder(image, features)
        tiled = decode_tiled(model.local_decoder, image, features, tile_px=multiple, align_px=multiple, token_px=patch)
    assert (tiled - whole).abs().max() <= 1e-5


def test_halo_smaller_than_receptive_field_shows_seams():
    # The control for the test above: without enough context, tile edges differ.
    model = random_model()
    image, features = decoder_inputs(model, 512)
    with torch.no_grad():
        whole = model.local_decoder(image, features)
        tiled = torch.zeros_like(whole)
        for span in plan_spans(512, 256, 0, 16):
            for cols in plan_spans(512, 256, 0, 16):
                rows_px, cols_px = slice(span.start, span.end), slice(cols.start, cols.end)
                rows_tok, cols_tok = slice(span.start // 16, span.end // 16), slice(cols.start // 16, cols.end // 16)
                tiled[..., rows_px, cols_px] = model.local_decoder(
                    image[..., rows_px, cols_px], features[..., rows_tok, cols_tok]
                )
    assert (tiled - whole).abs().max() > 1e-3
    assert receptive_radius(4) == 60


def test_tiled_activation_size_follows_tile_not_image():
    model = random_model()
    peaks = {}
    for size in (1024, 2048):
        image, features = decoder_inputs(model, size)
        peaks[size] = largest_activation(
            model,
            lambda image=image, features=features: decode_tiled(
                model.local_decoder, image, features, tile_px=256, align_px=16, token_px=16
            ),
        )
    untiled = largest_activation(model, lambda: model.local_decoder(*decoder_inputs(model, 1024)))
    assert peaks[1024] == peaks[2048]
    assert peaks[2048] * 4 < untiled


def test_network_tiles_decoder_above_threshold():
    model = random_model()
    calls = []
    model.local_decoder.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape[-2:])))
    context = [torch.randn(4, 32)]
    with torch.no_grad():
        model.decoder_tile_px = 256
        tiled = model(torch.zeros(1, 3, 512, 512), torch.tensor([0.5]), context)
        tiled_calls, calls[:] = list(calls), []
        model.decoder_tile_px = None
        whole = model(torch.zeros(1, 3, 512, 512), torch.tensor([0.5]), context)
    assert tiled_calls == [(320, 320)] * 4
    assert calls == [(512, 512)]
    assert (tiled - whole).abs().max() <= 1e-5
