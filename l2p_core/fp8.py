"""float8 (e4m3fn) weight storage for the transformer blocks' large Linear layers.

Each weight is stored as W / s in float8_e4m3fn with one scale s per tensor and upcast to
the activations' dtype at every call, so the 1K model's block weights take 1 byte per value
instead of 2. Unscaled e4m3fn would lose the many small values of these weights: its
smallest normal is 2⁻⁶ and values below 2⁻¹⁰ round to zero, while a 3840-wide Z-Image
projection has a standard deviation near 3840^-½ ≈ 0.016. The scale maps the tensor's
largest magnitude into (224, 448] (e4m3fn's maximum is 448), so nothing saturates. It is a
power of two, which makes W8 · s exact in bfloat16 and float32 (and in float16 above its
normal range, 6.1e-5): the upcast weight is exactly the dequantised value, and rounding to
float8 is the only error.

Only `attention.qkv`, `attention.out` and `feed_forward.w1/w2/w3` of every block are
converted: about 98 % of the 1K model's parameters. Norms, adaLN modulation, embedders,
pad tokens and the local decoder keep the compute dtype.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
# Names accepted for fp8 storage by `load_model(weight_storage=...)` and the CLI.
FP8_STORAGE = "fp8_e4m3fn"

# Canonical names of the Linear layers stored in float8, relative to the network.
FP8_LAYER_PATTERN = re.compile(
    r"^(noise_refiner|context_refiner|layers)\.\d+\.(attention\.(qkv|out)|feed_forward\.(w1|w2|w3))$"
)
# Values quantised at once, so the float32 temporary stays near 4 MB whatever the weight's size.
QUANTISE_CHUNK_VALUES = 2**20


class NonFiniteWeightError(ValueError):
    """A weight that contains NaN or Inf and therefore has no float8 scale."""


class Float8Linear(nn.Module):
    """A bias-free or biased Linear whose weight is stored in float8_e4m3fn with a power-of-two scale.

    `weight` is the float8 tensor W / `weight_scale`; the forward pass upcasts it to the
    input's dtype and multiplies by the scale (exact, see the module docstring). The scale is
    a Python float, so it needs no device moves when the weight is streamed. `state_dict()`
    therefore contains the scaled float8 values without their scale.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        weight = torch.empty(out_features, in_features, device=device, dtype=FP8_DTYPE)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = (
            nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None
        )
        self.weight_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(device=x.device, dtype=x.dtype).mul_(self.weight_scale)
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return F.linear(x, weight, bias)

    def set_weight(self, quantised: torch.Tensor, scale: float) -> None:
        """Install a float8 weight and its scale, as returned by `quantise_fp8`."""
        if quantised.dtype != FP8_DTYPE or tuple(quantised.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"Float8Linear expects a {FP8_DTYPE} weight of shape [{self.out_features}, {self.in_features}]; "
                f"got {quantised.dtype} {list(quantised.shape)}."
            )
        self.weight = nn.Parameter(quantised, requires_grad=False)
        self.weight_scale = float(scale)

    def dequantised_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight.to(dtype).mul_(self.weight_scale)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight_scale=2^{int(math.log2(self.weight_scale))}"
        )


def fp8_scale(absmax: float) -> float:
    """Return the power of two s that puts `absmax` / s in (224, 448]; 1.0 for an all-zero tensor."""
    if absmax == 0.0:
        return 1.0
    return 2.0 ** math.ceil(math.log2(absmax / FP8_MAX))


