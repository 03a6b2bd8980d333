"""The L2P network: Z-Image backbone on RGB pixel patches plus the local decoder."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from einops import rearrange
from torch import nn

from .config import L2PConfig
from .decoder import LocalDecoder
from .layers import TORCH_OPERATIONS, TimestepEmbedder, TransformerBlock
from .rope import RotaryTables
from .tiling import decode_tiled

# Images with a side above this many pixels run the local decoder in tiles by default; see
# `L2PTransformer.decoder_tile_px`.
DEFAULT_DECODER_TILE_PX = 1024
# Device memory the cached RoPE tables of recent input shapes may take (least recently used
# go first). The image and joint tables of a 1024² pass take about 4 MiB per image, and the
# two guidance branches have separate entries, so a 4096² canvas in 1024-px tiles (25
# tiles) needs about 205 MiB. Larger tiled canvases cycle through more than this and
# rebuild their tables every call, as with the cache off.
POSITION_CACHE_BYTES = 256 * 2**20


class L2PTransformer(nn.Module):
    """Predict the flow velocity ε − x₀ of a noisy image in [-1, 1].

    Pipeline: patch tokens and caption tokens are padded to a multiple of 32 with learned
    pad tokens. Noise and context refiners run on each stream, then the joint blocks on
    [image, caption]. The real image tokens, as a feature map on the token grid, go with the
    noisy image into the local decoder, whose output x₀ − ε is negated.

    `dtype` is the compute dtype (parameters are created in it); `operations` supplies the
    Linear/Conv2d/RMSNorm classes (default `torch.nn`). `decoder_tile_px` bounds the local
    decoder's activation memory: larger images are decoded in tiles of that size with a halo
    covering the decoder's receptive field (None decodes in one piece).

    Speed settings, each of which leaves the result unchanged up to floating-point rounding:
    `cache_positions` keeps the RoPE tables of recent input shapes instead of rebuilding
    them every call (moving the model clears them); inside `reuse_captions()` each distinct caption goes through
    the caption path once instead of once per call; `local_decoder.channels_last` runs the
    decoder's convolutions in the channels-last memory layout. The caches make a network
    object serve one sampling run at a time: do not sample with it from two threads at once.
    """

    def __init__(self, config: L2PConfig, *, dtype: torch.dtype | None = None, device=None, operations=None) -> None:
        super().__init__()
        operations = operations or TORCH_OPERATIONS
        self.config = config
        self.compute_dtype = dtype or torch.float32
        factory = {"device": device, "dtype": dtype}
        dim = config.dim

        self.x_embedder = operations.Linear(config.in_channels * config.patch_size**2, dim, bias=True, **factory)
        self.t_embedder = TimestepEmbedder(
            config.t_freq_dim, config.t_embed_hidden, config.adaln_dim, operations=operations, **factory
        )
        self.cap_embedder = nn.Sequential(
            operations.RMSNorm(config.cap_feat_dim, eps=config.norm_eps, elementwise_affine=True, **factory),
            operations.Linear(config.cap_feat_dim, dim, bias=True, **factory),
        )
        self.x_pad_token = nn.Parameter(torch.empty((1, dim), **factory))
        self.cap_pad_token = nn.Parameter(torch.empty((1, dim), **factory))

        def blocks(count: int, modulated: bool) -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(config, modulated=modulated, operations=operations, **factory) for _ in range(count)
            )

        self.noise_refiner = blocks(config.n_refiner_layers, modulated=True)
        self.context_refiner = blocks(config.n_refiner_layers, modulated=False)
        self.layers = blocks(config.n_layers, modulated=True)
        self.local_decoder = LocalDecoder(config.decoder, dim, operations=operations, **factory)
        self.decoder_tile_px: int | None = DEFAULT_DECODER_TILE_PX
        self.cache_positions = True
        self._position_cache: OrderedDict[tuple, tuple] = OrderedDict()
        self._caption_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _apply(self, fn, recurse=True):
        # Moving or casting the network (a host offloading it, say) drops the cached tables,
        # which would otherwise stay on the old device.
        cache = self.__dict__.get("_position_cache")
        if cache is not None:
            cache.clear()
        return super()._apply(fn, recurse)

    def compile_blocks(self, **options) -> None:
        """Compile each transformer block and the local decoder with `torch.compile(**options)`.

        Compiling the repeated blocks one by one (regional compilation) compiles the shared
        block code once and keeps the model's structure, state dict and hooks as they are.
        The compiled network matches the eager one up to the rounding of fused kernels
        (tests/test_speed.py states the tolerance).
        """
        for block in [*self.noise_refiner, *self.context_refiner, *self.layers]:
            block.compile(**options)
        self.local_decoder.compile(**options)

    @contextmanager
    def reuse_captions(self) -> Iterator[None]:
        """Refine each distinct caption once within this block and reuse the result in later calls.

        The caption embedder and context refiner do not depend on σ, so one sampling run
        needs them once per prompt. A caption counts as seen when a cached input has the
        same shape, dtype, device and values. The weights must not change inside the block
        (a LoRA applied mid-run would not reach cached captions). Blocks nest; the cache is
        dropped when the outermost one ends.
        """
        outermost = self._caption_cache is None
        if outermost:
            self._caption_cache = []
        try:
            yield
        finally:
            if outermost:
                self._caption_cache = None

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: Sequence[torch.Tensor],
        *,
        token_offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the velocity for x [B, C, H, W], sigma [B] and B caption-feature tensors [L_i, cap_feat_dim].

        `token_offsets` [B, 2] shifts each image's (row, column) RoPE positions, so a tile of
        a larger canvas can sit at its place in the canvas; None starts every image at (0, 0).
        """
        sigma = self._check_inputs(x, sigma, context)
        config = self.config
        dtype = self.compute_dtype
        batch, _, height, width = x.shape
        rows, cols = height // config.patch_size, width // config.patch_size

        # The reference forms timestep = 1000·σ and t = (1000 − timestep) / 1000 in float32,
        # which is not always bitwise 1 − σ; the embedding is sensitive enough to notice.
        timestep = sigma.float() * 1000.0
        time = (1000.0 - timestep) / 1000.0
        adaln = self.t_embedder(time * config.time_scale, dtype)

        image = x.to(dtype)
        image_tokens = self._embed_image(image)
        caption_tokens, caption_lengths = self._refined_captions(context, dtype, x.device)
        image_rope, joint_rope, joint_mask = self._positions(
            batch, rows, cols, caption_tokens.shape[1], caption_lengths, token_offsets, x.device
        )

        for block in self.noise_refiner:
            image_tokens = block(image_tokens, image_rope, None, adaln)

        joint = torch.cat([image_tokens, caption_tokens], dim=1)
        for block in self.layers:
            joint = block(joint, joint_rope, joint_mask, adaln)

        features = rearrange(joint[:, : rows * cols], "b (h w) d -> b d h w", h=rows, w=cols)
        if self.decoder_tile_px is not None and max(height, width) > self.decoder_tile_px:
            decoded = decode_tiled(
                self.local_decoder, image, features,
                tile_px=self.decoder_tile_px, align_px=config.size_multiple, token_px=config.patch_size,
            )  # fmt: skip
        else:
            decoded = self.local_decoder(image, features)
        return (-decoded).to(x.dtype)

    def _embed_image(self, image: torch.Tensor) -> torch.Tensor:
        patch = self.config.patch_size
        patches = rearrange(image, "b c (h ph) (w pw) -> b (h w) (ph pw c)", ph=patch, pw=patch)
        tokens = self.x_embedder(patches)
        pad = -tokens.shape[1] % self.config.seq_multiple
        pad_tokens = self.x_pad_token.to(tokens.device, tokens.dtype).expand(tokens.shape[0], pad, -1)
        return torch.cat([tokens, pad_tokens], dim=1)

    def _refined_captions(
        self, context: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, list[int]]:
        """Run each caption through the caption path and stack them, zero-padding to the longest.

        Each distinct caption is refined on its own, as in a batch-1 pass, so captions of
        different lengths need no masks in the context refiner and a caption repeated over
        the batch (or cached by `reuse_captions`) is refined once. Everything moves to the
        image's device: a host that offloads small modules may keep the pad tokens elsewhere.
        """
        refined: dict[int, torch.Tensor] = {}
        captions = []
        for features in context:
            if id(features) not in refined:
                refined[id(features)] = self._refine_caption(features, dtype, device)
            captions.append(refined[id(features)])

        lengths = [len(tokens) for tokens in captions]
        if len(set(lengths)) == 1:
            return torch.stack(captions), lengths
        stacked = captions[0].new_zeros(len(captions), max(lengths), self.config.dim)
        for index, tokens in enumerate(captions):
            stacked[index, : len(tokens)] = tokens
        return stacked, lengths

    def _refine_caption(self, features: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Embed one caption [L, cap_feat_dim], append its pad tokens and run the context refiner."""
        cache = self._caption_cache
        if cache is not None:
            for cached_features, tokens in cache:
                if _same_values(cached_features, features) and tokens.dtype == dtype and tokens.device == device:
                    return tokens

        tokens = self.cap_embedder(features.to(device, dtype))
        pad = -tokens.shape[0] % self.config.seq_multiple
        tokens = torch.cat([tokens, self.cap_pad_token.to(tokens.device, tokens.dtype).expand(pad, -1)])
        rope = self._rope_tables(("caption", len(tokens)), lambda: self._caption_positions(1, len(tokens)), device)
        tokens = tokens[None]
        for block in self.context_refiner:
            tokens = block(tokens, rope, None)
        tokens = tokens[0]

        if cache is not None:
            # A copy of the input, so that changing the caller's tensor in place cannot make a stale hit.
            cache.append((features.detach().clone(), tokens))
        return tokens

    def _positions(
        self,
        batch: int,
        rows: int,
        cols: int,
        caption_len: int,
        caption_lengths: list[int],
        token_offsets: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[RotaryTables, RotaryTables, torch.Tensor | None]:
        """Return the RoPE tables of the image and joint sequences and the joint key mask.

        Captions count (1 + i, 0, 0), pads included. Image tokens sit at
        (padded caption length + 1, row, col); image pad tokens at (0, 0, 0). The mask is
        None when no caption of the batch is shorter than `caption_len`.
        """
        offsets = None
        if token_offsets is not None:
            offsets = torch.as_tensor(token_offsets, dtype=torch.int64).cpu().reshape(batch, 2)
        offset_key = None if offsets is None else tuple(map(tuple, offsets.tolist()))
        key = (batch, rows, cols, caption_len, tuple(caption_lengths), offset_key)

        # The position grids are built only when a table is missing from the cache.
        def image_positions() -> torch.Tensor:
            return self._image_positions(batch, rows, cols, caption_lengths, offsets)

        def joint_positions() -> torch.Tensor:
            return torch.cat([image_positions(), self._caption_positions(batch, caption_len)], dim=1)

        image_rope = self._rope_tables(("image", *key), image_positions, device)
        joint_rope = self._rope_tables(("joint", *key), joint_positions, device)
        image_len = rows * cols + (-rows * cols % self.config.seq_multiple)
        return image_rope, joint_rope, self._joint_mask(image_len, caption_len, caption_lengths, device)

    def _image_positions(
        self, batch: int, rows: int, cols: int, caption_lengths: list[int], offsets: torch.Tensor | None
    ) -> torch.Tensor:
        grid_rows, grid_cols = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        image_len = rows * cols + (-rows * cols % self.config.seq_multiple)
        positions = torch.zeros(batch, image_len, 3, dtype=torch.int64)
        positions[:, : rows * cols, 0] = torch.tensor(caption_lengths)[:, None] + 1
        positions[:, : rows * cols, 1] = grid_rows.flatten()
        positions[:, : rows * cols, 2] = grid_cols.flatten()
        if offsets is not None:
            positions[:, : rows * cols, 1:] += offsets[:, None]
        return positions

    @staticmethod
    def _caption_positions(batch: int, caption_len: int) -> torch.Tensor:
        positions = torch.zeros(batch, caption_len, 3, dtype=torch.int64)
        positions[..., 0] = torch.arange(1, caption_len + 1)
        return positions

    def _rope_tables(self, key: tuple, positions, device: torch.device) -> RotaryTables:
        """Return the RoPE tables of `positions()` on `device`, from the cache when `cache_positions` is set."""
        config = self.config
        if not self.cache_positions:
            return RotaryTables.from_positions(positions(), config.axes_dims, config.rope_theta, device)

        # Tables built in inference mode cannot be saved for a backward pass, so they are kept
        # apart from tables built outside it.
        key = (*key, str(device), torch.is_inference_mode_enabled())
        cache = self._position_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        tables = RotaryTables.from_positions(positions(), config.axes_dims, config.rope_theta, device)
        cache[key] = tables
        while len(cache) > 1 and sum(_table_bytes(cached) for cached in cache.values()) > POSITION_CACHE_BYTES:
            cache.popitem(last=False)
        return tables

    @staticmethod
    def _joint_mask(image_len: int, caption_len: int, caption_lengths: list[int], device: torch.device):
        """Return the key mask of the joint sequence (True for real tokens), or None where no sample is padded."""
        if all(length == caption_len for length in caption_lengths):
            return None
        caption_mask = (
            torch.arange(caption_len, device=device)[None] < torch.tensor(caption_lengths, device=device)[:, None]
        )
        image_mask = torch.ones(len(caption_lengths), image_len, dtype=torch.bool, device=device)
        return torch.cat([image_mask, caption_mask], dim=1)

    def _check_inputs(self, x: torch.Tensor, sigma: torch.Tensor, context: Sequence[torch.Tensor]) -> torch.Tensor:
        config = self.config
        if x.ndim != 4 or x.shape[1] != config.in_channels:
            raise ValueError(f"L2P expects an image batch [B, {config.in_channels}, H, W]; got shape {list(x.shape)}.")
        batch, _, height, width = x.shape
        multiple = config.size_multiple
        if height % multiple or width % multiple or height == 0 or width == 0:
            raise ValueError(
                f"Image size {width}×{height} is not a multiple of {multiple} px, which the L2P "
                f"{config.variant} model needs; use sizes that are multiples of {multiple}."
            )

        if isinstance(context, torch.Tensor) or len(context) != batch:
            found = (
                f"a tensor of shape {list(context.shape)}" if isinstance(context, torch.Tensor) else f"{len(context)}"
            )
            raise ValueError(f"Expected a list of {batch} caption-feature tensors (one per image), got {found}.")
        for index, features in enumerate(context):
            if features.ndim != 2 or features.shape[0] == 0:
                raise ValueError(
                    f"Caption features {index} must be a non-empty [tokens, width] tensor; "
                    f"got shape {list(features.shape)}."
                )
            if features.shape[1] != config.cap_feat_dim:
                raise ValueError(
                    f"Caption features are {features.shape[1]} wide but this model takes {config.cap_feat_dim}-wide "
                    "features. Encode the prompt with the text encoder the model was trained with (Qwen3-4B for L2P)."
                )

        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must have shape [{batch}] (one noise level per image); got {list(sigma.shape)}.")
        return sigma


def _same_values(cached: torch.Tensor, features: torch.Tensor) -> bool:
    return (
        cached.shape == features.shape
        and cached.dtype == features.dtype
        and cached.device == features.device
        and torch.equal(cached, features)
    )


def _table_bytes(tables: RotaryTables) -> int:
    return tables.cos.nbytes + tables.sin.nbytes
