"""One upstream MCP server: its connection, its catalogue, and its restart loop.

Each :class:`UpstreamConnection` runs in its own task (``run``) and owns one ``ClientSession``,
in the protocol era the upstream offers (:mod:`mcp_guard.upstream.era`: 2026-07-28 when it answers
``server/discover``, else the 2025-11-25 handshake). A start failure, crash or hang of one upstream
never escapes that task: the connection goes ``down`` with a reason, in-flight calls fail fast, and a stdio child is
restarted with exponential backoff; once it is back its catalogue is fetched again and the
registry is told so that clients get ``list_changed``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, overload

import anyio
import httpx2
import mcp_types as types
import structlog
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import listen
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, TypeAdapter, ValidationError

from mcp_guard.channel import (
    ELICITATION,
    ROOTS,
    SAMPLING,
    Ask,
    ClientMethod,
    LogMessage,
    Notice,
    Progress,
    ProgressRelay,
    ResourceUpdated,
)
from mcp_guard.errors import UpstreamError, UpstreamTimeout
from mcp_guard.secrets.describe import describe_invalid, is_parse_error
from mcp_guard.settings import UpstreamSettings
from mcp_guard.types import EventKind
from mcp_guard.upstream.era import (
    EnvelopeDispatcher,
    Era,
    EraMemory,
    era_of,
    negotiate,
    per_request_capabilities,
    split_envelope,
)
from mcp_guard.upstream.param_headers import add_call_headers, call_headers
from mcp_guard.upstream.raw_lane import InvalidAnswer, RawLane, as_negotiated
from mcp_guard.upstream.stdio import StderrTail, minimal_environment, open_stdio_transport, undecodable_reason
from mcp_guard.upstream.token_exchange import UpstreamToken, call_token

__all__ = ["Catalog", "Injections", "UpstreamConnection", "UpstreamHooks"]

log = structlog.get_logger("mcp_guard.upstream")

State = Literal["starting", "ready", "down", "stopped"]
_RAW = TypeAdapter(dict[str, Any])
_MAX_PAGES = 1000
_CLIENT_INFO = types.Implementation(name="mcp-guard", version="0.1.0")
_M = TypeVar("_M", bound=BaseModel)
# The SDK's own texts for an answer it could not parse (they quote the answer: never passed on).
_SDK_PARSE_FAILURES = ("Failed to parse JSON response", "Failed to parse SSE message")
_MAX_REASON = 500  # characters of an upstream's own error text kept in a life-cycle reason


@dataclass(frozen=True)
class Injections:
    """Credentials injected into one upstream: child env vars (stdio) or headers (HTTP)."""

    env: dict[str, str] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


class UpstreamHooks(Protocol):
    """What an upstream reports to, and asks of, the rest of mcp-guard (the registry)."""

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None: ...
    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None: ...
    @overload
    async def to_client(self, upstream: str, message: Ask) -> dict[str, Any] | types.ErrorData: ...
    @overload
    async def to_client(self, upstream: str, message: Notice) -> None: ...
    async def to_client(self, upstream: str, message: Ask | Notice) -> dict[str, Any] | types.ErrorData | None:
        """Everything the upstream sends towards a client, on its one way there (see mcp_guard.channel):
        an :class:`~mcp_guard.channel.Ask` gets the client's raw answer (or an error), a notice nothing."""
        ...


@dataclass
class Catalog:
    """What one upstream offers, upstream-local names (namespacing happens in the registry)."""

    tools: list[types.Tool] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)
    capabilities: types.ServerCapabilities | None = None
    server_info: types.Implementation | None = None


