"""bench/bench_audit_rows.py runs (tiny counts), alone and as an interleaved A/B; the bench verifies the chain it
wrote, including the blocks written with the ablated old parts. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "bench/bench_audit_rows.py", *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_audit_rows_bench_runs() -> None:
    result = _run("--n", "50")
    assert result["calls"] == 50 and result["cpu_us_per_call"] > 0


def test_the_audit_rows_ab_alternates_both_variants() -> None:
    result = _run("--ab", "2")
    assert result["calls_each"] == 500
    assert result["new_cpu_us_per_call"] > 0 and result["old_cpu_us_per_call"] > 0
