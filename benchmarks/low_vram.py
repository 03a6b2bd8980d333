"""Accuracy of float8 block weights against float32, and the analytic memory of each low-VRAM mode.

    python benchmarks/low_vram.py [--mid-dim 512 --mid-layers 8]

Prints, as Markdown tables:

- the relative L2 error of the velocity against float32 for bfloat16 weights, fp8 weights
  with the per-tensor scale (l2p_core.fp8) and fp8 weights cast without a scale, on the
  reference tiny checkpoint (cases a–d) and on a random mid-size network;
- the relative L2 error of a 4-step, cfg 2 sampling run (64², mid-size network) with fp8
  weights, and whether block streaming changed any output bit;
- `l2p_core.memory_budget.memory_table` for the released 1K configuration at 1024².

Everything runs on the CPU; the weights are random, so errors are those of the number
formats, not image quality. NOTE: bfloat16 forward passes can take minutes on CPUs without
native bfloat16 matrix kernels.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

import l2p_core
from l2p_core import memory_budget, synthetic
from l2p_core.fp8 import fp8_layer_names

REPOSITORY = Path(__file__).resolve().parent.parent
FIXTURES = REPOSITORY / "tests" / "fixtures"


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def cast_without_scale(model):
    """Round the fp8-convertible weights to float8_e4m3fn without a scale, keeping their dtype."""
    for name in fp8_layer_names(model):
        weight = model.get_submodule(name).weight
        weight.data = weight.data.to(torch.float8_e4m3fn).to(weight.dtype)
    return model


def velocity_errors(path: Path, cases: list[tuple]) -> dict[str, list[float]]:
    models = {
        "bfloat16": l2p_core.load_model(path, dtype=torch.bfloat16),
        "fp8, scaled": l2p_core.load_model(path, weight_storage="fp8_e4m3fn"),
        "fp8, no scale": cast_without_scale(l2p_core.load_model(path)),
    }
    reference = l2p_core.load_model(path)
    errors: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for x, sigma, context in cases:
            expected = reference(x, sigma, context)
            for name, model in models.items():
                value = model(x.to(model.compute_dtype), sigma, [c.to(model.compute_dtype) for c in context])
                errors[name].append(relative_error(value, expected))
    return errors


def sampling_errors(path: Path) -> tuple[float, bool]:
    generator = torch.Generator().manual_seed(1)
    positive = [torch.randn(20, 64, generator=generator)]
    negative = [torch.randn(7, 64, generator=generator)]

    def run(**options) -> torch.Tensor:
        model = l2p_core.load_model(path, **options)
        return l2p_core.sample(model, positive, negative, width=64, height=64, seed=3, steps=4, cfg=2.0)

    reference, fp8 = run(), run(weight_storage="fp8_e4m3fn")
    streamed = run(weight_storage="fp8_e4m3fn", resident_blocks=2)
    return relative_error(fp8, reference), torch.equal(streamed, fp8)


def print_errors(title: str, errors: dict[str, list[float]]) -> None:
    print(f"\n{title}\n\n| weights | max | mean |\n|---|---|---|")
    for name, values in errors.items():
        print(f"| {name} | {max(values):.4f} | {sum(values) / len(values):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mid-dim", type=int, default=512, help="width of the random mid-size network (default 512)")
    parser.add_argument("--mid-layers", type=int, default=8, help="joint blocks of the mid-size network (default 8)")
    args = parser.parse_args()

    reference = load_file(FIXTURES / "reference-forward-1k.safetensors")
    cases = [(reference[f"{c}.x"], reference[f"{c}.sigma"], [reference[f"{c}.cap_feats"]]) for c in "abcd"]
    print_errors(
        "Velocity, reference tiny checkpoint (cases a–d)", velocity_errors(FIXTURES / "tiny-l2p-1k.safetensors", cases)
    )

    config = synthetic.tiny_config(
        dim=args.mid_dim, n_heads=args.mid_dim // 64, n_layers=args.mid_layers, n_refiner_layers=2, cap_feat_dim=64
    )
    generator = torch.Generator().manual_seed(1)
    mid_cases = [
        (
            torch.randn(1, 3, 64, 64, generator=generator),
            torch.tensor([sigma]),
            [torch.randn(20, 64, generator=generator)],
        )
        for sigma in (0.9, 0.5, 0.1)
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = synthetic.write_checkpoint(Path(folder) / "mid.safetensors", config)
        print_errors(
            f"Velocity, random network dim {config.dim}, {config.n_layers} joint blocks",
            velocity_errors(path, mid_cases),
        )
        image_error, identical = sampling_errors(path)
    print(f"\n4-step sampling, fp8 against float32: relative L2 error {image_error:.4f}")
    print(f"fp8 + streaming (2 blocks) bit-identical to fp8: {identical}")

    print("\nReleased 1K configuration at 1024², batch 1 (estimate):\n")
    print(memory_budget.memory_table(synthetic.released_1k_config()))


if __name__ == "__main__":
    main()
