"""What each optional stage of the pipeline costs per call, unused and used (issue #19: "the wave's new stages
cost nothing when not used and are in the benchmark table when they are").

    python bench/bench_stages.py                 # the full run (about a minute)
    python bench/bench_stages.py --blocks 2 --calls 20   # a smoke run
    python -m bench --only stages                # the same, as a section of make bench

The pipeline as ``mcp-guard run`` builds it, in-process, with no network (and the collector tuned as it tunes
it): ``build_pipeline`` — the stages in use (:mod:`mcp_guard.pipeline.in_use`) — ending in a recording upstream;
the embedded engine behind the decision cache (``open_engine``: as the app wires it); the SQLite state store
and the real SQLite audit writer (``open_sink``: both rows of every call committed) in a temporary directory.
Principal ``local-agent`` (role developer) calls ``everything__echo``; the upstream answers a ~200-byte text
holding a card number, the same for every variant. Variants:

* ``floor: stages removed`` — allow-all one-rule bundle; the stages a call need not have removed: Observe (and
  the audit commit timer), TrackFlow, ShadowPolicy, ExchangeToken, Redecide, ResultPolicy, the rate-limit
  usage source of Authorize and the ``labels``/``rate_limit``/``upstream_scopes`` obligation handlers. What is
  left: InspectArguments, RecordOutcome, PinCheck, Authorize, EnforceObligations, RecordDecision, Redact.
* ``unused: as composed`` — the same bundle through the product's composition (``build_pipeline``: the stages
  and handlers not in use left out, as ``mcp-guard run`` runs it); checked to hold only the optional stages it
  must always keep.
  Equal to the floor within noise is the claim; what it keeps beyond the floor is Observe (metrics are always
  on) and the stages that ask later in a call: ExchangeToken (a reload may add token exchange while a call
  waits), ResultPolicy (a result rule may be activated while a call is out) and Redecide (any allowed call may
  get an input round).
* ``Observe removed`` — the composed list without metrics (Observe and the commit timer): metrics are always on.
* ``rate limit used`` — allow-all plus one declared limit (``limits.rate``: usage read before the policy)
  and its ``rate_limit`` obligation (counted on every call).
* ``flows used`` — allow-all plus a ``labels`` obligation and a rule reading ``context.flow``: one flow read
  before the policy and one record per call.
* ``result policy used`` — allow-all plus the example result rule (policies/examples/results, with the
  default bundle's input helpers it uses): every result put to the policy, its card number redacted.
* ``traces on`` — the whole list with a tracer from the OpenTelemetry SDK (``open_tracing``) whose exporter
  drops the spans: the spans are made, not shipped.
* ``default bundle`` — the shipped bundle (its per-tool rate limit raised, calls still counted): flows and a
  rate limit in use, the real policy.
* ``floor, no I/O`` / ``unused, no I/O`` / ``Observe removed, no I/O`` — the first three again on the in-memory
  state store with an audit sink that keeps nothing: the stages' own cost, without the SQLite commits whose
  noise hides a few µs (the last one shows what of ``unused`` is metrics).

Then each optional stage by itself, unused (the allow-all bundle), around a terminal that answers at once, on
the call as it reached the upstream (decided, allowed): what it would add per call if it were composed (the
composition leaves it out), and the composition's own per-call check, in interleaved blocks.

Every call of every variant must be allowed and answered (asserted), and each variant must show what it
claims (spans counted, results redacted by the result rule and by no other variant, the flow labelled, the
limit counted, flow tracking and the result rule on exactly where the bundle uses them, and the composed
stages holding exactly the optional stages the bundle uses), so a broken variant cannot pass as fast. (The
example result rule can label a flow, so its bundle tracks flows too.)

Blocks of calls are interleaved, variant after variant, the order rotated each round, so drift in machine
load hits them alike. Per variant: **CPU per call**, this process's CPU time over a block / its calls (the
audit writer's and the state store's threads included; the steady figure on a shared machine), the median
block; the block-by-block difference to the floor and to ``unused`` (median and quartiles); the median wall
time of a call. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.pipeline_harness import NullSink, dropping_exporter, idle_upstreams, tools_call, without_metrics
from mcp_guard.audit import open_sink
from mcp_guard.commands import _tune_gc
from mcp_guard.logging import configure_logging
from mcp_guard.pipeline.authorize import Authorize
from mcp_guard.pipeline.build import build_pipeline, pipeline_stages, usage_source
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome
from mcp_guard.pipeline.exchange import ExchangeToken, UpstreamScopesObligation
from mcp_guard.pipeline.flow import FlowUse, LabelsObligation, TrackFlow, flow_ref
from mcp_guard.pipeline.in_use import InUsePipeline
from mcp_guard.pipeline.obligations import EnforceObligations
from mcp_guard.pipeline.observe import Observe
from mcp_guard.pipeline.ratelimit import RateLimitObligation
from mcp_guard.pipeline.redecide import Redecide
from mcp_guard.pipeline.result_policy import ResultPolicy, ResultUse
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.pipeline.shadow import ShadowPolicy
from mcp_guard.policy import open_engine
from mcp_guard.settings import Settings, parse_settings
from mcp_guard.state import MemoryState, StateStore, open_state
from mcp_guard.telemetry import INSTRUMENTATION, open_tracing
from mcp_guard.testing import RecordingUpstream, idle_registry
from mcp_guard.types import SessionInfo, new_id

RESULT_TEXT = "Your order 1042 was paid with card 4111 1111 1111 1111 on 2026-11-25; the receipt went out by mail. " * 2
RATE_KEY = "tool_calls|local-agent|everything|echo"
RATE_DATA = {
    "mcp_guard_config": {
        "limits": {
            "rate": [{"name": "tool_calls", "by": ["principal", "server", "tool"], "limit": 10**9, "window_s": 60}]
        }
    }
}
RATE_REGO = """package mcp_guard

