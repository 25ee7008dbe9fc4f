"""The real pipeline (build_pipeline: the stages in use, in their order) ending in a RecordingUpstream instead of a
live upstream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mcp_types as types

from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.pipeline.build import build_pipeline
from mcp_guard.pipeline.context import CallContext, CallNext
from mcp_guard.pipeline.secret_source import NO_SECRETS, SecretSource
from mcp_guard.settings import Settings, parse_settings
from mcp_guard.state import MemoryState, StateStore
from mcp_guard.testing import RecordingUpstream, idle_registry
from mcp_guard.types import Principal, SessionInfo
from mcp_guard.upstream.registry import Registry

SETTINGS = parse_settings({"upstreams": {"rec": {"command": "never-started"}}}, source="<test>")


def registry(settings: Settings = SETTINGS) -> Registry:
    """A registry for ``settings`` that is never started: what PinCheck consults, with no upstream running."""
    return idle_registry(settings)


def pipeline(
    engine: Evaluator,
    sink: EventSink,
    *,
    secrets: SecretSource = NO_SECRETS,
    settings: Settings = SETTINGS,
    upstream: RecordingUpstream | None = None,
    state: StateStore | None = None,
) -> tuple[CallNext, RecordingUpstream]:
    """``(call, upstream)``: the pipeline build_pipeline composes, in front of ``upstream``."""
    up = upstream or RecordingUpstream()
    call = build_pipeline(
        engine=engine,
        sink=sink,
        registry=registry(settings),
        secrets=secrets,
        state=state or MemoryState(),
        terminal=up,
    )
    return call, up


def call_ctx(server: str = "rec", tool: str = "echo", arguments: Mapping[str, Any] | None = None) -> CallContext:
    args = dict(arguments or {"text": "hi"})
    return CallContext(
        action="tools/call",
        principal=Principal("alice", ("support",)),
        session=SessionInfo("s1", "memory"),
        server=server,
        target=tool,
        exposed=f"{server}__{tool}",
        arguments=args,
        request=types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=args)),
    )
