"""The upstream registry: every upstream connection, the merged catalogue, and routing.

The registry owns one :class:`~mcp_guard.upstream.connection.UpstreamConnection` per enabled upstream
and is the ``UpstreamHooks`` they report to. It keeps a merged, namespaced snapshot of what all
upstreams offer (:class:`MergedCatalog`, rebuilt whenever one upstream's catalogue changes), routes an
exposed name back to its upstream, and routes upstream→client traffic (sampling, elicitation, log
messages) to the downstream session whose call caused it.

Correlation of upstream→client requests
    A stdio upstream's ``sampling/createMessage`` carries nothing that ties it to one of our requests,
    so the registry tracks which downstream sessions have calls in flight to each upstream. A request
    from an upstream goes to the session with calls in flight there (the most recent call's request
    stream). If calls from *several* sessions are in flight to that upstream at once, the request is
    refused with an error rather than guessed: sending one user's sampling prompt to another user's
    client would leak data. No session in flight → refused too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import mcp_types as types
import structlog
from anyio.abc import TaskGroup

from mcp_guard.pins import PinStore, scan_tool
from mcp_guard.settings import Settings
from mcp_guard.types import ToolInfo
from mcp_guard.upstream.connection import Injections, UpstreamConnection
from mcp_guard.upstream.naming import Namer

__all__ = [
    "Downstream",
    "ExposedPrompt",
    "ExposedTool",
    "MergedCatalog",
    "Registry",
    "RegistryListener",
    "tool_sha256",
]

log = structlog.get_logger("mcp_guard.upstream")


def tool_sha256(tool: types.Tool) -> str:
    """sha256 of a tool's definition (name, description, schemas, annotations…) as canonical JSON."""
    raw = json.dumps(_definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()


class Downstream(Protocol):
    """The client session a call came from, as the registry needs it for upstream→client traffic."""

    session_id: str

    async def sampling(
        self, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData: ...

    async def elicitation(self, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData: ...

    async def log_message(self, params: types.LoggingMessageNotificationParams) -> None: ...

    async def list_roots(self) -> types.ListRootsResult | types.ErrorData: ...


class RegistryListener(Protocol):
    """What the rest of mcp-guard is told by the registry."""

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None: ...
    async def upstream_event(self, upstream: str, kind: str, details: dict[str, Any]) -> None: ...
    async def resource_updated(self, upstream: str, uri: str) -> None: ...


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

    def tool_info(self) -> ToolInfo:
        """What the policy is told about this tool."""
        annotations: dict[str, Any] = (
            self.local.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
            if self.local.annotations is not None
            else {}
        )
        return ToolInfo(
            annotations=annotations,
            definition_sha256=self.sha256,
            pinned=self.pinned,
            suspicious=self.suspicious,
            changed=self.changed,
        )


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


@dataclass
class _InFlight:
    downstream: Downstream
    count: int = 0


class Registry:
    def __init__(
        self,
        settings: Settings,
        listener: RegistryListener,
        *,
        injections: Callable[[str], Awaitable[Injections]] | None = None,
        scrub: Callable[[str], str] = lambda s: s,
        scrub_obj: Callable[[Any], Any] = lambda o: o,
        pins: PinStore | None = None,
    ) -> None:
        self.settings = settings
        self.namer = Namer(settings.server.tool_separator)
        self._listener = listener
        self.pins = pins
        # Everything an upstream sends that does not pass through the pipeline (listings, upstream→client
        # requests, log messages) is scrubbed of injected secret values with this.
        self._scrub_obj = scrub_obj
        self.catalog = MergedCatalog()
        self.connections: dict[str, UpstreamConnection] = {}
        # The one upstream exposed without a namespace, if any (``namespace = false``).
        self.bare: str | None = next((n for n, u in settings.upstreams.items() if u.enabled and not u.namespace), None)
        # upstream -> session id -> in-flight record (insertion order = recency of first call)
        self._inflight: dict[str, dict[str, _InFlight]] = {}
        for name, up in settings.upstreams.items():
            if not up.enabled:
                continue
            cwd = str(settings.resolve_path(up.cwd)) if up.cwd else settings.base_dir
            inj = (lambda n=name: injections(n)) if injections is not None else None
            self.connections[name] = UpstreamConnection(name, up, self, injections=inj, scrub=scrub, cwd=cwd)

    # ------------------------------------------------------------------ lifecycle
    def start(self, tg: TaskGroup) -> None:
        for conn in self.connections.values():
            conn.attach_task_group(tg)
            tg.start_soon(conn.run, name=f"upstream:{conn.name}")

    async def wait_ready(self, timeout: float) -> dict[str, str]:
        """Wait until every upstream is ready or has failed its first start (at most ``timeout`` s).

        Returns ``{name: problem}`` for the upstreams that are not ready.
        """
        async with anyio.create_task_group() as tg:
            for conn in self.connections.values():
                tg.start_soon(conn.wait_settled, timeout)
        return {n: (c.last_error or c.state) for n, c in self.connections.items() if c.state != "ready"}

    def stop(self) -> None:
        for conn in self.connections.values():
            conn.stop()

    # ------------------------------------------------------------------ routing
    def connection(self, upstream: str) -> UpstreamConnection | None:
        return self.connections.get(upstream)

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
            return split if split[0] in self.connections else None
        return (self.bare, exposed) if self.bare is not None else None

    @contextmanager
    def in_flight(self, upstream: str, downstream: Downstream | None) -> Iterator[None]:
        """Mark a call from ``downstream`` as in flight to ``upstream`` (for request correlation)."""
        if downstream is None:
            yield
            return
        sessions = self._inflight.setdefault(upstream, {})
        rec = sessions.get(downstream.session_id)
        if rec is None:
            rec = sessions[downstream.session_id] = _InFlight(downstream)
        else:
            rec.downstream = downstream  # the most recent call's request stream
        rec.count += 1
        try:
            yield
        finally:
            rec.count -= 1
            if rec.count == 0:
                sessions.pop(downstream.session_id, None)

    def _candidates(self, upstream: str) -> list[_InFlight]:
        """The in-flight calls an upstream→client message may belong to.

        A bridged 2026-07-28 call that is *parked* (its questions are with the client, between two of its
        requests; see mcp_guard.frontend.bridge) is not a candidate while a call of the same principal is
        being served, so a client that abandons a call does not make its later requests to that upstream
        ambiguous. A parked call of another principal stays a candidate: never guess across principals.
        """
        recs = list((self._inflight.get(upstream) or {}).values())
        active = [r for r in recs if not getattr(r.downstream, "parked", False)]
        if not active:
            return recs
        served = {getattr(r.downstream, "principal_id", None) for r in active}
        parked = [r for r in recs if getattr(r.downstream, "parked", False)]
        return active + [
            r for r in parked if None in served or getattr(r.downstream, "principal_id", None) not in served
        ]

    def _attribute(self, upstream: str, what: str) -> Downstream | types.ErrorData:
        sessions = self._candidates(upstream)
        if len(sessions) == 1:
            return sessions[0].downstream
        if not sessions:
            msg = f"mcp-guard: {what} from upstream {upstream!r} arrived while no client call to it is in flight"
        else:
            msg = (
                f"mcp-guard: {what} from upstream {upstream!r} cannot be attributed to one client: "
                f"calls from {len(sessions)} sessions are in flight"
            )
        log.warning("upstream.request_unattributed", upstream=upstream, what=what, sessions=len(sessions))
        return types.ErrorData(code=types.INVALID_REQUEST, message=msg)

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
            if e.changed and self.pins.observe(e.upstream, e.local.name, e.sha256, _definition(e.local)).pinned
        ]
        if not approved:
            return False
        await self._emit(self._rebuild())
        for e in approved:
            await self._listener.upstream_event(
                e.upstream, "tool.pin_approved", {"tool": e.local.name, "sha256": e.sha256}
            )
        await self._listener.catalog_changed(approved[0].upstream, frozenset({"tools"}))
        return True

    async def _emit(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        for upstream, kind, details in events:
            await self._listener.upstream_event(upstream, kind, details)

    async def state_changed(self, upstream: str, kind: str, details: dict[str, Any]) -> None:
        if kind in ("upstream.crash", "upstream.start_failed"):
            # Its tools disappear from listings until it is back.
            await self._emit(self._rebuild())
            await self._listener.catalog_changed(upstream, frozenset({"tools", "resources", "prompts"}))
        await self._listener.upstream_event(upstream, kind, details)

    async def sampling(
        self, upstream: str, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        target = self._attribute(upstream, "sampling/createMessage")
        if isinstance(target, types.ErrorData):
            return target
        return await target.sampling(self._scrub_obj(params))

    async def elicitation(
        self, upstream: str, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        target = self._attribute(upstream, "elicitation/create")
        if isinstance(target, types.ErrorData):
            return target
        return await target.elicitation(self._scrub_obj(params))

    async def list_roots(self, upstream: str) -> types.ListRootsResult | types.ErrorData:
        target = self._attribute(upstream, "roots/list")
        if isinstance(target, types.ErrorData):
            return target
        return await target.list_roots()

    async def log_message(self, upstream: str, params: types.LoggingMessageNotificationParams) -> None:
        sessions = self._candidates(upstream)
        if len(sessions) != 1:
            # Not attributable to one client: keep it in our own log only.
            log.info(
                "upstream.log",
                upstream=upstream,
                level=params.level,
                logger=params.logger,
                data=str(params.data)[:2000],
            )
            return
        await sessions[0].downstream.log_message(self._scrub_obj(params))

    async def resource_updated(self, upstream: str, uri: str) -> None:
        await self._listener.resource_updated(upstream, uri)

    # ------------------------------------------------------------------ catalogue
    def _pin(
        self, upstream: str, tool: types.Tool, sha: str, events: list[tuple[str, str, dict[str, Any]]]
    ) -> tuple[bool, bool, bool]:
        """``(pinned, changed, hidden)`` for one tool, recording pin events."""
        mode = self.settings.upstreams[upstream].pinning
        if self.pins is None or mode == "off":
            return False, False, False
        state = self.pins.observe(upstream, tool.name, sha, _definition(tool))
        if state.new:
            events.append((upstream, "tool.pinned", {"tool": tool.name, "sha256": sha}))
        if state.first_change:
            events.append(
                (
                    upstream,
                    "tool.pin_changed",
                    {"tool": tool.name, "old_sha256": state.approved_sha256, "new_sha256": sha, "mode": mode},
                )
            )
            log.warning(
                "tool.pin_changed",
                upstream=upstream,
                tool=tool.name,
                mode=mode,
                hint=f"review with `mcp-guard tools pins`, then `mcp-guard tools approve "
                f"{self.expose_name(upstream, tool.name)}`",
            )
        return state.pinned, state.changed, state.changed and mode == "enforce"

    def _rebuild(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Rebuild the merged catalogue; returns the pin events to record."""
        events: list[tuple[str, str, dict[str, Any]]] = []
        cat = MergedCatalog(version=self.catalog.version + 1)
        # Namespaced upstreams first: a bare (namespace = false) name that equals a namespaced one is hidden.
        order = sorted(self.connections.items(), key=lambda kv: kv[0] == self.bare)
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
                pinned, changed, hidden = self._pin(name, tool, sha, events)
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
                )
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


def _definition(tool: types.Tool) -> dict[str, Any]:
    return tool.model_dump(mode="json", by_alias=True, exclude_none=True)
