"""`l2p-generate`: text-to-image from the command line with an L2P model and a Qwen3-4B encoder.

The prompt is encoded first and the encoder freed before the L2P model loads, so the two
never occupy memory together. Exit status: 0 on success, 2 for errors in the arguments or
files (one line on stderr, no traceback), 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import L2PError, SamplingCancelled
from .fp8 import FP8_STORAGE
from .images import to_uint8
from .loader import inspect_checkpoint, load_model
from .sampling import sample
from .text_encoder import load_text_encoder
from .variants import VARIANTS

logger = logging.getLogger(__name__)

PROG = "l2p-generate"
# PNG text chunk that contains the generation settings as JSON.
SETTINGS_CHUNK = "l2p_settings"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UsageError(L2PError, ValueError):
    """An invalid combination of command-line arguments, found after argparse accepted each one."""


def tool_version() -> str:
    """Return the installed comfyui-l2p version, or the one in pyproject.toml for a source checkout."""
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("comfyui-l2p")
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    with contextlib.suppress(OSError):
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
        if match:
            return match[1]
    return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate images with an L2P pixel-space model from prompts encoded with Qwen3-4B.",
        epilog=(
            "With --batch-size N, image 0 is written to OUTPUT and image k to OUTPUT with _k before the suffix "
            "(out.png, out_1.png, …). The whole batch comes from one noise draw, so image k is reproduced by the "
            f"same seed and batch size. Each PNG has the settings as JSON in its '{SETTINGS_CHUNK}' text chunk."
        ),
    )
    add = parser.add_argument

    # Model files
    add(
        "--model", required=True, type=Path, metavar="FILE",
        help="L2P checkpoint (.safetensors, or any shard of a set).",
    )  # fmt: skip
    add(
        "--text-encoder", required=True, type=Path, metavar="PATH",
        help="Qwen3-4B encoder: a single .safetensors file (such as ComfyUI's qwen_3_4b.safetensors), a Hugging Face "
        "folder (such as Z-Image-Turbo's text_encoder/) or any shard of one.",
    )  # fmt: skip
    add(
        "--tokenizer", type=Path, metavar="DIR",
        help="Folder with the Qwen3 tokenizer (tokenizer.json). Default: the encoder's folder, its tokenizer/ "
        "subfolder, or a sibling ../tokenizer folder.",
    )  # fmt: skip

    # Prompts and output
    add("--prompt", required=True, metavar="TEXT", help="Text describing the image.")
    add(
        "--negative-prompt", default="", metavar="TEXT",
        help="Text to steer away from (default: empty, as in the reference pipeline).",
    )  # fmt: skip
    add(
        "-o", "--output", required=True, type=Path, metavar="FILE",
        help="Output PNG file. An existing file is replaced.",
    )  # fmt: skip
    add(
        "--width", type=_positive_int, default=1024, metavar="PX",
        help="Image width in pixels (default 1024): a multiple of 16, or of 64, 128 or 320 for the 4K, 8K and "
        "10K models.",
    )  # fmt: skip
    add(
        "--height", type=_positive_int, default=1024, metavar="PX",
        help="Image height in pixels, with the same multiple as --width (default 1024).",
    )  # fmt: skip

    # Sampling
    add("--seed", type=_seed, default=0, metavar="N", help="Noise seed, 0 to 2^64-1 (default 0).")
    add(
        "--steps", type=_positive_int, default=None, metavar="N",
        help="Number of Euler sampling steps (default: the model's preset, 30 for 1K and 50 for the HR models).",
    )  # fmt: skip
    add(
        "--cfg", type=_non_negative_float, default=None, metavar="SCALE",
        help=(
            "Classifier-free guidance scale. At 1 the negative prompt's pass is skipped "
            "(default: the model's preset, 2.0 for 1K and 4.0 for the HR models)."
        ),
    )  # fmt: skip
    add(
        "--shift", type=_positive_float, default=3.0, metavar="SHIFT",
        help="Sigma schedule shift. Higher values spend more steps at high noise (default 3.0).",
    )  # fmt: skip

    # Runtime
    add("--device", default="cpu", help="Torch device, such as cpu, cuda or cuda:1 (default cpu).")
    add(
        "--dtype", choices=sorted(DTYPES),
        help="Weight dtype of both models (default bfloat16 on CUDA, float32 otherwise). float16 may overflow in L2P.",
    )  # fmt: skip
    add("--batch-size", type=_positive_int, default=1, metavar="N", help="Number of images to generate (default 1).")

    # Low VRAM
    add(
        "--fp8", action="store_true",
        help="Store the transformer blocks' attention and feed-forward weights in float8 (e4m3fn, one scale per "
        "tensor) and upcast them to --dtype layer by layer: about 6 GB instead of 12 GB for the 1K model.",
    )  # fmt: skip
    add(
        "--stream-blocks", type=_positive_int, default=None, metavar="N",
        help="Keep the transformer blocks in CPU memory and copy them to --device as they run, with at most N "
        "blocks there at once (2 to 4 is typical). Needs CPU memory for the model instead.",
    )  # fmt: skip
    add("--version", action="version", version=f"%(prog)s {tool_version()}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `l2p-generate` with `argv` (default: sys.argv[1:]) and return the exit status.

    Arguments that argparse rejects (a missing option, a negative step count) exit through
    SystemExit with status 2 and argparse's usage message instead of returning.
    """
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        generate(args)
    except (KeyboardInterrupt, SamplingCancelled):
        print(f"{PROG}: interrupted. No image file is left half-written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (L2PError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def generate(args: argparse.Namespace) -> list[Path]:
    """Check the arguments, encode the prompts, sample, write the PNGs and return their paths."""
    device = _check_device(args.device)
    if args.dtype is not None:
        dtype = DTYPES[args.dtype]
    elif device.type == "cuda":
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    outputs = output_paths(args.output, args.batch_size)

    # Headers only: a wrong file or size fails here, before anything large is loaded.
    config = inspect_checkpoint(args.model).config
    _check_image_size(args.width, args.height, config.size_multiple, config.variant)
    preset = VARIANTS[config.patch_size]
    args.steps = preset.steps if args.steps is None else args.steps
    args.cfg = preset.cfg if args.cfg is None else args.cfg

    encoder = load_text_encoder(
        args.text_encoder, tokenizer_dir=args.tokenizer, device=device, dtype=dtype, cap_feat_dim=config.cap_feat_dim
    )
    positive = encoder.encode(args.prompt)
    logger.info("Encoded the prompt as %d tokens", len(positive))
    negative = positive  # cfg 1 never runs the negative pass, so it needs no encoding
    if args.cfg != 1.0:
        negative = encoder.encode(args.negative_prompt)
        logger.info("Encoded the negative prompt as %d tokens", len(negative))
    del encoder
    _release_memory(device)

    model = load_model(
        args.model, device=device, dtype=dtype, weight_storage=FP8_STORAGE if args.fp8 else None,
        resident_blocks=args.stream_blocks,
    )  # fmt: skip
    started = time.monotonic()
    with _stop_on_first_interrupt() as stop_requested:
        images = sample(
            model, [positive], [negative],
            width=args.width, height=args.height, seed=args.seed, steps=args.steps, cfg=args.cfg, shift=args.shift,
            batch_size=args.batch_size, callback=_progress_printer(started), cancel_check=stop_requested,
        )  # fmt: skip

    pixels = to_uint8(images)
    for index, path in enumerate(outputs):
        write_png_atomically(path, pixels[index], {SETTINGS_CHUNK: _settings_json(args, dtype, index)})
        logger.info("Wrote %s", path)
    return outputs


def output_paths(output: Path, batch_size: int) -> list[Path]:
    """Return OUTPUT for the first image and OUTPUT_1 … for the rest, after checking OUTPUT is usable."""
    if output.suffix.lower() != ".png":
        raise UsageError(f"The output '{output}' must end in .png, because images are written as PNG.")
    if not output.parent.is_dir():
        raise UsageError(f"The output folder '{output.parent}' does not exist. Create it first.")
    return [output] + [output.with_name(f"{output.stem}_{index}{output.suffix}") for index in range(1, batch_size)]


def write_png_atomically(path: Path, pixels: np.ndarray, text: dict[str, str]) -> None:
    """Write uint8 [H, W, 3] pixels as a PNG with text chunks via a temporary file and a rename.

    `path` either keeps its old content or gets the complete new file, also when writing fails
    or is interrupted. The temporary file is removed in every case.
    """
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)  # Pillow switches to an iTXt chunk for text that is not Latin-1.

    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            Image.fromarray(pixels).save(handle, format="PNG", pnginfo=info)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file readable by its owner only, so apply the permissions the umask allows.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _settings_json(args: argparse.Namespace, dtype: torch.dtype, batch_index: int) -> str:
    settings = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "seed": args.seed,
        "steps": args.steps,
        "cfg": args.cfg,
        "shift": args.shift,
        "width": args.width,
        "height": args.height,
        "batch_size": args.batch_size,
        "batch_index": batch_index,
        "model": args.model.name,
        "text_encoder": args.text_encoder.name,
        "dtype": str(dtype).removeprefix("torch."),
        "block_weights": FP8_STORAGE if args.fp8 else str(dtype).removeprefix("torch."),
        "sampler": "euler",
        "tool": f"{PROG} {tool_version()}",
    }
    return json.dumps(settings, ensure_ascii=False)


