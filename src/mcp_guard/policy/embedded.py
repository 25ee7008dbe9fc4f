"""The embedded engine: Rego evaluated in-process by regorus (``gordon-to-regorus``), Rego v1.

One compiled ``regorus.Engine`` holds the bundle's policies and data; an evaluation sets the input and
evaluates the decision rule. It runs **inline on the event loop**: on the default bundle that is about
0.2–0.4 ms of CPU, about what handing the work to a worker thread and back would add on its own (and
a regorus engine is not shared across threads). regorus's faster register VM (``regorus.Rvm``) is
not used: it turns builtin errors into undefined values, which could silently switch a deny rule off.

Inline code cannot be interrupted, so ``timeout_ms`` is enforced by measurement: a decision that
took longer than the budget is discarded and becomes a ``timeout`` deny, so a slow policy can never
produce a late allow. Rego has no unbounded loops or recursion, so an evaluation's cost is bounded by
the bundle and by the input size (the HTTP front caps request size).

Hot reload builds a new engine from the changed bundle and swaps it in one assignment; a bundle that
does not compile leaves the running engine untouched (see :mod:`mcp_guard.policy.reload`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

import anyio.lowlevel
import regorus
import structlog

from mcp_guard.errors import PolicyError
from mcp_guard.policy.base import decision_from_result
from mcp_guard.policy.bundle import Bundle, rule_ref
from mcp_guard.policy.lint import check_compiled
from mcp_guard.types import Decision, PolicyInput, ReasonCode

__all__ = ["EmbeddedEngine", "compile_bundle", "regorus_message"]

log = structlog.get_logger(__name__)

# regorus reports an undefined rule as this JSON string, and an unknown rule path with this message.
_UNDEFINED = '"<undefined>"'
_NO_RULE = "not a valid rule path"
_LOCATION = re.compile(r"-->\s*(\S+)")
_ERROR = re.compile(r"^error:\s*(.*)$", re.M)


def regorus_message(exc: BaseException) -> str:
    """A one-line ``file:line:col: message`` from a regorus error (without the Rust backtrace)."""
    text = str(exc).split("Stack backtrace:", 1)[0].strip()
    where = _LOCATION.search(text)
    what = _ERROR.search(text)
    if what is None:
        return " ".join(text.split()) or type(exc).__name__
    return f"{where.group(1)}: {what.group(1).strip()}" if where else what.group(1).strip()


def compile_bundle(
    bundle: Bundle, *, include_tests: bool = False, check: bool = True, embedded: bool = True
) -> regorus.Engine:
    """A regorus engine loaded with the bundle's policies (and tests) and data. A file that does not
    parse raises :class:`PolicyError` naming it (``file:line:col: problem``); one that parses but that
    OPA's compiler would reject raises :class:`~mcp_guard.policy.lint.PolicyCheckError` naming
    ``file:line:col`` and the rule (``check=False`` skips that, for tests of the check itself).
    ``embedded`` also rejects builtins regorus does not implement (False when the bundle is compiled
    only to run its tests for an OPA deployment)."""
    engine = regorus.Engine()
    engine.set_rego_v0(False)
    files = bundle.policies + (bundle.tests if include_tests else ())
    for f in files:
        try:
            engine.add_policy(str(f.path), f.text)
        except RuntimeError as e:
            raise PolicyError(f"policy does not compile: {regorus_message(e)}") from None
    if check:
        check_compiled(engine, embedded=embedded)
    if bundle.data:
        try:
            engine.add_data_json(json.dumps(dict(bundle.data)))
        except RuntimeError as e:  # pragma: no cover - the data already parsed as JSON
            raise PolicyError(f"{bundle.root}: data rejected: {regorus_message(e)}") from None
    return engine


class EmbeddedEngine:
    """:class:`~mcp_guard.policy.base.PolicyEngine` backed by regorus."""

    def __init__(self, bundle: Bundle, *, decision: str = "mcp_guard/decision", timeout_ms: int = 250) -> None:
        self._rule = rule_ref(decision)
        self._timeout_ns = timeout_ms * 1_000_000
        self._engine = compile_bundle(bundle)
        self._bundle = bundle
        self.revision: str = bundle.revision
        self._check_rule_exists()

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def rule(self) -> str:
        return self._rule

    @property
    def ready(self) -> bool:
        """Always: a loaded bundle is compiled in-process (a bundle that cannot load never starts)."""
        return True

    @property
    def problem(self) -> str | None:
        return None

    def _check_rule_exists(self) -> None:
        package = self._rule.rsplit(".", 1)[0]
        if package not in self._engine.get_packages():
            log.warning("policy.decision_rule_missing", rule=self._rule, bundle=str(self._bundle.root))

    def reload(self, bundle: Bundle) -> None:
        """Swap in a new bundle. Raises :class:`PolicyError` (and keeps the old one) if it does not compile."""
        engine = compile_bundle(bundle)
        self._engine, self._bundle, self.revision = engine, bundle, bundle.revision
        self._check_rule_exists()

    async def evaluate(self, input: PolicyInput) -> Decision:
        return await self.evaluate_document(input.to_dict())

    async def evaluate_document(self, document: Mapping[str, Any]) -> Decision:
        decision = self.evaluate_sync(document)
        await anyio.lowlevel.checkpoint()
        return decision

    def evaluate_sync(self, document: Mapping[str, Any]) -> Decision:
        """Evaluate without an event loop (the CLI, benchmarks). Never raises for a policy problem."""
        revision = self.revision
        try:
            payload = json.dumps(document, allow_nan=False)
        except (TypeError, ValueError) as e:
            return Decision.deny(ReasonCode.ENGINE_ERROR, f"policy input is not JSON: {e}", revision=revision)
        engine = self._engine
        start = time.perf_counter_ns()
        try:
            engine.set_input_json(payload)
            raw = engine.eval_rule_as_json(self._rule)
        except RuntimeError as e:
            message = regorus_message(e)
            if message == _NO_RULE:
                return Decision.deny(ReasonCode.POLICY_UNDEFINED, f"{self._rule} is not defined", revision=revision)
            log.warning("policy.engine_error", engine="embedded", rule=self._rule, error=message)
            return Decision.deny(ReasonCode.ENGINE_ERROR, message, revision=revision)
        elapsed = time.perf_counter_ns() - start
        if elapsed > self._timeout_ns:
            return Decision.deny(
                ReasonCode.TIMEOUT,
                f"policy evaluation took {elapsed / 1e6:.1f} ms, over the {self._timeout_ns // 1_000_000} ms budget",
                revision=revision,
            )
        if raw == _UNDEFINED:
            return Decision.deny(
                ReasonCode.POLICY_UNDEFINED, f"{self._rule} is undefined for this input", revision=revision
            )
        return decision_from_result(self._rule, json.loads(raw), revision=revision)

    async def aclose(self) -> None:
        return None
