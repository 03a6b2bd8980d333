"""Peak anonymous memory of one piece of work, measured in a fresh process (Linux only).

The benchmarks run each measurement as a worker script in its own process, so one run's
allocator state cannot leak into the next. Inside the worker, `measure_peak(run)` samples
RssAnon from /proc/self/status in a thread every 0.5 ms while `run()` executes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_anon_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no RssAnon line; this measurement needs Linux.")


def measure_peak(run) -> tuple[object, float, float]:
    """Call `run()` and return its result, the peak RssAnon growth in MiB and the seconds it took."""
    baseline = rss_anon_kib()
    peak = baseline
    running = True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, rss_anon_kib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        result = run()
    finally:
        seconds = time.perf_counter() - started
        running = False
        sampler.join()
    return result, (peak - baseline) / 1024, seconds


def run_worker(worker_source: str, request: dict) -> dict:
    """Run `worker_source` in a fresh Python with `request` as JSON argument; return the JSON it prints last."""
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "worker.py"
        script.write_text(worker_source)
        environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
        result = subprocess.run(
            [sys.executable, str(script), json.dumps(request)],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
        )
    if result.returncode != 0:
        raise SystemExit(f"Measurement {request} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
