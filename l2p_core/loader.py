"""Load an L2P checkpoint into an `L2PTransformer`, one memory-mapped tensor at a time."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .block_streaming import BlockStreamer, check_resident_blocks
from .config import L2PConfig, config_from_checkpoint, expected_shapes
from .errors import CheckpointError
from .fp8 import FP8_STORAGE, NonFiniteWeightError, quantise_fp8, replace_with_fp8_layers
from .layouts import CanonicalSource, CheckpointLayout, identify_checkpoint
from .network import L2PTransformer
from .safetensors_files import TensorReader, read_tensor_entries

logger = logging.getLogger(__name__)

# Last name parts of the scale tensors that scaled-quantisation formats store beside weights.
QUANTISATION_SCALE_NAMES = frozenset({"scale_weight", "weight_scale", "scale_input", "input_scale", "comfy_quant"})


@dataclass(frozen=True)
class CheckpointInfo:
    """Identity of a checkpoint, read from its headers alone: layout, configuration and size."""

    layout: CheckpointLayout
    config: L2PConfig

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(source.shape) for source in self.layout.tensors.values())


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Identify and validate a checkpoint from its headers, without reading any tensor.

    Raises CheckpointError (or its subclass UnsupportedCheckpointError) with a message that
    names the file, what it looks like and what to use instead.
    """
    path = Path(path)
    entries = read_tensor_entries(path)
    layout = identify_checkpoint(path, entries)
    config = config_from_checkpoint(layout)
    _check_shapes(layout, config)
    return CheckpointInfo(layout, config)


