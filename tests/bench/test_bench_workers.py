"""bench/bench_workers.py runs (one short round at 1 and 2 workers) and every call is answered. No timing is
asserted (speed is shown by the bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_workers_bench_runs_both_counts_without_errors() -> None:
    argv = [sys.executable, "bench/bench_workers.py", "--duration", "1", "--warmup", "0.5", "--rounds", "1"]
    proc = subprocess.run(
        [*argv, "--clients", "4", "--no-save"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"], proc.stdout
    assert all(r[-1] == "0" and int(r[2]) > 0 for r in rows), proc.stdout  # no errors, some calls answered
