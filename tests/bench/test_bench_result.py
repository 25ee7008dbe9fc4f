"""bench/bench_result.py runs (tiny counts) and prints every scenario; the bench itself checks that the redacted
scenario redacts every result and the others none. No timing is asserted (speed is shown by the bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_result_bench_runs_and_prints_every_scenario() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/bench_result.py", "--n", "40", "--repeat", "1", "--no-save"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "no stage, upstream alone",
        "stage alone, no result rule",
        "stage removed",
        "no result rule",
        "result rule, plain result",
        "result rule, redacted result",
    ):
        assert row in proc.stdout, proc.stdout
