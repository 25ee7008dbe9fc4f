"""bench/bench_metrics.py runs (tiny counts) and reports every row; and the no-metrics ablation removes what it says.

No timing is asserted (speed is shown by the bench itself); this keeps it from rotting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_metrics_bench_runs_and_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/bench_metrics.py", "--n", "3000", "--blocks", "3", "--tools", "20", "--no-save"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "Observe stage",
        "an empty stage",
        "full pipeline",
        "TimedSink.record",
        "CallMetrics.observe",
        "scrape:",
    ):
        assert row in proc.stdout, proc.stdout


def test_the_no_metrics_switch_takes_the_stage_and_the_timer_out() -> None:
    code = """
import sys
sys.path.insert(0, "bench")
import ablate
ablate.apply({"no-metrics"})
import mcp_guard.pipeline.build as build
from mcp_guard.pipeline.observe import Observe, TimedSink
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.settings import parse_settings
from mcp_guard.state import MemoryState
from mcp_guard.testing import RecordingSink, allow_all
from mcp_guard.upstream.registry import Registry
settings = parse_settings({"upstreams": {"rec": {"command": "x"}}}, source="<t>")
stages = build.pipeline_stages(engine=allow_all(), sink=RecordingSink(), registry=Registry(settings, None),
                               secrets=NO_SECRETS, state=MemoryState())
assert not any(isinstance(s, Observe) for s in stages), stages
assert not any(isinstance(getattr(s, "_sink", None), TimedSink) for s in stages)
print("ok", " ".join(type(s).__name__ for s in stages))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Every stage of the real pipeline but Observe, in order.
    expected = (
        "InspectArguments RecordOutcome TrackFlow PinCheck ShadowPolicy Authorize EnforceObligations ExchangeToken"
        " RecordDecision Redecide ResultPolicy Redact"
    )
    assert proc.stdout.strip() == f"ok {expected}"
