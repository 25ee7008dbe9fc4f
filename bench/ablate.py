"""Run ``mcp-guard`` with parts of the hot path switched off, to measure what each part costs.

    python bench/ablate.py no-audit-wait,no-secrets -- run --config cfg.toml

Not a product feature and never used by ``make bench`` for the headline numbers: a diagnostic that
answers "how much of the added latency is X?" by monkeypatching X away in this process only.

Switches (comma-separated):

* ``no-audit-wait``  calls queue their audit rows but do not wait for the commit (ordering guarantee off)
* ``no-audit``       nothing is recorded at all
* ``no-secrets``     the guard runs without the secrets manager (no argument inspection, no redaction)
* ``no-policy``      every call is allowed without asking the engine
* ``no-metrics``     no Observe stage and no audit-wait timer: calls are not counted (/metrics shows none)
* ``sdk-front``      the SDK's threaded stdio server transport instead of mcp-guard's asyncio one
* ``sdk-upstream``   the SDK's ``stdio_client`` (threads, anyio process) for stdio upstreams
* ``sse-front``      2025-11-25 sessions get the SDK's own transport again: every request POST answered with an SSE
                     stream, instead of JSON unless the call streams (``frontend/json_first.py``)
* ``sdk-dispatch``   a 2025-11-25 session's ``tools/call`` goes through the session's SDK dispatcher again (its read
                     loop, a task per request, the write stream and the transport's router) instead of running in
                     its POST's own task (``frontend/direct_call.py``)
* ``sdk-stdio-dispatch`` a stdio session's ``tools/call`` goes through the SDK's era loop again (its relay task and
                     memory stream, the dispatcher's read loop, an anyio task per request) instead of being started
                     as its line is read (``frontend/stdio_direct.py``)
* ``sdk-modern``     a 2026-07-28 ``tools/call`` goes through the SDK's modern entry again (``handle_modern_request``:
                     a task group, a handler task, a disconnect-watcher task and a memory stream per request)
                     instead of being answered in its POST's own task (``frontend/modern_direct.py``)
* ``bridge-watch-task`` every bridged 2026-07-28 call gets its expiry watcher at once (a task group and a second
                     task per call, as before issue #19's modern work) instead of when it first parks between
                     InputRequiredResult rounds (``frontend/input_required.py``, ``_park``)
* ``h11``            the HTTP front parses requests with h11 (pure Python, the front before issue #19's
                     httptools protocol) instead of httptools (C); same slowloris guards and head cap
* ``uvloop``         the event loop is uvloop's; needs uvloop
* ``inline-audit``   the audit writer commits on the event loop's thread (a plain sqlite3 connection)
                     instead of a trip through aiosqlite's worker thread
* ``gc-tune``        fewer young-generation collections (gc.set_threshold(50_000, 20, 100)) and the start-up
                     heap frozen out of them (gc.freeze())
* ``thread-state``   the state store as before issue #19: every operation in its worker thread, no flow cache
* ``per-op-state``   the obligations' state writes one transaction per op again (labels, then rate_limit, a
                     refusal undone op by op: ``state.base.apply_in_turn``), and ``context.usage`` read before
                     every decision whether the bundle reads it or not
* ``thread-audit``   the audit writer as before issue #19: every batch through aiosqlite's worker thread
* ``no-decision-cache`` every decision asked of the engine (the decision cache, policy/cache.py, passes through)
* ``no-lane``        forwarded requests to stdio upstreams go through the SDK ``ClientSession`` again instead of
                     the lean lane (``upstream/raw_lane.py``)
* ``audit-fast-path`` with inline-audit: a record() that finds the writer idle and the queue empty
                     commits its own row in the caller's task (no writer wake-up, no future) — the writer now
                     does this itself (``AuditWriter._commit_now``); the switch predates it
* ``audit-writer-task`` every record() goes through the queue and the writer task, as before the call-row work
                     (a lone row is no longer committed in the caller's task)
* ``old-audit-rows`` the call rows built and serialised as before the call-row work: uuid4 ids and datetime
                     timestamps, the argument text serialised a second time by the writer, reasons serialised per
                     row, the result digested by ``json.dumps`` (the stored rows are the same)
"""

