"""The operations endpoints of the HTTP front: ``/healthz``, ``/readyz`` and ``/metrics``.

``GET /healthz`` — the process serves HTTP: always ``200 {"status": "alive"}``.

``GET /readyz`` — whether this replica should get traffic: ``200`` when the policy engine can decide
and the audit store can write, else ``503``; the JSON body says which check failed and lists every
upstream with its state. An upstream that is down does not make the replica unready (its calls fail
on their own; the other upstreams still work, and every replica would see the same upstream)::

    {"status": "ready" | "not_ready",
     "policy": {"ready": true, "engine": "embedded", "revision": "…"},
     "audit": {"ready": true, "backend": "sqlite", "queued": 0},
     "upstreams": {"git": {"state": "ready", "up": true, "restarts": 0},
                   "web": {"state": "down", "up": false, "restarts": 3, "problem": "…"}}}

``GET /metrics`` — Prometheus text format (:func:`metrics_text`, names in the README), or ``404`` when
``[server] metrics = false``. Call counters come from the pipeline's ``Observe`` stage
(:mod:`mcp_guard.pipeline.observe`); gauges are read from the parts at scrape time.

**No credentials, nothing secret.** These paths are answered before the bearer-auth middleware, so
probes and scrapers need no key. What they show is built for that: states, counts, names of configured
upstreams and catalogue tools, the policy revision hash. Never a key, a DSN, a secret value or a
path taken from a config value: the one free text, a component's ``problem``, is passed through
:func:`safe_text` (injected secret values scrubbed by the Guard's scrubber, credential shapes and URL
passwords masked, cut to :data:`PROBLEM_MAX` characters).

**Host check: against DNS rebinding, not against probes.** ``/mcp`` accepts only the loopback names and
``[server] allowed_hosts`` in ``Host``. These paths accept the same names and, in addition, any IP
literal (``10.0.3.7:8765``, ``[::1]:8765``) or no ``Host`` at all: load balancers, the kubelet and
Prometheus address a replica by IP, while a DNS-rebinding page always sends its own *name* — and a page
on another origin reading an IP address gets no CORS header, so it cannot read the answer. A scraper
that uses a DNS name must have it in ``allowed_hosts``, exactly like an MCP client.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_guard import __version__
from mcp_guard.audit import AuditStats
from mcp_guard.frontend.asgi_headers import first_header
from mcp_guard.metrics import CONTENT_TYPE, Page
from mcp_guard.pipeline.observe import CallMetrics
from mcp_guard.pipeline.shadow import ShadowStats
from mcp_guard.policy import CachedEngine, EngineHealth
from mcp_guard.policy.replay import Change
from mcp_guard.secrets.shapes import mask_text

__all__ = [
    "OPS_PATHS",
    "PROBLEM_MAX",
    "AuditHealth",
    "OpsRoutes",
    "OpsSources",
    "Readiness",
    "UpstreamHealth",
    "metrics_text",
    "readiness",
    "safe_text",
    "with_ops_routes",
]

OPS_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
PROBLEM_MAX: Final = 200  # characters of a component's problem shown by /readyz


@runtime_checkable
class AuditHealth(Protocol):
    """What the audit sink reports (:class:`~mcp_guard.audit.AuditWriter` does, whatever its backend)."""

    @property
    def problem(self) -> str | None:
        """Why the store cannot write now (broken, closed, or the last transaction failed); None if it can."""
        ...

    @property
    def queued(self) -> int: ...

    @property
    def stats(self) -> AuditStats: ...


class UpstreamHealth(Protocol):
    """One upstream as the registry holds it (:class:`~mcp_guard.upstream.connection.UpstreamConnection`)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def restarts(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def protocol_version(self) -> str | None:
        """The protocol version last negotiated with it (its era: 2026-07-28 or the 2025-11-25 handshake)."""
        ...


@dataclass(frozen=True)
class OpsSources:
    """Everything the endpoints read, handed over by the composition root; read at request time.

    ``engine`` and ``audit`` are the Guard's policy engine and audit sink: their health is read when they
    report it (:class:`~mcp_guard.policy.EngineHealth`, :class:`AuditHealth`); a part that reports
    nothing (an in-memory test double) counts as ready.
    """

    calls: CallMetrics
    engine: object
    engine_name: str
    audit: object
    audit_backend: str
    upstreams: Callable[[], Iterable[UpstreamHealth]]
    session_transports: Callable[[], Iterable[str]]
    scrub: Callable[[str], str]  # injected secret values out of a text (the Guard's scrubber)
    metrics: bool = True  # [server] metrics: serve /metrics
    # The approvals part's count of calls waiting for an approval (mcp_guard_approvals_pending). Synchronous:
    # a scrape never waits on a database, so the part keeps the number at hand. None: no approvals part.
    approvals_pending: Callable[[], int] | None = None
    # Config reloads by status (ok, restart_required, rejected): the Guard's counter, read at scrape time.
    reloads: Mapping[tuple[str, ...], int] | None = None
    shadow: ShadowStats | None = None  # [policy] shadow_bundle counters (mcp_guard.pipeline.shadow)


# ---------------------------------------------------------------------------------------------- texts

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@")
_KEY_VALUE_SECRET = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)"
)