class UpstreamConnection:
    def __init__(
        self,
        name: str,
        settings: UpstreamSettings,
        hooks: UpstreamHooks,
        *,
        injections: Callable[[], Awaitable[Injections]] | None = None,
        scrub: Callable[[str], str] = lambda s: s,
        cwd: str | None = None,
        auth: httpx2.Auth | None = None,
        stderr_tail: StderrTail | None = None,
        eras: EraMemory | None = None,
    ) -> None:
        self.name = name
        # What an ``auto`` upstream was found to speak, kept for its restarts (the registry's, shared by name).
        self._eras = eras if eras is not None else EraMemory()
        self._auth = auth  # sets Authorization per HTTP request (token_exchange: mcp_guard.upstream.token_exchange)
        self.settings = settings
        self._hooks = hooks
        self._injections = injections
        self._scrub = scrub
        self._cwd = cwd
        self.state: State = "starting"
        self.last_error: str | None = None  # why it is down now (None while ready)
        self.last_failure: str | None = None  # why it last went down, kept after it recovers (health)
        self.restarts = 0
        self.catalog = Catalog()
        # A stdio child's last stderr lines (why it failed), scrubbed, across restarts; a pool hands its children
        # one that also feeds the pool's ring.
        self.stderr_tail = stderr_tail if stderr_tail is not None else StderrTail()
        self._session: ClientSession | None = None
        self._lane: RawLane | None = None  # a stdio upstream's lean lane for forwarded requests (raw_lane)
        self.protocol_version: str | None = None  # negotiated with the upstream (None until it is first ready)
        self._watched: set[str] = set()  # resources clients subscribed to (a 2026-07-28 upstream's listen filter)
        self._watch_changed = anyio.Event()
        self._listen_scope: anyio.CancelScope | None = None
        self._ready = anyio.Event()
        self._settled = anyio.Event()  # set once the first attempt has either succeeded or failed
        self._stop = False

    # ------------------------------------------------------------------ public API
    @property
    def era(self) -> Era:
        """The protocol era the upstream is spoken to in (``stateless``: 2026-07-28)."""
        return era_of(self.protocol_version)

    @property
    def session(self) -> ClientSession:
        if self.state != "ready" or self._session is None:
            raise UpstreamError(
                f"upstream {self.name!r} is {self.state}: {self.last_error or 'not connected'}", upstream=self.name
            )
        return self._session

    async def wait_ready(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._ready.wait()
        return self.state == "ready"

    async def wait_settled(self, timeout: float) -> None:
        """Wait until the first start attempt has succeeded or failed (at most ``timeout`` s)."""
        with anyio.move_on_after(timeout):
            await self._settled.wait()

    async def request(
        self,
        request: types.ClientRequest,
        *,
        timeout: float | None = None,
        on_progress: Callable[[float, float | None, str | None], Awaitable[None]] | None = None,
        bearer: UpstreamToken | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Forward one request and return the upstream's raw result dict.

        ``bearer`` (an exchanged token, HTTP upstreams with ``token_exchange``) is the Authorization of this
        request only: :func:`~mcp_guard.upstream.token_exchange.call_token` marks this task's traffic with it.
        ``headers`` (the client's ``Mcp-Param-*``) go with this request only, to a 2026-07-28 HTTP upstream
        (:mod:`mcp_guard.upstream.param_headers`); a handshake-era upstream gets none. A handshake-era stdio
        upstream is sent the request on its lean lane (:mod:`mcp_guard.upstream.raw_lane`) unless progress is
        relayed; the errors below are the same either way.

        Raises MCPError for an upstream error response, UpstreamTimeout, or UpstreamError when the
        upstream is down, dies while the call is in flight, or answers with something that is not valid
        MCP (said in mcp-guard's own words: the parser's text would quote the answer).
        """
        if self._auth is not None and bearer is None:  # never sent on the gateway's own token instead
            raise UpstreamError(
                f"upstream {self.name!r} takes each caller's exchanged token (token_exchange) and this call has none",
                upstream=self.name,
            )
        session = self.session
        t = timeout if timeout is not None else self.settings.timeout_s
        progress = self._progress_relay(on_progress) if on_progress is not None else None
        if self.era == "stateless" and self._watch(request):
            return {}
        lane = self._lane if progress is None and self.era == "handshake" else None
        caps = None
        if lane is None:
            request, caps = self._enveloped(request)
        try:
            if lane is not None:
                # The lean lane (mcp_guard.upstream.raw_lane): one raw line each way, no SDK session between.
                raw = self._lane_params(request)
                answer = await lane.request(request.method, raw, timeout=t)  # the lane keeps the deadline
                return as_negotiated(request.method, self.protocol_version or "2025-11-25", answer)
            # Our own deadline (the SDK's timeout error shares its code, -32001, with ordinary upstream
            # errors); cancelling the request makes the SDK send notifications/cancelled upstream.
            with (
                anyio.fail_after(t),
                call_token(bearer),
                per_request_capabilities(caps),
                call_headers(headers if self.era == "stateless" else None),
            ):
                # A TypeAdapter of a plain dict keeps the upstream's result as it came (the SDK accepts any
                # TypeAdapter at run time; its annotation only names BaseModel results).
                return await session.send_request(
                    request,
                    _RAW,
                    request_read_timeout_seconds=t + 5,  # type: ignore[type-var]
                    progress_callback=progress,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer within {t:g}s", upstream=self.name) from None
        except InvalidAnswer:
            raise UpstreamError(
                f"upstream {self.name!r} sent an answer that is not valid JSON-RPC (its text is withheld)",
                upstream=self.name,
            ) from None
        except ValidationError as e:
            # The SDK checks the result against the protocol version; its error quotes the result.
            raise UpstreamError(
                f"upstream {self.name!r} sent an invalid result ({describe_invalid(e)})", upstream=self.name
            ) from None
        except MCPError as e:
            if self.state != "ready" or session is not self._session or _is_closed_error(e):
                raise UpstreamError(
                    f"upstream {self.name!r} went down during the call: {self.last_error or 'connection closed'}",
                    upstream=self.name,
                ) from None
            if (reason := undecodable_reason(e.error)) is not None:
                raise UpstreamError(f"upstream {self.name!r} sent {reason}", upstream=self.name) from None
            if _is_sdk_parse_failure(e):
                raise UpstreamError(
                    f"upstream {self.name!r} sent an answer that is not valid JSON-RPC (its text is withheld)",
                    upstream=self.name,
                ) from None
            raise

    def _enveloped(self, request: types.ClientRequest) -> tuple[types.ClientRequest, dict[str, Any] | None]:
        """The request without the client's hop envelope in ``_meta``, and the client capabilities it named
        (which a 2026-07-28 upstream gets as this request's own; see mcp_guard.upstream.era)."""
        params = getattr(request, "params", None)
        meta = getattr(params, "meta", None) if params is not None else None
        if not meta:
            return request, None
        raw = meta if isinstance(meta, dict) else meta.model_dump(by_alias=True, mode="json", exclude_none=True)
        kept, caps = split_envelope(raw, self.era)
        if kept == raw:
            return request, caps
        assert params is not None
        new_params = params.model_copy(update={"meta": kept})
        return request.model_copy(update={"params": new_params}), caps

    def _lane_params(self, request: types.ClientRequest) -> dict[str, Any] | None:
        """The params the lane sends: what :meth:`_enveloped`'s request dumps to, the envelope taken off the dumped
        ``_meta`` instead of off copies of the request's models (two ``model_copy`` and a dump of ``_meta`` saved
        on every call; tests/upstream/test_connection.py holds the two to the same params)."""
        params = getattr(request, "params", None)
        if params is None:
            return None
        raw: dict[str, Any] = params.model_dump(by_alias=True, mode="json", exclude_none=True)
        meta = getattr(params, "meta", None)
        if not meta:
            return raw
        given = meta if isinstance(meta, dict) else meta.model_dump(by_alias=True, mode="json", exclude_none=True)
        kept, _ = split_envelope(given, self.era)
        if kept == given:
            return raw
        if kept is None:
            raw.pop("_meta", None)
        else:  # the same keys taken off the dumped _meta (declared fields under their wire names, nulls left out)
            raw["_meta"] = split_envelope(raw.get("_meta"), self.era)[0] or {}
        return raw

    def _progress_relay(self, on_progress: ProgressRelay) -> ProgressFnT:
        """Progress for the client, on the one way upstream→client traffic takes (mcp_guard.channel)."""

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            await self._hooks.to_client(self.name, Progress(progress, total, message, relay=on_progress))

        return relay

    async def notify(self, notification: types.ClientNotification) -> None:
        await self.session.send_notification(notification)

    def stop(self) -> None:
        self._stop = True

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff until cancelled. Never raises."""
        backoff = self.settings.restart_backoff_s
        attempt = 0
        while not self._stop:
            attempt += 1
            started = time.monotonic()
            try:
                await self._connect_and_serve(first=attempt == 1)
                reason = self.last_error or "connection closed"
            except anyio.get_cancelled_exc_class():
                self._set_down("stopped", "mcp-guard is shutting down")
                raise
            except Exception as e:
                reason = _describe(e)
            self._set_down("down", reason)
            self._settled.set()
            was_ready = self.catalog.server_info is not None
            await self._hooks.state_changed(
                self.name,
                EventKind.UPSTREAM_CRASH if was_ready else EventKind.UPSTREAM_START_FAILED,
                {"reason": reason, "attempt": attempt},
            )
            log.warning("upstream.down", upstream=self.name, reason=reason, attempt=attempt)
            if not self.settings.restart or self._stop:
                return
            if time.monotonic() - started > 30:
                backoff = self.settings.restart_backoff_s
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
            self.restarts += 1

    def _set_down(self, state: State, reason: str) -> None:
        self.state = state
        self.last_error = self.last_failure = reason
        self._session = None
        self._lane = None
        if self._ready.is_set():
            self._ready = anyio.Event()

    async def _connect_and_serve(self, *, first: bool) -> None:
        self.state = "starting"
        self._lane = None
        inj = await self._injections() if self._injections else Injections()
        async with self._open_transport(inj) as (read, write, closed):
            session = ClientSession(
                dispatcher=EnvelopeDispatcher(read, write),
                read_timeout_seconds=max(self.settings.timeout_s, self.settings.startup_timeout_s),
                sampling_callback=self._on_sampling,
                elicitation_callback=self._on_elicitation,
                # Roots are opt-in per upstream: an upstream that trusts client roots (server-filesystem does)
                # would otherwise let a client widen its sandbox.
                list_roots_callback=self._on_list_roots if self.settings.forward_roots else None,
                logging_callback=self._on_log,
                message_handler=self._on_message,
                client_info=_CLIENT_INFO,
            )
            async with session:
                with anyio.fail_after(self.settings.startup_timeout_s):
                    version = await self._negotiate(session)
                    capabilities = session.server_capabilities or types.ServerCapabilities()
                    server_info = session.server_info or types.Implementation(name=self.name, version="unknown")
                    catalog = await self._fetch_catalog(
                        session, capabilities, frozenset({"tools", "resources", "prompts"})
                    )
                catalog.server_info = server_info
                catalog.capabilities = capabilities
                self.catalog = catalog
                self.protocol_version = version
                self._session = session
                # The lean lane lives and dies with this session (a stdio transport's; None for HTTP and SSE).
                self._lane = getattr(read, "lane", None)
                self.state = "ready"
                self.last_error = None
                self._ready.set()
                self._settled.set()
                log.info(
                    "upstream.ready",
                    upstream=self.name,
                    protocol_version=version,
                    tools=len(catalog.tools),
                    resources=len(catalog.resources),
                    prompts=len(catalog.prompts),
                )
                await self._hooks.state_changed(
                    self.name,
                    EventKind.UPSTREAM_START if first else EventKind.UPSTREAM_RESTART,
                    {
                        "server_info": server_info.model_dump(mode="json", exclude_none=True),
                        "protocol_version": version,
                        "upstream_protocol": self.era,
                        "tools": len(catalog.tools),
                        "restarts": self.restarts,
                    },
                )
                await self._hooks.catalog_changed(self.name, frozenset({"tools", "resources", "prompts"}))
                async with anyio.create_task_group() as tg:
                    if self.era == "stateless":
                        tg.start_soon(self._listen, session, capabilities)
                    await closed.wait()
                    tg.cancel_scope.cancel()

    async def _negotiate(self, session: ClientSession) -> str:
        """:func:`negotiate`, told (for ``auto``) the version this upstream spoke before, and remembering it."""
        protocol = self.settings.protocol
        remembered = self._eras.get(self.name) if protocol == "auto" else None
        try:
            version = await negotiate(session, protocol, upstream=self.name, remembered=remembered)
        except BaseException:
            self._eras.forget(self.name)  # the next attempt probes afresh
            raise
        if protocol == "auto":
            self._eras.remember(self.name, version)
        return version

    @contextlib.asynccontextmanager
    async def _open_transport(self, inj: Injections) -> AsyncIterator[tuple[Any, Any, anyio.Event]]:
        s = self.settings
        if s.transport == "stdio":
            assert s.command is not None
            env = minimal_environment({**s.env, **inj.env}, s.env_passthrough)
            async with open_stdio_transport(
                s.command,
                s.args,
                env=env,
                cwd=self._cwd,
                max_line_bytes=s.max_response_bytes,
                name=self.name,
                scrub=self._scrub,
                stderr_tail=self.stderr_tail,
            ) as (read, write, exit_info, _proc):
                closed = anyio.Event()

                async def watch() -> None:
                    await exit_info.event.wait()
                    self.last_error = f"process exited with code {exit_info.returncode}"
                    closed.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch)
                    yield read, write, closed
                    tg.cancel_scope.cancel()
            return
        assert s.url is not None
        headers = {**s.headers, **inj.headers}
        if s.transport == "sse":
            async with sse_client(s.url, headers=headers, timeout=s.startup_timeout_s) as (read, write):
                yield read, write, anyio.Event()
            return
        timeout = httpx2.Timeout(s.startup_timeout_s, read=max(s.timeout_s, 300.0))
        async with (
            httpx2.AsyncClient(
                headers=headers, timeout=timeout, auth=self._auth, event_hooks={"request": [add_call_headers]}
            ) as http,
            streamable_http_client(s.url, http_client=http, max_sse_event_size=s.max_response_bytes) as (read, write),
        ):
            yield read, write, anyio.Event()

    # ------------------------------------------------------------------ catalogue
    async def _fetch_catalog(
        self, session: ClientSession, caps: types.ServerCapabilities, kinds: frozenset[str]
    ) -> Catalog:
        cat = Catalog(
            tools=self.catalog.tools,
            resources=self.catalog.resources,
            templates=self.catalog.templates,
            prompts=self.catalog.prompts,
        )
        if "tools" in kinds:
            cat.tools = await _paginate(session.list_tools, "tools") if caps.tools else []
        if "resources" in kinds:
            cat.resources = await _optional(session.list_resources, "resources") if caps.resources else []
            cat.templates = (
                await _optional(session.list_resource_templates, "resource_templates") if caps.resources else []
            )
        if "prompts" in kinds:
            cat.prompts = await _optional(session.list_prompts, "prompts") if caps.prompts else []
        return cat

    async def refresh(self, kinds: frozenset[str]) -> None:
        session = self._session
        if session is None or self.catalog.capabilities is None:
            return
        with anyio.fail_after(self.settings.timeout_s):
            new = await self._fetch_catalog(session, self.catalog.capabilities, kinds)
        new.capabilities, new.server_info = self.catalog.capabilities, self.catalog.server_info
        old_uris = {r.uri for r in self.catalog.resources}
        self.catalog = new
        if self.era == "stateless" and {r.uri for r in new.resources} != old_uris:
            self._relisten()
        await self._hooks.catalog_changed(self.name, kinds)

    # ------------------------------------------------------------------ upstream → us
    async def _listen(self, session: ClientSession, caps: types.ServerCapabilities) -> None:
        """A 2026-07-28 upstream announces changes only on a ``subscriptions/listen`` stream: keep one open
        (re-opened after a drop with the restarts' backoff, at once when the watched resources change) and
        its events reach :meth:`_on_message` like a handshake upstream's notifications.

        Updates are asked for every resource the upstream lists (a downstream listen stream may name any of
        them; the front filters per stream and principal) and every URI a 2025 client subscribed to."""
        tools = bool(caps.tools and caps.tools.list_changed)
        prompts = bool(caps.prompts and caps.prompts.list_changed)
        resources = bool(caps.resources and caps.resources.list_changed)
        updates = bool(caps.resources and caps.resources.subscribe)
        backoff = self.settings.restart_backoff_s
        while session is self._session:
            uris = sorted(self._watched | ({r.uri for r in self.catalog.resources} if updates else set()))
            if not (tools or prompts or resources or uris):
                await self._watch_changed.wait()
                continue
            with anyio.CancelScope() as scope:
                self._listen_scope = scope
                try:
                    async with listen(
                        session,
                        tools_list_changed=tools,
                        prompts_list_changed=prompts,
                        resources_list_changed=resources,
                        resource_subscriptions=uris,
                    ) as sub:
                        backoff = self.settings.restart_backoff_s
                        # The SDK also hands every event frame to the session's message handler (_on_message),
                        # which acts on it as on a handshake upstream's notification; here they are only drained.
                        async for _event in sub:
                            pass
                except Exception as e:
                    log.warning("upstream.listen_lost", upstream=self.name, error=_describe(e))
            if scope.cancelled_caught:
                continue  # the watched resources changed: listen again with the new filter
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max_s)

    def _watch(self, request: types.ClientRequest) -> bool:
        """``resources/(un)subscribe`` for a 2026-07-28 upstream (which has neither): the URI joins or leaves
        the filter of its listen stream. False: not such a request."""
        if isinstance(request, types.SubscribeRequest):
            self._watched.add(request.params.uri)
        elif isinstance(request, types.UnsubscribeRequest):
            self._watched.discard(request.params.uri)
        else:
            return False
        self._relisten()
        return True

    def _relisten(self) -> None:
        """The listen filter changed: re-open the stream with it (a no-op for a handshake upstream)."""
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        self._watch_changed.set()
        self._watch_changed = anyio.Event()

    async def _on_message(self, message: types.ServerNotification | Exception) -> None:
        if isinstance(message, Exception):
            error = describe_invalid(message) if is_parse_error(message) else self._scrub(str(message))[:_MAX_REASON]
            log.warning("upstream.transport_error", upstream=self.name, error=error)
            return
        kinds: frozenset[str] | None = None
        if isinstance(message, types.ToolListChangedNotification):
            kinds = frozenset({"tools"})
        elif isinstance(message, types.ResourceListChangedNotification):
            kinds = frozenset({"resources"})
        elif isinstance(message, types.PromptListChangedNotification):
            kinds = frozenset({"prompts"})
        elif isinstance(message, types.ResourceUpdatedNotification):
            await self._hooks.to_client(self.name, ResourceUpdated(message.params.uri))
            return
        if kinds is not None:
            # Refresh outside the dispatcher's receive path: listing needs responses to flow.
            async def refresh() -> None:
                try:
                    await self.refresh(kinds)
                except Exception as e:
                    log.warning("upstream.refresh_failed", upstream=self.name, error=_describe(e))

            if self._tg is not None:
                self._tg.start_soon(refresh)

    _tg: anyio.abc.TaskGroup | None = None

    def attach_task_group(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    # The SDK takes one callback per upstream→client request; each is the same relay (see mcp_guard.channel).
    async def _on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        return await SAMPLING.ask(self._to_client, params)

    async def _on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await ELICITATION.ask(self._to_client, params)

    async def _on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        return await ROOTS.ask(self._to_client, None)

    async def _to_client(self, method: ClientMethod, params: dict[str, Any]) -> dict[str, Any] | types.ErrorData:
        return await self._hooks.to_client(self.name, Ask(method, params))

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        await self._hooks.to_client(self.name, LogMessage(params))


async def _paginate(fn: Callable[..., Awaitable[Any]], attr: str) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await fn(params=params)
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if not cursor:
            break
    return items


async def _optional(fn: Callable[..., Awaitable[Any]], attr: str) -> list[Any]:
    """A listing the upstream advertised but may not serve (e.g. no resource templates): empty if not found."""
    try:
        return await _paginate(fn, attr)
    except MCPError as e:
        if e.error.code == types.METHOD_NOT_FOUND:
            return []
        raise


def _is_closed_error(e: MCPError) -> bool:
    return e.error.code == types.CONNECTION_CLOSED and e.error.message == "Connection closed"


def _is_sdk_parse_failure(e: MCPError) -> bool:
    """The SDK's stand-in error for an answer it could not parse (its message quotes the answer)."""
    return e.error.code == types.PARSE_ERROR and e.error.message.startswith(_SDK_PARSE_FAILURES)


def _describe(e: BaseException) -> str:
    """Why an upstream went down, for its life-cycle event and log line (bounded; parse errors unquoted).

    Upstream-written text (an error message) may still hold a secret: the registry scrubs every life-cycle
    detail before it becomes an audit row (``Registry.state_changed``).
    """
    if isinstance(e, BaseExceptionGroup):
        inner = [x for x in e.exceptions if not isinstance(x, anyio.get_cancelled_exc_class())]
        if inner:
            return _describe(inner[0])
    if isinstance(e, FileNotFoundError):
        return f"command not found: {e.filename or e}"
    if isinstance(e, TimeoutError):
        return "timed out during start-up (initialize/list)"
    if is_parse_error(e):
        return f"invalid answer during start-up ({describe_invalid(e)})"
    if isinstance(e, MCPError):
        if _is_sdk_parse_failure(e):
            return "an answer during start-up was not valid JSON-RPC (its text is withheld)"
        return f"upstream error {e.error.code}: {e.error.message[:_MAX_REASON]}"
    text = str(e)[:_MAX_REASON]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
