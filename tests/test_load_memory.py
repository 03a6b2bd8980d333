"""Loading memory: anonymous resident memory grows by little more than the loaded tensors.

A checkpoint of a few hundred MB (official layout, bf16 with float32 blocks, split q/k/v)
is loaded to float32 in a fresh process, while a thread samples RssAnon from
/proc/self/status. File-backed pages of the memory mapping are not anonymous, so the peak
growth measures copies the loader makes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from l2p_core import synthetic

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read RssAnon")

# Fixed cost beyond the tensors: allocator pools, Python objects of ~100 parameters.
ALLOWED_CONSTANT_MB = 48

MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch
    import l2p_core

    def rss_anon_kb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])

    torch.ones(1) + 1  # initialise torch's lazy state before the baseline
    baseline = rss_anon_kb()
    peak = baseline
    running = True

    def sample():
        global peak
        while running:
            peak = max(peak, rss_anon_kb())
            time.sleep(0.0005)

    def after_tensor(done, total):
        global peak
        peak = max(peak, rss_anon_kb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    model = l2p_core.load_model(sys.argv[1], dtype=torch.float32, progress=after_tensor)
    running = False
    sampler.join()
    tensor_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"growth_bytes": (peak - baseline) * 1024, "tensor_bytes": tensor_bytes}))
    """
)


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory) -> Path:
    config = synthetic.tiny_config(dim=1024, n_heads=8, n_layers=6, n_refiner_layers=1, cap_feat_dim=256)
    return synthetic.write_checkpoint(tmp_path_factory.mktemp("large") / "large.safetensors", config)


def test_load_memory_growth_is_bounded(large_checkpoint):
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(large_checkpoint)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    growth, tensors = figures["growth_bytes"], figures["tensor_bytes"]
    file_mib = large_checkpoint.stat().st_size / 2**20
    print(f"file {file_mib:.0f} MiB, tensors {tensors / 2**20:.0f} MiB, peak RssAnon growth {growth / 2**20:.0f} MiB")
    assert tensors > 300 * 2**20
    assert growth <= 1.1 * tensors + ALLOWED_CONSTANT_MB * 2**20
