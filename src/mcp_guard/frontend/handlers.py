"""The client-facing MCP handlers: list, call, read, get — every one through the guard's pipeline.

Listings are namespaced (see :mod:`mcp_guard.upstream.naming`), filtered by policy visibility and
paginated by mcp-guard itself (``[server] page_size``; the cursor is an opaque offset). Calls are
turned into a :class:`~mcp_guard.pipeline.context.CallContext` and run through the interceptor chain,
whose :class:`~mcp_guard.pipeline.context.Outcome` is mapped back onto the protocol:

* ``tools/call`` denied → an ``isError`` tool result whose text gives the policy's reasons (agents read
  it and adapt); the upstream being down or timing out → an ``isError`` result saying so; an error
  the upstream itself answered → that JSON-RPC error, unchanged.
* ``resources/read`` / ``prompts/get`` / ``completion/complete`` denied → JSON-RPC error ``-32012``
  with the reasons (these results have no error flag).

The upstream's result dict is returned as it came (``_meta`` kept; structuredContent not re-validated).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio
import mcp_types as types
import structlog
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import SERVER_INFO_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from mcp_guard.audit import events
from mcp_guard.errors import AuditError
from mcp_guard.frontend.auth import PrincipalResolver
from mcp_guard.frontend.input_required import InputRequiredBridge
from mcp_guard.frontend.listing import PROMPTS, RESOURCES, TEMPLATES, TOOLS, Listing, visible
from mcp_guard.frontend.sessions import DownstreamSession, RequestChannel, SessionTable
from mcp_guard.frontend.stepup import note_denial
from mcp_guard.frontend.subscriptions import Subscriptions
from mcp_guard.frontend.tasks import (
    TASKS_EXTENSION,
    TaskChannel,
    TaskEnd,
    TaskParams,
    Tasks,
    TaskSupport,
    for_upstream,
    missing_extension,
    negotiated,
    task_support,
)
from mcp_guard.frozen import evolve
from mcp_guard.memo import ByIdentity
from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.pipeline.flow import FLOW_META_KEY, correlation_id
from mcp_guard.pipeline.forward import DENIED, is_guard_error
from mcp_guard.pipeline.secrets import strip_meta_credentials
from mcp_guard.pipeline.visibility import Visibility
from mcp_guard.settings import Settings
from mcp_guard.types import Action, Decision, Principal, ReasonCode, ToolInfo
from mcp_guard.upstream.param_headers import param_headers_of
from mcp_guard.upstream.registry import Registry

__all__ = ["Handlers", "PrincipalResolver"]

log = structlog.get_logger("mcp_guard.frontend")

_T = TypeVar("_T")
# _meta keys that never travel upstream: the progress token is re-issued per hop, and the protocol's
# reserved ``io.modelcontextprotocol/*`` keys (the 2026-07-28 request envelope: version, client info and
# capabilities, log level) describe the client's hop, not ours — an upstream on the handshake era refuses them.
# The flow correlation id is mcp-guard's own (mcp_guard.pipeline.flow).
_META_DROP = frozenset({"progressToken", "progress_token", FLOW_META_KEY})
_META_RESERVED_PREFIX = "io.modelcontextprotocol/"


_CAPS: ByIdentity[dict[str, Any]] = ByIdentity(1024)


def _caps_for_upstream(caps: types.ClientCapabilities | None) -> dict[str, Any]:
    """A client's capabilities as the upstream may be told them (dumped, without the tasks extension: tasks are
    served here, never handed back by an upstream), remembered by the capabilities object: a handshake session's
    is one object for all its requests, so it is dumped once, not on every call. The dict is shared: its readers
    (the request model's dump, the upstream connection's envelope split and ``EnvelopeDispatcher``) copy, never
    change it."""
    if caps is None:
        return {}
    hit = _CAPS.get(caps)
    if hit is not None:
        return hit
    return _CAPS.put(for_upstream(caps.model_dump(by_alias=True, mode="json", exclude_none=True)), caps)


@dataclass
class Handlers:
    settings: Settings
    registry: Registry
    chain: CallNext
    visibility: Visibility
    sink: EventSink
    sessions: SessionTable
    transport: str
    principal_of: PrincipalResolver
    # 2026-07-28 clients: upstream→client requests as InputRequiredResult rounds.
    bridge: InputRequiredBridge | None = None
    # 2026-07-28 clients: subscriptions/listen streams, filtered per principal (None: not served).
    subscriptions: Subscriptions | None = None
    # 2026-07-28 clients: the tasks extension, served by mcp-guard for any upstream (None: not served).
    tasks: Tasks | None = None
    # 2026-07-28 results: the server-info stamp (the SDK's, taken once by build_server), copied into each result as
    # the SDK would stamp it; None: the SDK stamps it (a deep copy of its own per result).
    server_info_stamp: dict[str, Any] | None = None

    def routes(self) -> dict[str, AsyncHandler]:
        """The route table: each protocol method mcp-guard serves → its handler (the SDK ``Server``'s hooks).

        Listings share one path (:meth:`_listed`); requests that reach an upstream share one pipeline run.
        Calls and reads return the upstream's raw result dict, which the SDK passes through unvalidated.
        """
        listen = {"on_subscriptions_listen": self.listen} if self.subscriptions is not None else {}
        return {
            **listen,
            "on_list_tools": self.list_tools,
            "on_call_tool": self.call_tool,
            "on_list_resources": self.list_resources,
            "on_list_resource_templates": self.list_resource_templates,
            "on_read_resource": self.read_resource,
            "on_subscribe_resource": self.subscribe,
            "on_unsubscribe_resource": self.unsubscribe,
            "on_list_prompts": self.list_prompts,
            "on_get_prompt": self.get_prompt,
            "on_completion": self.complete,
            "on_set_logging_level": self.set_logging_level,
        }

    def methods(self) -> dict[str, tuple[type[BaseModel], AsyncHandler]]:
        """Extension methods mcp-guard serves (method → params model, handler), beside :meth:`routes`."""
        if self.tasks is None:
            return {}
        return {
            "tasks/get": (TaskParams, self.task_get),
            "tasks/cancel": (TaskParams, self.task_cancel),
            "tasks/update": (TaskParams, self.task_update),
        }

    def extensions(self) -> dict[str, dict[str, Any]]:
        """The extensions advertised under ``capabilities.extensions`` (those :meth:`methods` serve)."""
        return {TASKS_EXTENSION: {}} if self.tasks is not None else {}

    # ------------------------------------------------------------------ helpers
    def _session(self, ctx: ServerRequestContext[Any, Any]) -> DownstreamSession:
        """The request's client session; the principal (who opens a new one) is resolved only for a new one."""
        sess = self.sessions.existing(ctx)
        return sess if sess is not None else self.sessions.for_request(ctx, self.transport, self.principal_of(ctx))

    def _page(self, items: list[_T], params: types.PaginatedRequestParams | None) -> tuple[list[_T], str | None]:
        size = self.settings.server.page_size
        start = 0
        if params is not None and params.cursor:
            try:
                start = int(params.cursor)
                if start < 0 or start > len(items):
                    raise ValueError
            except ValueError:
                raise MCPError(code=types.INVALID_PARAMS, message=f"invalid cursor {params.cursor!r}") from None
        end = start + size
        return items[start:end], (str(end) if end < len(items) else None)

    def _forward_meta(
        self, meta: Any, ctx: ServerRequestContext[Any, Any] | None = None
    ) -> types.RequestParamsMeta | None:
        """The client's ``_meta`` as it may travel upstream (hop-by-hop and credential keys removed).

        With ``ctx``, the client's capabilities (this request's own for a 2026-07-28 client, its session's
        for a handshake one) and the log level it wants (its request's own, or its session's — every level
        until it set one) ride along under the protocol's keys: a 2026-07-28 upstream gets them as the
        request's own (mcp_guard.upstream.era); the upstream connection drops them for a handshake upstream.
        """
        raw = (
            {}
            if meta is None
            else meta.model_dump(by_alias=True, mode="json", exclude_none=True)
            if hasattr(meta, "model_dump")
            else dict(meta)
        )
        kept = {k: v for k, v in raw.items() if k not in _META_DROP and not k.startswith(_META_RESERVED_PREFIX)}
        # No token passthrough: credential-named keys and credential-shaped values stay with us.
        safe, removed = strip_meta_credentials(kept)
        if removed:
            log.info("meta.credentials_dropped", keys=list(removed))
        if ctx is not None:
            caps = _caps_for_upstream(ctx.session.client_capabilities)
            safe = {**(safe or {}), types.CLIENT_CAPABILITIES_META_KEY: caps}
            modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
            level = raw.get(types.LOG_LEVEL_META_KEY) if modern else (self._session(ctx).log_level or "debug")
            if level is not None:
                safe[types.LOG_LEVEL_META_KEY] = level
        return cast("types.RequestParamsMeta", safe) if safe else None

    def _context(
        self,
        ctx: ServerRequestContext[Any, Any],
        sess: DownstreamSession,
        *,
        action: Action,
        server: str,
        target: str,
        exposed: str,
        arguments: dict[str, Any],
        request: types.ClientRequest,
        tool_info: ToolInfo | None = None,
        principal: Principal | None = None,
    ) -> CallContext:
        """The call's context. ``principal``: this request's, when the caller has resolved it already."""
        sess.calls += 1
        up = self.registry.settings.upstreams.get(server)  # the live table (a config reload replaces it)
        channel = RequestChannel(sess, ctx, timeout_s=up.timeout_s if up else 60.0)
        wants_progress = ctx.meta is not None and ctx.meta.get("progress_token") is not None
        if principal is None:
            principal = self.principal_of(ctx)  # this request's credentials (a session may step up its token)
        return CallContext(
            action=action,
            principal=principal,
            session=sess.info,
            server=server,
            target=target,
            exposed=exposed,
            arguments=arguments,
            request=request,
            tool_info=tool_info,
            progress=channel.progress if wants_progress else None,
            timeout_s=up.timeout_s if up else None,
            downstream=channel,
            correlation_id=correlation_id(ctx.meta) if sess.modern else None,
            trace_context=_http_trace_context(ctx),
            upstream_protocol=self.registry.upstream_protocol(server, principal.id),
            param_headers=_param_headers(ctx) if sess.modern and action == "tools/call" else None,
        )

    async def _run(self, call: CallContext) -> Outcome:
        return await self.chain(call)

    async def _run_for(
        self, ctx: ServerRequestContext[Any, Any], sess: DownstreamSession, call: CallContext, params: Any
    ) -> Outcome | dict[str, Any]:
        """Run a call that may need the client's input; for a 2026-07-28 client that is an InputRequiredResult
        dict (returned as is) until its retries complete the call (see mcp_guard.frontend.input_required)."""
        if sess.modern and self.bridge is not None:
            return await self.bridge.run(ctx, sess, call, params, self._run)
        return await self._run(call)

    async def _unknown(self, sess: DownstreamSession, action: Action, exposed: str, what: str) -> Decision:
        d = Decision.deny(
            ReasonCode.UNKNOWN_TARGET,
            f"{what} {exposed!r} does not exist (names are '<upstream>"
            f"{self.settings.server.tool_separator}<name>'; list them first)",
        )
        row = events.call_decision(
            d, session_id=sess.id, principal=sess.principal.id, action=action, server=None, tool=exposed
        )
        try:
            await self.sink.record(row)  # the deny is answered only once its row is committed, like a call's
        except AuditError as e:
            log.error("audit.unavailable", error=str(e), decision_id=d.decision_id)
        return d

    @staticmethod
    def _deny_text(d: Decision) -> str:
        reasons = "; ".join(d.reasons) if d.reasons else "no reason given"
        return f"Denied by mcp-guard: {reasons} (decision {d.decision_id})"

    def _deny_tool_result(self, d: Decision) -> dict[str, Any]:
        return {
            "content": [{"type": "text", "text": self._deny_text(d)}],
            "isError": True,
            "_meta": {
                "mcp-guard/decision": {
                    "allow": False,
                    "reasons": list(d.reasons),
                    "decision_id": d.decision_id,
                    "code": d.code,
                }
            },
        }

    def _deny_error(self, d: Decision) -> MCPError:
        return MCPError(
            code=DENIED,
            message=self._deny_text(d),
            data={"reasons": list(d.reasons), "decision_id": d.decision_id, "code": d.code},
        )

    def _raise_or_result(self, ctx: ServerRequestContext[Any, Any], outcome: Outcome) -> dict[str, Any]:
        if outcome.denial is not None:
            note_denial(ctx, outcome.denial)
            raise self._deny_error(outcome.denial)
        if outcome.error is not None:
            raise MCPError.from_error_data(outcome.error)
        return self._for_client(ctx, outcome.result or {})

    # ------------------------------------------------------------------ listings
    async def _listed(
        self, listing: Listing[Any], ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> tuple[list[Any], str | None]:
        """One page of what the caller may see of one kind; the first page of an audited kind is recorded."""
        sess = self._session(ctx)
        principal = self.principal_of(ctx)
        items = await visible(listing, self.registry, self.visibility, principal, sess.info)
        page, cursor = self._page(items, params)
        if listing.event is not None and (params is None or not params.cursor):
            self.sink.record_nowait(events.listing(listing.event, sess.info, principal, [i.name for i in items]))
        return page, cursor

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        page, cursor = await self._listed(TOOLS, ctx, params)
        return types.ListToolsResult(tools=page, next_cursor=cursor)

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        page, cursor = await self._listed(RESOURCES, ctx, params)
        return types.ListResourcesResult(resources=page, next_cursor=cursor)

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        page, cursor = await self._listed(TEMPLATES, ctx, params)
        return types.ListResourceTemplatesResult(resource_templates=page, next_cursor=cursor)

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        page, cursor = await self._listed(PROMPTS, ctx, params)
        return types.ListPromptsResult(prompts=page, next_cursor=cursor)

    # ------------------------------------------------------------------ tools
    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> dict[str, Any]:
        sess = self._session(ctx)
        # A pooled upstream's tools are known once some principal's child listed them: a first call (no
        # listing before it) starts the caller's own child and looks again.
        principal = self.principal_of(ctx)  # this request's credentials (a session may step up its token)
        entry = await self.registry.find_tool_for(params.name, principal.id)
        if entry is None:
            return self._for_client(
                ctx, self._deny_tool_result(await self._unknown(sess, "tools/call", params.name, "tool"))
            )
        arguments = dict(params.arguments or {})
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(
                name=entry.local.name,
                arguments=arguments,
                _meta=self._forward_meta(params.meta, ctx),
            )
        )
        call = self._context(
            ctx,
            sess,
            action="tools/call",
            server=entry.upstream,
            target=entry.local.name,
            exposed=params.name,
            arguments=arguments,
            request=request,
            tool_info=entry.tool_info(),
            principal=principal,
        )
        support = task_support(entry.local, self.registry.settings.upstreams.get(entry.upstream))  # the live table
        if self.tasks is not None and support is not TaskSupport.FORBIDDEN:
            if negotiated(ctx):
                return await self._call_as_task(ctx, call)
            if support is TaskSupport.REQUIRED:
                raise missing_extension()
        outcome = await self._run_for(ctx, sess, call, params)
        if isinstance(outcome, dict):
            return outcome
        return self._tool_answer(ctx, outcome)

    async def _call_as_task(self, ctx: ServerRequestContext[Any, Any], call: CallContext) -> dict[str, Any]:
        """A task-augmented ``tools/call``: the handle once the call is admitted, or the plain answer of a call
        refused before that (see mcp_guard.frontend.tasks). The task's id is the call's ``call_id``."""
        assert self.tasks is not None
        admitted = anyio.Event()

        async def work(channel: TaskChannel) -> TaskEnd:
            # No client request stays open to carry progress; questions wait on the task (tasks/update).
            outcome = await self._run(
                evolve(call, admitted=admitted.set, downstream=channel, progress=None, on_redecide=channel.bind)
            )
            try:
                return TaskEnd(result=self._tool_answer(ctx, outcome))
            except MCPError as e:
                return TaskEnd(error=e.error)

        caps = ctx.session.client_capabilities
        started = await self.tasks.start(call.call_id, call.principal.id, admitted, work, caps)
        if isinstance(started, TaskEnd):
            if started.error is not None:
                raise MCPError.from_error_data(started.error)
            return started.result or {"content": []}
        return {"resultType": "task", **started.envelope()}

    def _tool_answer(self, ctx: ServerRequestContext[Any, Any], outcome: Outcome) -> dict[str, Any]:
        """A ``tools/call`` outcome as the client gets it (raises ``MCPError`` for an upstream's own error)."""
        if outcome.denial is not None:
            note_denial(ctx, outcome.denial)
            return self._for_client(ctx, self._deny_tool_result(outcome.denial))
        if outcome.error is not None:
            if is_guard_error(outcome):  # by its provenance marker: an upstream's error never reads as ours
                text = f"mcp-guard: {outcome.error.message}"
                marker = {"mcp-guard/error": {"code": outcome.error.code, "origin": outcome.error_origin}}
                return self._for_client(
                    ctx, {"content": [{"type": "text", "text": text}], "isError": True, "_meta": marker}
                )
            raise MCPError.from_error_data(outcome.error)
        result = outcome.result or {"content": []}
        if outcome.decision is not None:
            # Correlation for clients and auditors: which decision (and audit rows) this answer belongs to.
            meta = result.get("_meta")
            result["_meta"] = {
                **(meta if isinstance(meta, dict) else {}),
                "mcp-guard/decision_id": outcome.decision.decision_id,
            }
        return self._for_client(ctx, result)

    # ------------------------------------------------------------------ resources
    def _route_uri(self, uri: str) -> tuple[str, str]:
        routed = self.registry.route_uri(uri)
        if routed is None:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"unknown resource {uri!r}: mcp-guard resource URIs look like "
                f"'mcpg://<upstream>/<uri>'; list them first",
            )
        return routed

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> dict[str, Any]:
        sess = self._session(ctx)
        server, local = self._route_uri(params.uri)
        request = types.ReadResourceRequest(
            params=types.ReadResourceRequestParams(uri=local, _meta=self._forward_meta(params.meta, ctx))
        )
        call = self._context(
            ctx,
            sess,
            action="resources/read",
            server=server,
            target=local,
            exposed=params.uri,
            arguments={"uri": local},
            request=request,
        )
        outcome = await self._run_for(ctx, sess, call, params)
        if isinstance(outcome, dict):
            return outcome
        result = self._raise_or_result(ctx, outcome)
        # Contents name their URIs: expose them under our scheme too, so a client can read them again.
        for item in result.get("contents") or []:
            if isinstance(item, dict) and isinstance(item.get("uri"), str):
                item["uri"] = self.registry.expose_uri(server, item["uri"])
        return result

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        sess = self._session(ctx)
        server, local = self._route_uri(params.uri)
        request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=local))
        call = self._context(
            ctx,
            sess,
            action="resources/subscribe",
            server=server,
            target=local,
            exposed=params.uri,
            arguments={"uri": local},
            request=request,
        )
        self._raise_or_result(ctx, await self._run(call))
        sess.subscriptions.add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        """The session stops getting updates at once. The upstream is told only when this session held the
        subscription (its subscribe was decided) and no other session still does — and then as a
        ``resources/unsubscribe`` call through the pipeline: decided and audited like every request that
        reaches an upstream. A deny leaves the upstream subscribed (its updates reach no one)."""
        sess = self._session(ctx)
        server, local = self._route_uri(params.uri)
        held = params.uri in sess.subscriptions
        sess.subscriptions.discard(params.uri)
        if not held or any(params.uri in s.subscriptions for s in self.sessions.live.values()):
            return types.EmptyResult()
        request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=local))
        call = self._context(
            ctx,
            sess,
            action="resources/unsubscribe",
            server=server,
            target=local,
            exposed=params.uri,
            arguments={"uri": local},
            request=request,
        )
        outcome = await self._run(call)
        if outcome.denial is not None:
            log.info("upstream.unsubscribe_denied", upstream=server, uri=local, reasons=list(outcome.denial.reasons))
        elif outcome.error is not None:
            log.info("upstream.unsubscribe_failed", upstream=server, uri=local, error=outcome.error.message)
        return types.EmptyResult()

    # ------------------------------------------------------------------ prompts
    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> dict[str, Any]:
        sess = self._session(ctx)
        found = self.registry.find_prompt(params.name)
        if found is None:
            raise self._deny_error(await self._unknown(sess, "prompts/get", params.name, "prompt"))
        server, local = found.upstream, found.local.name
        arguments = dict(params.arguments or {})
        request = types.GetPromptRequest(
            params=types.GetPromptRequestParams(
                name=local, arguments=arguments or None, _meta=self._forward_meta(params.meta, ctx)
            )
        )
        call = self._context(
            ctx,
            sess,
            action="prompts/get",
            server=server,
            target=local,
            exposed=params.name,
            arguments=arguments,
            request=request,
        )
        outcome = await self._run_for(ctx, sess, call, params)
        if isinstance(outcome, dict):
            return outcome
        return self._raise_or_result(ctx, outcome)

    # ------------------------------------------------------------------ completion, logging
    async def complete(
        self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> dict[str, Any]:
        sess = self._session(ctx)
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            found = self.registry.find_prompt(ref.name)
            if found is None:
                raise MCPError(code=types.INVALID_PARAMS, message=f"unknown prompt {ref.name!r}")
            server, local = found.upstream, found.local.name
            new_ref: types.PromptReference | types.ResourceTemplateReference = ref.model_copy(update={"name": local})
        else:
            server, local = self._route_uri(ref.uri)
            new_ref = ref.model_copy(update={"uri": local})
        request = types.CompleteRequest(
            params=params.model_copy(update={"ref": new_ref, "meta": self._forward_meta(params.meta, ctx)})
        )
        call = self._context(
            ctx,
            sess,
            action="completion/complete",
            server=server,
            target=local,
            exposed=ref.name if isinstance(ref, types.PromptReference) else ref.uri,
            arguments={"argument": params.argument.model_dump(mode="json")},
            request=request,
        )
        return self._raise_or_result(ctx, await self._run(call))

    # ------------------------------------------------------------------ tasks (io.modelcontextprotocol/tasks)
    async def task_get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        assert self.tasks is not None  # routed only when served
        return self.tasks.get(ctx, self.principal_of(ctx).id, params)

    async def task_cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        assert self.tasks is not None
        return self.tasks.cancel(ctx, self.principal_of(ctx).id, params)

    async def task_update(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        assert self.tasks is not None
        return await self.tasks.update(ctx, self.principal_of(ctx).id, params)

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """``subscriptions/listen``: one stream of the upstream changes this request's principal may hear of."""
        assert self.subscriptions is not None  # routed only when served
        sess = self._session(ctx)
        return await self.subscriptions.listen(ctx, params, self.principal_of(ctx), sess.info)

    def _for_client(self, ctx: ServerRequestContext[Any, Any], result: dict[str, Any]) -> dict[str, Any]:
        """An upstream (handshake-era) result, shaped for the client's era.

        2026-07-28 requires ``resultType``, and a cacheable ``resources/read`` result its cache hints: mcp-guard
        answers per principal, so ``private`` and no lifetime unless the upstream said otherwise. It also carries the
        server-info stamp, which the SDK's runner adds to a result without one by deep-copying its own dump on every
        answer (~300 bytecodes a call): put here as the runner puts it (see :func:`_stamped`), the runner leaves it.
        """
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result.setdefault("resultType", "complete")
            if ctx.method == "resources/read":
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
            if self.server_info_stamp is not None:
                _stamped(result, self.server_info_stamp)
        return result

    async def set_logging_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        """Kept for this session only: upstreams are shared by every session and principal, so one client's
        level is not theirs to change. Log messages relayed to this session below the level are dropped
        (:class:`~mcp_guard.frontend.sessions.RequestChannel`); no upstream is contacted, so there is nothing
        to decide or record."""
        self._session(ctx).log_level = params.level
        return types.EmptyResult()


AsyncHandler = Callable[..., Awaitable[Any]]


def _param_headers(ctx: ServerRequestContext[Any, Any]) -> dict[str, str] | None:
    """The ``Mcp-Param-*`` headers of the HTTP request behind ``ctx``, to pass on (None without)."""
    return param_headers_of(getattr(getattr(ctx.request, "headers", None), "raw", None))


def _http_trace_context(ctx: ServerRequestContext[Any, Any]) -> dict[str, str] | None:
    """The W3C ``traceparent`` / ``tracestate`` headers of the HTTP request behind ``ctx`` (None without)."""
    headers = getattr(ctx.request, "headers", None)
    parent = headers.get("traceparent") if headers is not None else None
    if not parent:
        return None
    state = headers.get("tracestate") if headers is not None else None
    return {"traceparent": parent, "tracestate": state} if state else {"traceparent": parent}


def _stamped(result: dict[str, Any], stamp: dict[str, Any]) -> None:
    """``result`` with a copy of ``stamp`` under ``_meta``'s server-info key, as the SDK's runner stamps a 2026-07-28
    result: a value already there wins (an explicit null does not); a ``_meta`` that is not an object is left alone;
    ``_meta`` is replaced, not written into (it may be the upstream's object). ``stamp`` holds only scalars
    (:func:`flat_stamp`), so ``dict()`` copies it whole."""
    meta = result.get("_meta")
    if meta is None:
        result["_meta"] = {SERVER_INFO_META_KEY: dict(stamp)}
    elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
        result["_meta"] = {**meta, SERVER_INFO_META_KEY: dict(stamp)}


def flat_stamp(stamp: dict[str, Any]) -> dict[str, Any] | None:
    """``stamp`` if every value in it is a scalar (a shallow copy is then a whole one), else None (the SDK stamps)."""
    return stamp if all(v is None or isinstance(v, str | int | float | bool) for v in stamp.values()) else None
