"""The composition root: settings → policy engine, audit store, secrets, upstreams, pipeline, front.

:class:`Guard` owns the task group every upstream runs in. ``Guard.open`` builds the real parts from
settings; tests can hand in their own engine and sink (see :mod:`mcp_guard.testing`).

This is the only composition root: no module imports it but the CLI commands that build a Guard
(``commands``, ``demo``). Every part below gets what it needs as arguments — the HTTP front an
:class:`~mcp_guard.frontend.http.HttpFront`, the handlers a principal resolver from
:mod:`mcp_guard.frontend.auth` and :meth:`Guard.visible_tools` — and ``tests/test_layers.py`` keeps
the import layers in order.

The pipeline every call runs through is built by :func:`mcp_guard.pipeline.build.build_pipeline`, which
documents the stage order.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import mcp_types as types
import structlog
from anyio.abc import TaskGroup
from mcp.server.connection import Connection

from mcp_guard.approvals import ApprovalStore, MemoryApprovals, open_approvals
from mcp_guard.audit import events
from mcp_guard.config_diff import ReloadPlan, plan_reload
from mcp_guard.errors import AuditError, ConfigError, SecretError, StateError
from mcp_guard.frontend.admin_metrics import MetricsHistory, read_sample
from mcp_guard.frontend.auth import (
    KeyRing,
    PrincipalResolver,
    Rejection,
    http_principal,
    key_digests,
    stdio_principal,
)
from mcp_guard.frontend.console_sessions import ConsoleSessions
from mcp_guard.frontend.handlers import Handlers
from mcp_guard.frontend.input_required import InputRequiredBridge
from mcp_guard.frontend.listing import TOOLS, visible
from mcp_guard.frontend.oauth import ResourceServer
from mcp_guard.frontend.server import build_server, initialization_options
from mcp_guard.frontend.sessions import DownstreamSession, SessionTable
from mcp_guard.frontend.subscriptions import Subscriptions
from mcp_guard.frontend.tasks import Tasks
from mcp_guard.pins import PinBackend, open_pins
from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.pipeline.build import build_pipeline
from mcp_guard.pipeline.observe import CALL_BUCKETS, CallMetrics
from mcp_guard.pipeline.secret_source import NO_SECRETS, SecretSource
from mcp_guard.pipeline.shadow import ShadowStats
from mcp_guard.pipeline.visibility import Visibility
from mcp_guard.settings import Settings, UpstreamSettings, load_settings
from mcp_guard.state import MemoryState, StateStore, open_state
from mcp_guard.state.console_sessions import ConsoleSessionStore, open_console_sessions
from mcp_guard.telemetry import INSTRUMENTATION, open_tracing
from mcp_guard.types import AuditEvent, EventKind, Principal, SessionInfo, ToolInfo, new_id
from mcp_guard.upstream.registry import Registry
from mcp_guard.upstream.token_exchange import TokenExchanger

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from mcp_guard.audit import AuditWriter
    from mcp_guard.frontend.admin import AdminApi, AdminAuth
    from mcp_guard.frontend.http import HttpFront
    from mcp_guard.frontend.ops import OpsSources
    from mcp_guard.policy import BundleWatcher
    from mcp_guard.policy.bundle import Bundle

__all__ = ["ConfigReload", "Guard"]

log = structlog.get_logger("mcp_guard.app")
_Store = TypeVar("_Store")


class Guard:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Evaluator,
        sink: EventSink,
        secrets: SecretSource = NO_SECRETS,
        principal: str | None = None,
        pins: PinBackend | None = None,
        state: StateStore | None = None,
        approvals: ApprovalStore | None = None,
        console_store: ConsoleSessionStore | None = None,
        tracer: Tracer | None = None,
        shadow: Evaluator | None = None,
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
            pooled=secrets.pooled_upstreams(),
            principal_injections=secrets.injections_for_principal,
            exchanger_for=self._exchanger,
        )
        self.visibility = Visibility(engine)
        self.sessions = SessionTable(settings, self._session_started, self._session_ended)
        # Rate-limit counters: the shared store from Guard.open; a Guard built directly (tests) counts in memory.
        self.state: StateStore = state if state is not None else MemoryState()
        # Calls counted by the pipeline's Observe stage; /metrics reads them (frontend/ops.py).
        self.metrics = CallMetrics()
        # Human approvals parked calls wait on: the shared store from Guard.open; in memory for a Guard built directly.
        self.approvals: ApprovalStore = approvals if approvals is not None else MemoryApprovals()
        # Traces on (mcp_guard.telemetry): the pipeline gets its tracing stage; off, it has none.
        # [policy] shadow_bundle: the candidate every decided call is also asked (never enforced), its counters.
        self.shadow_stats = ShadowStats()
        self.chain = build_pipeline(
            engine=engine,
            sink=sink,
            registry=self.registry,
            secrets=secrets,
            state=self.state,
            metrics=self.metrics,
            approvals=self.approvals,
            tracer=tracer,
            stage_metrics=settings.telemetry.stage_metrics,
            shadow=shadow,
            shadow_stats=self.shadow_stats,
        )
        # Upstream→client requests for 2026-07-28 clients (InputRequiredResult rounds).
        self.bridge = InputRequiredBridge()
        self.subscriptions = Subscriptions(self.registry, self.visibility)  # 2026-07-28 subscriptions/listen
        self.tasks = Tasks()  # the tasks extension (io.modelcontextprotocol/tasks), in memory
        # [auth]: the HTTP front as an OAuth resource server (one JWKS cache for every front of this guard).
        self.oauth = ResourceServer(settings.auth) if settings.auth is not None else None
        # Re-reads the policy bundle on request (SIGHUP); set by open() when the engine can take a new bundle.
        self.policy_watcher: BundleWatcher | None = None
        self._tg: TaskGroup | None = None
        # What a config reload replaces in place (docs/architecture.md §10): the API keys the HTTP front
        # checks, and the principal resolvers (roles, attributes of [principals.*]) built from settings.
        self.keys = KeyRing(key_digests(settings))
        self._resolvers: dict[str, PrincipalResolver] = {}
        self._reload_lock = anyio.Lock()
        self.reload_counts: dict[tuple[str, ...], int] = {}  # by status, for /metrics
        # Console logins: the shared session store from Guard.open (every replica); in memory for a Guard built
        # directly (frontend/console_sessions.py). Then the admin check.
        self.console_sessions = ConsoleSessions(settings.console.session_ttl_s, console_store)
        self._admin_auth: AdminAuth | None = None
        # The console's charts: /metrics' numbers sampled by this process every 2 s (frontend/admin_metrics.py).
        self.metrics_history = MetricsHistory(lambda: read_sample(self.ops_sources()), CALL_BUCKETS)

    def _exchanger(self, name: str, up: UpstreamSettings) -> TokenExchanger | None:
        """The token exchanger of an upstream with ``token_exchange`` (its client secret from the secrets provider,
        its default token endpoint the current ``[auth]`` issuer's)."""
        tx = up.token_exchange
        if tx is None:
            return None
        secrets = self.secrets

        async def client_secret() -> str:
            from mcp_guard.secrets.manager import SecretManager

            if not isinstance(secrets, SecretManager):
                raise SecretError(f"secret {tx.client_secret!r}: no secrets provider is configured")
            return (await secrets.resolve(tx.client_secret, upstream=name)).get_secret_value()

        auth = self.settings.auth
        return TokenExchanger(name, tx, issuer=auth.issuer if auth else None, client_secret=client_secret)

    # ------------------------------------------------------------------ construction
    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, *, principal: str | None = None) -> AsyncIterator[Guard]:
        """Build the real engine, audit store and secrets from settings, start upstreams, and yield.

        Start-up is ordered so that a configuration that cannot work creates nothing: the paths it names
        are checked (the bundle directory, both ``[audit]`` files), the policy engine is built (the
        bundle compiles, OPA answers), and only then are the audit and state databases opened. A failure
        raises :class:`ConfigError` or :class:`PolicyError` naming the file and key. Validating first
        rather than removing what a failed start made: cleaning up would mean deleting an audit file,
        which mcp-guard never does.
        """
        from mcp_guard import __version__
        from mcp_guard.logging import add_processor
        from mcp_guard.pipeline.redact import scrub_processor
        from mcp_guard.policy import ReloadEvent, open_engine
        from mcp_guard.policy.history import PinnedSource, activation_for, open_history, record_activation
        from mcp_guard.policy.shadow import load_shadow
        from mcp_guard.secrets.log_filter import install_log_filter
        from mcp_guard.secrets.manager import SecretManager

        secrets = SecretManager(settings)
        add_processor(scrub_processor(secrets))
        install_log_filter(lambda: secrets.scrubber)  # the SDK's, httpx's and uvicorn's stdlib log records
        sink: EventSink | None = None  # the audit store, once it is open (the engine is opened first)
        watchers: list[BundleWatcher] = []

        async def on_reload(ev: ReloadEvent) -> None:
            # Hot reloads are part of the record: which revision decided from when, and rejected bundles.
            if sink is not None:
                sink.record_nowait(_policy_reload_event(ev))

        # Bundle history and rollback (policy/history.py): a pinned revision in the store wins over the bundle
        # directory until `policy rollback --clear`; every bundle that becomes active is kept.
        history = open_history(settings)
        pinned = PinnedSource(history)

        async def on_activate(bundle: Bundle) -> None:
            await record_activation(history, bundle, activation_for(bundle, pinned, "reload", settings.policy.bundle))

        async with contextlib.AsyncExitStack() as stack:
            stack.callback(pinned.close)
            stack.callback(history.close)
            _check_paths(settings)
            tracing = stack.enter_context(open_tracing(settings))  # None unless traces are on
            engine = await stack.enter_async_context(
                open_engine(
                    settings, on_reload=on_reload, on_watcher=watchers.append, source=pinned, on_activate=on_activate
                )
            )
            shadow = load_shadow(settings)  # before any database opens: a broken candidate creates nothing
            store = await stack.enter_async_context(_open_audit(settings))
            sink = store
            store.record_nowait(
                events.config_event(
                    EventKind.CONFIG_LOAD,
                    settings.source,
                    upstreams=sorted(settings.upstreams),
                    principals=sorted(settings.principals),
                )
            )
            store.record_nowait(
                events.policy_load(engine.revision, engine=settings.policy.engine, bundle=settings.policy.bundle)
            )
            pins = _open_pins(settings)
            stack.callback(pins.close)
            state = await stack.enter_async_context(_open_state(settings))
            approvals = await stack.enter_async_context(_open_approvals(settings))
            console_store = await stack.enter_async_context(_open_console_sessions(settings))
            # The start is kept in the bundle history now that the state store opened (a failed start creates
            # nothing); no bundle: an OPA whose bundle mcp-guard does not hold.
            started: Bundle | None = getattr(engine, "bundle", None)
            if started is not None:
                await record_activation(
                    history, started, activation_for(started, pinned, "start", settings.policy.bundle)
                )
            guard = cls(
                settings,
                engine=engine,
                sink=store,
                secrets=secrets,
                principal=principal,
                pins=pins,
                state=state,
                approvals=approvals,
                console_store=console_store,
                tracer=tracing.get_tracer(INSTRUMENTATION, __version__) if tracing is not None else None,
                shadow=shadow,
            )
            guard.policy_watcher = watchers[0] if watchers else None
            async with guard.running():
                yield guard

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Guard]:
        """Start every upstream in its own task; stop them on exit."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.bridge.attach(tg)
            self.tasks.attach(tg)
            self.registry.start(tg)
            tg.start_soon(self.metrics_history.run, name="console-metrics")
            try:
                yield self
            finally:
                self.subscriptions.close()  # open listen streams end with their final result
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
            principal_of=lambda ctx: self._principal_resolver(transport)(ctx),
            bridge=self.bridge,
            subscriptions=self.subscriptions,
            tasks=self.tasks,
        )

    def _principal_resolver(self, transport: str) -> PrincipalResolver:
        """The resolver of ``transport`` for the principals configured now (rebuilt after a reload)."""
        resolver = self._resolvers.get(transport)
        if resolver is None:
            resolver = self._resolvers[transport] = (
                http_principal(self.settings)
                if transport == "http"
                else stdio_principal(self.settings, self.stdio_principal)
            )
        return resolver

    def server(self, transport: str) -> Any:
        return build_server(self.handlers(transport))

    async def visible_tools(self, principal: Principal, session: SessionInfo | None = None) -> list[types.Tool]:
        """The tools ``principal`` may see, in catalogue order: exactly what its ``tools/list`` answers (the
        same :func:`~mcp_guard.frontend.listing.visible`), for ``mcp-guard tools``. ``session`` is the client
        session the policy is told about (none for the CLI)."""
        session = session or SessionInfo(id=new_id(), transport="memory")
        return await visible(TOOLS, self.registry, self.visibility, principal, session)

    # ------------------------------------------------------------------ reload (SIGHUP)
    async def reload(self) -> ConfigReload:
        """Reload while serving (SIGHUP, ``mcp-guard reload``), and say what waits for a restart.

        The config file is re-read whole. Its ``[upstreams]``, ``[principals]`` and ``[secrets]`` are
        applied (:meth:`_apply_config`); any other changed key is reported as needing a restart. A file
        that does not parse or validate, or names a secret that cannot be resolved, is rejected whole:
        nothing changes. The policy bundle is re-read as well (tests run, a bad bundle is refused and
        the old one stays; the watcher audits ``policy.load`` / ``policy.reload_failed``). Logged and
        audited as ``config.reload`` — names of what changed, never a value.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> ConfigReload:
        result = ConfigReload(source=self.settings.source)
        if self.settings.source and self.settings.base_dir is not None:
            try:
                result.plan = await self._apply_config(load_settings(self.settings.source))
            except ConfigError as e:
                result.error = str(e)
            else:
                result.changed = list(result.plan.restart_required)
        if self.policy_watcher is not None:
            ev = await self.policy_watcher.check()
            result.policy = "unchanged" if ev is None else ev.status
            result.policy_revision = self.policy_watcher.active_revision
        else:
            result.policy = "not reloadable"
            result.policy_revision = getattr(self.engine, "revision", None)
        self.reload_counts[(result.status,)] = self.reload_counts.get((result.status,), 0) + 1
        fields = result.as_details()
        (log.info if result.status == "ok" else log.warning)("config.reload", source=result.source, **fields)
        self.sink.record_nowait(events.config_event(EventKind.CONFIG_RELOAD, result.source, **fields))
        return result

    async def _apply_config(self, new: Settings) -> ReloadPlan:
        """Check ``new`` completely, then apply its reloadable tables; raise :class:`ConfigError` having
        changed nothing if it cannot be applied.

        Secrets first: a candidate :class:`~mcp_guard.secrets.manager.SecretManager` resolves every secret
        an enabled upstream injects (one that fails rejects the reload); a secret whose value rotated
        restarts the upstreams that inject it. Then the API keys and principal resolvers are swapped, and
        the registry stops the removed and changed upstreams and starts the added and changed ones —
        the connections of unchanged upstreams, and the calls in flight on them, are not touched.
        """
        from mcp_guard.secrets.manager import SecretManager

        plan = plan_reload(self.settings, new)
        manager = self.secrets if isinstance(self.secrets, SecretManager) else None
        candidate: SecretManager | None = None
        if manager is not None:
            candidate = manager.reconfigured(plan.effective)
            problems = await candidate.resolve_used()
            if problems:
                name = next(iter(problems))
                raise ConfigError(
                    f"secret {name!r} cannot be resolved: {problems[name]}", file=new.source, key=f"secrets.{name}"
                )
            plan = plan_reload(self.settings, new, rotated=manager.rotated(candidate))
        elif plan.secrets_changed or any(u.inject_env or u.inject_headers for u in new.upstreams.values()):
            raise ConfigError("this guard was built without a secret manager: secrets need a restart", file=new.source)
        if manager is not None and candidate is not None:
            manager.adopt(candidate)
        self.settings = plan.effective
        self.keys.replace(key_digests(plan.effective))
        self._resolvers.clear()
        await self.registry.reconfigure(
            plan.effective, stop=plan.stopped, start=plan.started, pooled=self.secrets.pooled_upstreams()
        )
        return plan

    # ------------------------------------------------------------------ serving
    async def serve_streams(self, read: Any, write: Any, transport: str = "stdio") -> None:
        """Serve one client over a stream pair: the SDK's ``Server.run`` (its lifespan, then its era loop), with a
        ``tools/call`` started as it is read (:mod:`mcp_guard.frontend.stdio_direct`)."""
        from mcp.server.runner import serve_dual_era_loop

        from mcp_guard.frontend.stdio_direct import DirectReads, DirectWrites, StdioDirect

        server = self.server(transport)
        writes = DirectWrites(write)
        async with server.lifespan(server) as lifespan_state:
            writes.direct = direct = StdioDirect(server, self.sessions, writes, lifespan_state)
            await serve_dual_era_loop(
                server,
                DirectReads(read, direct),
                writes,
                lifespan_state=lifespan_state,
                init_options=initialization_options(server),
            )

    async def serve_stdio(self) -> None:
        from mcp_guard.frontend.stdio import stdio_transport

        async with stdio_transport() as (read, write):
            await self.serve_streams(read, write, "stdio")

    def http_front(self) -> HttpFront:
        """What the HTTP front serves: the MCP server for HTTP clients, ``[server]``, the API-key digests,
        a refused request logged and audited (``auth.reject``), and ``[auth]``'s resource server."""
        from mcp_guard.frontend.http import HttpFront

        return HttpFront(
            server=self.server("http"),
            settings=self.settings.server,
            digests=self.keys,
            on_reject=self._auth_rejected,
            oauth=self.oauth,
            ops=self.ops_sources(),
            admin=self.admin_api(),
            more_routes=tuple(self.console_routes()),
            connections=self.sessions,
        )

    def admin_auth(self) -> AdminAuth:
        """The admin check: the same credentials as the MCP endpoint (keys, ``[auth]`` tokens; always required),
        or a console login's session cookie; then the ``[console]`` roles."""
        from mcp_guard.frontend.admin import AdminAuth
        from mcp_guard.frontend.auth import BearerAuth

        if self._admin_auth is None:
            authn = BearerAuth(_no_app, self.keys, on_reject=self._auth_rejected, oauth=self.oauth)
            self._admin_auth = AdminAuth(
                authenticate=authn.authenticate,
                settings=self.settings,
                on_reject=self._auth_rejected,
                sessions=self.console_sessions,
            )
        return self._admin_auth

    def admin_api(self) -> AdminApi:
        """The ``/admin/api`` approvals routes, authenticated like ``/mcp`` (``[console]`` roles)."""
        from mcp_guard.frontend.admin import AdminApi

        return AdminApi(auth=self.admin_auth(), approvals=self.approvals, sink=self.sink)

    def console_routes(self) -> list[Any]:
        """The rest of ``/admin/api`` (events, chain, pins, health) and, unless ``[console] enabled = false``, the
        console pages under ``/console``."""
        from mcp_guard.audit import open_reader
        from mcp_guard.frontend.admin_access import AdminAccess
        from mcp_guard.frontend.admin_events import AdminEvents
        from mcp_guard.frontend.admin_health import AdminHealth
        from mcp_guard.frontend.admin_metrics import AdminMetrics
        from mcp_guard.frontend.admin_pins import AdminPins
        from mcp_guard.frontend.console import ConsolePages
        from mcp_guard.frontend.ops import AuditHealth

        auth, sink, settings = self.admin_auth(), self.sink, self.settings
        events = AdminEvents(
            auth=auth,
            open_reader=lambda: open_reader(settings),
            committed=lambda: sink.stats.committed if isinstance(sink, AuditHealth) else 0,
            max_streams=settings.console.max_event_streams,
        )
        health = AdminHealth(
            auth=auth,
            ops=self.ops_sources(),
            session_principals=lambda: [s.principal.id for s in self.sessions.live.values()],
            event_streams=lambda: events.open_streams,
            conns=lambda: list(self.registry.connections.values()),
            pools=lambda: list(self.registry.pools.values()),
        )
        pins = AdminPins(auth=auth, pins=self.registry.pins, sink=sink, recheck=self.registry.recheck_pins)
        access = AdminAccess(
            auth=auth,
            settings=settings,
            engine=self.engine,
            visible=lambda principal: self.visible_tools(principal),
            find_tool=self._tool_for_policy,
        )
        metrics = AdminMetrics(auth=auth, history=self.metrics_history)
        routes = [*events.routes(), *pins.routes(), *health.routes(), *access.routes(), *metrics.routes()]
        if settings.console.enabled:
            routes += ConsolePages(
                auth=auth, sessions=self.console_sessions, record=sink.record_nowait, state=self.state
            ).routes()
        return routes

    def _tool_for_policy(self, exposed: str) -> tuple[str, str, ToolInfo] | None:
        """An exposed tool name as the policy sees it: (upstream, upstream-local name, tool_info)."""
        entry = self.registry.find_tool(exposed)
        return None if entry is None else (entry.upstream, entry.local.name, entry.tool_info())

    def ops_sources(self) -> OpsSources:
        """What ``/healthz``, ``/readyz`` and ``/metrics`` read: this Guard's parts, at request time."""
        from mcp_guard.frontend.ops import OpsSources

        return OpsSources(
            calls=self.metrics,
            engine=self.engine,
            engine_name=self.settings.policy.engine,
            audit=self.sink,
            audit_backend=self.settings.audit.backend,
            upstreams=lambda: self.registry.connections.values(),
            session_transports=lambda: [s.info.transport for s in self.sessions.live.values()],
            scrub=lambda text: self.secrets.scrubber.scrub_text(text),
            metrics=self.settings.server.metrics,
            reloads=self.reload_counts,
            approvals_pending=lambda: self.metrics.approvals_waiting,
            shadow=self.shadow_stats,
        )

    def http_app(self) -> Any:
        from mcp_guard.frontend.http import build_http_app

        return build_http_app(self.http_front())

    def http_served(self, host: str = "127.0.0.1", port: int = 0) -> contextlib.AbstractAsyncContextManager[str]:
        """Serve the HTTP front in the background while the block runs; yields its ``/mcp`` URL."""
        from mcp_guard.frontend.http import http_served

        return http_served(self.http_front(), host, port)

    async def serve_http(
        self,
        host: str | None = None,
        port: int | None = None,
        ready: Callable[[int], None] | None = None,
        sock: socket.socket | None = None,
        worker: int | None = None,
    ) -> None:
        """Serve HTTP until cancelled, on ``sock`` if given (bound before start-up), else on host:port.
        ``worker``: this process is worker ``worker`` of ``run --workers N`` (its session ids name it)."""
        from dataclasses import replace

        from mcp_guard.frontend.http import serve_http
        from mcp_guard.frontend.worker_sessions import session_prefix

        front = self.http_front()
        if worker is not None:
            self.sessions.id_prefix = session_prefix(worker)  # audited as the client's Mcp-Session-Id reads
        await serve_http(
            front if worker is None else replace(front, worker=worker),
            host or self.settings.server.host,
            self.settings.server.port if port is None else port,
            ready=ready,
            sock=sock,
        )

    def _auth_rejected(self, rejection: Rejection, client: str | None) -> None:
        details = rejection.details()
        log.warning("http.unauthorized", reason=str(rejection.reason), client=client, **details)
        self.sink.record_nowait(events.auth_reject(rejection.reason, client, **details))

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
        await self.subscriptions.catalog_changed(upstream, kinds)

    async def upstream_event(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        self.sink.record_nowait(events.upstream_event(kind, upstream, details))

    async def pin_event(self, upstream: str, kind: EventKind, tool: str, details: dict[str, Any]) -> None:
        # The proxy noticed it (first use, a change, or an approval made with `mcp-guard tools approve`,
        # which recorded its own row with source "cli"): source "proxy" tells the two apart.
        self.sink.record_nowait(events.pin_event(kind, upstream, tool, source="proxy", **details))

    async def resource_updated(self, upstream: str, uri: str) -> None:
        exposed = self.registry.expose_uri(upstream, uri)
        for sess in list(self.sessions.live.values()):
            if exposed in sess.subscriptions:
                await sess.notify(lambda c: c.send_resource_updated(exposed))
        await self.subscriptions.resource_updated(exposed)

    # ------------------------------------------------------------------ sessions
    def _session_started(self, sess: DownstreamSession) -> None:
        log.info("session.start", session_id=sess.id, principal=sess.principal.id, client=sess.info.client_name)
        self.sink.record_nowait(events.session_start(sess.info, sess.principal))

    def _session_ended(self, sess: DownstreamSession) -> None:
        log.info("session.end", session_id=sess.id, principal=sess.principal.id, calls=sess.calls)
        self.sink.record_nowait(events.session_end(sess.info, sess.principal, sess.calls))


@dataclass
class ConfigReload:
    """What a reload (SIGHUP) did: the policy outcome, and the config changes that wait for a restart."""

    source: str | None
    changed: list[str] = field(default_factory=list)  # dotted keys that changed but wait for a restart
    policy: str = "unchanged"  # "loaded" | "rejected" | "unchanged" | "not reloadable"
    policy_revision: str | None = None  # the revision in force afterwards
    error: str | None = None  # the config file could not be read or is invalid (nothing changed)
    plan: ReloadPlan | None = None  # what was applied (None: rejected, or no config file)

    @property
    def status(self) -> str:
        """``rejected`` (the config file is unusable), ``restart_required`` (it changed), else ``ok``."""
        if self.error is not None:
            return "rejected"
        return "restart_required" if self.changed else "ok"

    def as_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "status": self.status,
            "pid": os.getpid(),  # which process reloaded (`mcp-guard reload` waits for its own row)
            "policy": self.policy,
            "policy_revision": self.policy_revision,
            **(self.plan.details() if self.plan is not None else {}),
            "restart_required": self.changed,
        }
        if self.error is not None:
            details["error"] = self.error
        return details


