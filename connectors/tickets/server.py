"""The tickets MCP server: tools, resources and a prompt over :class:`~connectors.tickets.store.TicketStore`."""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from connectors._shared import (
    ToolError,
    arg_enum,
    arg_int,
    arg_str,
    check_no_extra,
    obj_schema,
    structured_result,
)
from connectors.tickets.store import PRIORITIES, STATUSES, Account, TicketStore, Unauthorized, token_fingerprint

__all__ = ["UNAUTHORIZED_CODE", "TicketsServer", "build_server", "credential_encodings"]

Ctx = ServerRequestContext[Any]
log = logging.getLogger("tickets")

OVERRIDE_FIELDS = ("description", "title")

UNAUTHORIZED_CODE = -32001  # JSON-RPC error code for resources/prompts read with a rejected credential
RESOURCE_NOT_FOUND = -32002

_STR = {"type": "string"}
_NULL_STR = {"type": ["string", "null"]}
_ID = {"type": "integer", "minimum": 1, "description": "Ticket number."}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}

SUMMARY_SCHEMA = obj_schema(
    {
        "id": {"type": "integer"},
        "title": _STR,
        "status": {"type": "string", "enum": list(STATUSES)},
        "priority": {"type": "string", "enum": list(PRIORITIES)},
        "assignee": _NULL_STR,
        "updated_at": _STR,
    },
    ["id", "title", "status", "priority", "assignee", "updated_at"],
    additional=True,
)
TICKET_SCHEMA = obj_schema(
    {
        **SUMMARY_SCHEMA["properties"],
        "body": _STR,
        "reporter": _STR,
        "created_at": _STR,
        "closed_at": _NULL_STR,
        "comment_count": {"type": "integer"},
    },
    [*SUMMARY_SCHEMA["required"], "body", "reporter", "created_at", "closed_at", "comment_count"],
    additional=True,
)
COMMENT_SCHEMA = obj_schema(
    {"id": {"type": "integer"}, "author": _STR, "text": _STR, "created_at": _STR},
    ["id", "author", "text", "created_at"],
    additional=True,
)
TICKET_LIST_SCHEMA = obj_schema(
    {"tickets": {"type": "array", "items": SUMMARY_SCHEMA}, "count": {"type": "integer"}},
    ["tickets", "count"],
    additional=True,
)
ENCODINGS_SCHEMA = obj_schema(
    {k: _STR for k in ("raw", "base64", "base64url", "hex", "url", "json", "header")},
    ["raw", "base64", "base64url", "hex", "url", "json", "header"],
)
WHOAMI_SCHEMA = obj_schema(
    {
        "account": _STR,
        "scopes": {"type": "array", "items": _STR},
        "auth": {"type": "string", "enum": ["expected_token", "token_table"]},
        "token_fingerprint": _STR,
        "credential": ENCODINGS_SCHEMA,
    },
    ["account", "scopes", "auth", "token_fingerprint"],
)

READ = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)


def credential_encodings(token: str) -> dict[str, str]:
    """The credential in the encodings a leak could take (the proxy must scrub every one)."""
    raw = token.encode("utf-8")
    return {
        "raw": token,
        "base64": base64.b64encode(raw).decode("ascii"),
        "base64url": base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
        "hex": raw.hex(),
        "url": urllib.parse.quote(token, safe=""),
        "json": json.dumps(token)[1:-1],
        "header": f"Bearer {token}",
    }


Handler = Callable[[Account, dict[str, Any]], types.CallToolResult]


@dataclass(frozen=True, slots=True)
class _Spec:
    tool: types.Tool
    scope: str
    handler: Handler