from __future__ import annotations

import sys
from typing import Any

SWITCHES = (
    "no-audit-wait",
    "no-audit",
    "no-secrets",
    "no-policy",
    "no-metrics",
    "sdk-front",
    "sdk-upstream",
    "sse-front",
    "sdk-dispatch",
    "sdk-stdio-dispatch",
    "sdk-modern",
    "bridge-watch-task",
    "h11",
    "uvloop",
    "inline-audit",
    "audit-fast-path",
    "gc-tune",
    "thread-state",
    "per-op-state",
    "thread-audit",
    "no-decision-cache",
    "no-lane",
    "audit-writer-task",
    "old-audit-rows",
)


def apply(switches: set[str]) -> None:
    unknown = switches - set(SWITCHES)
    if unknown:
        raise SystemExit(f"unknown switch(es): {', '.join(sorted(unknown))}; known: {', '.join(SWITCHES)}")
    from mcp_guard.audit import AuditWriter

    if "no-audit" in switches:

        async def record_nothing(self: Any, event: Any) -> int:
            return 0

        AuditWriter.record = record_nothing  # type: ignore[method-assign]
        AuditWriter.record_nowait = lambda self, event: None  # type: ignore[method-assign]
    elif "no-audit-wait" in switches:

        async def record_queued(self: Any, event: Any) -> int:
            self.record_nowait(event)
            return 0

        AuditWriter.record = record_queued  # type: ignore[method-assign]
    if "no-secrets" in switches:
        import mcp_guard.app as app

        original = app.Guard.__init__

        from mcp_guard.pipeline.secret_source import NO_SECRETS

        def without_secrets(self: Any, settings: Any, **kw: Any) -> None:

            kw["secrets"] = NO_SECRETS
            original(self, settings, **kw)

        app.Guard.__init__ = without_secrets  # type: ignore[method-assign]
    if "no-policy" in switches:
        from mcp_guard.pipeline import authorize
        from mcp_guard.types import Decision

        class AllowAll:
            def __init__(self, engine: Any, *_usage: Any) -> None:  # Authorize's signature (usage source ignored)
                self._engine = engine

            async def __call__(self, ctx: Any, call_next: Any) -> Any:
                from dataclasses import replace

                d = Decision(allow=True, reasons=("ablation",), revision=getattr(self._engine, "revision", None))
                return await call_next(replace(ctx, decision=d))

        import mcp_guard.pipeline.build as build

        setattr(authorize, "Authorize", AllowAll)  # noqa: B010 - a monkeypatch, on purpose
        setattr(build, "Authorize", AllowAll)  # noqa: B010
    if "no-metrics" in switches:
        import mcp_guard.pipeline.build as build_mod
        from mcp_guard.pipeline.observe import CallMetrics, Observe

        original_stages = build_mod.pipeline_stages  # what build_pipeline composes from

        def without_metrics(**kw: Any) -> Any:
            return [s for s in original_stages(**kw) if not isinstance(s, Observe)]

        setattr(CallMetrics, "timed", lambda self, sink: sink)  # noqa: B010 - the audit stages get the bare sink
        setattr(build_mod, "pipeline_stages", without_metrics)  # noqa: B010
    if "sdk-front" in switches:
        from mcp.server.stdio import stdio_server

        import mcp_guard.frontend.stdio as front

        setattr(front, "stdio_transport", lambda *a, **k: stdio_server())  # noqa: B010
    if "sdk-upstream" in switches:
        from contextlib import asynccontextmanager

        import anyio
        from mcp.client.stdio import StdioServerParameters, stdio_client

        import mcp_guard.upstream.connection as conn
        from mcp_guard.upstream.stdio import ChildExit

        @asynccontextmanager
        async def sdk_transport(command: str, args: Any, *, env: Any, cwd: Any = None, **_: Any) -> Any:
            params = StdioServerParameters(command=command, args=list(args), env=dict(env), cwd=cwd)
            async with stdio_client(params) as (read, write):
                yield read, write, ChildExit(event=anyio.Event()), None

        setattr(conn, "open_stdio_transport", sdk_transport)  # noqa: B010
    if "inline-audit" in switches:
        import sqlite3

        from mcp_guard.audit import sqlite as sqlite_mod
        from mcp_guard.audit import writer as writer_mod
        from mcp_guard.audit.chain import chain_rows

        def inline_insert(self: Any, batch: Any) -> int:
            conn = getattr(self, "_bench_inline", None)
            if conn is None:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA busy_timeout = 5000")
                self._bench_inline = conn
            first = self._head.seq + 1
            rows, head = chain_rows(self._head, batch)
            conn.execute("BEGIN IMMEDIATE")
            for row in rows:
                conn.execute(sqlite_mod._insert_sql(1), list(row))
            conn.execute("COMMIT")
            self._head = head
            self.appended += len(rows)
            return int(first)

        async def insert(self: Any, batch: Any) -> int:
            return inline_insert(self, batch)

        setattr(sqlite_mod.SqliteBackend, "_insert", insert)  # noqa: B010
        if "audit-fast-path" in switches:
            slow_record = writer_mod.AuditWriter.record

            async def fast_record(self: Any, event: Any) -> int:
                if self._writer_idle and not self._queue and not self._overflow and self._broken is None:
                    pending = writer_mod._prepare(event, None)
                    seq = inline_insert(self.backend, [pending])
                    self.stats.committed += 1
                    return seq
                return int(await slow_record(self, event))

            setattr(writer_mod.AuditWriter, "record", fast_record)  # noqa: B010
    if "audit-writer-task" in switches:
        from mcp_guard.audit import writer as writer_task_mod

        setattr(writer_task_mod.AuditWriter, "_alone", lambda self: False)  # noqa: B010
    if "old-audit-rows" in switches:
        _old_audit_rows()
    if "thread-state" in switches:
        from mcp_guard.state.sqlite import SQLiteState

        original_state_init = SQLiteState.__init__

        def threaded_state(self: Any, *a: Any, **kw: Any) -> None:
            original_state_init(self, *a, **{**kw, "inline": False, "flow_cache": 0})

        setattr(SQLiteState, "__init__", threaded_state)  # noqa: B010
    if "per-op-state" in switches:
        from mcp_guard.pipeline.ratelimit import UsageRead
        from mcp_guard.state.base import apply_in_turn
        from mcp_guard.state.sqlite import SQLiteState

        one_batch = SQLiteState.apply

        def per_op(self: Any, ops: Any) -> Any:  # a single op still goes through the batch (its own transaction)
            return one_batch(self, ops) if len(ops) <= 1 else apply_in_turn(self, ops)

        setattr(SQLiteState, "apply", per_op)  # noqa: B010
        setattr(UsageRead, "__call__", lambda self: True)  # noqa: B010
    if "thread-audit" in switches:
        from mcp_guard.audit import sqlite as sqlite_backend_mod

        setattr(sqlite_backend_mod.SqliteBackend, "append_now", lambda self, batch: None)  # noqa: B010
    if "no-decision-cache" in switches:
        from mcp_guard.policy.cache import CachedEngine

        # _answer is what evaluate_document and evaluate_sync both go through: every call asks the engine.
        setattr(CachedEngine, "_answer", lambda self, doc: (self.inner.evaluate_sync(doc), True))  # noqa: B010
    if "no-lane" in switches:
        import mcp_guard.upstream.stdio as upstream_stdio

        setattr(upstream_stdio, "RawLane", lambda *writes: None)  # noqa: B010 - the read stream then offers nothing
    if "gc-tune" in switches:
        import gc

        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    if "sse-front" in switches:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        import mcp_guard.frontend.http as http_front

        def sdk_manager(app: Any, *, connections: Any = None, **kwargs: Any) -> Any:
            return StreamableHTTPSessionManager(app, **kwargs)  # the SDK's: no direct calls either

        setattr(http_front, "JsonFirstSessionManager", sdk_manager)  # noqa: B010
    if "sdk-dispatch" in switches:
        from mcp_guard.frontend.direct_call import DirectCalls

        setattr(DirectCalls, "ready", lambda *_args: None)  # noqa: B010 - every request to the SDK's dispatcher
    if "sdk-stdio-dispatch" in switches:
        from mcp_guard.frontend.stdio_direct import StdioDirect

        setattr(StdioDirect, "take", lambda *_args: False)  # noqa: B010 - every message to the SDK's era loop
    if "sdk-modern" in switches:
        from mcp_guard.frontend.modern_direct import ModernDirect

        setattr(ModernDirect, "takes", lambda *_args: False)  # noqa: B010 - every stateless request to the SDK's entry
    if "bridge-watch-task" in switches:
        import anyio

        from mcp_guard.frontend.input_required import InputRequiredBridge

        lean_drive = InputRequiredBridge._drive

        async def eager_watch(self: Any, pending: Any, call: Any, run: Any) -> None:
            pending.watched = True
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, pending)
                await lean_drive(self, pending, call, run)

        setattr(InputRequiredBridge, "_drive", eager_watch)  # noqa: B010 - a monkeypatch, on purpose
    if "h11" in switches:
        import mcp_guard.frontend.http as http_front
        from mcp_guard.frontend.slowloris import guarded_h11

        setattr(http_front, "http_protocol", guarded_h11)  # noqa: B010 - serve_http looks it up at serve time
    if "uvloop" in switches:
        import anyio

        original_run = anyio.run

        def uvloop_run(fn: Any, *args: Any, **kw: Any) -> Any:
            kw.setdefault("backend_options", {"use_uvloop": True})
            return original_run(fn, *args, **kw)

        setattr(anyio, "run", uvloop_run)  # noqa: B010 - mcp_guard.commands calls anyio.run


