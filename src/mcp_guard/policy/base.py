"""The policy engine protocol and the one place a raw policy result becomes a :class:`Decision`.

Both backends hand the value of the decision rule to :func:`decision_from_result`, so "what counts as
a decision" is defined once (docs/architecture.md §8.3): an object whose ``allow`` is a boolean, with optional
``reasons`` (a list of strings) and ``obligations`` (an object). Anything else fails closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from mcp_guard.errors import PolicyError
from mcp_guard.types import Decision, PolicyInput, ReasonCode

__all__ = [
    "DENY_OBLIGATIONS",
    "BundleHolder",
    "EngineHealth",
    "EngineUnavailable",
    "PolicyEngine",
    "RegoEngine",
    "decision_from_result",
]


# Obligation keys a deny keeps (every other one is dropped from a deny): step_up turns a deny into the HTTP
# front's 403 scope challenge (mcp_guard.pipeline.stepup).
DENY_OBLIGATIONS = frozenset({"step_up"})


class EngineUnavailable(PolicyError):
    """The engine could not be reached (connection refused or reset, a setup timeout). Not a verdict on
    the bundle: the same request may succeed later, so callers retry rather than reject."""


@runtime_checkable
class PolicyEngine(Protocol):
    """What the proxy needs from a policy engine. ``evaluate`` never raises for a policy problem: an
    engine failure is a deny with a reason code (``engine_error``, ``timeout``, ``policy_undefined``,
    ``result_invalid``)."""

    revision: str

    async def evaluate(self, input: PolicyInput) -> Decision: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class RegoEngine(PolicyEngine, Protocol):
    """A :class:`PolicyEngine` that also takes a raw input document (``policy eval``, tests, bench)."""

    async def evaluate_document(self, document: Mapping[str, Any]) -> Decision: ...


@runtime_checkable
class BundleHolder(Protocol):
    """An engine that holds the bundle it evaluates (the embedded engine; OPA fed by ``push_bundle``): ``bundle`` is
    replaced by a new object on every activation, so what was derived from it is re-derived when it is not the
    same object. An engine without one (OPA serving its own policies, test engines) cannot be looked into.
    (``isinstance`` against it costs microseconds: ask once, not per call.)"""

    @property
    def bundle(self) -> Any: ...


@runtime_checkable
class EngineHealth(Protocol):
    """Whether an engine can decide right now (for ``/readyz``). An engine that is not ready still
    answers every evaluation, with an ``engine_error`` deny; ``problem`` says why, for operators."""

    @property
    def ready(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def decision_from_result(rule: str, result: object, *, revision: str | None) -> Decision:
    """Validate the value of the decision rule ``rule``. ``result`` is the decoded JSON value."""
    if not isinstance(result, dict):
        return Decision.deny(
            ReasonCode.RESULT_INVALID, f"{rule} is {_type_name(result)}, expected an object", revision=revision
        )
    allow = result.get("allow")
    if not isinstance(allow, bool):
        return Decision.deny(
            ReasonCode.RESULT_INVALID, f"{rule}.allow is {_type_name(allow)}, expected a boolean", revision=revision
        )
    reasons = result.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        return Decision.deny(ReasonCode.RESULT_INVALID, f"{rule}.reasons must be a list of strings", revision=revision)
    obligations = result.get("obligations", {})
    if not isinstance(obligations, dict):
        return Decision.deny(
            ReasonCode.RESULT_INVALID,
            f"{rule}.obligations is {_type_name(obligations)}, expected an object",
            revision=revision,
        )
    if not allow and not reasons:
        reasons = [f"denied by policy ({rule} gave no reason)"]
    # A deny carries no obligations — nothing is to be done for a call that does not happen — but those that say
    # how the deny is answered (step_up: a scope challenge on the HTTP front).
    kept = obligations if allow else {k: v for k, v in obligations.items() if k in DENY_OBLIGATIONS}
    return Decision(allow=allow, reasons=tuple(reasons), obligations=kept, revision=revision)
