"""Speed and memory of L2P sampling on this machine, against its own measured matmul limit.

    python benchmarks/speed.py              # everything, about 10 minutes on 2 CPU cores
    python benchmarks/speed.py --quick      # skips torch.compile and the tiled 4096² memory run
    python benchmarks/speed.py --no-write   # print the report without updating the page

For a tiny and a mid-size random network it measures, side by side in one run:
- the time of one sampling step (cfg 2, so two network passes), split into backbone and
  local decoder, first with every speed setting off and then with each one on;
- the analytic matrix FLOPs of that step (`l2p_core.flops`), the FLOP rate achieved, and
  its ratio to the peak matmul rate measured on this machine in the same run;
- peak memory growth of loading a checkpoint, of a 1024² step and of tiled 2048²/4096²
  steps, each in a fresh process (`peak_memory.run_worker`).

The report replaces the part of docs/benchmarks.md between the two `speed` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peak_memory import ROOT, run_worker  # noqa: E402
from tiling_memory import NETWORK as MID_NETWORK  # noqa: E402

import l2p_core  # noqa: E402
from l2p_core import flops, synthetic  # noqa: E402

PAGE = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"

TINY_NETWORK = {"dim": 64, "n_heads": 2, "n_layers": 2, "n_refiner_layers": 1, "cap_feat_dim": 32}
# (name, network, image side in px, timed steps)
CONFIGS = [("tiny", TINY_NETWORK, 256, 6), ("mid", MID_NETWORK, 512, 3)]
# Caption lengths of the two guidance branches: a prompt, and an empty negative prompt.
POSITIVE_TOKENS, NEGATIVE_TOKENS = 96, 8
CFG = 2.0


@dataclass
class Settings:
    """One combination of the network's speed settings."""

    label: str
    cache_positions: bool = False
    reuse_captions: bool = False
    batch_cfg: bool = False
    channels_last: bool = False
    compiled: bool = False


BASELINE = Settings("baseline: every setting off")
VARIANTS = [
    BASELINE,
    Settings("RoPE tables cached", cache_positions=True),
    Settings("caption path once per prompt", reuse_captions=True),
    Settings("positive and negative batched", batch_cfg=True),
    Settings("decoder in channels-last layout", channels_last=True),
    Settings("defaults on this device", cache_positions=True, reuse_captions=True, channels_last=True),
]
COMPILED = Settings(
    "defaults + torch.compile", cache_positions=True, reuse_captions=True, channels_last=True, compiled=True
)


@dataclass
class StepTiming:
    seconds: list[float] = field(default_factory=list)
    decoder_seconds: list[float] = field(default_factory=list)

    @property
    def step(self) -> float:
        return min(self.seconds)

    @property
    def decoder(self) -> float:
        return self.decoder_seconds[self.seconds.index(self.step)]


def build_config(network: dict):
    network = dict(network)
    if "decoder_channels" in network:
        network["decoder_channels"] = tuple(network["decoder_channels"])
    return synthetic.tiny_config(**network)


def build(network: dict) -> l2p_core.L2PTransformer:
    config = build_config(network)
    model = l2p_core.L2PTransformer(config)
    model.load_state_dict(synthetic.random_state_dict(config, seed=1, dtype=torch.float32))
    return model.eval()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class DecoderClock:
    """Forward hooks adding up the time spent in the local decoder."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._started = 0.0
        decoder.register_forward_pre_hook(self._start)
        decoder.register_forward_hook(self._stop)

    def _start(self, *_) -> None:
        synchronize()
        self._started = time.perf_counter()

    def _stop(self, *_) -> None:
        synchronize()
        self.seconds += time.perf_counter() - self._started


def apply(model: l2p_core.L2PTransformer, settings: Settings) -> None:
    model.cache_positions = settings.cache_positions
    model._position_cache.clear()
    model.local_decoder.channels_last = settings.channels_last
    # The sampler enters `model.reuse_captions()`; a no-op block in its place turns reuse off.
    if settings.reuse_captions:
        model.__dict__.pop("reuse_captions", None)
    else:
        model.reuse_captions = contextlib.nullcontext


def time_steps(model, clock: DecoderClock, captions, size: int, steps: int, settings: Settings) -> tuple[float, float]:
    """Return the seconds per step and the decoder's seconds per step of one `steps`-step run."""
    positive, negative = captions
    clock.seconds = 0.0
    synchronize()
    started = time.perf_counter()
    l2p_core.sample(
        model, positive, negative, width=size, height=size, seed=0, steps=steps, cfg=CFG,
        batch_cfg=settings.batch_cfg,
    )  # fmt: skip
    synchronize()
    return (time.perf_counter() - started) / steps, clock.seconds / steps


