"""GPU figures for the released 1K network's shapes, with random weights (no download needed).

    python benchmarks/gpu_figures.py                  # on an NVIDIA GPU (estimated 6-8 minutes on an H200)
    python benchmarks/gpu_figures.py --tiny --device cpu --steps 2   # a dry run of every part

Builds the full-size 1K network (6.17 B parameters) in bfloat16 and fills it with random
weights, drawn on the device (in CPU memory for the streamed runs). In one run it measures:
- the device's peak bfloat16 matmul rate (8192² products), the limit the ratios refer to;
- 1024² text-to-image at 30 steps and cfg 2: the positive and negative passes one after the
  other, batched, and one after the other with torch.compile;
- tiled 4096² text-to-image (1024-px tiles, 256-px overlap, guide pass first);
- the low-VRAM modes at 1024²: fp8 weight storage, block streaming with 2 resident blocks,
  and both together (fewer steps: their per-step time is what matters).
Each run reports seconds per step, the matrix TFLOP rate from `l2p_core.flops`, its ratio
to the measured matmul peak, and the peak device memory allocated (torch's allocator).

Prints a Markdown table and writes JSON to --json (default: $OUT/gpu_figures.json when
the OUT variable is set).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import l2p_core  # noqa: E402
from l2p_core import flops, synthetic  # noqa: E402
from l2p_core.block_streaming import stream_blocks  # noqa: E402
from l2p_core.fp8 import convert_to_fp8  # noqa: E402
from l2p_core.patch_tiling import plan_tiles  # noqa: E402

CAPTION_TOKENS, NEGATIVE_TOKENS = 128, 16


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    # Compiled blocks hold reference cycles, so a deleted network is freed only by the collector.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 3.0) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            torch.matmul(a, b)
        count += 10
        synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - started)


def build(config, device: torch.device, dtype: torch.dtype, on: torch.device) -> l2p_core.L2PTransformer:
    model = l2p_core.L2PTransformer(config, dtype=dtype, device=on)
    return synthetic.randomize_(model, seed=0).eval()


def captions(config, device: torch.device):
    generator = torch.Generator().manual_seed(1)
    positive = [torch.randn(CAPTION_TOKENS, config.cap_feat_dim, generator=generator).to(device)]
    negative = [torch.randn(NEGATIVE_TOKENS, config.cap_feat_dim, generator=generator).to(device)]
    return positive, negative


def timed_sample(model, device, config, *, size: int, steps: int, **options) -> dict:
    """Warm up with one step, then time a `steps`-step run at size×size; return its figures."""
    positive, negative = captions(config, device)
    settings = {"width": size, "height": size, "seed": 0, "cfg": 2.0, "device": device, **options}
    l2p_core.sample(model, positive, negative, steps=1, **settings)
    reset_peak(device)
    synchronize(device)
    started = time.perf_counter()
    l2p_core.sample(model, positive, negative, steps=steps, **settings)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": steps, "seconds_per_step": seconds / steps, "peak_gib": peak_gib(device)}


def step_flops(config, size: int, tile: int | None) -> float:
    """Matrix FLOPs per step at size²; tiled, every tile plus the guide pass (one tile's size on a square canvas)."""
    per_window = flops.step_flops(config, tile or size, tile or size, CAPTION_TOKENS, cfg=2.0,
                                  negative_tokens=NEGATIVE_TOKENS)  # fmt: skip
    if tile is None:
        return per_window
    tiles = plan_tiles(size, size, tile, tile // 4, config.size_multiple, config.patch_size)
    return per_window * (len(tiles) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="compute device (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny network: a dry run of the script")
    parser.add_argument("--steps", type=int, default=30, help="steps of the 1024² and 4096² runs (default 30)")
    parser.add_argument("--low-vram-steps", type=int, default=4, help="steps of the low-VRAM runs (default 4)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: compile, tiled, low_vram")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures as JSON")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device is available; run with --device cpu --tiny for a dry run.")
    dtype = torch.bfloat16
    config = synthetic.tiny_config() if args.tiny else synthetic.released_1k_config()
    size, tiled_size, tile = (64, 128, 64) if args.tiny else (1024, 4096, 1024)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    figures = {"device": name, "torch": torch.__version__, "tiny": args.tiny, "runs": {}}
    runs = figures["runs"]

    output = args.json or (Path(os.environ["OUT"]) / "gpu_figures.json" if os.environ.get("OUT") else None)

    def record(label: str, result: dict, flop_count: float) -> None:
        result["tflops"] = flop_count / result["seconds_per_step"] / 1e12
        result["share_of_peak"] = result["tflops"] * 1e12 / figures["matmul_peak_flops"]
        runs[label] = result
        print(f"{label}: {json.dumps(result)}", file=sys.stderr, flush=True)
        # Written after every run, so a run cut short by a time limit keeps what it measured.
        if output is not None:
            output.write_text(json.dumps(figures, indent=2))

    figures["matmul_peak_flops"] = matmul_peak(device, dtype, 1024 if args.tiny else 8192)
    model = build(config, device, dtype, on=device)
    figures["weights_gib"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    flop_1k = step_flops(config, size, None)
    figures["step_tflop"] = flop_1k / 1e12

    record(f"{size}², positive and negative separate", timed_sample(model, device, config, size=size, steps=args.steps,
           batch_cfg=False), flop_1k)  # fmt: skip
    record(f"{size}², positive and negative batched", timed_sample(model, device, config, size=size, steps=args.steps,
           batch_cfg=True), flop_1k)  # fmt: skip
    if "tiled" not in skip:
        result = timed_sample(model, device, config, size=tiled_size, steps=args.steps, tile_size=tile,
                              tile_overlap=tile // 4)  # fmt: skip
        record(
            f"{tiled_size}² tiled ({tile}/{tile // 4}), guide included", result, step_flops(config, tiled_size, tile)
        )
    if "compile" not in skip:
        started = time.perf_counter()
        model.compile_blocks()
        result = timed_sample(model, device, config, size=size, steps=args.steps)
        result["compile_and_warm_up_seconds"] = time.perf_counter() - started - result["seconds"]
        record(f"{size}², torch.compile", result, flop_1k)
    del model
    torch._dynamo.reset()
    reset_peak(device)

    if "low_vram" not in skip:
        steps = args.low_vram_steps
        model = convert_to_fp8(build(config, device, dtype, on=device))
        record(f"{size}², fp8 weights", timed_sample(model, device, config, size=size, steps=steps), flop_1k)
        del model
        reset_peak(device)

        model = build(config, device, dtype, on=torch.device("cpu"))
        with stream_blocks(model, device, resident_blocks=2):
            record(f"{size}², bf16, 2 blocks streamed", timed_sample(model, device, config, size=size, steps=steps),
                   flop_1k)  # fmt: skip
        model = convert_to_fp8(model)
        with stream_blocks(model, device, resident_blocks=2):
            record(f"{size}², fp8, 2 blocks streamed", timed_sample(model, device, config, size=size, steps=steps),
                   flop_1k)  # fmt: skip
        del model

    print(f"Device: {name}; torch {torch.__version__}; network: {'tiny' if args.tiny else 'released 1K shapes'}, "
          f"bf16, {figures['weights_gib']:.1f} GiB of weights; measured bf16 matmul peak "
          f"{figures['matmul_peak_flops'] / 1e12:.0f} TFLOP/s; {figures['step_tflop']:.1f} TFLOP per {size}² "
          "step at cfg 2.\n")  # fmt: skip
    print("| run | s/step | TFLOP/s | share of matmul peak | peak memory (GiB) |")
    print("|---|---|---|---|---|")
    for label, result in runs.items():
        memory = "n/a" if result["peak_gib"] is None else f"{result['peak_gib']:.1f}"
        print(f"| {label} | {result['seconds_per_step']:.3f} | {result['tflops']:.1f} | "
              f"{result['share_of_peak']:.2f} | {memory} |")  # fmt: skip


if __name__ == "__main__":
    main()
