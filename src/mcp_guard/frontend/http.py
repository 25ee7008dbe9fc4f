"""The streamable-HTTP front: ``/mcp`` behind authentication (API keys, JWTs) and DNS-rebinding protection.

Host and Origin checks stay on whatever the bind address: the allowed values are the loopback names on
the configured port plus ``[server] allowed_hosts`` / ``allowed_origins``. Request bodies are capped at
``[server] max_request_bytes``; idle sessions close after ``session_idle_timeout_s``; a request head must
arrive within ``http_head_timeout_s``, at most ``http_max_pending_heads`` connections may be mid-head and at
most ``http_max_idle_connections`` may wait for their first byte or their next request
(:mod:`mcp_guard.frontend.slowloris`). Requests are parsed by httptools when it is installed (it is a
dependency; :mod:`mcp_guard.frontend.httptools_protocol` holds it to h11's parsing), else by h11. ``/healthz``,
``/readyz`` and ``/metrics`` are answered in front of all that (:mod:`mcp_guard.frontend.ops`).

The front is handed what it serves as an :class:`HttpFront` (the composition root builds one): it knows
nothing of the rest of mcp-guard. The listening socket can be bound before anything else starts
(:func:`bind_socket`), so a port in use is a start-up error that leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mcp_guard.errors import ConfigError
from mcp_guard.frontend.admin import AdminApi
from mcp_guard.frontend.auth import BearerAuth, KeyRing, OnReject
from mcp_guard.frontend.direct_call import SessionConnections
from mcp_guard.frontend.json_first import JsonFirstSessionManager
from mcp_guard.frontend.oauth import ResourceServer
from mcp_guard.frontend.ops import OpsSources, with_ops_routes
from mcp_guard.frontend.slowloris import HeadLimits, guarded_h11
from mcp_guard.frontend.worker_sessions import WorkerSessions
from mcp_guard.settings import ServerSettings

try:
    from mcp_guard.frontend.httptools_protocol import guarded_httptools
except ImportError:  # httptools missing (a platform without its wheel): h11 parses
    guarded_httptools = None  # type: ignore[assignment]

__all__ = ["HttpFront", "bind_socket", "build_http_app", "http_protocol", "http_served", "serve_http"]

log = structlog.get_logger("mcp_guard.frontend")

# Request heads (request line and headers) up to this size reach the app: an oversized Authorization header
# (a 1 MB "token") is then answered 401 and audited by the auth layer instead of being dropped unrecorded by
# the HTTP parser. Bigger heads are refused by the front's protocol (400, connection closed).
MAX_HEAD_BYTES = 2 * 1024 * 1024


def http_protocol(limits: HeadLimits) -> type[asyncio.Protocol]:
    """The one place the request parser is chosen: httptools (C, ~0.2–0.5 ms less CPU per call) when it is
    importable, h11 otherwise; either way with the slowloris guards and the head cap.

    (``bench/ablate.py h11`` puts h11 back here, to measure the difference.)
    """
    if guarded_httptools is None:
        return guarded_h11(limits)
    return guarded_httptools(limits, MAX_HEAD_BYTES)


@dataclass(frozen=True)
class HttpFront:
    """Everything the HTTP front needs: the MCP server it exposes, the ``[server]`` settings, the API-key
    digests it authenticates against (principal id → sha256 hex), who hears of a refused request, and the
    OAuth resource server of ``[auth]`` (None: API keys only)."""

    server: Server[Any]
    settings: ServerSettings
    digests: dict[str, str] | KeyRing
    on_reject: OnReject
    oauth: ResourceServer | None = None
    ops: OpsSources | None = None  # what /healthz, /readyz and /metrics read (none: not served)
    admin: AdminApi | None = None  # the /admin/api routes (none: not served)
    more_routes: tuple[
        Any, ...
    ] = ()  # further routes that authenticate themselves (the rest of the admin API, /console)
    worker: int | None = None  # `run --workers N`: this worker's index, named in its session ids (worker_sessions)
    # The live sessions' SDK connections: with them, a 2025-11-25 session's tools/call runs in its POST's own task
    # (mcp_guard.frontend.direct_call); None: every request takes the SDK's dispatcher.
    connections: SessionConnections | None = None


def _security(s: ServerSettings) -> TransportSecuritySettings:
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *s.allowed_hosts]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *s.allowed_origins]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def build_http_app(front: HttpFront) -> Any:
    s = front.settings
    manager = JsonFirstSessionManager(
        app=front.server,
        security_settings=_security(s),
        max_request_body_size=s.max_request_bytes,
        session_idle_timeout=s.session_idle_timeout_s,
        connections=front.connections,
    )
    # What the SDK's ``Server.streamable_http_app`` builds, with the JSON-first session transport
    # (mcp_guard.frontend.json_first): /mcp, the routes served beside it, the session manager's lifespan.
    mcp = StreamableHTTPASGIApp(manager)
    app = Starlette(routes=[Route("/mcp", endpoint=mcp), *_routes(front)], lifespan=lambda _app: manager.run())
    served: Any = _McpFirst(app, mcp)
    if front.worker is not None:
        served = WorkerSessions(served, front.worker)
    authed = BearerAuth(served, front.digests, on_reject=front.on_reject, required=s.require_auth, oauth=front.oauth)
    return with_ops_routes(authed, front.ops, _security(s).allowed_hosts)


class _McpFirst:
    """``/mcp`` straight to the session manager; everything else (the other routes, the lifespan) to Starlette.

    Every MCP request crossed Starlette's error and exception middleware and its router before reaching the one
    endpoint it can reach; on the hot path that was tens of µs per call for a match known in advance. An exception
    escaping the manager is answered 500 by uvicorn instead of Starlette's error middleware, as any ASGI app's is.
    (The ``/mcp`` route stays in the Starlette app too, so the two can never disagree on what is served.)
    """

    __slots__ = ("_app", "_mcp")

    def __init__(self, app: Any, mcp: Any) -> None:
        self._app = app
        self._mcp = mcp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mcp":
            await self._mcp(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def _routes(front: HttpFront) -> list[Any]:
    """Routes served beside ``/mcp``: the OAuth metadata (public), the admin API and the console (each
    authenticates itself)."""
    routes = [
        *(front.oauth.routes() if front.oauth else []),
        *(front.admin.routes() if front.admin else []),
        *front.more_routes,
    ]
    return routes


def bind_socket(
    host: str,
    port: int,
    *,
    source: str | None = None,
    keys: tuple[str, str] = ("server.host", "server.port"),
    reuse_port: bool = False,
) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 picks a free port).

    Raises :class:`ConfigError` naming the address, the config file ``source`` and the key the address
    came from (``keys`` = host key, port key) when it cannot listen there — a port in use, a host that
    is not an address of this machine.
    """
    host_key, port_key = keys
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}", file=source, key=host_key) from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # `run --workers N`: one socket per worker on one port, the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        key = port_key if e.errno in (errno.EADDRINUSE, errno.EACCES) else host_key
        what = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise ConfigError(f"cannot listen on {host}:{port}: {what}", file=source, key=key) from None
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def http_served(front: HttpFront, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the HTTP front in the background while the block runs; yields its ``/mcp`` URL."""
    ready = anyio.Event()
    bound: list[int] = []

    def on_ready(p: int) -> None:
        bound.append(p)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_http(front, host, port, ready=on_ready))
        with anyio.fail_after(30):
            await ready.wait()
        yield f"http://{host}:{bound[0]}/mcp"
        tg.cancel_scope.cancel()


async def serve_http(
    front: HttpFront,
    host: str,
    port: int,
    *,
    ready: Callable[[int], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until cancelled. ``ready(port)`` is called once listening (port 0 picks a free one).

    ``sock``, when given, is an already listening socket (see :func:`bind_socket`); it is served instead
    of binding ``host:port`` and closed when serving ends.
    """
    if sock is None:
        sock = bind_socket(host, port)
    app = build_http_app(front)
    limits = HeadLimits(
        front.settings.http_head_timeout_s,
        front.settings.http_max_pending_heads,
        front.settings.http_max_idle_connections,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=http_protocol(limits),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,  # (h11 only; the httptools protocol counts its own)
        lifespan="on",
        timeout_graceful_shutdown=2,
        loop="none",
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # the CLI owns signals

    done = anyio.Event()
    listening = sock

    async def run() -> None:
        # Shielded: on cancellation we ask uvicorn to shut down gracefully (below) instead of tearing
        # its lifespan apart mid-flight.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[listening])
            finally:
                done.set()

    async def announce() -> None:
        while not server.started and not done.is_set():  # noqa: ASYNC110 - uvicorn offers no event for this
            await anyio.sleep(0.01)
        if not server.started:
            return
        bound = int(listening.getsockname()[1])
        log.info("http.listening", url=f"http://{host}:{bound}/mcp")
        if ready is not None:
            ready(bound)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            tg.start_soon(announce)
            if front.oauth is not None:
                tg.start_soon(front.oauth.verifier.keys.warm)  # the IdP's keys now; unreachable is only logged
            try:
                await done.wait()
            finally:
                server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await done.wait()
                server.force_exit = True
                tg.cancel_scope.cancel()  # a key fetch still in flight is not waited for
    finally:
        listening.close()
    if not server.started:
        raise OSError(f"the HTTP front could not serve on {host}:{port} (see the log above)")