import rego.v1

decision := {"allow": true, "reasons": ["bench: allow all, one rate limit"], "obligations": {"rate_limit": [limit]}}

limit := {"key": concat("|", ["tool_calls", input.principal.id, input.server, input.tool]), "limit": 1000000000,
	"window_s": 60}
"""
FLOWS_REGO = """package mcp_guard

import rego.v1

# read as flows.rego reads it (not through object.get(input, …), which would read the whole input and keep the
# decision cache out)
flow_labels := labels if {
	labels := input.context.flow.labels
	is_array(labels)
} else := []

decision := {"allow": true, "reasons": ["bench: allow all"], "obligations": {"labels": ["private"]}} if {
	not "untrusted" in flow_labels
} else := {"allow": false, "reasons": ["bench: an untrusted flow"], "obligations": {}}
"""
WITH_RESULTS = "mcp_guard/decision_with_results"


# ---------------------------------------------------------------------- bundles
def _rego_bundle(directory: Path, name: str, rego: str, data: dict[str, Any]) -> Path:
    root = directory / f"bundle-{name}"
    root.mkdir(parents=True)
    (root / "policy.rego").write_text(rego)
    (root / "data.json").write_text(json.dumps(data))
    return root


def _result_bundle(directory: Path) -> Path:
    """Allow-all plus the example result rule, which uses the default bundle's input helpers (input.rego)."""
    root = common.write_bundle(directory / "results", "allow-all")
    mcp_guard = common.DEFAULT_BUNDLE / "mcp_guard"
    shutil.copy(mcp_guard / "input.rego", root / "input.rego")
    shutil.copy(common.REPO / "policies" / "examples" / "results" / "results.rego", root / "results.rego")
    return root


def bundles(directory: Path) -> dict[str, Path]:
    return {
        "allow-all": common.write_bundle(directory, "allow-all"),
        "rate": _rego_bundle(directory, "rate", RATE_REGO, RATE_DATA),
        "flows": _rego_bundle(directory, "flows", FLOWS_REGO, {}),
        "results": _result_bundle(directory),
        "default": common.write_bundle(directory, "default"),
    }


# ---------------------------------------------------------------------- stage lists
OPTIONAL_STAGES = (TrackFlow, ShadowPolicy, ExchangeToken, Redecide, ResultPolicy)
UNUSED_STAGES = (Observe, *OPTIONAL_STAGES)  # Observe is never unused (metrics are always on), shown beside them
OPTIONAL_HANDLERS = (LabelsObligation, RateLimitObligation, UpstreamScopesObligation)