def safe_text(text: str, scrub: Callable[[str], str]) -> str:
    """``text`` fit to show without credentials: secret values scrubbed (``scrub``), credential shapes and
    ``password=…``-style values masked, URL user-info removed, at most :data:`PROBLEM_MAX` characters."""
    text = scrub(text)
    text, _ = mask_text(text)
    text = _URL_USERINFO.sub(r"\1[REDACTED]@", text)
    text = _KEY_VALUE_SECRET.sub(r"\1\2[REDACTED]", text)
    return text if len(text) <= PROBLEM_MAX else text[: PROBLEM_MAX - 1] + "…"


# ---------------------------------------------------------------------------------------------- readiness


@dataclass(frozen=True)
class Readiness:
    ready: bool
    body: dict[str, Any]


def _policy(src: OpsSources) -> dict[str, Any]:
    engine = src.engine
    ready, problem = (engine.ready, engine.problem) if isinstance(engine, EngineHealth) else (True, None)
    revision = getattr(engine, "revision", None)
    out: dict[str, Any] = {"ready": ready, "engine": src.engine_name, "revision": revision or None}
    if not ready:
        out["problem"] = safe_text(problem or "not ready", src.scrub)
    return out


def _audit(src: OpsSources) -> dict[str, Any]:
    audit = src.audit
    out: dict[str, Any] = {"ready": True, "backend": src.audit_backend}
    if isinstance(audit, AuditHealth):
        problem = audit.problem
        out["ready"] = problem is None
        out["queued"] = audit.queued
        if problem is not None:
            out["problem"] = safe_text(problem, src.scrub)
    return out


def _upstream(conn: UpstreamHealth, scrub: Callable[[str], str]) -> dict[str, Any]:
    up = conn.state == "ready"
    out: dict[str, Any] = {"state": conn.state, "up": up, "restarts": conn.restarts}
    if not up and conn.last_error:
        out["problem"] = safe_text(conn.last_error, scrub)
    if conn.protocol_version is not None:
        out["protocol_version"] = conn.protocol_version
    return out


def readiness(src: OpsSources) -> Readiness:
    """Ready when the policy engine can decide and the audit store can write; upstreams are listed only."""
    policy, audit = _policy(src), _audit(src)
    ready = bool(policy["ready"] and audit["ready"])
    body = {
        "status": "ready" if ready else "not_ready",
        "policy": policy,
        "audit": audit,
        "upstreams": {c.name: _upstream(c, src.scrub) for c in sorted(src.upstreams(), key=lambda c: c.name)},
    }
    return Readiness(ready, body)


# ---------------------------------------------------------------------------------------------- metrics


def _calls(page: Page, m: CallMetrics) -> None:
    counts = m.snapshot()
    page.counter(
        "mcp_guard_calls_total",
        "tools/call requests through the pipeline, by upstream, tool, decision and reason code.",
        m.CALLS_LABELS,
        counts.calls,
    )
    page.counter(
        "mcp_guard_requests_total",
        "Every request through the pipeline (tools/call, resources/read, prompts/get, ...), by action.",
        m.REQUESTS_LABELS,
        counts.requests,
    )
    page.histogram(
        "mcp_guard_call_duration_seconds",
        "Time a request spent in the pipeline, upstream call and audit commits included.",
        m.DURATION_LABELS,
        counts.duration,
    )
    page.counter(
        "mcp_guard_call_errors_total",
        "Allowed requests that ended in an error (upstream error, down or timed out).",
        ("server",),
        m.errors,
    )
    page.counter("mcp_guard_rate_limit_denials_total", "Requests denied rate_limited.", ("server",), m.rate_limited)
    page.histogram(
        "mcp_guard_stage_duration_seconds",
        "Each pipeline stage's own time per request (Forward: the upstream request); [telemetry] stage_metrics.",
        ("stage",),
        m.stages,
    )


