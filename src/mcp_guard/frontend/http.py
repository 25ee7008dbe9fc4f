"""The streamable-HTTP front: ``/mcp`` behind API-key auth and DNS-rebinding protection.

Host and Origin checks stay on whatever the bind address: the allowed values are the loopback names on
the configured port plus ``[server] allowed_hosts`` / ``allowed_origins``. Request bodies are capped at
``[server] max_request_bytes``; idle sessions close after ``session_idle_timeout_s``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings

from mcp_guard.frontend.auth import BearerAuth
from mcp_guard.types import AuditEvent, EventKind

if TYPE_CHECKING:
    from mcp_guard.app import Guard

__all__ = ["build_http_app", "http_served", "serve_http"]

log = structlog.get_logger("mcp_guard.frontend")


def _security(guard: Guard) -> TransportSecuritySettings:
    s = guard.settings.server
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *s.allowed_hosts]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *s.allowed_origins]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def build_http_app(guard: Guard) -> Any:
    s = guard.settings.server
    server = guard.server("http")
    app = server.streamable_http_app(
        transport_security=_security(guard),
        max_request_body_size=s.max_request_bytes,
        session_idle_timeout=s.session_idle_timeout_s,
        host=s.host,
    )
    digests = {pid: p.api_key_sha256 for pid, p in guard.settings.principals.items() if p.api_key_sha256}

    def rejected(reason: str, client: str | None) -> None:
        log.warning("http.unauthorized", reason=reason, client=client)
        guard.sink.record_nowait(
            AuditEvent(kind=EventKind.AUTH_REJECT, decision="deny", reasons=(reason,), details={"client": client})
        )

    return BearerAuth(app, digests, on_reject=rejected, required=s.require_auth)


@contextlib.asynccontextmanager
async def http_served(guard: Guard, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the HTTP front in the background while the block runs; yields its ``/mcp`` URL."""
    ready = anyio.Event()
    bound: list[int] = []

    def on_ready(p: int) -> None:
        bound.append(p)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_http(guard, host, port, ready=on_ready))
        with anyio.fail_after(30):
            await ready.wait()
        yield f"http://{host}:{bound[0]}/mcp"
        tg.cancel_scope.cancel()


async def serve_http(guard: Guard, host: str, port: int, *, ready: Callable[[int], None] | None = None) -> None:
    """Serve until cancelled. ``ready(port)`` is called once listening (port 0 picks a free one)."""
    app = build_http_app(guard)
    # http="h11" whatever else is installed: httptools keeps trailing spaces in header values, which breaks
    # the protocol's Mcp-Name header validation.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http="h11",
        lifespan="on",
        timeout_graceful_shutdown=2,
        loop="none",
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # the CLI owns signals

    done = anyio.Event()

    async def run() -> None:
        # Shielded: on cancellation we ask uvicorn to shut down gracefully (below) instead of tearing
        # its lifespan apart mid-flight.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve()
            finally:
                done.set()

    async def announce() -> None:
        while not server.started and not done.is_set():  # noqa: ASYNC110 - uvicorn offers no event for this
            await anyio.sleep(0.01)
        if not server.started:
            return
        bound = port
        for srv in server.servers:
            for sock in srv.sockets:
                bound = sock.getsockname()[1]
        log.info("http.listening", url=f"http://{host}:{bound}/mcp")
        if ready is not None:
            ready(bound)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(announce)
        try:
            await done.wait()
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await done.wait()
            server.force_exit = True
    if not server.started:
        raise OSError(f"the HTTP front could not listen on {host}:{port} (see the log above)")