def floor(stages: list[Interceptor], engine: Any) -> list[Interceptor]:
    """``stages`` with every stage a call can do without taken out (the module docstring lists them). The
    product has no switch for the usage source or the handlers: they are rebuilt here without them (the
    handler list is read from the stage, which keeps it private)."""
    out: list[Interceptor] = []
    for stage in without_metrics(stages):
        if isinstance(stage, OPTIONAL_STAGES):
            continue
        if isinstance(stage, Authorize):
            stage = Authorize(engine, None)
        elif isinstance(stage, EnforceObligations):
            handlers = stage._handlers
            stage = EnforceObligations([h for h in handlers if not isinstance(h, OPTIONAL_HANDLERS)])
        out.append(stage)
    return out


def whole(stages: list[Interceptor], engine: Any) -> list[Interceptor]:
    """The composed pipeline itself (``build_pipeline``): ``_build`` uses it as it is, not this list."""
    return stages


def no_observe(stages: list[Interceptor], engine: Any) -> list[Interceptor]:
    return without_metrics(stages)


# ---------------------------------------------------------------------- variants
Shape = Callable[[list[Interceptor], Any], list[Interceptor]]
FLOOR, UNUSED = "floor: stages removed", "unused: as composed"
FLOOR_NO_IO, UNUSED_NO_IO = "floor, no I/O", "unused, no I/O"


@dataclass(frozen=True)
class Variant:
    name: str
    bundle: str
    shape: Shape = whole
    decision: str = "mcp_guard/decision"
    traces: bool = False
    redacts: bool = False  # a result rule: its answers must come back redacted, every other variant's untouched
    flows: bool = False  # the bundle uses flows (mcp-guard reads and records the call's flow)
    io: bool = True  # False: in-memory state and an audit sink that keeps nothing (the stages' own cost)

    @property
    def bases(self) -> tuple[str, str]:
        """The floor and the unused row this one is compared with (the no-I/O pair with each other)."""
        return (FLOOR, UNUSED) if self.io else (FLOOR_NO_IO, UNUSED_NO_IO)


VARIANTS = (
    Variant(FLOOR, "allow-all", floor),
    Variant(UNUSED, "allow-all"),
    Variant("Observe removed", "allow-all", no_observe),
    Variant("rate limit used", "rate"),
    Variant("flows used", "flows", flows=True),
    # the example rule may label the flow ("CONFIDENTIAL" → private), so the bundle uses flows too
    Variant("result policy used", "results", decision=WITH_RESULTS, redacts=True, flows=True),
    Variant("traces on", "allow-all", traces=True),
    Variant("default bundle", "default", flows=True),
    Variant(FLOOR_NO_IO, "allow-all", floor, io=False),
    Variant(UNUSED_NO_IO, "allow-all", io=False),
    Variant("Observe removed, no I/O", "allow-all", no_observe, io=False),
)


@dataclass
class Built:
    """One variant's chain and what must show that the variant is what it says."""

    variant: Variant
    engine: Any
    chain: CallNext
    upstream: RecordingUpstream
    exporter: Any = None
    composed: InUsePipeline | None = None
    calls: int = 0


def _settings(directory: Path, bundle: Path | None = None, variant: Variant | None = None) -> Settings:
    raw: dict[str, Any] = {
        "audit": {"path": str(directory / "audit.db"), "state_path": str(directory / "state.db")},
        "upstreams": {"everything": {"command": "never"}},
    }
    if bundle is not None and variant is not None:
        raw["policy"] = {
            "bundle": str(bundle),
            "decision": variant.decision,
            "hot_reload": False,
            "run_tests_on_start": False,
        }
        raw["telemetry"] = {"traces": variant.traces}
    return parse_settings(raw, source="<bench_stages>")


async def _build(
    stack: AsyncExitStack, variant: Variant, bundle: Path, directory: Path, sink: Any, state: StateStore
) -> Built:
    """The variant's pipeline: the product's composition (``build_pipeline``) ending in a recording upstream; a
    variant with another shape composes its shape of the stages (the floor: of every stage, the rest: of the ones
    in use) with ``build_chain``."""
    settings = _settings(directory, bundle, variant)
    engine = await stack.enter_async_context(open_engine(settings, watch=False, run_tests=False))
    exporter = dropping_exporter() if variant.traces else None
    provider = stack.enter_context(open_tracing(settings, exporter=exporter)) if variant.traces else None
    tracer = provider.get_tracer(INSTRUMENTATION) if provider is not None else None
    registry = idle_registry(settings)
    upstream = RecordingUpstream(Outcome(result={"content": [{"type": "text", "text": RESULT_TEXT}], "isError": False}))
    composed = build_pipeline(
        engine=engine, sink=sink, registry=registry, secrets=NO_SECRETS, state=state, tracer=tracer, terminal=upstream
    )
    chain: CallNext = composed
    if variant.shape is floor:
        every = pipeline_stages(engine=engine, sink=sink, registry=registry, secrets=NO_SECRETS, state=state)
        chain = build_chain(floor(every, engine), upstream)
    elif variant.shape is not whole:
        assert tracer is None, "a shaped variant is composed without the tracing stages"
        chain = build_chain(variant.shape(composed.stages, engine), upstream)
    return Built(variant, engine, chain, upstream, exporter, composed=composed)