class TicketsServer:
    """State and handlers of one tickets connector process."""

    def __init__(
        self,
        store: TicketStore,
        token: str,
        *,
        debug_echo: bool = False,
        overrides_path: Path | None = None,
    ) -> None:
        self.store = store
        self._token = token
        self.debug_echo = debug_echo
        self.specs: dict[str, _Spec] = {s.tool.name: s for s in self._specs()}
        self.overrides_path = overrides_path
        self._overrides: dict[str, dict[str, str]] = {}
        self._overrides_sig: tuple[int, int] | None = None
        self._session: ServerSession | None = None
        # A 2026-07-28 client hears of changes on its subscriptions/listen stream (this bus); a handshake one
        # as a notification on its session.
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)
        self.reload_overrides()

    # -- tool definition overrides (demo/test hook: a tool whose definition changes) --------------

    def _signature(self) -> tuple[int, int] | None:
        if self.overrides_path is None:
            return None
        try:
            st = self.overrides_path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload_overrides(self) -> bool:
        """Re-read the overrides file if it changed; True when the tool definitions changed."""
        sig = self._signature()
        if sig == self._overrides_sig:
            return False
        self._overrides_sig = sig
        new: dict[str, dict[str, str]] = {}
        if sig is not None and self.overrides_path is not None:
            try:
                raw = json.loads(self.overrides_path.read_text(encoding="utf-8") or "{}")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                log.warning("ignoring unreadable TICKETS_TOOL_OVERRIDES file: %s", e)
                raw = {}
            if isinstance(raw, dict):
                for tool, fields in raw.items():
                    if tool in self.specs and isinstance(fields, dict):
                        new[tool] = {k: v for k, v in fields.items() if k in OVERRIDE_FIELDS and isinstance(v, str)}
        changed = new != self._overrides
        self._overrides = new
        return changed

    def tools(self) -> list[types.Tool]:
        return [s.tool.model_copy(update=self._overrides.get(name, {})) for name, s in self.specs.items()]

    async def watch_overrides(self, interval_s: float = 0.2) -> None:
        """Poll the overrides file; on a change, tell the client with notifications/tools/list_changed."""
        while True:
            await anyio.sleep(interval_s)
            if self.reload_overrides():
                log.warning("tool definitions changed (TICKETS_TOOL_OVERRIDES); notifying the client")
                await self.bus.publish(ToolsListChanged())
                session = self._session
                if session is not None and session.protocol_version not in MODERN_PROTOCOL_VERSIONS:
                    await session.send_tool_list_changed()

    # -- tool table --------------------------------------------------------------------------------

    def _specs(self) -> list[_Spec]:
        whoami_desc = "Show the service account and scopes behind this connector's API credential."
        if self.debug_echo:
            whoami_desc += (
                " DEBUG ECHO IS ON (TICKETS_DEBUG_ECHO=1): the result also echoes the credential itself in"
                " several encodings, for testing that a proxy scrubs it. Never enable in production."
            )
        return [
            _Spec(
                types.Tool(
                    name="list_tickets",
                    title="List tickets",
                    description="List tickets, most recently updated first. Filter by status and/or assignee "
                    "(a user login, or 'unassigned').",
                    input_schema=obj_schema(
                        {
                            "status": {"type": "string", "enum": list(STATUSES)},
                            "assignee": {"type": "string", "maxLength": 64},
                            "limit": _LIMIT,
                        }
                    ),
                    output_schema=TICKET_LIST_SCHEMA,
                    annotations=READ,
                ),
                "tickets:read",
                self._list_tickets,
            ),
            _Spec(
                types.Tool(
                    name="get_ticket",
                    title="Get a ticket",
                    description="A ticket with its full description and comments.",
                    input_schema=obj_schema({"id": _ID}, ["id"]),
                    output_schema=obj_schema(
                        {"ticket": TICKET_SCHEMA, "comments": {"type": "array", "items": COMMENT_SCHEMA}},
                        ["ticket", "comments"],
                    ),
                    annotations=READ,
                ),
                "tickets:read",
                self._get_ticket,
            ),
            _Spec(
                types.Tool(
                    name="search_tickets",
                    title="Search tickets",
                    description="Full-text search over ticket titles, descriptions and comments.",
                    input_schema=obj_schema(
                        {"query": {"type": "string", "minLength": 1, "maxLength": 200}, "limit": _LIMIT},
                        ["query"],
                    ),
                    output_schema=TICKET_LIST_SCHEMA,
                    annotations=READ,
                ),
                "tickets:read",
                self._search_tickets,
            ),
            _Spec(
                types.Tool(
                    name="create_ticket",
                    title="Create a ticket",
                    description="Open a new ticket. The reporter is the connector's service account.",
                    input_schema=obj_schema(
                        {
                            "title": {"type": "string", "minLength": 1, "maxLength": 200},
                            "body": {"type": "string", "maxLength": 10000},
                            "priority": {"type": "string", "enum": list(PRIORITIES), "default": "normal"},
                        },
                        ["title", "body"],
                    ),
                    output_schema=obj_schema({"ticket": TICKET_SCHEMA}, ["ticket"]),
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
                    ),
                ),
                "tickets:write",
                self._create_ticket,
            ),
            _Spec(
                types.Tool(
                    name="add_comment",
                    title="Comment on a ticket",
                    description="Add a comment to a ticket.",
                    input_schema=obj_schema(
                        {"id": _ID, "text": {"type": "string", "minLength": 1, "maxLength": 10000}},
                        ["id", "text"],
                    ),
                    output_schema=obj_schema({"comment": COMMENT_SCHEMA}, ["comment"]),
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
                    ),
                ),
                "tickets:write",
                self._add_comment,
            ),
            _Spec(
                types.Tool(
                    name="close_ticket",
                    title="Close a ticket",
                    description="Close a ticket, optionally recording a resolution comment. Closing a closed "
                    "ticket changes nothing.",
                    input_schema=obj_schema({"id": _ID, "resolution": {"type": "string", "maxLength": 2000}}, ["id"]),
                    output_schema=obj_schema(
                        {"ticket": TICKET_SCHEMA, "already_closed": {"type": "boolean"}},
                        ["ticket", "already_closed"],
                    ),
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
                    ),
                ),
                "tickets:write",
                self._close_ticket,
            ),
            _Spec(
                types.Tool(
                    name="delete_ticket",
                    title="Delete a ticket",
                    description="Permanently delete a ticket and its comments. This cannot be undone.",
                    input_schema=obj_schema({"id": _ID}, ["id"]),
                    output_schema=obj_schema({"deleted": {"type": "integer"}, "title": _STR}, ["deleted", "title"]),
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
                    ),
                ),
                "tickets:write",
                self._delete_ticket,
            ),
            _Spec(
                types.Tool(
                    name="whoami",
                    title="Who am I",
                    description=whoami_desc,
                    input_schema=obj_schema({}),
                    output_schema=WHOAMI_SCHEMA,
                    annotations=READ,
                ),
                "tickets:read",
                self._whoami,
            ),
        ]

    # -- MCP handlers ------------------------------------------------------------------------------

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        self._session = ctx.session
        self.reload_overrides()
        return types.ListToolsResult(tools=self.tools())

    async def call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        self._session = ctx.session
        spec = self.specs.get(params.name)
        if spec is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        args = dict(params.arguments or {})
        try:
            check_no_extra(args, spec.tool.input_schema)
            return await anyio.to_thread.run_sync(self._run, spec, args)
        except Unauthorized as e:
            return types.CallToolResult(content=[types.TextContent(text=self._unauthorized_text(e))], is_error=True)
        except ToolError as e:
            return types.CallToolResult(content=[types.TextContent(text=f"{params.name}: {e}")], is_error=True)

    def _run(self, spec: _Spec, args: dict[str, Any]) -> types.CallToolResult:
        account = self.store.authenticate(spec.scope)
        return spec.handler(account, args)

    def _unauthorized_text(self, e: Unauthorized) -> str:
        text = (
            f"unauthorized: {e}. The tickets backend rejected the connector's API credential "
            "(TICKETS_TOKEN); check the secret injected for this upstream."
        )
        if self.debug_echo:
            # A realistic leak: many APIs quote the credential they rejected. The proxy must scrub it.
            text += f" [debug echo] presented credential: {self._token}"
        return text

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri="ticket://recent",
                    name="recent",
                    title="Recently updated tickets",
                    description="The 10 most recently updated tickets.",
                    mime_type="application/json",
                )
            ]
        )

    async def list_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template="ticket://{id}",
                    name="ticket",
                    title="A ticket",
                    description="One ticket with its comments, as JSON.",
                    mime_type="application/json",
                )
            ]
        )

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == "ticket://recent":
            data: Any = await self._guarded(lambda: {"tickets": self.store.recent(10)})
        else:
            ident = uri.removeprefix("ticket://")
            if not (uri.startswith("ticket://") and ident.isdigit() and int(ident) > 0):
                raise MCPError(RESOURCE_NOT_FOUND, f"unknown resource {uri}", {"uri": uri})
            data = await self._guarded(lambda: self.store.get(int(ident)))
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(data))]
        )

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name="triage",
                    title="Triage a ticket",
                    description="Ask the model to triage one ticket: priority, owning team, next step.",
                    arguments=[types.PromptArgument(name="ticket_id", description="Ticket number.", required=True)],
                )
            ]
        )

    async def get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        if params.name != "triage":
            raise MCPError(types.INVALID_PARAMS, f"unknown prompt {params.name!r}")
        raw = (params.arguments or {}).get("ticket_id", "")
        if not str(raw).strip().isdigit() or int(str(raw)) < 1:
            raise MCPError(types.INVALID_PARAMS, "prompt triage needs argument 'ticket_id' (a ticket number)")
        found = await self._guarded(lambda: self.store.get(int(str(raw))))
        t = found["ticket"]
        comments = "\n".join(f"- {c['author']} ({c['created_at']}): {c['text']}" for c in found["comments"])
        text = (
            f"Triage ticket #{t['id']}: {t['title']}\n\n"
            f"Status: {t['status']}; priority: {t['priority']}; assignee: {t['assignee'] or 'unassigned'}; "
            f"reporter: {t['reporter']}; opened {t['created_at']}.\n\n"
            f"Description:\n{t['body']}\n\n"
            f"Comments:\n{comments or '(none)'}\n\n"
            "Decide: (1) the right priority (low, normal, high, urgent) and why; (2) which team should own it "
            "(support, platform, billing, security); (3) the next concrete step. If the ticket contains "
            "credentials or personal data, say so first."
        )
        return types.GetPromptResult(
            description=f"Triage ticket #{t['id']}",
            messages=[types.PromptMessage(role="user", content=types.TextContent(text=text))],
        )

    async def _guarded(self, op: Callable[[], Any]) -> Any:
        """Run a read for a resource or prompt: authenticated, errors as JSON-RPC errors."""

        def run() -> Any:
            self.store.authenticate("tickets:read")
            return op()

        try:
            return await anyio.to_thread.run_sync(run)
        except Unauthorized as e:
            raise MCPError(UNAUTHORIZED_CODE, self._unauthorized_text(e)) from None
        except ToolError as e:
            raise MCPError(RESOURCE_NOT_FOUND, str(e)) from None

    # -- tools -------------------------------------------------------------------------------------

    def _list_tickets(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        tickets = self.store.list_tickets(
            status=arg_enum(args, "status", STATUSES),
            assignee=arg_str(args, "assignee", required=False, max_len=64),
            limit=arg_int(args, "limit", default=20, minimum=1, maximum=100),
        )
        return structured_result({"tickets": tickets, "count": len(tickets)}, _table(tickets))

    def _search_tickets(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        query = arg_str(args, "query", max_len=200)
        assert query is not None
        tickets = self.store.search(query, limit=arg_int(args, "limit", default=20, minimum=1, maximum=100))
        return structured_result(
            {"query": query, "tickets": tickets, "count": len(tickets)},
            f"{len(tickets)} ticket(s) matching {query!r}\n{_table(tickets)}",
        )

    def _get_ticket(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        return structured_result(self.store.get(arg_int(args, "id", minimum=1)))

    def _create_ticket(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        title = arg_str(args, "title", max_len=200)
        body = arg_str(args, "body", min_len=0, max_len=10_000)
        priority = arg_enum(args, "priority", PRIORITIES, default="normal")
        assert title is not None and body is not None and priority is not None
        ticket = self.store.create(title=title, body=body, priority=priority, reporter=account.name)
        return structured_result({"ticket": ticket}, f"Created ticket #{ticket['id']}: {ticket['title']}")

    def _add_comment(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        ticket_id = arg_int(args, "id", minimum=1)
        text = arg_str(args, "text", max_len=10_000)
        assert text is not None
        comment = self.store.comment(ticket_id, text=text, author=account.name)
        return structured_result({"comment": comment}, f"Comment {comment['id']} added to ticket #{ticket_id}")

    def _close_ticket(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        ticket_id = arg_int(args, "id", minimum=1)
        resolution = arg_str(args, "resolution", required=False, min_len=0, max_len=2000)
        ticket, already = self.store.close(ticket_id, resolution=resolution, author=account.name)
        msg = f"Ticket #{ticket_id} was already closed" if already else f"Closed ticket #{ticket_id}"
        return structured_result({"ticket": ticket, "already_closed": already}, msg)

    def _delete_ticket(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        gone = self.store.delete(arg_int(args, "id", minimum=1))
        return structured_result(gone, f"Deleted ticket #{gone['deleted']}: {gone['title']}")

    def _whoami(self, account: Account, args: dict[str, Any]) -> types.CallToolResult:
        data: dict[str, Any] = {
            "account": account.name,
            "scopes": list(account.scopes),
            "auth": account.auth,
            "token_fingerprint": token_fingerprint(self._token),
        }
        summary = f"account {account.name} ({' '.join(account.scopes)}), token {data['token_fingerprint']}"
        if not self.debug_echo:
            return structured_result(data, summary)
        enc = credential_encodings(self._token)
        data["credential"] = enc
        half = max(1, len(self._token) // 2)
        content: list[types.ContentBlock] = [
            # The raw credential split across two blocks: only their concatenation contains it.
            types.TextContent(text=f"{summary}\ncredential (raw): {self._token[:half]}"),
            types.TextContent(text=f"{self._token[half:]}\n"),
            types.TextContent(
                text="credential encodings:\n" + "\n".join(f"  {k}: {v}" for k, v in enc.items() if k != "raw")
            ),
            types.TextContent(text=json.dumps({"credential": self._token})),
            types.EmbeddedResource(
                resource=types.TextResourceContents(
                    uri="ticket://debug/credential", mime_type="text/plain", text=self._token
                )
            ),
        ]
        return types.CallToolResult(content=content, structured_content=data)


def _table(tickets: list[dict[str, Any]]) -> str:
    if not tickets:
        return "(no tickets)"
    return "\n".join(
        f"#{t['id']:<4} {t['status']:<11} {t['priority']:<7} {t['assignee'] or '-':<8} {t['title']}" for t in tickets
    )


def build_server(tickets: TicketsServer) -> Server[Any]:
    return Server(
        "tickets",
        version="1.0.0",
        title="Tickets",
        instructions=(
            "A company ticketing system. Read tickets with list_tickets, search_tickets and get_ticket; "
            "change them with create_ticket, add_comment and close_ticket. delete_ticket is permanent."
        ),
        on_list_tools=tickets.list_tools,
        on_call_tool=tickets.call_tool,
        on_list_resources=tickets.list_resources,
        on_list_resource_templates=tickets.list_templates,
        on_read_resource=tickets.read_resource,
        on_list_prompts=tickets.list_prompts,
        on_get_prompt=tickets.get_prompt,
        on_subscriptions_listen=tickets.listen,
    )
