"""The upstream registry: every upstream connection, the merged catalogue, and routing.

The registry owns one :class:`~mcp_guard.upstream.connection.UpstreamConnection` per enabled upstream
and is the ``UpstreamHooks`` they report to. It keeps a merged, namespaced snapshot of what all
upstreams offer (:class:`MergedCatalog`, rebuilt whenever one upstream's catalogue changes), routes an
exposed name back to its upstream, and routes upstream→client traffic (sampling, elicitation, roots,
log messages, progress, resource updates) to the :class:`~mcp_guard.channel.ClientChannel` of the call
that caused it.

What an upstream wrote never leaves the registry unscrubbed (injected secret values, and fragments of
them): its catalogue when merged (:meth:`Registry._rebuild`), its traffic towards clients in
:meth:`Registry.to_client`, and its life-cycle details (handshake data, start-up errors) in
:meth:`Registry.state_changed` — the one place they become ``upstream.*`` audit events — and
:meth:`Registry.wait_ready` (what the CLI prints).

Correlation of upstream→client requests
    A stdio upstream's ``sampling/createMessage`` carries nothing that ties it to one of our requests,
    so the registry tracks which client channels have calls in flight to each upstream. A request
    from an upstream goes to the session with calls in flight there (the most recent call's request
    stream). If calls from *several* sessions are in flight to that upstream at once, the request is
    refused with an error rather than guessed: sending one user's sampling prompt to another user's
    client would leak data. No session in flight → refused too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, assert_never, overload

import anyio
import httpx2
import mcp_types as types
import structlog
from anyio.abc import TaskGroup

from mcp_guard.channel import (
    Ask,
    ClientChannel,
    LogMessage,
    Notice,
    Progress,
    ResourceUpdated,
    log_locally,
    scrub_message,
)
from mcp_guard.errors import UpstreamError
from mcp_guard.pins import PinBackend, scan_tool
from mcp_guard.settings import Settings, UpstreamSettings
from mcp_guard.types import EventKind, ToolInfo
from mcp_guard.upstream.connection import Injections, UpstreamConnection
from mcp_guard.upstream.era import Era, EraMemory
from mcp_guard.upstream.naming import Namer
from mcp_guard.upstream.pool import UpstreamPool
from mcp_guard.upstream.token_exchange import TokenExchanger

__all__ = [
    "ExposedPrompt",
    "ExposedTool",
    "MergedCatalog",
    "PinEvent",
    "Registry",
    "RegistryListener",
    "tool_sha256",
]

log = structlog.get_logger("mcp_guard.upstream")


def tool_sha256(tool: types.Tool) -> str:
    """sha256 of a tool's definition (name, description, schemas, annotations…) as canonical JSON."""
    raw = json.dumps(_definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()


class RegistryListener(Protocol):
    """What the rest of mcp-guard is told by the registry."""

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None: ...
    async def upstream_event(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        """An upstream's life cycle: ``upstream.start`` / ``restart`` / ``crash`` / ``start_failed``."""
        ...

    async def pin_event(self, upstream: str, kind: EventKind, tool: str, details: dict[str, Any]) -> None:
        """``tool.pinned`` / ``tool.pin_changed`` / ``tool.pin_approved`` of one tool (upstream-local name)."""
        ...

    async def resource_updated(self, upstream: str, uri: str) -> None: ...


class PinEvent(NamedTuple):
    upstream: str
    kind: EventKind
    tool: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExposedTool:
    upstream: str
    local: types.Tool  # as the upstream lists it
    exposed: types.Tool  # namespaced copy the client sees
    sha256: str
    pinned: bool = False  # its definition is the approved one (always False with pinning = "off")
    changed: bool = False  # its definition differs from the approved one
    suspicious: tuple[str, ...] = ()  # invisible/control characters found in the definition
    hidden: bool = False  # changed under pinning = "enforce": not listed, calls denied (tool_changed)
    new: bool = False  # never approved: appeared after its upstream's first catalogue (new_tools = "review")
    # tool_info(), made on first use: every field it reads is this frozen entry's own (a changed pin or definition
    # is a new entry), so every call of the tool gets the same value — and the same object, which the audit's
    # replay-input text is remembered by (mcp_guard.audit.events.input_text).
    _info: ToolInfo | None = field(default=None, init=False, repr=False, compare=False)

    def tool_info(self) -> ToolInfo:
        """What the policy is told about this tool (one value per entry)."""
        info = self._info
        if info is None:
            annotations: dict[str, Any] = (
                self.local.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
                if self.local.annotations is not None
                else {}
            )
            info = ToolInfo(
                annotations=annotations,
                definition_sha256=self.sha256,
                pinned=self.pinned,
                suspicious=self.suspicious,
                changed=self.changed,
            )
            object.__setattr__(self, "_info", info)
        return info


@dataclass(frozen=True, slots=True)
class ExposedPrompt:
    upstream: str
    local: types.Prompt
    exposed: types.Prompt


@dataclass
class MergedCatalog:
    """A namespaced snapshot of every ready upstream's catalogue (rebuilt on change, read lock-free)."""

    version: int = 0
    tools: dict[str, ExposedTool] = field(default_factory=dict)
    resources: list[tuple[str, types.Resource]] = field(default_factory=list)
    templates: list[tuple[str, types.ResourceTemplate]] = field(default_factory=list)
    prompts: dict[str, ExposedPrompt] = field(default_factory=dict)
    has_changed_tools: bool = False


_STOP_WAIT_S = 10.0  # longest wait for a stopped upstream's task (its child is killed within the SDK's grace)


class _Run:
    """One connection's task: its cancel scope (to stop it alone) and when it ended."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()

    async def run(self) -> None:
        try:
            with self.scope:
                await self.conn.run()
        finally:
            self.done.set()


@dataclass
class _InFlight:
    channel: ClientChannel  # the most recent call's
    count: int = 0


class _Flight:
    """:meth:`Registry.in_flight`'s block: the call counted on its channel's record while it runs. A class, not a
    generator-based context manager: it is entered on every forwarded call (the generator, its wrapper and their
    ``next``/``throw`` were ~21 K of a call's ~2.6 M instructions, with :class:`_Shared`; bench_instructions.py)."""

    __slots__ = ("_calls", "_channel", "_rec")

    def __init__(self, calls: dict[str, _InFlight], channel: ClientChannel | None) -> None:
        self._calls = calls  # the upstream's records, by channel id
        self._channel = channel
        self._rec: _InFlight | None = None

    def __enter__(self) -> None:
        channel = self._channel
        if channel is None:
            return
        rec = self._calls.get(channel.channel_id)
        if rec is None:
            rec = self._calls[channel.channel_id] = _InFlight(channel)
        else:
            rec.channel = channel  # the most recent call's request stream
        rec.count += 1
        self._rec = rec

    def __exit__(self, *exc: object) -> None:
        rec, channel = self._rec, self._channel
        if rec is None or channel is None:
            return
        rec.count -= 1
        if rec.count == 0:
            self._calls.pop(channel.channel_id, None)


class _Shared:
    """:meth:`Registry.lease` of a shared (not pooled) upstream: its one connection, nothing to give back."""

    __slots__ = ("_conn",)

    def __init__(self, conn: UpstreamConnection | None) -> None:
        self._conn = conn

    async def __aenter__(self) -> UpstreamConnection | None:
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        return None


class Registry:
    def __init__(
        self,
        settings: Settings,
        listener: RegistryListener,
        *,
        injections: Callable[[str], Awaitable[Injections]] | None = None,
        scrub: Callable[[str], str] = lambda s: s,
        scrub_obj: Callable[[Any], Any] = lambda o: o,
        pins: PinBackend | None = None,
        pooled: Collection[str] = (),
        principal_injections: Callable[[str, str], Awaitable[Injections]] | None = None,
        exchanger_for: Callable[[str, UpstreamSettings], TokenExchanger | None] | None = None,
    ) -> None:
        self.settings = settings
        # Upstreams with token_exchange: their exchanger (its auth hook sets each request's Authorization).
        self._exchanger_for = exchanger_for
        self.exchangers: dict[str, TokenExchanger] = {}
        self.namer = Namer(settings.server.tool_separator)
        self._listener = listener
        self.pins = pins
        # Everything an upstream sends that does not pass through the pipeline (listings, upstream→client
        # traffic, life-cycle details) is scrubbed of injected secret values with this.
        self._scrub_obj = scrub_obj
        self.catalog = MergedCatalog()
        # The era each ``auto`` upstream was found to speak, so a restart does not probe it again; cleared by a
        # config reload (mcp_guard.upstream.era.EraMemory).
        self.eras = EraMemory()
        self.connections: dict[str, UpstreamConnection] = {}
        # The one upstream exposed without a namespace, if any (``namespace = false``).
        self.bare: str | None = next((n for n, u in settings.upstreams.items() if u.enabled and not u.namespace), None)
        # Upstreams whose first catalogue has been pinned: a tool they list later is new (``new_tools``).
        self._baselined: set[str] = set()
        # upstream -> session id -> in-flight record (insertion order = recency of first call)
        self._inflight: dict[str, dict[str, _InFlight]] = {}
        self._injections = injections
        self._principal_injections = principal_injections
        self._scrub_text = scrub
        # What runs each connection's task, so one can be stopped while the others serve (a config reload).
        self._tg: TaskGroup | None = None
        self._runs: dict[str, _Run] = {}
        # Upstreams with a per-principal secret: one connection per principal (mcp_guard.upstream.pool).
        self.pools: dict[str, UpstreamPool] = {}
        for name, up in settings.upstreams.items():
            if not up.enabled:
                continue
            if name in pooled and principal_injections is not None:
                self.pools[name] = self._pool(name, up, settings, principal_injections)
            else:
                self.connections[name] = self._connection(name, up, settings)

    def _connection(self, name: str, up: UpstreamSettings, settings: Settings) -> UpstreamConnection:
        cwd = str(settings.resolve_path(up.cwd)) if up.cwd else settings.base_dir
        injections = self._injections
        inj = (lambda: injections(name)) if injections is not None else None
        return UpstreamConnection(
            name,
            up,
            self,
            injections=inj,
            scrub=self._scrub_text,
            cwd=cwd,
            auth=self._exchange_auth(name, up),
            eras=self.eras,
        )

    def _exchange_auth(self, name: str, up: UpstreamSettings) -> httpx2.Auth | None:
        """The auth hook of an upstream with ``token_exchange`` (its exchanger made anew: a reload may change it)."""
        self.exchangers.pop(name, None)
        exchanger = self._exchanger_for(name, up) if self._exchanger_for is not None and up.token_exchange else None
        if exchanger is None:
            return None
        self.exchangers[name] = exchanger
        return exchanger.auth()

    def _pool(
        self,
        name: str,
        up: UpstreamSettings,
        settings: Settings,
        principal_injections: Callable[[str, str], Awaitable[Injections]],
    ) -> UpstreamPool:
        cwd = str(settings.resolve_path(up.cwd)) if up.cwd else settings.base_dir
        return UpstreamPool(
            name,
            up,
            self,
            injections=_bound(principal_injections, name),
            scrub=self._scrub_text,
            cwd=cwd,
            auth=self._exchange_auth(name, up),
            eras=self.eras,
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        for conn in self.connections.values():
            self._launch(conn)
        for pool in self.pools.values():
            pool.start(tg)

    def _launch(self, conn: UpstreamConnection) -> None:
        """Run ``conn`` in the registry's task group under its own cancel scope (stoppable alone)."""
        assert self._tg is not None
        run = self._runs[conn.name] = _Run(conn)
        conn.attach_task_group(self._tg)
        self._tg.start_soon(run.run, name=f"upstream:{conn.name}")

    async def reconfigure(
        self, settings: Settings, *, stop: Sequence[str], start: Sequence[str], pooled: Collection[str] = ()
    ) -> None:
        """Apply a config reload (:mod:`mcp_guard.config_diff`): the connections of ``stop`` end (their
        in-flight calls fail with "went down"), those of ``start`` are made from ``settings`` and started,
        every other connection — and its sessions and in-flight calls — is left alone.

        A stopped connection is waited for (bounded) before its successor starts, so a changed upstream
        never runs twice at once. Clients are told the catalogue changed. An upstream in ``pooled`` (it injects a
        per-principal secret under ``settings``) is started as a pool of per-principal connections; a pooled
        upstream in ``stop`` has every child stopped.
        """
        self.eras.clear()  # a reload is when an operator may have changed what an upstream speaks: probe again
        stopping = [self._runs.pop(n) for n in stop if n in self._runs]
        for n in stop:
            self.exchangers.pop(n, None)
            conn = self.connections.pop(n, None)
            if conn is not None:
                conn.stop()
            pool = self.pools.pop(n, None)
            if pool is not None:
                pool.stop()
        for run in stopping:
            run.scope.cancel()
        with anyio.move_on_after(_STOP_WAIT_S):
            for run in stopping:
                await run.done.wait()
        self.settings = settings
        self.bare = next((n for n, u in settings.upstreams.items() if u.enabled and not u.namespace), None)
        for n in start:
            up = settings.upstreams.get(n)
            if up is None or not up.enabled:
                continue
            if n in pooled and self._principal_injections is not None:
                pool = self.pools[n] = self._pool(n, up, settings, self._principal_injections)
                if self._tg is not None:
                    pool.start(self._tg)
                continue
            conn = self.connections[n] = self._connection(n, up, settings)
            if self._tg is not None:
                self._launch(conn)
        if stop:
            await self._emit(self._rebuild())
            await self._listener.catalog_changed(stop[0], frozenset({"tools", "resources", "prompts"}))

    async def wait_ready(self, timeout: float) -> dict[str, str]:
        """Wait until every upstream is ready or has failed its first start (at most ``timeout`` s).

        Returns ``{name: problem}`` for the upstreams that are not ready.
        """
        async with anyio.create_task_group() as tg:
            for conn in self.connections.values():
                tg.start_soon(conn.wait_settled, timeout)
        problems = {n: (c.last_error or c.state) for n, c in self.connections.items() if c.state != "ready"}
        scrubbed: dict[str, str] = self._scrub_obj(problems)  # start-up errors may echo a credential
        return scrubbed

    def stop(self) -> None:
        for conn in self.connections.values():
            conn.stop()
        for pool in self.pools.values():
            pool.stop()

    # ------------------------------------------------------------------ routing
    def connection(self, upstream: str) -> UpstreamConnection | None:
        return self.connections.get(upstream)

    def upstream_protocol(self, upstream: str, principal: str) -> Era | None:
        """The era ``upstream`` is spoken to in for ``principal``'s calls now (its connection, or the principal's
        own in a pool); None until that connection has been ready once (a pool child not yet started)."""
        pool = self.pools.get(upstream)
        conn = pool.child(principal) if pool is not None else self.connections.get(upstream)
        return conn.era if conn is not None and conn.protocol_version is not None else None

    def find_tool(self, exposed: str) -> ExposedTool | None:
        return self.catalog.tools.get(exposed)

    def find_prompt(self, exposed: str) -> ExposedPrompt | None:
        return self.catalog.prompts.get(exposed)

    def expose_name(self, upstream: str, name: str) -> str:
        return name if upstream == self.bare else self.namer.expose(upstream, name)

    def expose_uri(self, upstream: str, uri: str) -> str:
        return uri if upstream == self.bare else self.namer.expose_uri(upstream, uri)

    def route_uri(self, exposed: str) -> tuple[str, str] | None:
        """``(upstream, upstream-local URI)`` for an exposed resource URI, or None if it routes nowhere."""
        split = self.namer.split_uri(exposed)
        if split is not None:
            return split if split[0] in self.connections or split[0] in self.pools else None
        return (self.bare, exposed) if self.bare is not None else None

    def in_flight(self, upstream: str, channel: ClientChannel | None) -> _Flight:
        """Mark a call from ``channel`` as in flight to ``upstream`` (for request correlation), for the duration
        of a ``with`` block."""
        return _Flight(self._inflight.setdefault(upstream, {}) if channel is not None else {}, channel)

    def _candidates(self, upstream: str, principal: str | None = None) -> list[ClientChannel]:
        """The client channels an upstream→client message may belong to.

        A bridged 2026-07-28 call that is *parked* (its questions are with the client, between two of its
        requests; see mcp_guard.frontend.input_required) is not a candidate while a call of the same
        principal is being served, so a client that abandons a call does not make its later requests to
        that upstream ambiguous. A parked call of another principal stays a candidate: never guess across
        principals.
        """
        channels = [r.channel for r in (self._inflight.get(upstream) or {}).values()]
        if principal is not None:  # a pooled upstream's connection serves one principal only
            channels = [c for c in channels if c.principal_id == principal]
        active = [c for c in channels if not c.parked]
        if not active:
            return channels
        served = {c.principal_id for c in active}
        return active + [c for c in channels if c.parked and c.principal_id not in served]

    def _attribute(self, upstream: str, what: str, principal: str | None = None) -> ClientChannel | types.ErrorData:
        candidates = self._candidates(upstream, principal)
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            msg = f"mcp-guard: {what} from upstream {upstream!r} arrived while no client call to it is in flight"
        else:
            msg = (
                f"mcp-guard: {what} from upstream {upstream!r} cannot be attributed to one client: "
                f"calls from {len(candidates)} sessions are in flight"
            )
        log.warning("upstream.request_unattributed", upstream=upstream, what=what, sessions=len(candidates))
        return types.ErrorData(code=types.INVALID_REQUEST, message=msg)

    # ------------------------------------------------------------------ per-principal connections
    def lease(self, upstream: str, principal: str) -> AbstractAsyncContextManager[UpstreamConnection | None]:
        """The connection a call of ``principal`` to ``upstream`` goes to (None for an unknown upstream), for the
        duration of an ``async with`` block: the shared one, or for a pooled upstream the principal's own, started
        on demand (UpstreamError if it cannot start)."""
        pool = self.pools.get(upstream)
        if pool is None:
            return _Shared(self.connections.get(upstream))
        return pool.lease(principal)

    async def find_tool_for(self, exposed: str, principal: str) -> ExposedTool | None:
        """:meth:`find_tool`, and if the name is unknown while pooled upstreams exist, again once the caller's
        own children of them are started (their catalogue is unknown until some principal's child listed it)."""
        found = self.find_tool(exposed)
        if found is not None or not self.pools:
            return found
        await self.prepare_listing(principal)
        return self.find_tool(exposed)

    async def credential_problem(self, upstream: str, principal: str) -> str | None:
        """Why ``principal`` has no credential for pooled ``upstream`` (None: it has, or it is not pooled)."""
        pool = self.pools.get(upstream)
        return await pool.credential_problem(principal) if pool is not None else None

    async def prepare_listing(self, principal: str) -> None:
        """Before a listing: start ``principal``'s own connection of each pooled upstream it has a credential
        for, so the listing holds what its own child offers. A failure only logs: the listing goes on."""

        async def one(pool: UpstreamPool) -> None:
            if await pool.credential_problem(principal) is not None:
                return
            try:
                await pool.ensure(principal)
            except UpstreamError as e:
                log.warning("upstream.pool_unavailable", upstream=pool.name, principal=principal, error=str(e))

        if self.pools:
            async with anyio.create_task_group() as tg:
                for pool in self.pools.values():
                    tg.start_soon(one, pool)

    async def to_client_of(
        self, upstream: str, principal: str, message: Ask | Notice
    ) -> dict[str, Any] | types.ErrorData | None:
        """Upstream→client traffic of ``principal``'s own connection: offered only to that principal's sessions."""
        if isinstance(message, Ask):
            return await self.to_client(upstream, message, principal=principal)
        await self.to_client(upstream, message, principal=principal)
        return None

    # ------------------------------------------------------------------ UpstreamHooks
    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        await self._emit(self._rebuild())
        await self._listener.catalog_changed(upstream, kinds)

    async def recheck_pins(self) -> bool:
        """Re-read the pin store for tools awaiting approval; rebuild (and tell clients) if one was approved."""
        if self.pins is None or not self.catalog.has_changed_tools:
            return False
        approved = [
            e
            for e in self.catalog.tools.values()
            if e.changed
            and self.pins.observe(e.upstream, e.local.name, e.sha256, _definition(e.local), trust_new=False).pinned
        ]
        if not approved:
            return False
        await self._emit(self._rebuild())
        await self._emit(
            [PinEvent(e.upstream, EventKind.TOOL_PIN_APPROVED, e.local.name, {"sha256": e.sha256}) for e in approved]
        )
        await self._listener.catalog_changed(approved[0].upstream, frozenset({"tools"}))
        return True

    async def _emit(self, events: list[PinEvent]) -> None:
        for ev in events:
            await self._listener.pin_event(ev.upstream, ev.kind, ev.tool, self._scrub_obj(ev.details))

    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        """An upstream's life cycle, told to the listener (an ``upstream.*`` audit event) scrubbed: its
        handshake data (``serverInfo``) and its start-up errors are the upstream's own words."""
        if kind in (EventKind.UPSTREAM_CRASH, EventKind.UPSTREAM_START_FAILED):
            # Its tools disappear from listings until it is back.
            await self._emit(self._rebuild())
            await self._listener.catalog_changed(upstream, frozenset({"tools", "resources", "prompts"}))
        await self._listener.upstream_event(upstream, kind, self._scrub_obj(details))

    @overload
    async def to_client(
        self, upstream: str, message: Ask, *, principal: str | None = None
    ) -> dict[str, Any] | types.ErrorData: ...
    @overload
    async def to_client(self, upstream: str, message: Notice, *, principal: str | None = None) -> None: ...
    async def to_client(
        self, upstream: str, message: Ask | Notice, *, principal: str | None = None
    ) -> dict[str, Any] | types.ErrorData | None:
        """The one way upstream→client traffic leaves the registry: scrubbed here, once, whatever its kind,
        then delivered — a request or a log message to the one client channel it can be attributed to,
        progress to the call that asked for it, a resource update to the subscribed sessions."""
        message = scrub_message(message, self._scrub_obj)
        if isinstance(message, Ask):
            target = self._attribute(upstream, message.method, principal)
            if isinstance(target, types.ErrorData):
                return target
            return await target.request(message.method, message.params)
        if isinstance(message, LogMessage):
            candidates = self._candidates(upstream, principal)
            if len(candidates) != 1:
                log_locally(message.params, upstream=upstream)  # not attributable to one client
                return None
            await candidates[0].notify_log(message.params)
            return None
        if isinstance(message, Progress):
            await message.relay(message.progress, message.total, message.message)
            return None
        if isinstance(message, ResourceUpdated):
            await self._listener.resource_updated(upstream, message.uri)
            return None
        assert_never(message)

    # ------------------------------------------------------------------ catalogue
    def _pin(self, upstream: str, tool: types.Tool, sha: str, events: list[PinEvent]) -> tuple[bool, bool, bool, bool]:
        """``(pinned, changed, hidden, new)`` for one tool, recording pin events. A tool with no pin is
        trusted on first use only in its upstream's first catalogue (or with ``new_tools = "trust"``)."""
        up = self.settings.upstreams[upstream]
        mode = up.pinning
        if self.pins is None or mode == "off":
            return False, False, False, False
        trust_new = upstream not in self._baselined or up.new_tools == "trust"
        state = self.pins.observe(upstream, tool.name, sha, _definition(tool), trust_new=trust_new)
        new = state.changed and state.approved_sha256 is None
        if state.new:
            events.append(PinEvent(upstream, EventKind.TOOL_PINNED, tool.name, {"sha256": sha}))
        if state.first_change:
            details: dict[str, Any] = {"old_sha256": state.approved_sha256, "new_sha256": sha, "mode": mode}
            if new:
                details["new_tool"] = True
            events.append(PinEvent(upstream, EventKind.TOOL_PIN_CHANGED, tool.name, details))
            log.warning(
                "tool.pin_changed",
                upstream=upstream,
                tool=tool.name,
                mode=mode,
                hint=f"review with `mcp-guard tools pins`, then `mcp-guard tools approve "
                f"{self.expose_name(upstream, tool.name)}`",
            )
        return state.pinned, state.changed, state.changed and mode == "enforce", new

    def _rebuild(self) -> list[PinEvent]:
        """Rebuild the merged catalogue; returns the pin events to record."""
        events: list[PinEvent] = []
        cat = MergedCatalog(version=self.catalog.version + 1)
        # Namespaced upstreams first: a bare (namespace = false) name that equals a namespaced one is hidden.
        sources: dict[str, UpstreamConnection | UpstreamPool] = {**self.connections, **self.pools}
        order = sorted(sources.items(), key=lambda kv: kv[0] == self.bare)
        for name, conn in order:
            if conn.state != "ready":
                continue
            c = conn.catalog
            for tool in self._scrub_obj(c.tools):
                exposed = self.expose_name(name, tool.name)
                if exposed in cat.tools:
                    log.warning("catalog.name_collision", upstream=name, tool=tool.name)
                    continue
                sha = tool_sha256(tool)
                pinned, changed, hidden, new = self._pin(name, tool, sha, events)
                cat.has_changed_tools |= changed
                cat.tools[exposed] = ExposedTool(
                    upstream=name,
                    local=tool,
                    exposed=tool.model_copy(update={"name": exposed}),
                    sha256=sha,
                    pinned=pinned,
                    changed=changed,
                    suspicious=scan_tool(tool),
                    hidden=hidden,
                    new=new,
                )
            self._baselined.add(name)
            for res in self._scrub_obj(c.resources):
                cat.resources.append((name, res.model_copy(update={"uri": self.expose_uri(name, str(res.uri))})))
            for tpl in self._scrub_obj(c.templates):
                cat.templates.append(
                    (name, tpl.model_copy(update={"uri_template": self.expose_uri(name, tpl.uri_template)}))
                )
            for prompt in self._scrub_obj(c.prompts):
                exposed = self.expose_name(name, prompt.name)
                if exposed in cat.prompts:
                    log.warning("catalog.name_collision", upstream=name, prompt=prompt.name)
                    continue
                cat.prompts[exposed] = ExposedPrompt(name, prompt, prompt.model_copy(update={"name": exposed}))
        self.catalog = cat
        return events


def _bound(
    injections: Callable[[str, str], Awaitable[Injections]], upstream: str
) -> Callable[[str], Awaitable[Injections]]:
    """``injections`` of one upstream, by principal."""

    async def of(principal: str) -> Injections:
        return await injections(upstream, principal)

    return of


def _definition(tool: types.Tool) -> dict[str, Any]:
    return tool.model_dump(mode="json", by_alias=True, exclude_none=True)