def measure_settings(name: str, network: dict, size: int, steps: int, variants: list[Settings], rounds: int):
    """Time each variant `rounds` times, interleaved so that machine load affects them alike.

    Compiling changes the blocks in place, so compiled variants run on a second copy of the
    network with the same weights.
    """
    eager = build(network)
    compiled = None
    clocks = {id(eager): DecoderClock(eager.local_decoder)}
    generator = torch.Generator().manual_seed(3)
    captions = (
        [torch.randn(POSITIVE_TOKENS, eager.config.cap_feat_dim, generator=generator)],
        [torch.randn(NEGATIVE_TOKENS, eager.config.cap_feat_dim, generator=generator)],
    )
    timings = {settings.label: StepTiming() for settings in variants}
    compile_seconds = None
    for round_index in range(rounds):
        for settings in variants:
            model = eager
            if settings.compiled:
                if compiled is None:
                    compiled = build(network)
                    clocks[id(compiled)] = DecoderClock(compiled.local_decoder)
                    apply(compiled, settings)
                    started = time.perf_counter()
                    compiled.compile_blocks()
                    time_steps(compiled, clocks[id(compiled)], captions, size, 1, settings)
                    compile_seconds = time.perf_counter() - started
                model = compiled
            apply(model, settings)
            clock = clocks[id(model)]
            if round_index == 0:
                time_steps(model, clock, captions, size, 1, settings)  # warm-up
            step, decoder = time_steps(model, clock, captions, size, steps, settings)
            timings[settings.label].seconds.append(step)
            timings[settings.label].decoder_seconds.append(decoder)
            print(f"  {name} {settings.label}: {step:.3f} s/step", file=sys.stderr)
    return eager.config, timings, compile_seconds


def peak_matmul_flops(dtype: torch.dtype, seconds: float = 2.0) -> tuple[float, int]:
    """Return the best matrix-multiply FLOP rate over a few square sizes, and the size that gave it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    best, best_size = 0.0, 0
    for size in (512, 1024, 2048) if device == "cpu" else (4096, 8192):
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        torch.matmul(a, b)
        synchronize()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            torch.matmul(a, b)
            count += 1
        synchronize()
        rate = 2 * size**3 * count / (time.perf_counter() - started)
        if rate > best:
            best, best_size = rate, size
    return best, best_size


MEMORY_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import l2p_core
    from l2p_core import synthetic
    from peak_memory import measure_peak

    request = json.loads(sys.argv[1])
    network = request["network"]
    network["decoder_channels"] = tuple(network["decoder_channels"])
    config = synthetic.tiny_config(**network)
    torch.ones(1) + 1  # initialise torch's lazy state before the baseline

    if request["kind"] == "load":
        path = request["checkpoint"]
        model, growth_mib, seconds = measure_peak(lambda: l2p_core.load_model(path, dtype=torch.float32))
        tensor_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        print(json.dumps({"peak_growth_mib": growth_mib, "seconds": seconds, "tensor_mib": tensor_mib}))
        raise SystemExit

    model = l2p_core.L2PTransformer(config)
    model.load_state_dict(synthetic.random_state_dict(config, seed=1, dtype=torch.float32))
    model.eval()
    generator = torch.Generator().manual_seed(2)
    positive = [torch.randn(96, config.cap_feat_dim, generator=generator)]
    negative = [torch.randn(8, config.cap_feat_dim, generator=generator)]
    size, tile = request["size"], request.get("tile")
    cfg = 1.0 if tile else 2.0

    def run():
        l2p_core.sample(model, positive, negative, width=size, height=size, seed=0, steps=1, cfg=cfg,
                        tile_size=tile, tile_overlap=256 if tile else None)

    _, growth_mib, seconds = measure_peak(run)
    print(json.dumps({"peak_growth_mib": growth_mib, "seconds": seconds}))
    """
)


