"""L2P Patch Tiling: a MODEL → MODEL node that makes the L2P network run on overlapping tiles."""

from __future__ import annotations

from comfy_api.latest import io

from . import MAX_RESOLUTION

GRID_PX = 16


class L2PPatchTiling(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2PPatchTiling",
            display_name="L2P Patch Tiling",
            category="L2P",
            search_aliases=["l2p", "tiled diffusion", "tiling", "4k", "large image"],
            description=(
                "Runs the L2P network on overlapping tiles and blends their predictions, so memory follows "
                "the tile instead of the image; use it for images beyond about 2 MP with the 1K model. "
                "The L2P Pixel Sampler first generates a guide at one tile's area and refines it tile by "
                "tile, so the subject is not repeated in every tile. KSampler and SamplerCustomAdvanced "
                "also run tiled but have no guide pass: with them, start from an upscaled image at low "
                "denoise (see the l2p_upscale_1k_to_4k workflow)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model from the L2P Model Loader (or after a LoRA loader)."),
                io.Int.Input(
                    "tile_size",
                    default=1024,
                    min=GRID_PX,
                    max=MAX_RESOLUTION,
                    step=GRID_PX,
                    tooltip=(
                        "Tile side in pixels, a multiple of the model's grid (16 px for the 1K model; 64, 128 "
                        "or 320 for HR). 1024 is the 64×64 token grid the 1K model was trained on. An image "
                        "no larger than one tile runs untiled, with the same result."
                    ),
                ),
                io.Int.Input(
                    "tile_overlap",
                    default=256,
                    min=0,
                    max=MAX_RESOLUTION,
                    step=GRID_PX,
                    tooltip=(
                        "Overlap of neighbouring tiles in pixels, a multiple of the model's grid and smaller "
                        "than the tile. Predictions cross-fade over it (sin² weights). 256, a quarter of a "
                        "1024 tile, is four times the 1K decoder's 60-px reach, so tile borders, which see "
                        "zero padding, carry little weight."
                    ),
                ),
                io.Int.Input(
                    "tile_batch_size",
                    default=1,
                    min=1,
                    max=64,
                    tooltip=(
                        "Tiles per network call. More is faster on GPUs with memory to spare; when a batch "
                        "runs out of memory it is halved and retried."
                    ),
                ),
                io.Int.Input(
                    "decoder_tile_size",
                    default=1024,
                    min=0,
                    max=MAX_RESOLUTION,
                    step=GRID_PX,
                    tooltip=(
                        "The local decoder runs in tiles of this many pixels (plus a halo covering its "
                        "receptive field, so the result is the same) when an image or tile is larger. "
                        "0 runs it in one piece: faster, but its memory grows with the image."
                    ),
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model, running in tiles in every sampler.")],
        )

    @classmethod
    def execute(
        cls, model, tile_size: int, tile_overlap: int, tile_batch_size: int = 1, decoder_tile_size: int = 1024
    ) -> io.NodeOutput:
        from .diffusion_model import l2p_network
        from .tiled_model import install_tiling
        from .tiling_settings import TilingSettings, check_tiling

        network = l2p_network(model, node="L2P Patch Tiling node")
        settings = TilingSettings(tile_size, tile_overlap, tile_batch_size, decoder_tile_size or None)
        check_tiling(network.config, settings)
        return io.NodeOutput(install_tiling(model, settings))
