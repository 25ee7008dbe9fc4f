"""The composition root: settings → policy engine, audit store, secrets, upstreams, pipeline, front.

:class:`Guard` owns the task group every upstream runs in. ``Guard.open`` builds the real parts from
settings; tests can hand in their own engine and sink (see :mod:`mcp_guard.testing`).

The pipeline every call runs through is built by :func:`mcp_guard.pipeline.build.build_pipeline`, which
documents the stage order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext

from mcp_guard.audit import events
from mcp_guard.frontend.handlers import Handlers
from mcp_guard.frontend.input_required import InputRequiredBridge
from mcp_guard.frontend.server import build_server, initialization_options
from mcp_guard.frontend.sessions import DownstreamSession, SessionTable
from mcp_guard.pins import PinStore
from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.pipeline.build import build_pipeline
from mcp_guard.pipeline.secret_source import NO_SECRETS, SecretSource
from mcp_guard.pipeline.visibility import Visibility
from mcp_guard.settings import Settings
from mcp_guard.types import AuditEvent, EventKind
from mcp_guard.upstream.registry import Registry

__all__ = ["Guard"]

log = structlog.get_logger("mcp_guard.app")


class Guard:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Evaluator,
        sink: EventSink,
        secrets: SecretSource = NO_SECRETS,
        principal: str | None = None,
        pins: PinStore | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sink = sink
        self.secrets = secrets
        self.stdio_principal = principal or settings.server.principal
        self.registry = Registry(
            settings,
            self,
            injections=secrets.injections_for,
            scrub=lambda s: secrets.scrubber.scrub_text(s),  # the scrubber is replaced as values resolve
            scrub_obj=lambda o: secrets.scrubber.scrub_obj(o),
            pins=pins,
        )
        self.visibility = Visibility(engine)
        self.sessions = SessionTable(settings, self._session_started, self._session_ended)
        self.chain = build_pipeline(engine=engine, sink=sink, registry=self.registry, secrets=secrets)
        # Upstream→client requests for 2026-07-28 clients (InputRequiredResult rounds).
        self.bridge = InputRequiredBridge()
        self._tg: TaskGroup | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, *, principal: str | None = None) -> AsyncIterator[Guard]:
        """Build the real engine, audit store and secrets from settings, start upstreams, and yield."""
        from mcp_guard.audit.store import AuditStore
        from mcp_guard.logging import add_processor
        from mcp_guard.pipeline.redact import scrub_processor
        from mcp_guard.policy import ReloadEvent, open_engine
        from mcp_guard.secrets.log_filter import install_log_filter
        from mcp_guard.secrets.manager import SecretManager

        secrets = SecretManager(settings)
        add_processor(scrub_processor(secrets))
        install_log_filter(lambda: secrets.scrubber)  # the SDK's, httpx's and uvicorn's stdlib log records
        async with AuditStore.open(
            settings.resolve_path(settings.audit.path),
            batch_max=settings.audit.batch_max,
            queue_max=settings.audit.queue_max,
        ) as store:

            async def on_reload(ev: ReloadEvent) -> None:
                # Hot reloads are part of the record: which revision decided from when, and rejected bundles.
                store.record_nowait(
                    AuditEvent(
                        kind=EventKind.POLICY_LOAD if ev.status == "loaded" else EventKind.POLICY_RELOAD_FAILED,
                        policy_revision=ev.active_revision,
                        details={"bundle": ev.bundle, "revision": ev.revision, "error": ev.error},
                    )
                )

            async with open_engine(settings, on_reload=on_reload) as engine:
                store.record_nowait(
                    AuditEvent(
                        kind=EventKind.CONFIG_LOAD,
                        details={
                            "source": settings.source,
                            "upstreams": sorted(settings.upstreams),
                            "principals": sorted(settings.principals),
                        },
                    )
                )
                store.record_nowait(
                    AuditEvent(
                        kind=EventKind.POLICY_LOAD,
                        policy_revision=engine.revision,
                        details={"engine": settings.policy.engine, "bundle": settings.policy.bundle},
                    )
                )
                pins = PinStore(settings.resolve_path(settings.audit.state_path))
                try:
                    guard = cls(settings, engine=engine, sink=store, secrets=secrets, principal=principal, pins=pins)
                    async with guard.running():
                        yield guard
                finally:
                    pins.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Guard]:
        """Start every upstream in its own task; stop them on exit."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.bridge.attach(tg)
            self.registry.start(tg)
            try:
                yield self
            finally:
                self.registry.stop()
                tg.cancel_scope.cancel()

    def handlers(self, transport: str) -> Handlers:
        return Handlers(
            settings=self.settings,
            registry=self.registry,
            chain=self.chain,
            visibility=self.visibility,
            sink=self.sink,
            sessions=self.sessions,
            transport=transport,
            principal_of=self._stdio_principal if transport != "http" else _http_principal,
            bridge=self.bridge,
        )

    def server(self, transport: str) -> Any:
        return build_server(self.handlers(transport))

    def _stdio_principal(self, _ctx: ServerRequestContext[Any, Any]) -> str:
        return self.stdio_principal

    # ------------------------------------------------------------------ serving
    async def serve_streams(self, read: Any, write: Any, transport: str = "stdio") -> None:
        server = self.server(transport)
        await server.run(read, write, initialization_options(server))

    async def serve_stdio(self) -> None:
        from mcp_guard.frontend.stdio import stdio_transport

        async with stdio_transport() as (read, write):
            await self.serve_streams(read, write, "stdio")

    def http_app(self) -> Any:
        from mcp_guard.frontend.http import build_http_app

        return build_http_app(self)

    async def serve_http(
        self, host: str | None = None, port: int | None = None, ready: Callable[[int], None] | None = None
    ) -> None:
        from mcp_guard.frontend.http import serve_http

        await serve_http(
            self, host or self.settings.server.host, self.settings.server.port if port is None else port, ready=ready
        )

    # ------------------------------------------------------------------ RegistryListener
    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        async def send(conn: Connection) -> None:
            if "tools" in kinds:
                await conn.send_tool_list_changed()
            if "resources" in kinds:
                await conn.send_resource_list_changed()
            if "prompts" in kinds:
                await conn.send_prompt_list_changed()

        await self.sessions.broadcast(send)

    async def upstream_event(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        self.sink.record_nowait(events.upstream_event(kind, upstream, details))

    async def pin_event(self, upstream: str, kind: EventKind, tool: str, details: dict[str, Any]) -> None:
        self.sink.record_nowait(events.pin_event(kind, upstream, tool, **details))

    async def resource_updated(self, upstream: str, uri: str) -> None:
        exposed = self.registry.expose_uri(upstream, uri)
        for sess in list(self.sessions.live.values()):
            if exposed in sess.subscriptions:
                await sess.notify(lambda c: c.send_resource_updated(exposed))

    # ------------------------------------------------------------------ sessions
    def _session_started(self, sess: DownstreamSession) -> None:
        log.info("session.start", session_id=sess.id, principal=sess.principal.id, client=sess.info.client_name)
        self.sink.record_nowait(
            AuditEvent(
                kind=EventKind.SESSION_START,
                session_id=sess.id,
                principal=sess.principal.id,
                details={
                    "transport": sess.info.transport,
                    "client": {"name": sess.info.client_name, "version": sess.info.client_version},
                    "roles": list(sess.principal.roles),
                },
            )
        )

    def _session_ended(self, sess: DownstreamSession) -> None:
        log.info("session.end", session_id=sess.id, principal=sess.principal.id, calls=sess.calls)
        self.sink.record_nowait(
            AuditEvent(
                kind=EventKind.SESSION_END,
                session_id=sess.id,
                principal=sess.principal.id,
                details={"calls": sess.calls},
            )
        )


def _http_principal(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    user = getattr(request, "scope", {}).get("user") if request is not None else None
    name = getattr(user, "username", None)
    return name if isinstance(name, str) and name else "anonymous"
