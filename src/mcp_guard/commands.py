"""Subcommands of the proxy itself: ``run``, ``check``, ``tools`` (with ``tools pins`` / ``tools approve``).

Signals while ``run`` serves: SIGTERM and SIGINT stop it; SIGHUP reloads (:meth:`mcp_guard.app.Guard.reload`:
upstreams, principals and secrets applied, the policy bundle re-read, other changed keys reported as needing
a restart, a bad config rejected whole) and keeps serving. ``[server] pid_file`` is held while serving, so
``mcp-guard reload`` (:mod:`mcp_guard.ops_commands`) can find the process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from mcp_guard.cli import add_config_arg, config_hint, load_config
from mcp_guard.errors import ConfigError
from mcp_guard.logging import configure_logging
from mcp_guard.settings import Settings, UpstreamSettings
from mcp_guard.types import AuditEvent, EventKind

if TYPE_CHECKING:
    import mcp_types as types

    from mcp_guard.app import Guard
    from mcp_guard.audit import AuditWriter
    from mcp_guard.pins import PinBackend
    from mcp_guard.pins.store import PendingChange, Pin

log = structlog.get_logger("mcp_guard.cli")

__all__ = ["register"]

STDERR_LINES_SHOWN = 10  # of a failed upstream, in `mcp-guard check`


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="serve MCP clients (stdio or streamable HTTP) in front of the upstreams")
    add_config_arg(run)
    run.add_argument("--transport", choices=["stdio", "http"], help="override [server] transport")
    run.add_argument("--host", help="override [server] host (HTTP)")
    run.add_argument("--port", type=int, help="override [server] port (HTTP; 0 picks a free port)")
    run.add_argument("--principal", help="identity of a stdio client (overrides [server] principal)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="HTTP: serve the port with N worker processes (default 1; see README, Performance)",
    )
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor (workers.py)
    run.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # the inherited listening socket
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate config and policies, start upstreams, list their tools")
    add_config_arg(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for upstreams")
    check.set_defaults(func=_check)

    tools = sub.add_parser("tools", help="the tools a principal may see; tool pins and approvals")
    add_config_arg(tools)
    tools.add_argument("--principal", help="principal id (default: [server] principal)")
    tools.add_argument("--json", action="store_true", help="machine-readable output")
    tools.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for upstreams")
    tools.set_defaults(func=_tools)
    tsub = tools.add_subparsers(dest="tools_command", metavar="SUBCOMMAND")
    pins = tsub.add_parser("pins", help="pinned tool definitions and changes awaiting approval (with a diff)")
    add_config_arg(pins)
    pins.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    pins.set_defaults(func=_pins)
    approve = tsub.add_parser("approve", help="approve the changed definition of a tool")
    add_config_arg(approve)
    approve.add_argument("tool", help="exposed tool name, e.g. tickets__delete_ticket")
    approve.add_argument(
        "--sha",
        help="the pending definition you reviewed: at least 8 hex digits of its sha256 "
        "(required when several are pending)",
    )
    approve.set_defaults(func=_approve)


# ---------------------------------------------------------------------------------------------- run
def _worker_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of worker processes from 1 to 64")
    return n


def _run(args: argparse.Namespace) -> int:
    settings = load_config(args)
    configure_logging(args.log_level)
    transport = args.transport or settings.server.transport
    if args.worker_fd is not None:
        return _run_worker(settings, args)
    if args.workers > 1:
        return _supervise(settings, args, transport)
    # The port is taken before anything else starts: in use, it is a one-line error and nothing is created.
    sock = _listen(settings, args) if transport == "http" else None
    try:
        with _pid_file(settings):
            # uvloop where available (a dependency on Linux/macOS): about 0.2 ms less per proxied call (bench/).
            anyio.run(_serve, settings, transport, args, sock, backend_options={"use_uvloop": _has_uvloop()})
    finally:
        if sock is not None:
            sock.close()
    return 0


def _supervise(settings: Settings, args: argparse.Namespace, transport: str) -> int:
    """``--workers N``: bind the port here, then run N copies of this command line on it (mcp_guard.workers)."""
    from mcp_guard.workers import supervise

    if transport != "http":
        raise ConfigError(
            "several workers need the HTTP transport (a stdio client talks to one process)", key="--workers"
        )
    socks = _listen_reuseport(settings, args, args.workers)
    base = _worker_argv(args)
    try:
        with _pid_file(settings):  # held by the supervisor: `mcp-guard reload` signals it, it tells the workers
            return supervise(socks, lambda i, fd: [*base, "--worker-index", str(i), "--worker-fd", str(fd)])
    finally:
        for sock in socks:
            sock.close()


def _listen_reuseport(settings: Settings, args: argparse.Namespace, n: int) -> list[socket.socket]:
    """``n`` listening sockets on one port (SO_REUSEPORT): the kernel hashes each new connection to one of them,
    so the workers share the load evenly (one shared socket: whichever worker wakes first takes it, ~2:1
    measured). The supervisor keeps them all open: connections for a worker being restarted wait for it."""
    from mcp_guard.frontend.http import bind_socket

    from_file = args.host is None and args.port is None
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    keys = ("server.host", "server.port") if from_file else ("--host", "--port")
    source = settings.source if from_file else None
    socks = [bind_socket(host, port, source=source, keys=keys, reuse_port=True)]
    bound = int(socks[0].getsockname()[1])  # port 0: the one the first socket got
    try:
        socks += [bind_socket(host, bound, source=source, keys=keys, reuse_port=True) for _ in range(n - 1)]
    except ConfigError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """This ``run`` command line for a worker (the address is not needed: the worker gets the socket)."""
    argv = [sys.executable, "-m", "mcp_guard", "run", "--transport", "http", "--log-level", args.log_level]
    config = getattr(args, "config", None)  # else the worker finds it as this process did ($MCP_GUARD_CONFIG, …)
    if config is not None:
        argv += ["--config", str(config)]
    if args.principal is not None:
        argv += ["--principal", args.principal]
    if args.host is not None:  # what the worker reports and checks Host headers against
        argv += ["--host", args.host]
    return argv


def _run_worker(settings: Settings, args: argparse.Namespace) -> int:
    """One worker of ``--workers N``: the HTTP front on the inherited listening socket, no pid file of its own."""
    sock = socket.socket(fileno=args.worker_fd)
    try:
        anyio.run(_serve, settings, "http", args, sock, backend_options={"use_uvloop": _has_uvloop()})
    finally:
        sock.close()
    return 0


def _pid_file(settings: Settings) -> AbstractContextManager[None]:
    """``[server] pid_file`` held while serving (what ``mcp-guard reload`` signals), if configured."""
    from contextlib import nullcontext

    from mcp_guard.pidfile import pid_file_held

    if settings.server.pid_file is None:
        return nullcontext()
    return pid_file_held(settings.resolve_path(settings.server.pid_file), source=settings.source)


def _listen(settings: Settings, args: argparse.Namespace) -> socket.socket:
    from mcp_guard.frontend.http import bind_socket

    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    if args.host is None and args.port is None:
        return bind_socket(host, port, source=settings.source)
    # The address came (at least partly) from the command line, not from keys of the file.
    return bind_socket(host, port, keys=("--host", "--port"))


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _tune_gc() -> None:
    """Move start-up objects out of the collector's way and collect the young generation less often.

    A proxy allocates many short-lived objects per call; with the default thresholds young-generation
    collections run every few calls and show up as the p99 tail under load (bench/bench_breakdown.py).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _serve(settings: Settings, transport: str, args: argparse.Namespace, sock: socket.socket | None) -> None:
    from mcp_guard.app import Guard

    # Listening from the start, so a signal during start-up is handled (not the default: death by SIGHUP).
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with Guard.open(settings, principal=args.principal) as guard, anyio.create_task_group() as tg:
            tg.start_soon(_on_signals, signals, guard, tg.cancel_scope)
            # Serve once every upstream has started or failed its first start, so a client's first listing
            # is complete (a client that lists right after initialize would otherwise see a partial catalogue).
            problems = await guard.registry.wait_ready(_startup_wait(settings))
            for name, problem in problems.items():
                log.warning("upstream.unavailable_at_start", upstream=name, problem=problem)
            _tune_gc()
            if transport == "http":
                await guard.serve_http(args.host, args.port, sock=sock, worker=getattr(args, "worker_index", None))
            else:
                await guard.serve_stdio()
            tg.cancel_scope.cancel()


