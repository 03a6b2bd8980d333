"""L2P LoRA Scope: a MODEL → MODEL node that limits LoRA patches to the blocks L2P shares with its source."""

from __future__ import annotations

from comfy_api.latest import io

ALL_BLOCKS = "all blocks"
SHARED_BLOCKS = "shared blocks only"


class L2PLoraScope(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2PLoraScope",
            display_name="L2P LoRA Scope",
            category="L2P",
            search_aliases=["l2p", "lora", "z-image lora", "shared blocks"],
            description=(
                "Limits the LoRA patches on an L2P model to the joint blocks that L2P shares bit for bit "
                "with the model it was transferred from (Z-Image-Turbo for the 1K file, blocks 5–24), where "
                "a LoRA trained on that model has its exact meaning. The other blocks, the refiners and the "
                "embedders were fine-tuned during the transfer, so a latent-model LoRA acts on them only "
                "approximately. Place it after the LoRA loaders: it applies to every LoRA on the model."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The L2P model after one or more LoRA loaders."),
                io.Combo.Input(
                    "scope",
                    options=[SHARED_BLOCKS, ALL_BLOCKS],
                    default=SHARED_BLOCKS,
                    tooltip=(
                        "shared blocks only: keep the patches on the joint blocks stored in float32 in the "
                        "checkpoint (the blocks frozen during the transfer) and drop all others. When the file's "
                        "dtypes do not show those blocks, it uses 5–24, the released 1K file's, and logs a "
                        "warning. all blocks: keep every patch, as the LoRA loader applied it."
                    ),
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with the LoRA patches of the chosen blocks.")],
        )

    @classmethod
    def execute(cls, model, scope: str = SHARED_BLOCKS) -> io.NodeOutput:
        from .diffusion_model import l2p_network
        from .lora_blocks import shared_joint_blocks
        from .lora_patches import keep_patches_of_blocks

        network = l2p_network(model, node="L2P LoRA Scope node")
        if scope == ALL_BLOCKS:
            return io.NodeOutput(model)
        if scope != SHARED_BLOCKS:
            raise ValueError(f"Unknown scope '{scope}'; choose '{SHARED_BLOCKS}' or '{ALL_BLOCKS}'.")

        float32_blocks = getattr(model.model, "float32_joint_blocks", None)
        blocks = shared_joint_blocks(float32_blocks, network.config.n_layers)
        return io.NodeOutput(keep_patches_of_blocks(model, blocks))
