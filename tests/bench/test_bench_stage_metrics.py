"""bench/bench_stage_metrics.py runs (tiny counts) and reports each variant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_stage_metrics_bench_runs_and_prints_every_variant() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_stage_metrics.py", "--n", "600", "--blocks", "3", "--no-save"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()}
    assert rows == {"off", "stage_metrics", "traces"}