def _old_audit_rows() -> None:
    """Put back the per-row work the call-row change removed (see ``old-audit-rows``)."""
    import json
    import uuid
    from datetime import UTC, datetime

    from mcp_guard.audit import chain, events
    from mcp_guard.audit import writer as writer_mod

    # the ids and times rows were made with before (types.new_id / utc_now as they were)
    setattr(events, "new_id", lambda: uuid.uuid4().hex)  # noqa: B010
    setattr(events, "utc_now", lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))  # noqa: B010
    plain_json_text = chain.json_text

    def json_text_again(value: Any) -> Any:  # the carried text ignored: serialise the arguments again
        return plain_json_text(dict(value) if isinstance(value, chain.EncodedJson) else value)

    setattr(writer_mod, "json_text", json_text_again)  # noqa: B010

    def fast_json_text_again(value: Any) -> Any:
        return chain.fast_json_text(dict(value) if isinstance(value, chain.EncodedJson) else value)

    setattr(writer_mod, "fast_json_text", fast_json_text_again)  # noqa: B010
    setattr(writer_mod, "_reasons_text", lambda reasons: json_text_again(list(reasons)))  # noqa: B010

    def dumps_text(result: Any) -> str:
        return json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    setattr(events, "_RESULT_TEXT", dumps_text)  # noqa: B010


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    switches = {s for s in sys.argv[1].split(",") if s}
    rest = sys.argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    apply(switches)
    from mcp_guard.cli import main as guard_main

    return guard_main(rest)


if __name__ == "__main__":
    sys.exit(main())
