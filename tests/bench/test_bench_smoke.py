"""Smoke test of the benchmark suite: every bench runs end to end with tiny counts, so none can rot.

No timing is asserted (machines are noisy): only that each section ran, measured something and saw no
errors. Runs ``python -m bench --quick`` once (about 20 s: it starts real proxies and upstreams).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e  # starts real processes (proxies, upstreams, OPA when built)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--all", "--no-save", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.exists(), f"no report; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(out.read_text())
    assert proc.returncode == 0, f"failed sections {data.get('failed')}:\n{proc.stderr[-3000:]}"
    assert "## summary (markdown)" in proc.stdout
    return data


def test_every_section_ran(report: dict[str, Any]) -> None:
    assert report["failed"] == []
    for section in ("latency", "throughput", "policy", "audit", "stages", "memory", "breakdown"):
        assert "error" not in report[section], report[section]


def test_latency_measures_direct_and_proxied_paths(report: dict[str, Any]) -> None:
    rows = report["latency"]["rows"]
    assert {r["path"] for r in rows} == {
        f"{t}, policy {p}" for t in ("stdio → stdio", "HTTP → HTTP") for p in ("default", "allow-all")
    }
    for r in rows:
        assert r["calls"] == report["latency"]["calls"]
        assert r["direct_median_ms"] > 0 and r["proxy_median_ms"] > 0
        assert r["proxy_cpu_us_per_call"] > 0


def test_throughput_calls_complete_without_errors(report: dict[str, Any]) -> None:
    rows = report["throughput"]["rows"]
    assert [(r["era"], r["clients"]) for r in rows] == [
        ("legacy", 1),
        ("legacy", 8),
        ("modern", 8),
        ("modern-asking", 8),
    ]
    for r in rows:
        assert r["errors"] == 0, r["first_error"]
        assert r["calls"] > 0
        assert r["completed"] >= r["calls"] and r["proxy_cpu_us_per_call"] > 0


def test_policy_and_audit_benches_exit_cleanly(report: dict[str, Any]) -> None:
    assert report["policy"]["exit_code"] == 0, report["policy"].get("stderr")
    assert "embedded" in report["policy"]["stdout"]
    assert report["audit"]["exit_code"] == 0, report["audit"].get("stderr")
    assert "chain verified: True" in report["audit"]["stdout"]


def test_stages_measures_every_variant_and_its_use(report: dict[str, Any]) -> None:
    stages = report["stages"]
    rows = {r["variant"]: r for r in stages["rows"]}
    assert list(rows) == [
        "floor: stages removed",
        "unused: as composed",
        "Observe removed",
        "rate limit used",
        "flows used",
        "result policy used",
        "traces on",
        "default bundle",
        "floor, no I/O",
        "unused, no I/O",
        "Observe removed, no I/O",
    ]
    for r in rows.values():
        assert len(r["cpu_us_blocks"]) == stages["blocks"] and r["cpu_us_per_call"] > 0
    assert rows["rate limit used"]["used"]["rate_limit_count"] > 0
    assert rows["flows used"]["used"]["flow_labels"] == ["private"]
    assert rows["traces on"]["used"]["spans"] > 0
    always = ["ExchangeToken", "Redecide", "ResultPolicy"]  # the stages that ask later in a call: always composed
    assert rows["unused: as composed"]["used"]["optional_stages"] == always
    assert sorted(rows["flows used"]["used"]["optional_stages"]) == [*always, "TrackFlow"]


def test_memory_reports_rss(report: dict[str, Any]) -> None:
    sessions, upstreams = report["memory"]["sessions"], report["memory"]["upstreams"]
    assert sessions["open_connections"] == sessions["sessions"] == 20
    assert sessions["rss_mb"] > 0
    assert upstreams["children"] == upstreams["upstreams"] == 2
    assert upstreams["answered"] == 2


def test_breakdown_runs_the_ablated_proxy(report: dict[str, Any]) -> None:
    rows = report["breakdown"]["rows"]
    assert [r["path"] for r in rows] == ["(none: the real proxy)", "no-audit,no-secrets,no-policy"]
    http_rows = report["breakdown"]["http_rows"]
    assert [r["path"] for r in http_rows] == ["(none: the real proxy)", "sse-front"]
    for r in [*rows, *http_rows]:
        assert r["calls"] == report["breakdown"]["calls"]
