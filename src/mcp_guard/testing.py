"""Helpers shipped for tests (ours and users'): a recording audit sink and simple policy engines.

These are real implementations of the small protocols the pipeline depends on, kept in memory; they
are meant for unit tests of the pipeline and front, never for production wiring.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from mcp_guard.errors import AuditError
from mcp_guard.types import AuditEvent, Decision, PolicyInput

__all__ = ["FunctionEngine", "RecordingSink", "allow_all"]


class RecordingSink:
    """An in-memory audit sink. ``fail = True`` makes ``record`` raise AuditError (store down)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.fail = False
        self.changed = anyio.Event()

    async def record(self, event: AuditEvent) -> int:
        if self.fail:
            raise AuditError("recording sink set to fail")
        self.record_nowait(event)
        return len(self.events)

    def record_nowait(self, event: AuditEvent) -> None:
        if self.fail:
            return
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
