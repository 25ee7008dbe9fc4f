"""bench/bench_decision_cache.py runs (tiny counts) and prints every workload for both engines. No timing is
asserted (speed is shown by the bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_decision_cache_bench_runs_and_prints_every_workload() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/bench_decision_cache.py", "--n", "30", "--rounds", "1", "--no-save"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for workload in ("repeat", "distinct", "corpus"):
        assert f"| {workload} | engine alone |" in proc.stdout, proc.stdout
        assert f"| {workload} | decision cache |" in proc.stdout, proc.stdout
    assert (
        "| repeat | decision cache | 30 |" in proc.stdout and "| 97% |" in proc.stdout
    )  # 29 of 30 answered from memory