def load_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    operations=None,
    progress: Callable[[int, int], None] | None = None,
    weight_storage: str | None = None,
    resident_blocks: int | None = None,
) -> L2PTransformer:
    """Load an L2P checkpoint (official or ComfyUI layout, single file or shards) for inference.

    Each tensor is read through the file mapping, cast to `dtype` and placed on `device`, so
    resident memory grows by little more than the loaded model. `progress(done, total)` is
    called after each tensor.

    Low-VRAM options: `weight_storage="fp8_e4m3fn"` stores the blocks' attention and
    feed-forward weights in float8 with a per-tensor scale and computes in `dtype` (see
    `l2p_core.fp8`); each weight is quantised straight from the file mapping. With
    `resident_blocks` N, the transformer blocks are kept in CPU memory and streamed to
    `device` with at most N there at once (see `l2p_core.block_streaming`); the streamer is
    `model.block_streamer`.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype such as torch.bfloat16; got {dtype!r}.")
    if torch.device(device).type == "meta":
        raise ValueError(
            "device 'meta' is invalid here because it stores no data; load onto 'cpu' or a GPU such as 'cuda'."
        )
    if weight_storage not in (None, FP8_STORAGE):
        raise ValueError(f"weight_storage must be None (weights in dtype) or '{FP8_STORAGE}'; got {weight_storage!r}.")
    if weight_storage is not None and operations is not None:
        raise ValueError(
            f"weight_storage '{weight_storage}' replaces the blocks' Linear layers with l2p_core's Float8Linear, "
            "so it cannot be combined with custom operations. A host with casting operations stores fp8 itself."
        )
    if resident_blocks is not None:
        check_resident_blocks(resident_blocks)
    info = inspect_checkpoint(path)
    config = info.config

    with torch.device("meta"):
        model = L2PTransformer(config, dtype=dtype, operations=operations)
    fp8_weights = {f"{name}.weight" for name in replace_with_fp8_layers(model)} if weight_storage else set()
    load_device = torch.device("cpu") if resident_blocks is not None else torch.device(device)
    _load_weights(model, info.layout, load_device, dtype, progress, fp8_weights)
    model.eval()
    if resident_blocks is not None:
        BlockStreamer(model, device, resident_blocks=resident_blocks).attach()

    logger.info(
        "Loaded L2P %s (%s layout, %.2fB parameters, dim %d, %d layers, patch %d) as %s%s on %s%s from %s",
        config.variant, info.layout.layout, info.parameter_count / 1e9, config.dim, config.n_layers,
        config.patch_size, str(dtype).removeprefix("torch."),
        f" with {len(fp8_weights)} block weights in {weight_storage}" if fp8_weights else "", device,
        f", streaming {resident_blocks} block(s) at a time from CPU memory" if resident_blocks is not None else "",
        info.layout.path,
    )  # fmt: skip
    return model


def _check_shapes(layout: CheckpointLayout, config: L2PConfig) -> None:
    """Require every parameter of the network, in its exact shape, and nothing else."""
    expected = expected_shapes(config)
    missing = sorted(name for name in expected if name not in layout)
    if missing:
        raise CheckpointError(
            f"'{layout.path}' is missing {len(missing)} L2P weight(s): {_listing(missing)}. "
            "The file is incomplete or damaged; the network is never run with random weights "
            "in their place. Download the file again."
        )

    wrong = [name for name, shape in expected.items() if layout.shape(name) != shape]
    if wrong:
        details = "; ".join(
            f"'{name}' is {list(layout.shape(name))}, expected {list(expected[name])}" for name in wrong[:5]
        )
        raise CheckpointError(
            f"'{layout.path}' has {len(wrong)} misshapen L2P weight(s): {details}. "
            "The file does not match the L2P architecture; download the original release."
        )

    unexpected = sorted(name for name in layout.tensors if name not in expected)
    scales = [name for name in unexpected if name.rsplit(".", 1)[-1] in QUANTISATION_SCALE_NAMES]
    if scales:
        raise CheckpointError(
            f"'{layout.path}' is a scaled quantised checkpoint (for example fp8 with '{scales[0]}'), "
            "which this loader does not read: its weights are only correct after rescaling. Use the "
            "original bf16/fp32 release and pick a low-memory weight dtype when loading."
        )
    if unexpected:
        raise CheckpointError(
            f"'{layout.path}' has {len(unexpected)} tensor(s) that L2P does not use: {_listing(unexpected)}. "
            "It is a different or modified architecture; use the original L2P release."
        )


def _load_weights(
    model: nn.Module,
    layout: CheckpointLayout,
    device: torch.device,
    dtype: torch.dtype,
    progress: Callable[[int, int], None] | None,
    fp8_weights: set[str] = frozenset(),
) -> None:
    """Read every tensor, then hand them to `load_state_dict(assign=True)`.

    The state dict contains the same tensors the model keeps, so this costs no extra
    memory. Layer classes from `operations` get their usual `_load_from_state_dict` hooks.
    Weights named in `fp8_weights` are quantised to float8 and their layers get the scale.
    """
    names = list(model.state_dict())
    foreign = [name for name in names if name not in layout.tensors]
    if foreign:
        raise ValueError(
            f"The network has state that L2P checkpoints do not provide: {_listing(foreign)}. "
            "The layer classes passed as `operations` must not add parameters or buffers."
        )
    state = {}
    scales = {}
    with TensorReader() as reader:
        for done, name in enumerate(names, start=1):
            source = layout.tensors[name]
            if name in fp8_weights:
                state[name], scales[name] = _quantise(reader, source, device, layout.path)
            else:
                state[name] = _materialise(reader, source, device, dtype)
            if progress is not None:
                progress(done, len(names))
    model.load_state_dict(state, strict=True, assign=True)
    for name, scale in scales.items():
        model.get_submodule(name.removesuffix(".weight")).weight_scale = scale

    leftover = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if leftover:
        raise ValueError(
            f"The network has state that L2P checkpoints do not provide: {_listing(leftover)}. "
            "The layer classes passed as `operations` must not add parameters or buffers."
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def _materialise(
    reader: TensorReader, source: CanonicalSource, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Copy one canonical tensor out of the file mapping; split q/k/v are written into one buffer."""
    if len(source.parts) == 1:
        return reader.read(source.parts[0]).to(device=device, dtype=dtype, copy=True)

    fused = torch.empty(source.shape, device=device, dtype=dtype)
    row = 0
    for part in source.parts:
        fused[row : row + part.shape[0]].copy_(reader.read(part))
        row += part.shape[0]
    return fused


def _quantise(
    reader: TensorReader, source: CanonicalSource, device: torch.device, path: Path
) -> tuple[torch.Tensor, float]:
    """Quantise one canonical weight (split q/k/v as one tensor) to float8 straight from the file mapping."""
    parts = [reader.read(part) for part in source.parts]
    try:
        return quantise_fp8(parts, name=" + ".join(part.name for part in source.parts), device=device)
    except NonFiniteWeightError as error:
        raise CheckpointError(f"'{path}': {error}") from error


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
