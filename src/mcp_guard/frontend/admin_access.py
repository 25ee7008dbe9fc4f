"""Who can see what, over the admin API: the tools a principal may list, and a call tried against the policy.

Routes (beside :mod:`mcp_guard.frontend.admin`'s; viewer or operator — nothing runs, nothing changes)::

    GET  /admin/api/access                 {"principals": [the configured principal ids]}
    GET  /admin/api/access?principal=ID
         {"principal", "roles", "tools": [{"name", "description"}], "total"}   exactly what its tools/list shows
    POST /admin/api/access/try   body {"principal": ID, "tool": "<exposed name>", "arguments": {...}}
         {"decision": {"allow", "reasons", "obligations", "code", "revision"}, "input": <the policy input>}

The listing is :meth:`~mcp_guard.app.Guard.visible_tools` — the same visibility filter ``tools/list`` runs (the
policy's ``tools/list`` decision per tool, changed tools hidden under pinning). A principal id that is not in
``[principals]`` gets no roles, as an unconfigured token subject would.

**A try is ``policy eval``, not a call.** It builds the ``tools/call`` input the pipeline would (the tool's
``tool_info``, ``context.secrets_seen`` from the arguments' credential shapes) and asks the policy engine; nothing
is forwarded, counted, labelled or audited. What it cannot know is left out: ``context.usage`` (rate-limit
counters) is empty and ``context.flow`` absent, so a rule that reads them may decide otherwise for a real call.
Obligations are shown, not enforced (an approval would still be asked for).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.errors import MCPGuardError
from mcp_guard.frontend.admin import PREFIX, AdminAuth, Need, error_response, json_object
from mcp_guard.frontend.auth import principal_for
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.secrets.shapes import mask
from mcp_guard.settings import Settings
from mcp_guard.types import AuthInfo, PolicyInput, Principal, SessionInfo, ToolInfo, new_id

__all__ = ["AdminAccess"]

MAX_ID = 256


@dataclass(frozen=True)
class AdminAccess:
    auth: AdminAuth
    settings: Settings
    engine: Evaluator
    visible: Callable[[Principal], Awaitable[list[types.Tool]]]  # what tools/list shows the principal
    find_tool: Callable[[str], tuple[str, str, ToolInfo] | None]  # exposed name → (upstream, local name, info)

    def routes(self) -> list[Route]:
        return [
            Route(f"{PREFIX}/access", self.tools, methods=["GET"]),
            Route(f"{PREFIX}/access/try", self.try_call, methods=["POST"]),
        ]

    def _principal(self, pid: Any) -> Principal | None:
        if not isinstance(pid, str) or not pid or len(pid) > MAX_ID:
            return None
        configured = self.settings.principals.get(pid)
        keyed = configured is not None and configured.api_key_sha256 is not None
        return principal_for(self.settings, pid, auth=AuthInfo(method="api_key" if keyed else "none"))

    async def tools(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        if "principal" not in request.query_params:
            return JSONResponse({"principals": sorted(self.settings.principals)})
        principal = self._principal(request.query_params.get("principal"))
        if principal is None:
            return error_response(400, f"principal must be a principal id (at most {MAX_ID} characters)")
        try:
            tools = await self.visible(principal)
        except MCPGuardError as e:
            return error_response(503, f"the policy could not list the tools: {e}")
        shown = [{"name": t.name, "description": t.description or ""} for t in tools]
        return JSONResponse(
            {"principal": principal.id, "roles": list(principal.roles), "tools": shown, "total": len(shown)}
        )

    async def try_call(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        body = await json_object(request)
        if isinstance(body, Response):
            return body
        principal = self._principal(body.get("principal"))
        tool, arguments = body.get("tool"), body.get("arguments", {})
        if principal is None or not isinstance(tool, str) or not isinstance(arguments, dict):
            return error_response(400, 'the body must be {"principal": ID, "tool": NAME, "arguments": {...}}')
        found = self.find_tool(tool)
        if found is None:
            return error_response(404, f"no tool {tool!r} in the catalogue")
        upstream, local, info = found
        _, kinds = mask(arguments)
        policy_input = PolicyInput(
            action="tools/call",
            principal=principal,
            session=SessionInfo(id=new_id(), transport="memory", client_name="mcp-guard console"),
            server=upstream,
            tool=local,
            arguments=arguments,
            tool_info=info,
            secrets_seen=kinds,
        )
        decision = await self.engine.evaluate(policy_input)
        doc = {
            "allow": decision.allow,
            "reasons": list(decision.reasons),
            "obligations": dict(decision.obligations),
            "code": decision.code,
            "revision": decision.revision,
        }
        shown_input = policy_input.to_dict()
        shown_input["arguments"] = mask(arguments)[0]  # the page shows the masked copy, like the audit log
        return JSONResponse({"decision": json.loads(json.dumps(doc, default=str)), "input": shown_input})