def _check(built: Built, outcome: Outcome) -> None:
    """Every call allowed and answered; the result redacted exactly when the variant's result rule runs."""
    assert not outcome.denied and outcome.result is not None, (built.variant.name, outcome.denial)
    text = outcome.result["content"][0]["text"]
    assert ("[redacted]" in text) == built.variant.redacts, (built.variant.name, text)


async def _block(built: Built, ctx: CallContext, size: int) -> tuple[float, float]:
    """``size`` calls; (CPU µs per call, median wall µs of a call)."""
    waits: list[float] = []
    cpu = time.process_time()
    for _ in range(size):
        started = time.perf_counter()
        outcome = await built.chain(replace(ctx, call_id=new_id(), started=started))
        waits.append(time.perf_counter() - started)
        _check(built, outcome)
    spent = time.process_time() - cpu
    built.calls += size
    built.upstream.seen.clear()
    return spent / size * 1e6, statistics.median(waits) * 1e6


async def _used(built: Built, state: StateStore) -> dict[str, Any]:
    """What shows the variant used its stage (asserted for the variants that claim to)."""
    name = built.variant.name
    shown: dict[str, Any] = {"tracks_flows": FlowUse(built.engine)(), "result_rule": ResultUse(built.engine)()}
    assert shown["tracks_flows"] == built.variant.flows, f"{name}: flow tracking {shown['tracks_flows']}"
    assert shown["result_rule"] == built.variant.redacts, f"{name}: result rule {shown['result_rule']}"
    if built.composed is not None and built.variant.shape is whole:  # what the composition kept, as claimed
        kept = [type(s).__name__ for s in built.composed.stages if isinstance(s, OPTIONAL_STAGES)]
        expected = ["TrackFlow"] if built.variant.flows else []
        shown["optional_stages"] = kept
        always = ["ExchangeToken", "Redecide", "ResultPolicy"]
        assert sorted(kept) == sorted([*expected, *always]), f"{name}: composed with {kept}"
    if built.exporter is not None:
        shown["spans"] = built.exporter.spans
        assert built.exporter.spans >= built.calls * 10, f"{name}: {built.exporter.spans} spans"
    if name == "rate limit used":
        (count,) = (await state.usage([(RATE_KEY, 60)])).values()
        shown["rate_limit_count"] = count
        assert count > 0, f"{name}: nothing counted"
    return shown


@asynccontextmanager
async def _pipelines(directory: Path, variants: tuple[Variant, ...]) -> AsyncIterator[tuple[list[Built], StateStore]]:
    paths = bundles(directory)
    base = _settings(directory)
    async with AsyncExitStack() as stack:
        state = await stack.enter_async_context(open_state(base))
        sink = await stack.enter_async_context(open_sink(base))
        built = [
            await _build(
                stack, v, paths[v.bundle], directory, *((sink, state) if v.io else (NullSink(), MemoryState()))
            )
            for v in variants
        ]
        yield built, state


