"""Subcommands of the proxy itself: ``run``, ``check``, ``tools``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import anyio
import structlog

from mcp_guard.cli import add_config_arg, load_config
from mcp_guard.logging import configure_logging
from mcp_guard.settings import Settings

log = structlog.get_logger("mcp_guard.cli")

__all__ = ["register"]


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="serve MCP clients (stdio or streamable HTTP) in front of the upstreams")
    add_config_arg(run)
    run.add_argument("--transport", choices=["stdio", "http"], help="override [server] transport")
    run.add_argument("--host", help="override [server] host (HTTP)")
    run.add_argument("--port", type=int, help="override [server] port (HTTP; 0 picks a free port)")
    run.add_argument("--principal", help="identity of a stdio client (overrides [server] principal)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate config and policies, start upstreams, list their tools")
    add_config_arg(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for upstreams")
    check.set_defaults(func=_check)

    tools = sub.add_parser("tools", help="the tools a principal may see")
    add_config_arg(tools)
    tools.add_argument("--principal", help="principal id (default: [server] principal)")
    tools.add_argument("--json", action="store_true", help="machine-readable output")
    tools.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for upstreams")
    tools.set_defaults(func=_tools)


def _run(args: argparse.Namespace) -> int:
    settings = load_config(args)
    configure_logging(args.log_level)
    transport = args.transport or settings.server.transport
    anyio.run(_serve, settings, transport, args)
    return 0


async def _serve(settings: Settings, transport: str, args: argparse.Namespace) -> None:
    from mcp_guard.app import Guard

    async with Guard.open(settings, principal=args.principal) as guard, anyio.create_task_group() as tg:
        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signal)
        # Serve once every upstream has started or failed its first start, so a client's first listing
        # is complete (a client that lists right after initialize would otherwise see a partial catalogue).
        problems = await guard.registry.wait_ready(_startup_wait(settings))
        for name, problem in problems.items():
            log.warning("upstream.unavailable_at_start", upstream=name, problem=problem)
        if transport == "http":
            await guard.serve_http(args.host, args.port)
        else:
            await guard.serve_stdio()
        tg.cancel_scope.cancel()


def _startup_wait(settings: Settings) -> float:
    return max((u.startup_timeout_s for u in settings.upstreams.values()), default=0.0) + 1.0


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text)


def _check(args: argparse.Namespace) -> int:
    settings = load_config(args)
    configure_logging("warning")
    return anyio.run(_check_async, settings, args)


async def _check_async(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_guard.app import Guard

    async with Guard.open(settings) as guard:
        problems = await guard.registry.wait_ready(args.timeout)
        report: dict[str, Any] = {"config": settings.source, "policy_revision": getattr(guard.engine, "revision", None),
                                  "upstreams": {}}
        lines = [f"config: {settings.source or '(built-in defaults)'}",
                 f"policy: {settings.policy.engine} engine, revision {report['policy_revision']}"]
        for name, conn in guard.registry.connections.items():
            tools = [t.name for t in conn.catalog.tools] if conn.state == "ready" else []
            report["upstreams"][name] = {"state": conn.state, "error": problems.get(name), "tools": tools}
            mark = "ok  " if conn.state == "ready" else "DOWN"
            detail = f"{len(tools)} tools: {', '.join(tools)}" if conn.state == "ready" else problems.get(name, "")
            lines.append(f"  [{mark}] {name}: {detail}")
        _print(report, args.json, "\n".join(lines))
        return 1 if problems else 0


def _tools(args: argparse.Namespace) -> int:
    settings = load_config(args)
    configure_logging("warning")
    return anyio.run(_tools_async, settings, args)


async def _tools_async(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_guard.app import Guard
    from mcp_guard.frontend.sessions import principal_for
    from mcp_guard.types import SessionInfo, ToolInfo, new_id

    principal = principal_for(settings, args.principal or settings.server.principal)
    async with Guard.open(settings, principal=principal.id) as guard:
        await guard.registry.wait_ready(args.timeout)
        cat = guard.registry.catalog
        entries = list(cat.tools.values())
        items = [(e.upstream, e.local.name, ToolInfo(definition_sha256=e.sha256,
                  annotations=e.local.annotations.model_dump(by_alias=True, exclude_none=True)
                  if e.local.annotations else {})) for e in entries]
        ok = await guard.visibility.visible("tools/list", principal, SessionInfo(id=new_id(), transport="memory"),
                                            items, cat.version)
        visible = [e.exposed.name for i, e in enumerate(entries) if i in ok]
        _print({"principal": principal.id, "roles": list(principal.roles), "tools": visible}, args.json,
               f"principal {principal.id} (roles: {', '.join(principal.roles) or 'none'}) sees "
               f"{len(visible)} of {len(entries)} tools:\n" + "\n".join(f"  {n}" for n in visible))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