def _audit_metrics(page: Page, src: OpsSources) -> None:
    m = src.calls
    page.histogram(
        "mcp_guard_audit_commit_wait_seconds",
        "Time a request waited for one of its audit rows to commit (queue and transaction).",
        (),
        m.audit_wait,
    )
    audit = src.audit
    if not isinstance(audit, AuditHealth):
        return
    stats = audit.stats
    page.gauge("mcp_guard_audit_ready", "1 when the audit store can write.", (), {(): int(audit.problem is None)})
    page.gauge("mcp_guard_audit_queue_depth", "Audit events waiting for the writer.", (), {(): audit.queued})
    for name, help, value in (
        ("mcp_guard_audit_events_committed_total", "Audit events committed.", stats.committed),
        ("mcp_guard_audit_transactions_total", "Audit transactions (group commits) committed.", stats.batches),
        ("mcp_guard_audit_events_failed_total", "Audit events whose transaction failed.", stats.failed),
        (
            "mcp_guard_audit_events_dropped_total",
            "Side-channel audit events dropped (queue full, store down).",
            stats.dropped,
        ),
        ("mcp_guard_audit_records_expired_total", "Audit writes that gave up waiting for a commit.", stats.expired),
    ):
        page.counter(name, help, (), {(): value})


def _policy_metrics(page: Page, src: OpsSources) -> None:
    policy = _policy(src)
    page.gauge("mcp_guard_policy_ready", "1 when the policy engine can decide.", (), {(): int(policy["ready"])})
    page.gauge(
        "mcp_guard_policy_revision_info",
        "The policy bundle revision in force (always 1).",
        ("engine", "revision"),
        {(src.engine_name, str(policy["revision"] or "")): 1},
    )
    if isinstance(src.engine, CachedEngine):
        _decision_cache_metrics(page, src.engine)
    _shadow_metrics(page, src.shadow)


def _decision_cache_metrics(page: Page, cache: CachedEngine) -> None:
    """``[policy.decision_cache]``: its counters (plain ints the cache bumps) and its size, read now."""
    stats = cache.stats
    for name, help, value in (
        ("mcp_guard_policy_decision_cache_hits_total", "Decisions answered from the decision cache.", stats.hits),
        (
            "mcp_guard_policy_decision_cache_misses_total",
            "Cacheable decisions the engine was asked (not held, or held past its TTL or revision).",
            stats.misses,
        ),
        (
            "mcp_guard_policy_decision_cache_uncacheable_total",
            "Decisions that could not be cached (the bundle reads time or the whole input, or the key is too big).",
            stats.uncacheable,
        ),
    ):
        page.counter(name, help, (), {(): value})
    page.counter(
        "mcp_guard_policy_decision_cache_removals_total",
        "Decisions dropped from the cache: evicted (size), expired (TTL), invalidated (bundle revision changed).",
        ("reason",),
        {("evicted",): stats.evicted, ("expired",): stats.expired, ("invalidated",): stats.invalidated},
    )
    page.gauge("mcp_guard_policy_decision_cache_entries", "Decisions held by the cache now.", (), {(): cache.entries})


def _shadow_metrics(page: Page, shadow: ShadowStats | None) -> None:
    """The shadow bundle's counters, only when one is configured (``change`` is a closed set: replay.Change)."""
    if shadow is None or not shadow.enabled:
        return
    page.counter(
        "mcp_guard_policy_shadow_decisions_total",
        "Calls the shadow bundle decided as well (never enforced).",
        ("revision",),
        {(shadow.revision or "",): shadow.decided},
    )
    diffs = {change: shadow.diffs.get(change, 0) for change in (str(c) for c in Change)}
    page.counter(
        "mcp_guard_policy_shadow_diffs_total",
        "Calls the shadow bundle decided differently from the enforcing one, by kind of change.",
        ("change",),
        {(c,): n for c, n in diffs.items()},
    )
    page.counter(
        "mcp_guard_policy_shadow_errors_total",
        "Shadow evaluations that failed (engine error, timeout); never propagated to the call.",
        (),
        {(): shadow.errors},
    )


def _upstream_metrics(page: Page, src: OpsSources) -> None:
    conns = list(src.upstreams())
    page.gauge(
        "mcp_guard_upstream_up",
        "1 while the upstream is connected.",
        ("server",),
        {(c.name,): int(c.state == "ready") for c in conns},
    )
    page.counter(
        "mcp_guard_upstream_restarts_total",
        "Upstream restarts since start.",
        ("server",),
        {(c.name,): c.restarts for c in conns},
    )


