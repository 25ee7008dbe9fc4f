"""The CPU of a call's two audit rows, in process: build, serialise, hash and commit them.

    python bench/bench_audit_rows.py              # 5,000 calls, CPU µs per call
    python bench/bench_audit_rows.py --n 20000 --json

Each call is what ``RecordDecision`` and ``RecordOutcome`` do for a ``tools/call`` the default bundle allows:
``decision_row`` (with the policy input kept for replay) → ``AuditWriter.record`` → ``outcome_row`` (a
``call.result`` summary) → ``record``, against a real SQLite audit file (inline commits, as in the proxy).
One call at a time, so every row is its own batch (the proxy's latency case, the most work per row).

The figure is process CPU time / calls (steady on a shared machine, unlike wall time). Run it with two
checkouts alternately (old vs new ``src``) for an A/B, or with ``--ab``: blocks of 250 calls alternate in one
process between this code and the same code with ``bench/ablate.py audit-writer-task,old-audit-rows`` (the queued
writer path and the old row building put back), so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types

from mcp_guard.audit import AuditWriter, open_sqlite_sink
from mcp_guard.audit.verify import verify_file
from mcp_guard.pipeline.audit import decision_row, outcome_row
from mcp_guard.pipeline.context import CallContext, Outcome, PolicyVerdict
from mcp_guard.types import AuthInfo, Decision, PolicyInput, Principal, SessionInfo, ToolInfo

ARGUMENTS = {
    "project": "OPS",
    "title": "Printer on the 3rd floor — jams again (Überlauf)",
    "body": "Steps: open https://intranet.example.com/printers/3f?id=42 and press retry. " * 4,
    "labels": ["hardware", "printer", "urgent"],
    "priority": 2,
    "estimate_h": 1.5,
}
RESULT = {
    "content": [{"type": "text", "text": "Created ticket OPS-1234: " + "details of the new ticket. " * 20}],
    "isError": False,
}


def call_context() -> CallContext:
    """A ``tools/call`` as the pipeline hands it to RecordDecision: allowed, with its policy verdict."""
    principal = Principal(
        "alice",
        ("support",),
        attributes={"team": "ops"},
        scopes=("tickets:write",),
        auth=AuthInfo(method="api_key"),
    )
    session = SessionInfo("3f1c2a9b8d7e4f60a1b2c3d4e5f60718", "stdio", "claude-code", "1.0.42")
    tool_info = ToolInfo(
        annotations={"destructiveHint": False, "title": "Create ticket"},
        definition_sha256="9" * 64,
        pinned=True,
    )
    decision = Decision(
        allow=True,
        reasons=("support may call tickets.create_ticket",),
        obligations={"secrets": ["tickets_token"], "rate_limit": {"key": "alice:tickets", "limit": 60}},
        revision="b1946ac92492d2347c6235b4d2611184",
    )
    policy_input = PolicyInput(
        action="tools/call",
        principal=principal,
        session=session,
        server="tickets",
        tool="create_ticket",
        arguments=ARGUMENTS,
        tool_info=tool_info,
        usage={"alice:tickets": 3},
    )
    return CallContext(
        action="tools/call",
        principal=principal,
        session=session,
        server="tickets",
        target="create_ticket",
        exposed="tickets__create_ticket",
        arguments=ARGUMENTS,
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="create_ticket", arguments=ARGUMENTS)),
        tool_info=tool_info,
        decision=decision,
        audit_arguments=dict(ARGUMENTS),
        verdict=PolicyVerdict(policy_input, decision),
        upstream_protocol="handshake",
    )


async def one_call(sink: AuditWriter, ctx: CallContext, decision: Decision, outcome: Outcome) -> None:
    """The two rows of one call; the call's trip to the upstream in between is a pass through the event loop."""
    await sink.record(decision_row(ctx, decision, 4096, ctx.verdict))
    await anyio.lowlevel.checkpoint()
    await sink.record(outcome_row(ctx, outcome, 4096))
    await anyio.lowlevel.checkpoint()


async def run(n: int, path: Path) -> dict[str, float]:
    ctx = call_context()
    decision = ctx.decision
    assert decision is not None
    outcome = Outcome(result=RESULT, decision=decision, verdict=ctx.verdict, upstream_protocol="handshake")
    async with open_sqlite_sink(path) as sink:
        for _ in range(200):  # warm up: statement cache, allocator
            await one_call(sink, ctx, decision, outcome)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await one_call(sink, ctx, decision, outcome)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    report = verify_file(path)
    assert report.ok, report
    return {"calls": n, "cpu_us_per_call": cpu / n * 1e6, "wall_us_per_call": wall / n * 1e6}


_ABLATED = {"audit-writer-task", "old-audit-rows"}


def _switcher() -> Any:
    """A function that puts the ablated parts in (True) or takes them out again (False)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import ablate
    from mcp_guard.audit import events, writer

    names = {
        events: ("new_id", "utc_now", "_RESULT_TEXT"),
        writer: ("json_text", "fast_json_text", "_reasons_text"),
    }
    saved = {(m, a): getattr(m, a) for m, attrs in names.items() for a in attrs}
    alone = writer.AuditWriter._alone

    def switch(old: bool) -> None:
        if old:
            ablate.apply(_ABLATED)
            return
        for (module, attr), value in saved.items():
            setattr(module, attr, value)
        setattr(writer.AuditWriter, "_alone", alone)  # noqa: B010

    return switch


async def run_ab(blocks: int, path: Path) -> dict[str, float]:
    """``blocks`` pairs of 250-call blocks, new and old in turn (which goes first alternates)."""
    switch = _switcher()
    ctx = call_context()
    decision = ctx.decision
    assert decision is not None
    outcome = Outcome(result=RESULT, decision=decision, verdict=ctx.verdict, upstream_protocol="handshake")
    cpu = {"new": 0.0, "old": 0.0}
    async with open_sqlite_sink(path) as sink:
        for _ in range(200):
            await one_call(sink, ctx, decision, outcome)
        for block in range(blocks):
            for variant in ("old", "new") if block % 2 else ("new", "old"):
                switch(variant == "old")
                cpu0 = time.process_time()
                for _ in range(250):
                    await one_call(sink, ctx, decision, outcome)
                cpu[variant] += time.process_time() - cpu0
        switch(False)
    report = verify_file(path)
    assert report.ok, report
    calls = blocks * 250
    return {
        "calls_each": calls,
        "new_cpu_us_per_call": cpu["new"] / calls * 1e6,
        "old_cpu_us_per_call": cpu["old"] / calls * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="calls (two rows each)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--ab", type=int, metavar="BLOCKS", help="interleaved A/B against the ablated old parts")
    args = parser.parse_args()
    if args.ab:
        with tempfile.TemporaryDirectory() as tmp:
            ab = anyio.run(run_ab, args.ab, Path(tmp) / "audit.db")
        new, old = ab["new_cpu_us_per_call"], ab["old_cpu_us_per_call"]
        print(
            json.dumps(ab)
            if args.json
            else f"{ab['calls_each']:.0f} calls each: old {old:.1f} / new {new:.1f} µs CPU/call"
        )
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        result = anyio.run(run, args.n, Path(tmp) / "audit.db")
    if args.json:
        print(json.dumps(result))
    else:
        cpu, wall = result["cpu_us_per_call"], result["wall_us_per_call"]
        print(f"{result['calls']:.0f} calls: {cpu:.1f} µs CPU/call, {wall:.1f} µs wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
