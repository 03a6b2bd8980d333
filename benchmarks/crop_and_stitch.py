"""Time and memory of inpainting a small region of a large photograph: crop-and-stitch vs the whole image.

    python benchmarks/crop_and_stitch.py

Inpaints a 128² mask in a 2048² photograph (scikit-image's astronaut, upscaled) with the
tiny random L2P network of the tests, 2 steps at cfg 1. It runs three ways: crop-and-stitch
(the default), the whole image in one pass, and the whole image in 1024-px tiles. Each run is a
fresh process that samples its anonymous resident memory (RssAnon in /proc/self/status,
Linux only) every 0.5 ms. Prints a Markdown table and checks that every pixel outside the
mask equals the input.
"""

from __future__ import annotations

import os
import platform
import textwrap
from pathlib import Path

from peak_memory import run_worker

CANVAS_PX, MASK_PX = 2048, 128

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.nn.functional as F
    import l2p_core
    from l2p_core import synthetic
    from skimage import data
    from peak_memory import measure_peak

    request = json.loads(sys.argv[1])
    config = synthetic.tiny_config()
    model = l2p_core.L2PTransformer(config)
    model.load_state_dict(synthetic.random_state_dict(config, seed=1, dtype=torch.float32))
    model.eval()
    caption = [torch.randn(24, config.cap_feat_dim, generator=torch.Generator().manual_seed(2))]

    size, mask_px = request["canvas"], request["mask"]
    photo = l2p_core.from_uint8(data.astronaut())
    image = F.interpolate(photo, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    mask = torch.zeros(1, size, size)
    top, left = size // 3, size // 2
    mask[:, top : top + mask_px, left : left + mask_px] = 1

    def run():
        return l2p_core.inpaint(
            model, caption, caption, image, mask, seed=0, steps=2, cfg=1.0, crop=request["crop"],
            tile_size=request["tile"],
        )

    torch.ones(1) + 1  # initialise torch's lazy state before the baseline
    result, growth_mib, seconds = measure_peak(run)
    keep = (mask == 0)[:, None].expand_as(result)
    exact = torch.equal(result[keep], image[keep])
    print(json.dumps({"peak_growth_mib": growth_mib, "seconds": seconds, "exact_outside": exact}))
    """
)


def measure(crop: bool, tile: int | None) -> dict:
    return run_worker(WORKER, {"canvas": CANVAS_PX, "mask": MASK_PX, "crop": crop, "tile": tile})


def main() -> None:
    if not Path("/proc/self/status").exists():
        raise SystemExit("This benchmark reads RssAnon from /proc and runs on Linux only.")

    runs = {
        "crop-and-stitch (640² window)": measure(crop=True, tile=None),
        f"whole {CANVAS_PX}² image": measure(crop=False, tile=None),
        f"whole {CANVAS_PX}² image, 1024-px tiles": measure(crop=False, tile=1024),
    }
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
        f"Python {platform.python_version()}"
    )
    print(f"Tiny random network (synthetic.tiny_config()); {MASK_PX}² mask in a {CANVAS_PX}² photo; 2 steps, cfg 1.\n")
    print("| run | time (s) | peak memory growth (MiB) | outside mask equal to input |")
    print("|---|---|---|---|")
    for name, run in runs.items():
        print(f"| {name} | {run['seconds']:.2f} | {run['peak_growth_mib']:.0f} | {run['exact_outside']} |")


if __name__ == "__main__":
    main()
