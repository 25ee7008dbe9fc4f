"""Helpers shipped for tests (ours and users'): a recording audit sink, simple policy engines, and a
recording stand-in for the upstream end of the pipeline.

These are real implementations of the small protocols the pipeline depends on, kept in memory; they
are meant for unit tests of the pipeline and front, never for production wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from mcp_guard.errors import AuditError
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.settings import Settings
from mcp_guard.types import AuditEvent, Decision, EventKind, PolicyInput
from mcp_guard.upstream.registry import Registry

__all__ = ["FunctionEngine", "NullListener", "RecordingSink", "RecordingUpstream", "allow_all", "idle_registry"]


class NullListener:
    """A :class:`~mcp_guard.upstream.registry.RegistryListener` that hears nothing."""

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        return None

    async def upstream_event(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        return None

    async def pin_event(self, upstream: str, kind: EventKind, tool: str, details: dict[str, Any]) -> None:
        return None

    async def resource_updated(self, upstream: str, uri: str) -> None:
        return None


def idle_registry(settings: Settings) -> Registry:
    """A registry for ``settings`` that is never started: what PinCheck and Forward consult in pipeline
    tests and benches, with no upstream running."""
    return Registry(settings, NullListener())


class RecordingSink:
    """An in-memory audit sink that can play a store that is down.

    ``fail = True`` makes every write fail; ``fail_when`` (a predicate on the event) makes only the
    matching writes fail — e.g. the allow row, to play a store that is down for one write and back for
    the next. A failed ``record`` raises AuditError and a failed ``record_nowait`` drops the event;
    either way the event lands in ``refused``, not ``events``.
    """

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.refused: list[AuditEvent] = []
        self.fail = False
        self.fail_when: Callable[[AuditEvent], bool] | None = None
        self.changed = anyio.Event()

    def _refuses(self, event: AuditEvent) -> bool:
        if self.fail or (self.fail_when is not None and self.fail_when(event)):
            self.refused.append(event)
            return True
        return False

    async def record(self, event: AuditEvent) -> int:
        if self._refuses(event):
            raise AuditError("recording sink set to fail")
        self._append(event)
        return len(self.events)

    def record_nowait(self, event: AuditEvent) -> None:
        if not self._refuses(event):
            self._append(event)

    def _append(self, event: AuditEvent) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of_kind(self, kind: str) -> list[AuditEvent]:
        return [e for e in self.events if e.kind == kind]


class FunctionEngine:
    """A policy engine deciding with a Python function (for tests of the stages around policy)."""

    revision = "test"

    def __init__(self, decide: Callable[[PolicyInput], Decision]) -> None:
        self._decide = decide
        self.inputs: list[PolicyInput] = []

    async def evaluate(self, input: PolicyInput) -> Decision:
        self.inputs.append(input)
        return self._decide(input)

    async def aclose(self) -> None:
        return None


def allow_all() -> FunctionEngine:
    return FunctionEngine(lambda _i: Decision(allow=True, reasons=("test: allow all",), revision="test"))


class RecordingUpstream:
    """The end of a pipeline under test (in place of ``Forward``): records each call, answers ``outcome``."""

    def __init__(self, outcome: Outcome | None = None) -> None:
        self.seen: list[CallContext] = []
        self.outcome = outcome or Outcome(result={"content": [{"type": "text", "text": "ok"}], "isError": False})

    async def __call__(self, ctx: CallContext) -> Outcome:
        self.seen.append(ctx)
        return self.outcome
