"""Memory and time of tiled generation on the CPU, with a mid-size random L2P network.

    python benchmarks/tiling_memory.py            # all measurements, about 10 minutes on 2 cores
    python benchmarks/tiling_memory.py --quick    # 2K and 4K only

Each measurement runs in a fresh process through `peak_memory.run_worker`, which samples
anonymous resident memory (RssAnon, Linux only) every 0.5 ms. A fresh process keeps one
run's allocator state out of the next. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import textwrap
from pathlib import Path

from peak_memory import run_worker

# Mid-size network: real token grid and patch size, narrower backbone and decoder so an
# 8192² tiled run finishes on two CPU cores. Every tiled run uses 1024-px tiles (the 1K
# model's trained 64×64 token grid) with 256-px overlap, one step, cfg 1.
NETWORK = {
    "dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "n_refiner_layers": 1,
    "cap_feat_dim": 64,
    "decoder_channels": (16, 32, 64, 128),
}
TILE_PX, OVERLAP_PX = 1024, 256

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import l2p_core
    from l2p_core import synthetic
    from l2p_core.tiling import decode_tiled
    from peak_memory import measure_peak

    request = json.loads(sys.argv[1])
    network = request["network"]
    network["decoder_channels"] = tuple(network["decoder_channels"])
    config = synthetic.tiny_config(**network)
    model = l2p_core.L2PTransformer(config)
    model.load_state_dict(synthetic.random_state_dict(config, seed=1, dtype=torch.float32))
    model.eval()
    caption = [torch.randn(24, config.cap_feat_dim, generator=torch.Generator().manual_seed(2))]
    size = request["size"]

    def run():
        if request["kind"] == "sample":
            tile = request.get("tile")
            l2p_core.sample(model, caption, caption, width=size, height=size, seed=0, steps=1, cfg=1.0,
                            tile_size=tile, tile_overlap=request.get("overlap"))
        else:
            image = torch.rand(1, 3, size, size) * 2 - 1
            features = torch.randn(1, config.dim, size // 16, size // 16)
            with torch.inference_mode():
                if request["kind"] == "decoder_tiled":
                    decode_tiled(model.local_decoder, image, features, tile_px=1024, align_px=16, token_px=16)
                else:
                    model.local_decoder(image, features)

    torch.ones(1) + 1  # initialise torch's lazy state before the baseline
    _, growth_mib, seconds = measure_peak(run)
    print(json.dumps({"peak_growth_mib": growth_mib, "seconds": seconds}))
    """
)


def measure(kind: str, size: int, tile: int | None = None) -> dict:
    overlap = OVERLAP_PX if tile else None
    return run_worker(WORKER, {"kind": kind, "size": size, "tile": tile, "overlap": overlap, "network": NETWORK})


def canvas_mib(size: int) -> float:
    """Size of one float32 RGB canvas buffer in MiB."""
    return 3 * size * size * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="measure 2K and 4K only (about 2 minutes)")
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        raise SystemExit("This benchmark reads RssAnon from /proc and runs on Linux only.")

    sizes = [2048, 4096] if args.quick else [2048, 4096, 8192]
    tiled = {size: measure("sample", size, TILE_PX) for size in sizes}
    untiled_2k = measure("sample", 2048)
    decoder_whole = measure("decoder", 4096)
    decoder_tiled = measure("decoder_tiled", 4096)

    # The growth between the two largest canvases counts the canvas-sized buffers. What is
    # left at each size is the working set of one network pass, which must not grow.
    large, larger = sizes[-2], sizes[-1]
    buffers = (tiled[larger]["peak_growth_mib"] - tiled[large]["peak_growth_mib"]) / (
        canvas_mib(larger) - canvas_mib(large)
    )

    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
        f"Python {platform.python_version()}"
    )
    print(f"Network: {NETWORK}; tiles {TILE_PX} px, overlap {OVERLAP_PX} px; 1 step, cfg 1.\n")
    print(f"| canvas | peak growth (MiB) | one canvas buffer (MiB) | growth − {buffers:.1f} buffers (MiB) | time (s) |")
    print("|---|---|---|---|---|")
    for size in sizes:
        growth = tiled[size]["peak_growth_mib"]
        residual = growth - buffers * canvas_mib(size)
        print(
            f"| {size}² tiled | {growth:.0f} | {canvas_mib(size):.0f} | {residual:.0f} | {tiled[size]['seconds']:.1f} |"
        )

    ratio = tiled[2048]["seconds"] / untiled_2k["seconds"]
    print(f"\n2048² untiled: {untiled_2k['seconds']:.1f} s, peak growth {untiled_2k['peak_growth_mib']:.0f} MiB; "
          f"tiled / untiled time: {ratio:.2f}.")  # fmt: skip
    decoder_ratio = decoder_tiled["peak_growth_mib"] / decoder_whole["peak_growth_mib"]
    print(f"Local decoder at 4096²: untiled peak growth {decoder_whole['peak_growth_mib']:.0f} MiB, "
          f"tiled (1024-px tiles) {decoder_tiled['peak_growth_mib']:.0f} MiB, ratio {decoder_ratio:.2f}; "
          f"time {decoder_whole['seconds']:.1f} s vs {decoder_tiled['seconds']:.1f} s.")  # fmt: skip


if __name__ == "__main__":
    main()
