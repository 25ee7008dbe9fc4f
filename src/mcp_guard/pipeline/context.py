"""What flows through the interceptor chain: a frozen :class:`CallContext` in, an :class:`Outcome` out."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from mcp_guard.channel import ClientChannel
from mcp_guard.types import Decision, Principal, SessionInfo, ToolInfo, new_id

__all__ = ["CallContext", "CallNext", "Interceptor", "Outcome", "ProgressFn"]

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CallContext:
    """One client request that targets an upstream (tools/call, resources/read, prompts/get, …)."""

    action: str
    principal: Principal
    session: SessionInfo
    server: str
    target: str  # upstream-local tool name, prompt name or resource URI
    exposed: str  # the namespaced name/URI the client used
    arguments: Mapping[str, Any]
    request: types.ClientRequest  # the request to forward, already de-namespaced
    tool_info: ToolInfo | None = None
    decision: Decision | None = None
    session_calls: int = 0
    secrets_seen: tuple[str, ...] = ()
    audit_arguments: Mapping[str, Any] | None = None  # arguments with secret-looking values masked
    progress: ProgressFn | None = None
    timeout_s: float | None = None
    call_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    downstream: ClientChannel | None = None  # the client the call came from (for upstream→client traffic)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: a raw upstream result, an error for the client, or a deny."""

    result: dict[str, Any] | None = None
    error: types.ErrorData | None = None
    decision: Decision | None = None

    @property
    def denied(self) -> bool:
        return self.decision is not None and not self.decision.allow


CallNext = Callable[[CallContext], Awaitable[Outcome]]
Interceptor = Callable[[CallContext, CallNext], Awaitable[Outcome]]