async def _on_signals(signals: AsyncIterator[int], guard: Guard, scope: anyio.CancelScope) -> None:
    """SIGHUP: reload and keep serving; SIGTERM / SIGINT: stop."""
    async for signum in signals:
        if signum != signal.SIGHUP:
            log.info("shutdown", signal=signal.Signals(signum).name)
            scope.cancel()
            return
        try:
            await guard.reload()
        except Exception as e:  # the top-level handler of a signal: a failed reload must not stop the proxy
            log.error("config.reload_failed", error=f"{type(e).__name__}: {e}")


def _startup_wait(settings: Settings) -> float:
    return max((u.startup_timeout_s for u in settings.upstreams.values()), default=0.0) + 1.0


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text)


# -------------------------------------------------------------------------------------------- check
def _check(args: argparse.Namespace) -> int:
    settings = load_config(args)
    configure_logging("warning")
    return anyio.run(_check_async, settings, args)


async def _check_async(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_guard.app import Guard

    async with Guard.open(settings) as guard:
        problems = await guard.registry.wait_ready(args.timeout)
        report: dict[str, Any] = {
            "config": settings.source,
            "policy_revision": getattr(guard.engine, "revision", None),
            "upstreams": {},
        }
        lines = [
            f"config: {settings.source or '(built-in defaults)'}",
            f"policy: {settings.policy.engine} engine, revision {report['policy_revision']}",
        ]
        for name, conn in guard.registry.connections.items():
            ready = conn.state == "ready"
            # From the merged catalogue, which is scrubbed of injected secrets (a connection's own is raw).
            listed = [e.local for e in guard.registry.catalog.tools.values() if e.upstream == name] if ready else []
            tools = [t.name for t in listed]
            stderr = [] if ready else list(conn.stderr_tail)[-STDERR_LINES_SHOWN:]
            report["upstreams"][name] = {
                "state": conn.state,
                "error": problems.get(name),
                "tools": tools,
                "protocol_version": conn.protocol_version,
            }
            if not ready:
                report["upstreams"][name]["stderr"] = stderr
            mark = "ok  " if ready else "DOWN"
            detail = (
                f"protocol {conn.protocol_version}, {len(tools)} tools: {', '.join(tools)}"
                if ready
                else problems.get(name, "")
            )
            lines.append(f"  [{mark}] {name}: {detail}")
            if ready:
                lines += _task_lines(report["upstreams"][name], listed, settings.upstreams[name])
            if stderr:
                lines.append(f"         last stderr lines of {name}:")
                lines += [f"           | {line}" for line in stderr]
        for name in guard.registry.pools:  # per-principal credentials: nothing to start without a principal
            report["upstreams"][name] = {"state": "pooled", "error": None, "tools": []}
            lines.append(f"  [pool] {name}: one connection per principal, started on its first use (not checked)")
        _print(report, args.json, "\n".join(lines))
        return 1 if problems else 0


def _task_lines(report: dict[str, Any], listed: list[types.Tool], upstream: UpstreamSettings) -> list[str]:
    """Which of an upstream's tools are served as tasks (into ``report``), and a warning for each ``task_tools``
    name it does not list — a typo there would silently offer no task (not an error: a tool may appear later)."""
    from mcp_guard.frontend.tasks import TaskSupport, task_support

    served = {
        t.name: str(s)
        for t in sorted(listed, key=lambda t: t.name)
        if (s := task_support(t, upstream)) is not TaskSupport.FORBIDDEN
    }
    unknown = sorted(set(upstream.task_tools) - {t.name for t in listed})
    report["tasks"] = served
    report["task_tools_unknown"] = unknown
    lines = [f"         as tasks: {', '.join(f'{n} ({m})' for n, m in served.items())}"] if served else []
    if unknown:
        lines.append(f"         warning: task_tools names tools it does not list: {', '.join(unknown)}")
    return lines


# -------------------------------------------------------------------------------------------- tools
def _tools(args: argparse.Namespace) -> int:
    settings = load_config(args)
    configure_logging("warning")
    return anyio.run(_tools_async, settings, args)


async def _tools_async(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_guard.app import Guard
    from mcp_guard.frontend.auth import principal_for

    principal = principal_for(settings, args.principal or settings.server.principal)
    async with Guard.open(settings, principal=principal.id) as guard:
        await guard.registry.wait_ready(args.timeout)
        visible = [t.name for t in await guard.visible_tools(principal)]
        # After the listing: it starts the principal's own connections of pooled upstreams.
        total = sum(1 for e in guard.registry.catalog.tools.values() if not e.hidden)
        _print(
            {"principal": principal.id, "roles": list(principal.roles), "tools": visible},
            args.json,
            f"principal {principal.id} (roles: {', '.join(principal.roles) or 'none'}) sees "
            f"{len(visible)} of {total} tools:\n" + "\n".join(f"  {n}" for n in visible),
        )
    return 0


def _pin_store(settings: Settings) -> PinBackend:
    """The pin store; a PostgreSQL one that cannot be reached is a one-line error naming ``audit.dsn``."""
    import psycopg

    from mcp_guard.pins import open_pins

    try:
        return open_pins(settings)
    except psycopg.Error as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"cannot open the pin store: {why}", file=settings.source, key="audit.dsn") from None


def _pins(args: argparse.Namespace) -> int:
    settings = load_config(args)
    pins: list[Pin] = []
    pending: list[PendingChange] = []
    if settings.audit.backend == "postgres" or settings.resolve_path(settings.audit.state_path).exists():
        # reading creates no file (on PostgreSQL the tables are made if missing, as every replica would)
        store = _pin_store(settings)
        try:
            pins, pending = store.pins(), store.pending()
        finally:
            store.close()
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "pins": [
                        {
                            "server": p.server,
                            "tool": p.tool,
                            "sha256": p.sha256,
                            "pinned_at": p.pinned_at,
                            "approved_by": p.approved_by,
                        }
                        for p in pins
                    ],
                    "pending": [c.to_json() for c in pending],
                },
                indent=2,
            )
        )
        return 1 if pending else 0
    color = sys.stdout.isatty()
    sep = settings.server.tool_separator
    print(f"{len(pins)} pinned tool definitions:")
    for p in pins:
        print(f"  {p.server}{sep}{p.tool:40s} {p.sha256[:12]}  {p.pinned_at}  ({p.approved_by})")
    if not pending:
        print("no changes awaiting approval")
        return 0
    print(f"\n{len(pending)} changed definitions awaiting approval (calls are denied with tool_changed):")
    for c in pending:
        print(
            f"\n  {c.server}{sep}{c.tool}: {c.approved.sha256[:12] if c.approved else '-'} -> {c.sha256[:12]} "
            f"(first seen {c.first_seen})"
        )
        for line in c.diff().splitlines():
            if color and line.startswith("+") and not line.startswith("+++"):
                line = f"\x1b[32m{line}\x1b[0m"
            elif color and line.startswith("-") and not line.startswith("---"):
                line = f"\x1b[31m{line}\x1b[0m"
            print(f"    {line}")
        print(f"  approve with: mcp-guard tools approve {c.server}{sep}{c.tool}{config_hint(settings)}")
    return 1


