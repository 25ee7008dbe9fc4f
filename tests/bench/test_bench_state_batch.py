"""bench/bench_state_batch.py runs, and counts what a default call costs the SQLite state store: one write
transaction per call (the flow record and the admission in one batch), about ten statements, no usage read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.bench_state_batch import run_once

pytestmark = pytest.mark.e2e  # a child process with the real pipeline and engine


def test_a_default_call_is_one_state_transaction() -> None:
    pipeline = run_once(50, None, "")
    # per call: one batch, plus a read transaction at each new flow's first (uncached) read — 1 in 200 calls
    assert 1.0 <= float(str(pipeline["transactions"])) < 1.1 and float(str(pipeline["statements"])) < 12
    sample = [str(s) for s in pipeline["sample"]]  # type: ignore[attr-defined]
    assert not [s for s in sample[: sample.index("BEGIN IMMEDIATE")] if "rate_" in s]  # no usage read first


def test_the_old_path_is_still_measurable() -> None:
    """The ``per-op-state`` switch puts back a write transaction per op (labels, then the rate limit) and a usage
    read before every decision (one statement: a one-bucket read needs no transaction of its own)."""
    old = run_once(50, None, "per-op-state")
    assert 2.0 <= float(str(old["transactions"])) < 2.1
    sample = [str(s) for s in old["sample"]]  # type: ignore[attr-defined]
    assert [s for s in sample[: sample.index("BEGIN IMMEDIATE")] if "rate_" in s]  # the usage read comes first