def quantise_fp8(
    tensor: torch.Tensor | Sequence[torch.Tensor], *, name: str = "weight", device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, float]:
    """Return (W / s in float8_e4m3fn on `device`, s) for a 2-D floating-point weight W.

    W may be given as a sequence of row blocks (the split q/k/v of the official layout),
    which are quantised as one tensor with one scale. The input is read in row chunks, so
    the only full-size allocation is the 1-byte result, and a memory-mapped checkpoint
    tensor is never copied whole in a wider dtype. Raises NonFiniteWeightError naming `name`
    when W has NaN or Inf values.
    """
    parts = [tensor] if isinstance(tensor, torch.Tensor) else list(tensor)
    columns = parts[0].shape[-1] if parts else 0
    if not parts or any(part.ndim != 2 or part.shape[1] != columns or not part.is_floating_point() for part in parts):
        shapes = ", ".join(f"{part.dtype} {list(part.shape)}" for part in parts)
        raise ValueError(f"'{name}': float8 storage takes a 2-D floating-point weight; got {shapes or 'nothing'}.")

    # The max and min of each chunk, read in the file's dtype, find the scale without a temporary
    # copy. A NaN or an infinity anywhere in a chunk makes one of them non-finite. torch has
    # no max/min kernels for float8 on the CPU, so float8 chunks are widened to float16,
    # which represents every float8 value exactly.
    absmax = 0.0
    for row, chunk in _row_chunks(parts):
        if not chunk.numel():
            continue
        if chunk.element_size() == 1:
            chunk = chunk.to(torch.float16)
        high, low = float(chunk.amax()), float(chunk.amin())
        if not (math.isfinite(high) and math.isfinite(low)):
            bad = int((~torch.isfinite(chunk)).sum())
            raise NonFiniteWeightError(
                f"'{name}' contains {bad} NaN or Inf value(s) in rows {row} to {row + len(chunk) - 1}, so it "
                "cannot be stored in float8 (or used at all). The checkpoint is damaged: download it again."
            )
        absmax = max(absmax, high, -low)

    scale = fp8_scale(absmax)
    rows = sum(part.shape[0] for part in parts)
    quantised = torch.empty((rows, columns), dtype=FP8_DTYPE, device=device)
    for row, chunk in _row_chunks(parts):
        scaled = chunk.to(torch.float32, copy=True).div_(scale)
        quantised[row : row + len(chunk)].copy_(scaled)
    return quantised, scale


def _row_chunks(parts: Sequence[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, view of the rows) over the row blocks, a few MB at a time."""
    row = 0
    for part in parts:
        rows_per_chunk = max(1, QUANTISE_CHUNK_VALUES // max(1, part.shape[1]))
        for start in range(0, part.shape[0], rows_per_chunk):
            yield row + start, part[start : start + rows_per_chunk]
        row += part.shape[0]


def fp8_layer_names(model: nn.Module) -> list[str]:
    """Return the names of the network's Linear layers that float8 storage converts."""
    return [name for name, _ in model.named_modules() if FP8_LAYER_PATTERN.match(name)]


def replace_with_fp8_layers(model: nn.Module) -> list[str]:
    """Swap every convertible Linear for an empty Float8Linear on the same device; return their names.

    Used by the loader on a network built on the meta device, before the weights are read.
    """
    names = fp8_layer_names(model)
    for name in names:
        linear = model.get_submodule(name)
        parent_name, _, attribute = name.rpartition(".")
        replacement = Float8Linear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        setattr(model.get_submodule(parent_name), attribute, replacement)
    return names


def convert_to_fp8(model: nn.Module) -> nn.Module:
    """Convert a loaded network's block Linear layers to Float8Linear in place and return it.

    Each layer is quantised on its own device and its full-precision weight is released
    before the next one, so memory falls as the conversion proceeds.
    """
    for name in fp8_layer_names(model):
        linear = model.get_submodule(name)
        if isinstance(linear, Float8Linear):
            continue
        weight = linear.weight.detach()
        replacement = Float8Linear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            dtype=weight.dtype,
        )
        replacement.set_weight(*quantise_fp8(weight, name=f"{name}.weight", device=weight.device))
        if linear.bias is not None:
            replacement.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, replacement)
        del linear, weight
    return model


def fp8_layers(model: nn.Module) -> Iterator[tuple[str, Float8Linear]]:
    return ((name, module) for name, module in model.named_modules() if isinstance(module, Float8Linear))