def measure_memory(quick: bool, checkpoint: Path) -> list[tuple[str, dict]]:
    network = {**MID_NETWORK, "decoder_channels": list(MID_NETWORK["decoder_channels"])}
    runs = [
        ("load (float32, from a bf16 file)", {"kind": "load", "checkpoint": str(checkpoint)}),
        ("1024² step, cfg 2", {"kind": "sample", "size": 1024}),
        ("2048² tiled step (1024/256), cfg 1", {"kind": "sample", "size": 2048, "tile": 1024}),
    ]
    if not quick:
        runs.append(("4096² tiled step (1024/256), cfg 1", {"kind": "sample", "size": 4096, "tile": 1024}))
    results = []
    for label, request in runs:
        print(f"  memory: {label}", file=sys.stderr)
        results.append((label, run_worker(MEMORY_WORKER, {**request, "network": network})))
    return results


def machine_line() -> str:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return (
        f"{device}; Python {platform.python_version()}, torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; load average at start {os.getloadavg()[0]:.1f}"
    )


def report(results, memory, peak, peak_size, include_compile: bool) -> str:
    lines = [
        f"Command: `python benchmarks/speed.py{'' if include_compile else ' --quick'}`. Machine: {machine_line()}.",
        "",
        f"Peak matmul rate measured in the same run: {peak / 1e9:.1f} GFLOP/s (float32, {peak_size}² matrices).",
        f"Each step is cfg {CFG:g}: a {POSITIVE_TOKENS}-token prompt and an {NEGATIVE_TOKENS}-token negative "
        "prompt. Times are the best of the interleaved rounds; ratios divide the baseline's step time by each row's.",
        "",
    ]
    for name, size, config, timings, compile_seconds in results:
        step_flops = flops.step_flops(config, size, size, POSITIVE_TOKENS, cfg=CFG, negative_tokens=NEGATIVE_TOKENS)
        baseline = timings[BASELINE.label].step
        lines += [
            f"**{name}** network (dim {config.dim}, {config.n_layers} joint + {config.n_refiner_layers} refiner "
            f"blocks, decoder {'/'.join(str(level.enc_out) for level in config.decoder.levels)}) at {size}²: "
            f"{step_flops / 1e9:.2f} GFLOP of matrix work per step.",
            "",
            "| settings | step (s) | backbone (s) | decoder (s) | speed-up | GFLOP/s | share of peak matmul |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, timing in timings.items():
            rate = step_flops / timing.step
            lines.append(
                f"| {label} | {timing.step:.3f} | {timing.step - timing.decoder:.3f} | {timing.decoder:.3f} | "
                f"{baseline / timing.step:.2f}× | {rate / 1e9:.1f} | {rate / peak:.2f} |"
            )
        if compile_seconds is not None:
            lines.append(f"\ntorch.compile took {compile_seconds:.0f} s before the first compiled step.")
        lines.append("")

    lines += [
        "Peak memory growth of the mid-size network, float32, each in a fresh process:",
        "",
        "| run | peak growth (MiB) | time (s) |",
        "|---|---|---|",
    ]
    for label, result in memory:
        extra = ""
        if "tensor_mib" in result:
            extra = f" ({result['peak_growth_mib'] / result['tensor_mib']:.2f}× the weights)"
        lines.append(f"| {label} | {result['peak_growth_mib']:.0f}{extra} | {result['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write_page(text: str) -> None:
    page = PAGE.read_text()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in page:
        page = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, page, flags=re.S)
    else:
        page = page.rstrip("\n") + "\n\n## Sampling speed\n\n" + block + "\n"
    PAGE.write_text(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip torch.compile and the tiled 4096² memory run")
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        raise SystemExit("The memory part of this benchmark reads RssAnon from /proc and runs on Linux only.")

    peak, peak_size = peak_matmul_flops(torch.float32)
    variants = VARIANTS + ([] if args.quick else [COMPILED])
    results = []
    for name, network, size, steps in CONFIGS:
        config, timings, compile_seconds = measure_settings(name, network, size, steps, variants, args.rounds)
        results.append((name, size, config, timings, compile_seconds))
    with tempfile.TemporaryDirectory() as folder:
        # Written here, so that the loading process starts without the random weights' freed memory.
        checkpoint = synthetic.write_checkpoint(Path(folder) / "mid.safetensors", build_config(MID_NETWORK))
        memory = measure_memory(args.quick, checkpoint)

    text = report(results, memory, peak, peak_size, include_compile=not args.quick)
    print(text)
    if not args.no_write:
        write_page(text)
        print(f"Updated {PAGE.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