async def measure(directory: Path, *, blocks: int, calls: int, warmup: int) -> dict[str, Any]:
    base = tools_call("everything", "echo", {"text": "hello"})
    per: dict[str, list[tuple[float, float]]] = {v.name: [] for v in VARIANTS}
    async with _pipelines(directory, VARIANTS) as (built, state), _gc_as_run():
        for b in built:
            await _block(b, replace(base, session=SessionInfo(f"warm-{b.variant.name}", "http")), warmup)
        for k in range(blocks):  # a new session (a new flow) each block, variant after variant, the order rotated
            for b in built[k % len(built) :] + built[: k % len(built)]:  # so no variant always follows the same one
                per[b.variant.name].append(await _block(b, replace(base, session=_session(b, k)), calls))
        flows = next(b for b in built if b.variant.name == "flows used")
        flow = await state.flow(_flow_id(flows, blocks - 1))
        used = {b.variant.name: await _used(b, state) for b in built}
        unused = next(b for b in built if b.variant.name == UNUSED_NO_IO)
        alone = await stages_alone(unused, base, blocks=blocks, calls=calls * 10)
    assert "private" in flow.labels and flow.history, f"flows used: the last block's flow is {flow!r}"
    used["flows used"].update(flow_labels=sorted(flow.labels), flow_history=len(flow.history))
    return {"blocks": blocks, "calls_per_block": calls, "warmup": warmup, "rows": _rows(per, used), "alone": alone}


@asynccontextmanager
async def _gc_as_run() -> AsyncIterator[None]:
    """The collector tuned as ``mcp-guard run`` tunes it once started (start-up objects frozen, young collections
    rarer): per-call garbage costs what it costs in the proxy. Put back after, for the sections that follow."""
    threshold = gc.get_threshold()
    _tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


ALONE = "(the terminal alone)"
CORE_HANDLERS = "EnforceObligations, core handlers"


def _alone_items(built: Built, inner: CallContext, outcome: Outcome) -> list[tuple[str, CallNext, str]]:
    """(name, chain, what it is compared with): each stage a call can do without, around a terminal that answers
    at once, as it would cost if it were composed with the allow-all bundle (unused: the composition leaves it
    out); the usage read and the optional handlers likewise; and the composition's own per-call check."""

    async def terminal(_ctx: CallContext) -> Outcome:
        return outcome

    state = MemoryState()
    registry = idle_upstreams("everything")
    stages = pipeline_stages(engine=built.engine, sink=NullSink(), registry=registry, secrets=NO_SECRETS, state=state)
    enforce = next(s for s in stages if isinstance(s, EnforceObligations))
    usage = usage_source(built.engine, state)
    assert usage is not None, "the embedded engine holds its bundle"

    async def read_usage(ctx: CallContext) -> Outcome:
        await usage.usage(ctx)
        return outcome

    check = InUsePipeline([], terminal, engine=built.engine)  # only its per-call check
    items: list[tuple[str, CallNext, str]] = [(ALONE, terminal, ALONE), ("the in-use check", check, ALONE)]
    items += [(type(s).__name__, build_chain([s], terminal), ALONE) for s in stages if isinstance(s, UNUSED_STAGES)]
    return [
        *items,
        ("Authorize's rate-limit usage read", read_usage, ALONE),
        (CORE_HANDLERS, build_chain(floor([enforce], built.engine), terminal), ALONE),
        ("labels + rate_limit + upstream_scopes handlers", build_chain([enforce], terminal), CORE_HANDLERS),
    ]


async def stages_alone(built: Built, ctx: CallContext, *, blocks: int, calls: int) -> list[dict[str, Any]]:
    """ns per call each unused stage adds by itself: interleaved blocks, the median block-by-block difference."""
    outcome = await built.chain(ctx)
    inner = built.upstream.seen.pop()  # the call as it reached the upstream: decided, allowed, recorded
    items = _alone_items(built, inner, outcome)
    per: dict[str, list[float]] = {name: [] for name, _, _ in items}
    for _ in range(blocks):
        for name, chain, _ in items:
            cpu = time.process_time()
            for _ in range(calls):
                await chain(inner)
            per[name].append((time.process_time() - cpu) / calls * 1e9)
    return [
        {"stage": name, "added_ns": statistics.median(a - b for a, b in zip(per[name], per[base], strict=True))}
        for name, _, base in items[1:]
    ]


def _session(built: Built, block: int) -> SessionInfo:
    return SessionInfo(f"b{block}-{built.variant.name}", "http")


def _flow_id(built: Built, block: int) -> str:
    ctx = tools_call("everything", "echo", {})
    return flow_ref(replace(ctx, session=_session(built, block))).id


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _paired(cpus: list[float], base: list[float]) -> dict[str, Any]:
    """The block-by-block difference to another variant (the blocks ran side by side): its median and quartiles."""
    diffs = [c - b for c, b in zip(cpus, base, strict=True)]
    q1, q3 = _quartiles(diffs)
    return {"median_us": statistics.median(diffs), "q1_us": q1, "q3_us": q3}


