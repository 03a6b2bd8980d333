"""Host tests: a real ComfyUI server with this pack, driven over HTTP as users drive it.

They run only when COMFYUI_PATH names a ComfyUI checkout; COMFYUI_PYTHON is the Python
that has its requirements (default: the one running pytest). The server starts once per
session with `main.py --cpu` and `--base-directory` in a temporary folder, so custom_nodes,
models, input, output and user data all live there and the checkout is not modified.
The pack is linked into that custom_nodes folder; an `--extra-model-paths-config` file
adds the folder with the test L2P checkpoints and the cached text encoder.

L2P_TEST_CACHE (default ~/.cache/comfyui-l2p-tests) keeps the randomly initialised
Qwen3-4B text encoder (8 GB, about two minutes to write) between sessions.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import save_file

from l2p_core import synthetic

from .comfy_client import ComfyClient
from .text_encoder import ensure_random_text_encoder

REPOSITORY = Path(__file__).resolve().parents[2]
PACK_FOLDER_NAME = "ComfyUI-L2P"
STARTUP_TIMEOUT_S = 300

# File names the tests load. The workflows name the release files, so the tiny test
# checkpoints take their names.
L2P_FILE = "model-1k-merge.safetensors"
HR_4K_FILE = "l2p_4k_sft.safetensors"
NARROW_CAPTION_FILE = "tiny-l2p-caption-64.safetensors"
NOT_L2P_FILE = "not-l2p-flux.safetensors"
TRUNCATED_FILE = "truncated-l2p.safetensors"
TEXT_ENCODER_FILE = "qwen_3_4b.safetensors"
LORA_FILE = "tiny-l2p-lora.safetensors"


@dataclass
class Host:
    """A running ComfyUI server with the pack, and where its files are."""

    client: ComfyClient
    checkout: Path
    python: str
    base: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        """Return the server's output so far, without terminal colour codes."""
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(encoding="utf-8", errors="replace"))


def host_settings() -> tuple[Path, str]:
    """Return the checkout and its Python, or skip with the variables to set."""
    checkout = os.environ.get("COMFYUI_PATH")
    if not checkout:
        pytest.skip(
            "Host tests need a ComfyUI checkout: set COMFYUI_PATH to it and COMFYUI_PYTHON to the "
            "Python that has its requirements installed."
        )
    checkout = Path(checkout).expanduser().resolve()
    if not (checkout / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH is '{checkout}', which has no main.py; point it at a ComfyUI checkout.")
    return checkout, os.environ.get("COMFYUI_PYTHON", sys.executable)


def run_probe(probe: Path, work: Path) -> dict:
    """Run a probe script in the host's Python with the pack linked into `work`; return its REPORT JSON.

    A probe imports ComfyUI in-process without a server and prints one `REPORT {json}` line.
    """
    checkout, python = host_settings()
    pack = work / "custom_nodes" / PACK_FOLDER_NAME
    pack.parent.mkdir()
    pack.symlink_to(REPOSITORY, target_is_directory=True)
    result = subprocess.run(
        [python, str(probe), str(pack), str(work)],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"},
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert reports, f"probe failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(reports[-1].removeprefix("REPORT "))


def write_test_models(diffusion_models: Path) -> None:
    """Write the tiny L2P checkpoints and the broken files that the tests load."""
    diffusion_models.mkdir(parents=True, exist_ok=True)
    synthetic.write_checkpoint(diffusion_models / L2P_FILE, synthetic.tiny_config(cap_feat_dim=2560))
    synthetic.write_checkpoint(diffusion_models / HR_4K_FILE, synthetic.tiny_config(patch_size=64, cap_feat_dim=2560))
    synthetic.write_checkpoint(
        diffusion_models / NARROW_CAPTION_FILE, synthetic.tiny_config(cap_feat_dim=64), layout="comfyui"
    )

    import torch

    flux_like = {
        "double_blocks.0.img_attn.qkv.weight": torch.zeros(96, 32),
        "double_blocks.0.img_attn.proj.weight": torch.zeros(32, 32),
    }
    save_file(flux_like, str(diffusion_models / NOT_L2P_FILE))

    complete = (diffusion_models / L2P_FILE).read_bytes()
    (diffusion_models / TRUNCATED_FILE).write_bytes(complete[: len(complete) // 2])


def write_test_lora(loras: Path) -> None:
    """Write a rank-4 LoRA on the tiny model's first joint block, in ComfyUI's key format."""
    import torch

    dim = synthetic.tiny_config().dim
    generator = torch.Generator().manual_seed(0)
    target = "diffusion_model.layers.0.attention.qkv"
    lora = {
        f"{target}.lora_up.weight": torch.randn(3 * dim, 4, generator=generator),
        f"{target}.lora_down.weight": torch.randn(4, dim, generator=generator),
    }
    loras.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(loras / LORA_FILE))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> Host:
    checkout, python = host_settings()
    cache = Path(os.environ.get("L2P_TEST_CACHE", "~/.cache/comfyui-l2p-tests")).expanduser()
    ensure_random_text_encoder(cache / "text_encoders" / TEXT_ENCODER_FILE)

    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPOSITORY, target_is_directory=True)
    extra_models = base / "extra-models"
    write_test_models(extra_models / "diffusion_models")
    write_test_lora(base / "models" / "loras")
    config = base / "extra_model_paths.yaml"
    config.write_text(
        "l2p_test_models:\n"
        f"    base_path: {extra_models}\n"
        "    diffusion_models: diffusion_models\n"
        "l2p_test_cache:\n"
        f"    base_path: {cache}\n"
        "    text_encoders: text_encoders\n",
        encoding="utf-8",
    )

    port = free_port()
    log_path = base / "comfyui.log"
    command = [
        python,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--extra-model-paths-config",
        str(config),
        "--database-url",
        "sqlite:///:memory:",
        "--disable-auto-launch",
        "--preview-method",
        "none",
    ]
    environment = os.environ | {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=checkout, stdout=log, stderr=subprocess.STDOUT, env=environment)
    host = Host(ComfyClient(port), checkout, python, base, log_path, process)
    try:
        _wait_until_ready(host)
        yield host
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(host: Host) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            pytest.fail(f"ComfyUI exited with code {host.process.returncode} during start-up:\n{host.log()[-4000:]}")
        try:
            host.client.get_json("/system_stats")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    pytest.fail(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S} s:\n{host.log()[-4000:]}")
