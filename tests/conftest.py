"""Shared fixtures: the official reference data and tiny checkpoints built at test time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from l2p_core import synthetic

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_1K = FIXTURES / "tiny-l2p-1k.safetensors"


@pytest.fixture(scope="session")
def forward_reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "reference-forward-1k.safetensors")


@pytest.fixture(scope="session")
def sampling_reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "reference-sampling-1k.safetensors")


@pytest.fixture(scope="session")
def comfyui_1k(tmp_path_factory) -> Path:
    """The reference tiny 1K checkpoint converted to ComfyUI's layout (prefix, fused q/k/v)."""
    path = tmp_path_factory.mktemp("comfyui") / "tiny-l2p-1k-comfy.safetensors"
    save_file(synthetic.to_comfyui_layout(load_file(OFFICIAL_1K)), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny 1K-architecture checkpoint in the official layout."""
    return synthetic.write_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", synthetic.tiny_config())