def _process_start() -> float | None:
    """When this process started (Linux: boot time + the process's start tick), None elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, after "pid (comm)"
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


_PROCESS_START: Final = _process_start()


def _process_metrics(page: Page, started: float) -> None:
    """The standard ``process_*`` gauges dashboards expect (what prometheus_client would export)."""
    t = os.times()
    page.counter(
        "process_cpu_seconds_total", "User and system CPU time spent, in seconds.", (), {(): t.user + t.system}
    )
    page.gauge(
        "process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds.", (), {(): started}
    )
    try:  # Linux: current resident set and open descriptors
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        return
    page.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", (), {(): rss})
    page.gauge("process_open_fds", "Number of open file descriptors.", (), {(): fds})


def _operations_metrics(page: Page, src: OpsSources) -> None:
    """What the operators' own actions and queues look like: reloads, approvals waiting."""
    if src.reloads is not None:
        page.counter(
            "mcp_guard_config_reloads_total",
            "Config reloads (SIGHUP, mcp-guard reload) by outcome: ok, restart_required, rejected.",
            ("status",),
            {k: v for k, v in src.reloads.items()},
        )
    if src.approvals_pending is not None:
        page.gauge(
            "mcp_guard_approvals_pending",
            "Calls waiting for an approval.",
            (),
            {(): src.approvals_pending()},
        )


def metrics_text(src: OpsSources) -> str:
    """The ``/metrics`` page: call counters, then the parts' gauges read now."""
    page = Page()
    page.gauge("mcp_guard_build_info", "The mcp-guard version (always 1).", ("version",), {(__version__,): 1})
    _process_metrics(page, src.calls.started)
    _calls(page, src.calls)
    _audit_metrics(page, src)
    _policy_metrics(page, src)
    _upstream_metrics(page, src)
    _operations_metrics(page, src)
    sessions = Counter(src.session_transports())
    sessions.setdefault("http", 0)
    page.gauge(
        "mcp_guard_sessions",
        "Open client sessions (2025-11-25 handshakes; 2026-07-28 requests are stateless).",
        ("transport",),
        {(t,): n for t, n in sessions.items()},
    )
    return page.text()


# ---------------------------------------------------------------------------------------------- HTTP


def _host_allowed(host: str | None, allowed: Sequence[str]) -> bool:
    """The ops paths' Host rule (module docstring): no Host, an IP literal, or a name ``/mcp`` accepts."""
    if not host:
        return True
    name = host
    if name.startswith("["):  # [v6]:port
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    # The SDK's rule for /mcp: an exact value, or "name:*" for that name on any port.
    return any(host == p or (p.endswith(":*") and host.startswith(p[:-1])) for p in allowed)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    *,
    head: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=False).encode()


class OpsRoutes:
    """ASGI: answers :data:`OPS_PATHS` itself and hands every other request to ``app`` (auth, then ``/mcp``).

    Outermost, so the bearer-auth middleware and the MCP transport's Host/Origin check never see these
    paths; they have their own Host rule (:func:`_host_allowed`).
    """

    def __init__(self, app: ASGIApp, sources: OpsSources, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self._src = sources
        self._hosts = tuple(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope.get("method", "GET")
        if path == "/metrics" and not self._src.metrics:
            await _respond(send, 404, b"Not Found", "text/plain; charset=utf-8")
            return
        if method not in ("GET", "HEAD"):
            await _respond(
                send, 405, b"Method Not Allowed", "text/plain; charset=utf-8", extra=[(b"allow", b"GET, HEAD")]
            )
            return
        if not _host_allowed(first_header(scope, b"host"), self._hosts):
            await _respond(send, 421, b"Invalid Host header", "text/plain; charset=utf-8")
            return
        head = method == "HEAD"
        if path == "/healthz":
            await _respond(send, 200, _json({"status": "alive"}), "application/json", head=head)
        elif path == "/readyz":
            r = readiness(self._src)
            await _respond(send, 200 if r.ready else 503, _json(r.body), "application/json", head=head)
        else:
            await _respond(send, 200, metrics_text(self._src).encode(), CONTENT_TYPE, head=head)


def with_ops_routes(app: ASGIApp, sources: OpsSources | None, allowed_hosts: Sequence[str]) -> ASGIApp:
    """``app`` behind :class:`OpsRoutes`; ``app`` itself when there is nothing to serve them from."""
    return app if sources is None else OpsRoutes(app, sources, allowed_hosts)