def _policy_reload_event(ev: Any) -> AuditEvent:
    """The row for one hot-reload attempt (``ev`` is a policy ReloadEvent): loaded, or refused."""
    if ev.status == "loaded":
        return events.policy_load(ev.active_revision, bundle=ev.bundle, reload=True)
    return events.policy_reload_failed(ev.active_revision, bundle=ev.bundle, revision=ev.revision, error=ev.error)


def _check_paths(settings: Settings) -> None:
    """The paths the config names are usable, checked before anything is created: the policy bundle is a
    directory (when mcp-guard loads it), the ``[audit]`` files (the log when it is SQLite, the state file)
    can be opened for writing."""
    p = settings.policy
    if p.engine == "embedded" or p.push_bundle:
        bundle = settings.resolve_path(p.bundle)
        if not bundle.is_dir():
            what = "is not a directory" if bundle.exists() else "no such directory"
            raise ConfigError(f"policy bundle {bundle}: {what}", file=settings.source, key="policy.bundle")
    files = [("audit.state_path", settings.audit.state_path)]
    if settings.audit.backend == "sqlite":
        files.insert(0, ("audit.path", settings.audit.path))
    for key, value in files:
        path = settings.resolve_path(value)
        problem = _unwritable(path)
        if problem is not None:
            raise ConfigError(f"{path}: {problem}", file=settings.source, key=key)


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be opened (created if missing, with its directories) for writing, or None."""
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return None if os.access(path, os.R_OK | os.W_OK) else "is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


@contextlib.asynccontextmanager
async def _open_audit(settings: Settings) -> AsyncIterator[AuditWriter]:
    """The audit sink ``[audit]`` names; a database that cannot be opened as one is a config error."""
    from mcp_guard.audit import open_sink

    async with contextlib.AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(open_sink(settings))
        except AuditError as e:
            key = "audit.dsn" if settings.audit.backend == "postgres" else "audit.path"
            raise ConfigError(str(e), file=settings.source, key=key) from None
        yield store


def _open_state(settings: Settings) -> contextlib.AbstractAsyncContextManager[StateStore]:
    """The shared state store (rate-limit counters, flows)."""
    return _open_shared(open_state(settings), settings, "state store")


def _open_approvals(settings: Settings) -> contextlib.AbstractAsyncContextManager[ApprovalStore]:
    """The approval store."""
    return _open_shared(open_approvals(settings), settings, "approval store")


def _open_console_sessions(settings: Settings) -> contextlib.AbstractAsyncContextManager[ConsoleSessionStore]:
    """The console session store."""
    return _open_shared(open_console_sessions(settings), settings, "console session store")


@contextlib.asynccontextmanager
async def _open_shared(
    opener: contextlib.AbstractAsyncContextManager[_Store], settings: Settings, what: str
) -> AsyncIterator[_Store]:
    """A store in ``[audit] state_path`` or ``dsn``; one that cannot be opened is a config error naming that key."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(opener)
        except StateError as e:
            key = "audit.dsn" if settings.audit.backend == "postgres" else "audit.state_path"
            raise ConfigError(f"cannot open the {what}: {e}", file=settings.source, key=key) from None
        yield store


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """The admin API uses BearerAuth only to authenticate; nothing is ever served through it."""
    raise AssertionError("not served")


def _open_pins(settings: Settings) -> PinBackend:
    """The pin store ``[audit]`` names (mcp_guard.pins.open_pins); one that cannot be opened is a config error."""
    import psycopg

    try:
        return open_pins(settings)
    except (sqlite3.Error, OSError) as e:
        path = settings.resolve_path(settings.audit.state_path)
        raise ConfigError(
            f"{path}: cannot open the state database: {e}", file=settings.source, key="audit.state_path"
        ) from None
    except psycopg.Error as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"cannot open the pin store: {why}", file=settings.source, key="audit.dsn") from None
