"""bench/bench_stages.py: the stage table runs on its own (tiny counts), and the summary's "cost nothing when not
used" verdict follows the block-by-block difference to the floor. No timing is asserted: the bench itself checks
that every call is allowed and that each "used" variant used its stage."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages(bench_module: Callable[[str], ModuleType]) -> Any:
    return bench_module("bench_stages")


def test_the_stages_bench_runs_and_prints_every_variant(stages: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "bench/bench_stages.py", "--blocks", "1", "--calls", "5", "--warmup", "2", "--no-save"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in stages.VARIANTS:
        assert f"\n{variant.name} " in proc.stdout, proc.stdout


def _report(stages: Any, q1: float, q3: float) -> dict[str, Any]:
    zero = {"median_us": 0.0, "q1_us": 0.0, "q3_us": 0.0}
    row = {"cpu_us_per_call": 600.0, "wall_median_us": 550.0, "vs_unused": zero}
    return {
        "blocks": 4,
        "calls_per_block": 10,
        "rows": [
            {**row, "variant": stages.FLOOR, "vs_floor": zero},
            {**row, "variant": stages.UNUSED, "vs_floor": {"median_us": (q1 + q3) / 2, "q1_us": q1, "q3_us": q3}},
        ],
    }


@pytest.mark.parametrize(
    ("q1", "q3", "met"), [(-5.0, 8.0, True), (0.0, 3.0, True), (2.0, 9.0, False), (-9.0, -1.0, False)]
)
def test_unused_stages_are_judged_on_the_difference_to_the_floor(stages: Any, q1: float, q3: float, met: bool) -> None:
    unused = next(line for line in stages.markdown_rows(_report(stages, q1, q3)) if stages.UNUSED in line)
    assert unused.endswith(": met |" if met else ": **not met** |"), unused
    assert stages.UNUSED in stages.table(_report(stages, q1, q3))