def _rows(per: dict[str, list[tuple[float, float]]], used: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    cpu = {name: [c for c, _ in blocks] for name, blocks in per.items()}
    bases = {v.name: v.bases for v in VARIANTS}
    return [
        {
            "variant": name,
            "io": bases[name][0] == FLOOR,
            "cpu_us_per_call": statistics.median(cpu[name]),
            "cpu_us_best_block": min(cpu[name]),
            "cpu_us_blocks": [round(c, 1) for c in cpu[name]],
            "vs_floor": _paired(cpu[name], cpu[bases[name][0]]),
            "vs_unused": _paired(cpu[name], cpu[bases[name][1]]),
            "wall_median_us": statistics.median(w for _, w in blocks),
            "used": used[name],
        }
        for name, blocks in per.items()
    ]


def run(*, blocks: int = 30, calls: int = 150, warmup: int = 100) -> dict[str, Any]:
    """The measurement, in a fresh temporary directory; the report ``table`` and ``markdown_rows`` read."""
    configure_logging("info")  # as `mcp-guard run` logs by default (per-call debug lines are off)
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        report = anyio.run(lambda: measure(Path(tmp), blocks=blocks, calls=calls, warmup=warmup))
    report["loadavg"] = list(os.getloadavg())
    return report


# ---------------------------------------------------------------------- output
def within_noise(row: dict[str, Any]) -> bool:
    """Whether a row equals the floor within the noise of this run: zero lies inside the interquartile range of
    its block-by-block difference to the floor."""
    d = row["vs_floor"]
    return bool(d["q1_us"] <= 0.0 <= d["q3_us"])


def _spread(d: dict[str, float]) -> str:
    return f"{d['median_us']:+.0f} [{d['q1_us']:+.0f}, {d['q3_us']:+.0f}]"


def table(report: dict[str, Any]) -> str:
    lines = [
        f"in-process pipeline, SQLite audit + state; CPU per call: median of {report['blocks']} interleaved "
        f"blocks of {report['calls_per_block']} calls; vs: median block-by-block difference [quartiles]",
        f"{'variant':<28}{'CPU/call':>10}{'vs floor':>24}{'vs unused':>24}{'wall median':>13}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['variant']:<28}{r['cpu_us_per_call']:>7.0f} µs"
            f"{_spread(r['vs_floor']):>24}{_spread(r['vs_unused']):>24}{r['wall_median_us']:>10.0f} µs"
        )
    if report.get("alone"):
        lines += ["", "each stage alone, as the allow-all bundle leaves it (no I/O; median block-by-block difference)"]
        lines += [f"{a['stage']:<48}{a['added_ns'] / 1000:>+8.1f} µs" for a in report["alone"]]
    return "\n".join(lines)


def markdown_rows(report: dict[str, Any]) -> list[str]:
    """Rows of the ``python -m bench`` summary table (| measure | result | target |)."""
    out = []
    for r in report["rows"]:
        f, u = r["vs_floor"], r["vs_unused"]
        target = ""
        if r["variant"] in (UNUSED, UNUSED_NO_IO):
            verdict = "met" if within_noise(r) else "**not met**"
            target = f"unused stages cost nothing: 0 within the difference's quartiles: {verdict}"
        out.append(
            f"| stages, {r['variant']}{' (SQLite audit and state)' if r.get('io', True) else ''} | "
            f"{r['cpu_us_per_call']:.0f} µs CPU/call ({f['median_us']:+.0f} µs vs floor, "
            f"{u['median_us']:+.0f} µs vs unused), wall median {r['wall_median_us']:.0f} µs | {target} |"
        )
    if report.get("alone"):
        each = "; ".join(f"{a['stage']} {a['added_ns'] / 1000:+.1f}" for a in report["alone"])
        out.append(f"| stages alone, unused (no I/O; µs CPU/call) | {each} | |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=30, help="interleaved blocks per variant (default 30)")
    parser.add_argument("--calls", type=int, default=150, help="calls per block (default 150)")
    parser.add_argument("--warmup", type=int, default=100, help="calls per variant before measuring")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()
    report = run(blocks=args.blocks, calls=args.calls, warmup=args.warmup)
    print(table(report))
    if not args.no_save:
        print(f"wrote {common.save('bench_stages', {'machine': common.machine_info(), **report})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
