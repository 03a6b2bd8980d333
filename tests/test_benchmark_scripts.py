"""The benchmark scripts run end to end: a CPU dry run of the GPU script and the speed page writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_dry_run_on_cpu(tmp_path):
    output = tmp_path / "figures.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_figures.py"), "--tiny", "--device", "cpu",
        "--steps", "1", "--low-vram-steps", "1", "--skip", "compile", "--json", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert len(figures["runs"]) == 6
    for label, run in figures["runs"].items():
        assert run["seconds_per_step"] > 0, label
        assert 0 < run["share_of_peak"], label
    assert "| 64², fp8, 2 blocks streamed |" in result.stdout


def test_speed_page_section_is_replaced(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    monkeypatch.setattr(speed, "PAGE", page)

    speed.write_page("first report\n")
    speed.write_page("second report\n")

    text = page.read_text()
    assert "kept" in text
    assert "first report" not in text
    assert text.count(speed.BEGIN) == 1
    assert "second report" in text
