"""The real stage order (pipeline_stages) ending in a RecordingUpstream instead of a live upstream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mcp_types as types

from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
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
    """``(call, upstream)``: every stage build_pipeline uses, in its order, in front of ``upstream``."""
    up = upstream or RecordingUpstream()
    stages = pipeline_stages(
        engine=engine, sink=sink, registry=registry(settings), secrets=secrets, state=state or MemoryState()
    )
    return build_chain(stages, up), up


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