def _check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device '{name}' is not a torch device ({error}). Use cpu or cuda.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {name}: CUDA is not available in this PyTorch build or on this machine. Use --device cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine. Use --device cpu.")
    return device


def _check_image_size(width: int, height: int, multiple: int, variant: str) -> None:
    for option, size in (("--width", width), ("--height", height)):
        if size % multiple:
            lower = max(multiple, size // multiple * multiple)
            raise UsageError(
                f"{option} {size} is not a multiple of {multiple} px, which the L2P {variant} model needs. "
                f"Use {lower} or {lower + multiple}."
            )


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _progress_printer(started: float):
    """Return a sampling callback that prints `Step k/n` with the mean time per step on stderr."""
    overwrite = sys.stderr.isatty()

    def report(step: int, total: int, x0: torch.Tensor) -> None:
        seconds_per_step = (time.monotonic() - started) / step
        line = f"Step {step}/{total} ({seconds_per_step:.2f} s/step)"
        if overwrite:
            print(f"\r{line}", end="\n" if step == total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return report


@contextlib.contextmanager
def _stop_on_first_interrupt() -> Iterator[Callable[[], bool]]:
    """Make the first Ctrl-C stop sampling after the current step and a second one stop at once.

    Yields the cancel check for `sample`. Outside the main thread, where no signal handler can
    be set, Ctrl-C raises KeyboardInterrupt as usual.
    """
    requested = False

    def handle(signum, frame) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        print(f"\n{PROG}: stopping after this step. Press Ctrl-C again to stop at once.", file=sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handle)
    except ValueError:
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def _configure_logging() -> None:
    """Send INFO messages to stderr unless the caller configured logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _positive_int(text: str) -> int:
    value = _parse(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _seed(text: str) -> int:
    value = _parse(int, text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text} is outside 0 to 2^64-1")
    return value


def _non_negative_float(text: str) -> float:
    value = _parse(float, text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number ≥ 0")
    return value


def _positive_float(text: str) -> float:
    value = _parse(float, text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value


def _parse(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
