"""Conformance fixture: an MCP server implementing what the official conformance suite's server scenarios call.

Written against the low-level SDK server (``mcp.server.lowlevel.Server``) so that every wire detail is
explicit. It serves both protocol eras the SDK speaks: the handshake era (2025-11-25 and older, with
server→client requests for sampling/elicitation/roots and notifications on the standalone stream) and the
stateless 2026-07-28 era (per-request ``_meta``, ``server/discover``, ``InputRequiredResult``
multi-round-trips with a sealed ``requestState``, ``subscriptions/listen`` streams).

Run it::

    python tests/conformance/conformance_fixture.py --transport http --port 3001   # http://127.0.0.1:3001/mcp
    python tests/conformance/conformance_fixture.py --transport stdio

Names are fixed by the suite (``test_simple_text``, ``test://static-text``, ``test_simple_prompt``…): a proxy
in front of this fixture has to expose them unchanged for the suite to find them.

Extras the suite does not call but a proxy test can use:
    test_touch_watched_resource   changes ``test://watched-resource`` and announces it (handshake era:
                                  ``notifications/resources/updated`` to subscribers; 2026-07-28: to
                                  ``subscriptions/listen`` streams that asked for that URI)
    required_task_job             declares taskSupport "required" (answers at once, unlike failing_job)
    protocol_error_job            declares taskSupport "optional"; fails with a JSON-RPC error
    tools/list, resources/list and prompts/list paginate when ``--page-size N`` (or
    ``CONFORMANCE_FIXTURE_PAGE_SIZE``) is set; by default everything is on one page.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import anyio
import mcp_types as types
from mcp.server.caching import CacheableMethod, CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

# Logging, sampling, elicitation requests and client→server progress are deprecated in the 2026-07-28 era
# but are the handshake-era protocol this fixture exists to exercise.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

log = logging.getLogger("conformance-fixture")

Ctx = ServerRequestContext[Any]

SERVER_NAME = "mcp-guard-conformance-fixture"

# A 1x1 PNG and a tiny (empty) WAV file, base64.
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_EMPTY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

# The per-step pause of the logging and progress tools. The scenarios describe "~50ms" between
# notifications so that a client (or a proxy) must relay them while the call is still running.
STEP_PAUSE_S = 0.05

# A fixed key keeps sealed requestState valid across restarts of the fixture; it protects nothing real.
REQUEST_STATE_KEY = b"mcp-guard conformance fixture requestState key (not a secret)"

SIMPLE_TEXT = "This is a simple text response for testing."
ERROR_TEXT = "This tool intentionally returns an error for testing"
WATCHED_URI = "test://watched-resource"
# slow_compute's longest sleep. The suite asks for 60 s to have a task to cancel; a task is cancelled at once, but
# a direct run (the fixture serves no tasks) would wait for each of those calls synchronously.
SLOW_CAP_S = 3.0
TEMPLATE = "test://template/{id}/data"

LOG_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)


# -- schemas --------------------------------------------------------------------------------------------


def _obj(props: dict[str, Any] | None = None, required: Sequence[str] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props or {}}
    if required:
        schema["required"] = list(required)
    return schema


_STR = {"type": "string"}

TASK_INPUT_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "confirm": {"type": "boolean"}},
}
NAME_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "Your name"}},
    "required": ["name"],
}
CONFIRM_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {"ok": {"type": "boolean", "description": "Confirm"}},
    "required": ["ok"],
}
COLOR_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {"color": {"type": "string", "description": "A colour"}},
    "required": ["color"],
}
CONTEXT_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {"context": {"type": "string", "description": "Context for the prompt"}},
    "required": ["context"],
}
USER_INFO_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}
# SEP-1034: a default for every primitive type.
DEFAULTS_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}
# SEP-1330: the enum spellings (plain, titled oneOf, multi-select plain and titled, legacy enumNames).
ENUMS_SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Simple enum without titles",
            "enum": ["active", "inactive", "pending"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Enum with titled options",
            "oneOf": [
                {"const": "low", "title": "Low Priority"},
                {"const": "medium", "title": "Medium Priority"},
                {"const": "high", "title": "High Priority"},
            ],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Multi-select without titles",
            "items": {"type": "string", "enum": ["read", "write", "execute"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Multi-select with titled options",
            "items": {
                "anyOf": [
                    {"const": "feature", "title": "New Feature"},
                    {"const": "bug", "title": "Bug Fix"},
                    {"const": "docs", "title": "Documentation"},
                ]
            },
        },
        "legacyEnum": {
            "type": "string",
            "description": "Legacy enum with enumNames",
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    },
}
# SEP-1613: a tool input schema using 2020-12 keywords that must survive tools/list unchanged.
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def _tool(
    name: str,
    description: str,
    schema: dict[str, Any] | None = None,
    *,
    tasks: Literal["optional", "required"] | None = None,
) -> types.Tool:
    execution = types.ToolExecution(task_support=tasks) if tasks is not None else None
    return types.Tool(name=name, description=description, input_schema=schema or _obj(), execution=execution)


TOOLS: list[types.Tool] = [
    _tool("test_simple_text", "Returns one text block."),
    _tool("test_image_content", "Returns one PNG image block."),
    _tool("test_audio_content", "Returns one WAV audio block."),
    _tool("test_embedded_resource", "Returns one embedded text resource."),
    _tool("test_multiple_content_types", "Returns text, image and an embedded resource together."),
    _tool("test_tool_with_logging", "Sends three info log notifications while it runs."),
    _tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100 while it runs."),
    _tool("test_error_handling", "Always fails with isError=true."),
    _tool(
        "test_sampling",
        "Asks the client's model (sampling/createMessage) and returns its answer.",
        _obj({"prompt": {"type": "string", "description": "The prompt for the model"}}, ["prompt"]),
    ),
    _tool(
        "test_elicitation",
        "Asks the user (elicitation/create) for a username and e-mail.",
        _obj({"message": {"type": "string", "description": "What to show the user"}}, ["message"]),
    ),
    _tool("test_elicitation_sep1034_defaults", "Elicitation whose schema has a default for every primitive type."),
    _tool("test_elicitation_sep1330_enums", "Elicitation whose schema uses every enum spelling."),
    _tool("test_missing_capability", "Needs the client's sampling capability; refuses with -32021 without it."),
    _tool("test_streaming_elicitation", "Needs user input: asks for it without an independent request."),
    _tool("test_logging_tool", "Logs once at info level (only when the request opted in to logs)."),
    _tool("test_trigger_tool_change", "Announces that the tool list changed."),
    _tool("test_trigger_prompt_change", "Announces that the prompt list changed."),
    _tool("test_touch_watched_resource", "Changes test://watched-resource and announces the update."),
    _tool("test_input_required_result_elicitation", "Multi-round-trip: asks the user's name."),
    _tool("test_input_required_result_sampling", "Multi-round-trip: asks the client's model a question."),
    _tool("test_input_required_result_list_roots", "Multi-round-trip: asks for the client's roots."),
    _tool("test_input_required_result_request_state", "Multi-round-trip with a requestState to echo."),
    _tool("test_input_required_result_multiple_inputs", "Multi-round-trip asking elicitation, sampling and roots."),
    _tool("test_input_required_result_multi_round", "Three rounds with an evolving requestState."),
    _tool("test_input_required_result_tampered_state", "Multi-round-trip whose requestState is integrity-checked."),
    _tool("test_input_required_result_capabilities", "Asks only for inputs the client declared it can give."),
    _tool("test_reconnection", "Closes its own SSE stream mid-call, then finishes (SEP-1699 resumability)."),
    _tool("json_schema_2020_12_tool", "Carries a JSON Schema 2020-12 input schema.", JSON_SCHEMA_2020_12),
    _tool(
        "test_x_mcp_header",
        "Echoes a region argument that is mirrored into the Mcp-Param-Region header.",
        _obj({"region": {"type": "string", "description": "A region", "x-mcp-header": "Region"}}),
    ),
    # The tasks extension's fixtures (SEP-2663). The fixture itself runs every tool synchronously and does not
    # serve tasks; mcp-guard serves tasks for them. Its definitions say which tools may run as tasks only in the
    # handshake era (a 2026-07-28 Tool has no execution field): a proxy speaking 2026-07-28 to it is configured
    # with the same table (TASK_SUPPORT; [upstreams.X] task_tools, tests/e2e/test_conformance_proxy.py).
    _tool("greet", "Sync only: returns 'Hello, {name}!'.", _obj({"name": {"type": "string"}}, ["name"])),
    _tool(
        "slow_compute",
        f"Task-supporting: sleeps `seconds` (at most {SLOW_CAP_S:g}), then answers.",
        _obj({"seconds": {"type": "number"}, "label": {"type": "string"}}),
        tasks="optional",
    ),
    # "required", as tasks-required-task-error wants. (http-header-validation calls the first tool listed
    # without the extension: in a sorted listing that is confirm_delete, which runs synchronously without it.)
    _tool("failing_job", "Task-required: a tool execution error after a moment.", tasks="required"),
    _tool("required_task_job", "Task-required (an extra): answers at once.", tasks="required"),
    _tool(
        "confirm_delete",
        "Task-supporting: asks the user to confirm (one elicitation), then answers.",
        _obj({"filename": {"type": "string"}}),
        tasks="optional",
    ),
    _tool(
        "multi_input", "Task-supporting: asks two things at once (two elicitations), then answers.", tasks="optional"
    ),
    _tool("protocol_error_job", "Task-supporting: fails with a JSON-RPC (protocol) error.", tasks="optional"),
]

TASK_SUPPORT: dict[str, str] = {
    t.name: t.execution.task_support for t in TOOLS if t.execution is not None and t.execution.task_support
}
"""The tools that say they may run as tasks (handshake era), and how: what a 2026-era proxy is configured with."""

PROMPTS: list[types.Prompt] = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments."),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments.",
        arguments=[
            types.PromptArgument(name="arg1", description="First argument", required=True),
            types.PromptArgument(name="arg2", description="Second argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource.",
        arguments=[types.PromptArgument(name="resourceUri", description="URI to embed", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image."),
    types.Prompt(name="test_input_required_result_prompt", description="A prompt that first asks the user."),
]

# Completion candidates per (prompt, argument); values starting with the typed prefix are offered.
COMPLETIONS: dict[tuple[str, str], list[str]] = {
    ("test_prompt_with_arguments", "arg1"): ["paris", "park", "party", "test", "testing"],
    ("test_prompt_with_arguments", "arg2"): ["alpha", "beta", "gamma"],
    ("test_prompt_with_embedded_resource", "resourceUri"): ["test://static-text", "test://static-binary"],
}


# How many question rounds a handshake-era call may take before the fixture gives up (multi_round needs 2).
MAX_ROUNDS = 8

ParamsT = TypeVar("ParamsT", types.CallToolRequestParams, types.GetPromptRequestParams)
ResultT = TypeVar(
    "ResultT", types.CallToolResult | types.InputRequiredResult, types.GetPromptResult | types.InputRequiredResult
)


class Declined(Exception):
    """Handshake era: the user declined or cancelled an elicitation the call needed."""

    def __init__(self, key: str, action: str) -> None:
        super().__init__(f"{key}: {action}")
        self.key = key
        self.action = action


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _result(*blocks: types.ContentBlock, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=list(blocks), is_error=is_error)


def _elicit(message: str, schema: types.ElicitRequestedSchema) -> types.ElicitRequest:
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int) -> types.CreateMessageRequest:
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=_text(text))], max_tokens=max_tokens
        )
    )


def _accepted(answer: types.InputResponse | None) -> dict[str, Any] | None:
    """The content of an accepted elicitation answer, else None."""
    if isinstance(answer, types.ElicitResult) and answer.action == "accept":
        return dict(answer.content or {})
    return None


def _sampled_text(answer: types.InputResponse | None) -> str | None:
    if isinstance(answer, types.CreateMessageResult) and isinstance(answer.content, types.TextContent):
        return answer.content.text
    return None


class Fixture:
    """State and handlers of one conformance fixture server."""

    def __init__(self, *, page_size: int | None = None) -> None:
        self.page_size = page_size if page_size and page_size > 0 else None
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)
        self.subscriptions: set[str] = set()
        self.log_level: types.LoggingLevel = "debug"
        self.watched_text = "Watched resource content"
        self.watched_version = 0

    # -- pagination --------------------------------------------------------------------------------------

    def _page(self, items: list[Any], cursor: str | None) -> tuple[list[Any], str | None]:
        if self.page_size is None:
            if cursor:
                raise MCPError(types.INVALID_PARAMS, f"invalid cursor {cursor!r}")
            return items, None
        start = 0
        if cursor:
            digits = cursor.removeprefix("page:")
            if not cursor.startswith("page:") or not digits.isdigit() or int(digits) > len(items):
                raise MCPError(types.INVALID_PARAMS, f"invalid cursor {cursor!r}")
            start = int(digits)
        end = start + self.page_size
        return items[start:end], (f"page:{end}" if end < len(items) else None)

    # -- tools -------------------------------------------------------------------------------------------

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        page, nxt = self._page(TOOLS, params.cursor if params else None)
        return types.ListToolsResult(tools=page, next_cursor=nxt)

    async def call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        handler = getattr(self, f"_tool_{params.name}", None)
        if handler is None or params.name not in {t.name for t in TOOLS}:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}", {"name": params.name})
        try:
            return await self._drive(ctx, params, handler)
        except Declined as exc:
            return _result(_text(f"Input {exc.key!r} was not given: the user chose {exc.action}"), is_error=True)

    def _modern(self, ctx: Ctx) -> bool:
        return ctx.session.protocol_version in MODERN_PROTOCOL_VERSIONS

    async def _drive(self, ctx: Ctx, params: ParamsT, step: Callable[[Ctx, ParamsT], Awaitable[ResultT]]) -> ResultT:
        """Run a handler that may need client input, in either era.

        2026-07-28: an ``InputRequiredResult`` goes back to the client as is; the client answers by retrying.
        Handshake era: there are no multi-round-trips, so the questions are asked here as server→client
        requests on this call's stream, and the handler is re-run with the answers (and the requestState it
        issued) as if the client had retried — the same dialogue, each question asked exactly once.
        """
        result = await step(ctx, params)
        rounds = 0
        while isinstance(result, types.InputRequiredResult) and not self._modern(ctx):
            rounds += 1
            if rounds > MAX_ROUNDS:
                raise MCPError(types.INTERNAL_ERROR, f"still asking for input after {MAX_ROUNDS} rounds")
            answers = await self._ask_now(ctx, result.input_requests or {})
            params = params.model_copy(update={"input_responses": answers, "request_state": result.request_state})
            result = await step(ctx, params)
        return result

    async def _ask_now(self, ctx: Ctx, requests: dict[str, types.InputRequest]) -> dict[str, types.InputResponse]:
        """Handshake era: send the input requests to the client now, all at once (as the 2026-07-28 era
        presents them together), and collect the answers."""
        related = ServerMessageMetadata(related_request_id=ctx.request_id)
        answers: dict[str, types.InputResponse] = {}
        declined: list[Declined] = []

        async def ask(key: str, request: types.InputRequest) -> None:
            answer: types.InputResponse
            if isinstance(request, types.ElicitRequest):
                answer = await ctx.session.send_request(request, types.ElicitResult, metadata=related)
                if answer.action != "accept":
                    declined.append(Declined(key, answer.action))
                    return
            elif isinstance(request, types.CreateMessageRequest):
                answer = await ctx.session.send_request(request, types.CreateMessageResult, metadata=related)
            else:
                answer = await ctx.session.send_request(request, types.ListRootsResult, metadata=related)
            answers[key] = answer

        for request in requests.values():  # every capability is checked before anything is asked
            if isinstance(request, types.ElicitRequest):
                self._require(ctx, types.ClientCapabilities(elicitation=types.ElicitationCapability()), "elicitation")
            elif isinstance(request, types.CreateMessageRequest):
                self._require(ctx, types.ClientCapabilities(sampling=types.SamplingCapability()), "sampling")
            else:
                self._require(ctx, types.ClientCapabilities(roots=types.RootsCapability()), "roots")
        async with anyio.create_task_group() as tg:
            for key, request in requests.items():
                tg.start_soon(ask, key, request)
        if declined:
            raise declined[0]
        return {key: answers[key] for key in requests if key in answers}

    async def _tool_test_simple_text(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(_text(SIMPLE_TEXT))

    async def _tool_test_image_content(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(types.ImageContent(type="image", data=PNG_1X1, mime_type="image/png"))

    async def _tool_test_audio_content(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(types.AudioContent(type="audio", data=WAV_EMPTY, mime_type="audio/wav"))

    async def _tool_test_embedded_resource(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="test://embedded-resource",
                    mime_type="text/plain",
                    text="This is an embedded resource content.",
                ),
            )
        )

    async def _tool_test_multiple_content_types(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(
            _text("Multiple content types test:"),
            types.ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="test://mixed-content-resource",
                    mime_type="application/json",
                    text=json.dumps({"test": "data", "value": 123}),
                ),
            ),
        )

    async def _log(self, ctx: Ctx, level: types.LoggingLevel, message: str) -> None:
        # Handshake era: honour logging/setLevel. 2026-07-28: the SDK gates on the request's own opt-in.
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(self.log_level):
            return
        await ctx.session.send_log_message(level, message, logger=SERVER_NAME, related_request_id=ctx.request_id)

    async def _tool_test_tool_with_logging(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        await self._log(ctx, "info", "Tool execution started")
        await anyio.sleep(STEP_PAUSE_S)
        await self._log(ctx, "info", "Tool processing data")
        await anyio.sleep(STEP_PAUSE_S)
        await self._log(ctx, "info", "Tool execution completed")
        return _result(_text("Tool with logging executed successfully"))

    async def _tool_test_logging_tool(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        await self._log(ctx, "info", "Diagnostic log line from test_logging_tool")
        return _result(_text("Logging evaluated"))

    async def _tool_test_tool_with_progress(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        for i, value in enumerate((0, 50, 100)):
            if i:
                await anyio.sleep(STEP_PAUSE_S)
            await ctx.session.report_progress(value, 100, f"Completed step {value} of 100")
        token = ctx.meta.get("progress_token") if ctx.meta else None
        return _result(_text(f"Progress reported for token {token!r}"))

    async def _tool_test_error_handling(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(_text(ERROR_TEXT), is_error=True)

    def _require(self, ctx: Ctx, capability: types.ClientCapabilities, label: str) -> None:
        if not ctx.session.check_client_capability(capability):
            raise MCPError(
                types.MISSING_REQUIRED_CLIENT_CAPABILITY,
                f"This tool requires the client '{label}' capability",
                {"requiredCapabilities": {label: {}}},
            )

    async def _tool_test_sampling(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        self._require(ctx, types.ClientCapabilities(sampling=types.SamplingCapability()), "sampling")
        prompt = str((p.arguments or {}).get("prompt", ""))
        if self._modern(ctx):  # no back channel in the 2026-07-28 era: the same question as a multi-round-trip
            answer = (p.input_responses or {}).get("sampling")
            if not isinstance(answer, types.CreateMessageResult):
                return types.InputRequiredResult(input_requests={"sampling": _sample(prompt, 100)})
        else:
            answer = await ctx.session.create_message(
                messages=[types.SamplingMessage(role="user", content=_text(prompt))],
                max_tokens=100,
                related_request_id=ctx.request_id,
            )
        text = answer.content.text if isinstance(answer.content, types.TextContent) else "(non-text answer)"
        return _result(_text(f"LLM response: {text}"))

    async def _elicit_legacy(
        self, ctx: Ctx, p: types.CallToolRequestParams, message: str, schema: types.ElicitRequestedSchema, label: str
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A handshake-era elicitation (any action is the tool's answer); in the 2026-07-28 era the same
        question as a multi-round-trip, so the tool serves a handshake client through a 2026 intermediary."""
        self._require(ctx, types.ClientCapabilities(elicitation=types.ElicitationCapability()), "elicitation")
        if self._modern(ctx):
            answer = (p.input_responses or {}).get("elicitation")
            if not isinstance(answer, types.ElicitResult):
                return types.InputRequiredResult(input_requests={"elicitation": _elicit(message, schema)})
        else:
            answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        content = json.dumps(answer.content or {}, sort_keys=True)
        return _result(_text(f"{label}: action={answer.action}, content={content}"))

    async def _tool_test_elicitation(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        message = str((p.arguments or {}).get("message", "Please provide your information"))
        return await self._elicit_legacy(ctx, p, message, USER_INFO_SCHEMA, "User response")

    async def _tool_test_elicitation_sep1034_defaults(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        return await self._elicit_legacy(
            ctx, p, "Please provide user information", DEFAULTS_SCHEMA, "Elicitation result"
        )

    async def _tool_test_elicitation_sep1330_enums(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        return await self._elicit_legacy(
            ctx, p, "Please select values using different enum schema types", ENUMS_SCHEMA, "Elicitation completed"
        )

    async def _tool_test_missing_capability(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        self._require(ctx, types.ClientCapabilities(sampling=types.SamplingCapability()), "sampling")
        return _result(_text("Client declared the sampling capability."))

    async def _tool_test_streaming_elicitation(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        # Progress, then the question: in the 2026-07-28 era as an InputRequiredResult (never an independent
        # request on the response stream); in the handshake era _drive asks it as elicitation/create.
        await ctx.session.report_progress(50, 100, "Half way")
        content = _accepted((p.input_responses or {}).get("confirm"))
        if content is None:
            return types.InputRequiredResult(input_requests={"confirm": _elicit("Continue?", CONFIRM_SCHEMA)})
        return _result(_text(f"Streaming complete: {json.dumps(content, sort_keys=True)}"))

    async def _tool_test_trigger_tool_change(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        await self.bus.publish(ToolsListChanged())
        if ctx.session.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            await ctx.session.send_tool_list_changed()
        return _result(_text("tool list changed"))

    async def _tool_test_trigger_prompt_change(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        await self.bus.publish(PromptsListChanged())
        if ctx.session.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            await ctx.session.send_prompt_list_changed()
        return _result(_text("prompt list changed"))

    async def _tool_test_touch_watched_resource(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        self.watched_version += 1
        self.watched_text = f"Watched resource content (version {self.watched_version})"
        await self.bus.publish(ResourceUpdated(uri=WATCHED_URI))
        legacy = ctx.session.protocol_version not in MODERN_PROTOCOL_VERSIONS
        if legacy and WATCHED_URI in self.subscriptions:
            await ctx.session.send_resource_updated(WATCHED_URI)
        return _result(_text(f"watched resource is now version {self.watched_version}"))

    # -- multi-round-trip tools (2026-07-28, SEP-2322) --------------------------------------------------

    async def _tool_test_input_required_result_elicitation(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        content = _accepted((p.input_responses or {}).get("user_name"))
        if content is None or not isinstance(content.get("name"), str):
            return types.InputRequiredResult(input_requests={"user_name": _elicit("What is your name?", NAME_SCHEMA)})
        return _result(_text(f"Hello, {content['name']}!"))

    async def _tool_test_input_required_result_sampling(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        text = _sampled_text((p.input_responses or {}).get("capital_question"))
        if text is None:
            return types.InputRequiredResult(
                input_requests={"capital_question": _sample("What is the capital of France?", 100)}
            )
        return _result(_text(f"Model said: {text}"))

    async def _tool_test_input_required_result_list_roots(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        answer = (p.input_responses or {}).get("client_roots")
        if not isinstance(answer, types.ListRootsResult):
            return types.InputRequiredResult(input_requests={"client_roots": types.ListRootsRequest()})
        uris = ", ".join(str(r.uri) for r in answer.roots)
        return _result(_text(f"Client exposed {len(answer.roots)} root(s): {uris}"))

    async def _tool_test_input_required_result_request_state(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        answered = "confirm" in (p.input_responses or {})
        if answered and p.request_state == "confirm-round":
            return _result(_text("state-ok: confirmation received with the echoed requestState"))
        return types.InputRequiredResult(
            input_requests={"confirm": _elicit("Please confirm", CONFIRM_SCHEMA)}, request_state="confirm-round"
        )

    async def _tool_test_input_required_result_multiple_inputs(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        responses = p.input_responses or {}
        if {"user_name", "greeting", "client_roots"} <= responses.keys() and p.request_state == "multiple-inputs":
            return _result(_text("All inputs received."))
        return types.InputRequiredResult(
            input_requests={
                "user_name": _elicit("What is your name?", NAME_SCHEMA),
                "greeting": _sample("Generate a greeting", 50),
                "client_roots": types.ListRootsRequest(),
            },
            request_state="multiple-inputs",
        )

    async def _tool_test_input_required_result_multi_round(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        responses = p.input_responses or {}
        try:
            state = json.loads(p.request_state) if p.request_state else {}
        except ValueError:
            state = {}
        step = state.get("round") if isinstance(state, dict) else None
        if step == 1 and (first := _accepted(responses.get("step1"))) is not None:
            return types.InputRequiredResult(
                input_requests={"step2": _elicit("Step 2: What is your favorite color?", COLOR_SCHEMA)},
                request_state=json.dumps({"round": 2, "name": first.get("name")}),
            )
        if step == 2 and (second := _accepted(responses.get("step2"))) is not None:
            return _result(_text(f"{state.get('name')} likes {second.get('color')}."))
        # First call, or an answer missing or out of order: start over.
        return types.InputRequiredResult(
            input_requests={"step1": _elicit("Step 1: What is your name?", NAME_SCHEMA)},
            request_state=json.dumps({"round": 1}),
        )

    async def _tool_test_input_required_result_tampered_state(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        # The RequestStateBoundary middleware seals requestState on the way out and rejects an echo that was
        # altered, so this handler only ever sees state it minted itself.
        if p.request_state is None:
            return types.InputRequiredResult(
                input_requests={"confirm": _elicit("Please confirm", CONFIRM_SCHEMA)}, request_state="round-1"
            )
        return _result(_text(f"state-ok: {p.request_state}"))

    async def _tool_test_input_required_result_capabilities(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        caps = ctx.session.client_capabilities
        requests: dict[str, types.InputRequest] = {}
        if caps is not None and caps.sampling is not None:
            requests["sample"] = _sample("Say hello", 50)
        if caps is not None and caps.elicitation is not None:
            requests["ask"] = _elicit("What is your name?", NAME_SCHEMA)
        if caps is not None and caps.roots is not None:
            requests["roots"] = types.ListRootsRequest()
        if not requests:
            return _result(_text("The client declared no capability this tool could ask through."))
        answered = p.input_responses or {}
        if p.request_state == "capability-gated" and requests.keys() <= answered.keys():
            return _result(_text(f"Answers received for: {', '.join(sorted(requests))}"))
        return types.InputRequiredResult(input_requests=requests, request_state="capability-gated")

    async def _tool_test_reconnection(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        # SEP-1699: close this call's SSE stream mid-call; the client reconnects with Last-Event-ID and the
        # event store replays what it missed. Without a closable stream (stdio) it simply completes.
        await self._log(ctx, "info", "Before disconnect")
        if ctx.close_sse_stream is not None:
            # What follows is stored by the event store and replayed when the client reconnects.
            await ctx.close_sse_stream()
        await self._log(ctx, "info", "After reconnect")
        return _result(_text("Reconnection test completed"))

    async def _tool_json_schema_2020_12_tool(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(_text(json.dumps(p.arguments or {}, sort_keys=True)))

    async def _tool_test_x_mcp_header(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(_text(f"region={(p.arguments or {}).get('region', '<none>')}"))

    async def _tool_greet(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(_text(f"Hello, {(p.arguments or {}).get('name', 'world')}!"))

    async def _tool_slow_compute(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        args = p.arguments or {}
        seconds = args.get("seconds", 1)
        await anyio.sleep(min(float(seconds), SLOW_CAP_S) if isinstance(seconds, int | float) else 0)
        return _result(_text(f"Computed {args.get('label', 'result')} after {seconds} s"))

    async def _tool_failing_job(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        await anyio.sleep(STEP_PAUSE_S)
        return _result(_text("failing_job failed, as it always does"), is_error=True)

    async def _tool_confirm_delete(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        filename = str((p.arguments or {}).get("filename", "file"))
        content = _accepted((p.input_responses or {}).get("confirm"))
        if content is None:
            return types.InputRequiredResult(
                input_requests={"confirm": _elicit(f"Delete {filename}?", TASK_INPUT_SCHEMA)}
            )
        return _result(_text(f"Deleted {filename}" if content.get("confirm") else f"Kept {filename}"))

    async def _tool_multi_input(
        self, ctx: Ctx, p: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        responses = p.input_responses or {}
        if {"name", "confirm"} <= responses.keys():
            return _result(_text(f"Got both inputs: {json.dumps(_accepted(responses['name']), sort_keys=True)}"))
        return types.InputRequiredResult(
            input_requests={
                "name": _elicit("What is your name?", TASK_INPUT_SCHEMA),
                "confirm": _elicit("Are you sure?", TASK_INPUT_SCHEMA),
            }
        )

    async def _tool_required_task_job(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        return _result(_text("required_task_job done"))

    async def _tool_protocol_error_job(self, ctx: Ctx, p: types.CallToolRequestParams) -> types.CallToolResult:
        raise MCPError(types.INTERNAL_ERROR, "protocol_error_job: an internal error, as it always is")

    # -- resources ---------------------------------------------------------------------------------------

    def _resources(self) -> list[types.Resource]:
        return [
            types.Resource(
                uri="test://static-text",
                name="static-text",
                description="A static text resource",
                mime_type="text/plain",
            ),
            types.Resource(
                uri="test://static-binary",
                name="static-binary",
                description="A static binary resource (a PNG image)",
                mime_type="image/png",
            ),
            types.Resource(
                uri=WATCHED_URI,
                name="watched-resource",
                description="A resource that can be subscribed to",
                mime_type="text/plain",
            ),
        ]

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        page, nxt = self._page(self._resources(), params.cursor if params else None)
        return types.ListResourcesResult(resources=page, next_cursor=nxt)

    async def list_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=TEMPLATE,
                    name="template",
                    description="A resource template with an id parameter",
                    mime_type="application/json",
                )
            ]
        )

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == "test://static-text":
            contents = types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        elif uri == "test://static-binary":
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_1X1)
        elif uri == WATCHED_URI:
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=self.watched_text)
        elif (item := _template_id(uri)) is not None:
            body = {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}
            contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(body))
        else:
            # SEP-2164: -32602 with the URI in data, never an empty contents list.
            raise MCPError(types.INVALID_PARAMS, "Resource not found", {"uri": uri})
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    # -- prompts -----------------------------------------------------------------------------------------

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        page, nxt = self._page(PROMPTS, params.cursor if params else None)
        return types.ListPromptsResult(prompts=page, next_cursor=nxt)

    async def get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        try:
            return await self._drive(ctx, params, self._get_prompt)
        except Declined as exc:
            raise MCPError(types.INVALID_REQUEST, f"Input {exc.key!r} was not given: {exc.action}") from None

    async def _get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        args = params.arguments or {}
        user: Literal["user"] = "user"
        if params.name == "test_simple_prompt":
            messages = [types.PromptMessage(role=user, content=_text("This is a simple prompt for testing."))]
        elif params.name == "test_prompt_with_arguments":
            missing = [a for a in ("arg1", "arg2") if a not in args]
            if missing:
                raise MCPError(types.INVALID_PARAMS, f"Missing required arguments: {', '.join(missing)}")
            text = f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"
            messages = [types.PromptMessage(role=user, content=_text(text))]
        elif params.name == "test_prompt_with_embedded_resource":
            if "resourceUri" not in args:
                raise MCPError(types.INVALID_PARAMS, "Missing required argument: resourceUri")
            resource = types.TextResourceContents(
                uri=args["resourceUri"], mime_type="text/plain", text="Embedded resource content for testing."
            )
            messages = [
                types.PromptMessage(role=user, content=types.EmbeddedResource(type="resource", resource=resource)),
                types.PromptMessage(role=user, content=_text("Please process the embedded resource above.")),
            ]
        elif params.name == "test_prompt_with_image":
            messages = [
                types.PromptMessage(
                    role=user, content=types.ImageContent(type="image", data=PNG_1X1, mime_type="image/png")
                ),
                types.PromptMessage(role=user, content=_text("Please analyze the image above.")),
            ]
        elif params.name == "test_input_required_result_prompt":
            content = _accepted((params.input_responses or {}).get("user_context"))
            if content is None:
                return types.InputRequiredResult(
                    input_requests={"user_context": _elicit("What context should the prompt use?", CONTEXT_SCHEMA)}
                )
            messages = [
                types.PromptMessage(
                    role=user, content=_text(f"Use the following context: {content.get('context', '')}")
                )
            ]
        else:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}", {"name": params.name})
        return types.GetPromptResult(description=f"The {params.name} prompt", messages=messages)

    # -- completion and logging --------------------------------------------------------------------------

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        ref = params.ref
        key = (ref.name if isinstance(ref, types.PromptReference) else ref.uri, params.argument.name)
        candidates = COMPLETIONS.get(key, [])
        values = [v for v in candidates if v.startswith(params.argument.value)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        self.log_level = params.level
        return types.EmptyResult()


def _template_id(uri: str) -> str | None:
    prefix, suffix = "test://template/", "/data"
    if uri.startswith(prefix) and uri.endswith(suffix):
        item = uri[len(prefix) : -len(suffix)]
        if item and "/" not in item:
            return item
    return None


class MemoryEventStore(EventStore):
    """Keeps every SSE event so a client can resume a closed stream with Last-Event-ID (SEP-1699).

    Bounded: only the newest ``limit`` events are kept (a fixture serves short test runs).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.events: list[tuple[str, int, types.JSONRPCMessage | None]] = []
        self.counter = 0

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        self.counter += 1
        self.events.append((stream_id, self.counter, message))
        del self.events[: -self.limit]
        return str(self.counter)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        if not last_event_id.isdigit():
            return None
        after = int(last_event_id)
        stream = next((sid for sid, eid, _ in self.events if eid == after), None)
        if stream is None:
            return None
        for sid, eid, message in list(self.events):
            if sid == stream and eid > after and message is not None:
                await send_callback(EventMessage(message, str(eid)))
        return stream


class FixtureServer(Server[Any]):
    """The low-level server, advertising listChanged in the handshake era too (the trigger tools send them)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(prompts_changed=True, tools_changed=True),
            experimental_capabilities,
            extensions,
        )


# Every cacheable result carries explicit freshness hints (SEP-2549): never cached, private to the caller.
CACHEABLE: tuple[CacheableMethod, ...] = (
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "server/discover",
)
CACHE_HINTS: dict[CacheableMethod, CacheHint] = {method: CacheHint(ttl_ms=0, scope="private") for method in CACHEABLE}


def build_server(fixture: Fixture) -> FixtureServer:
    """The low-level server with every handler of `fixture` registered."""
    server = FixtureServer(
        SERVER_NAME,
        version="1.0.0",
        instructions="Conformance fixture for mcp-guard: implements what the MCP conformance suite calls.",
        cache_hints=CACHE_HINTS,
        on_list_tools=fixture.list_tools,
        on_call_tool=fixture.call_tool,
        on_list_resources=fixture.list_resources,
        on_list_resource_templates=fixture.list_templates,
        on_read_resource=fixture.read_resource,
        on_subscribe_resource=fixture.subscribe,
        on_unsubscribe_resource=fixture.unsubscribe,
        on_subscriptions_listen=fixture.listen,
        on_list_prompts=fixture.list_prompts,
        on_get_prompt=fixture.get_prompt,
        on_completion=fixture.complete,
        on_set_logging_level=fixture.set_level,
    )
    server.middleware.append(
        RequestStateBoundary(RequestStateSecurity(keys=[REQUEST_STATE_KEY]), default_audience=SERVER_NAME)
    )
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transport", choices=("http", "stdio"), default="http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--page-size", type=int, default=int(os.environ.get("CONFORMANCE_FIXTURE_PAGE_SIZE", "0")))
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")

    fixture = Fixture(page_size=args.page_size)
    server = build_server(fixture)
    if args.transport == "stdio":

        async def serve_stdio() -> None:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())

        anyio.run(serve_stdio)
        return 0

    import uvicorn

    app = server.streamable_http_app(host=args.host, event_store=MemoryEventStore(), retry_interval=100)
    print(f"conformance fixture serving http://{args.host}:{args.port}/mcp", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http="h11")  # httptools keeps header spaces
    return 0


if __name__ == "__main__":
    sys.exit(main())