def _approve(args: argparse.Namespace) -> int:
    settings = load_config(args)
    upstream, sep, tool = args.tool.partition(settings.server.tool_separator)
    if not sep or upstream not in settings.upstreams:
        bare = [n for n, u in settings.upstreams.items() if not u.namespace]
        if not bare:
            raise ConfigError(
                f"{args.tool!r} is not '<upstream>{settings.server.tool_separator}<tool>' with a configured upstream",
                file=settings.source,
            )
        upstream, tool = bare[0], args.tool
    operator = os.environ.get("USER") or "operator"
    return anyio.run(_approve_audited, settings, upstream, tool, args, operator)


async def _approve_audited(
    settings: Settings, upstream: str, tool: str, args: argparse.Namespace, operator: str
) -> int:
    """Approve in the pin store and record who did it. The audit store is opened first, so an approval
    is never made that could not be recorded; the row is committed before the command reports success."""
    async with _audit_sink(settings) as sink:
        store = _pin_store(settings)
        try:
            previous = {p.tool: p.sha256 for p in store.pins() if p.server == upstream}.get(tool)
            pin = store.approve(upstream, tool, args.sha, by=f"cli:{operator}")
        except KeyError as e:
            print(f"mcp-guard: {e.args[0]}", file=sys.stderr)
            return 1
        finally:
            store.close()
        await sink.record(_approval_event(pin, previous, operator))
    print(f"approved {args.tool}: {pin.sha256[:12]} (the running proxy picks it up on the next listing or call)")
    return 0


def _approval_event(pin: Pin, previous: str | None, operator: str) -> AuditEvent:
    from mcp_guard.audit.events import pin_event

    # source "cli": the operator's act; the running proxy adds a row with source "proxy" when it applies it.
    return pin_event(
        EventKind.TOOL_PIN_APPROVED,
        pin.server,
        pin.tool,
        principal=operator,
        source="cli",
        sha256=pin.sha256,
        previous_sha256=previous,
        approved_by=pin.approved_by,
    )


def _audit_sink(settings: Settings) -> AbstractAsyncContextManager[AuditWriter]:
    """The audit sink of ``settings``, as an async context manager (the one place the CLI opens it)."""
    from mcp_guard.audit import open_sink

    return open_sink(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
