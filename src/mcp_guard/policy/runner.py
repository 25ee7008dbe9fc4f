"""Run a bundle's Rego unit tests (``test_*`` rules in ``*_test.rego`` files), like ``opa test``.

A test passes when its rule evaluates to ``true`` (with no input, as ``opa test`` runs it; tests set
their input with ``with input as …``). Anything else fails: ``false`` or undefined is FAIL, an
evaluation error is ERROR. The embedded runner compiles the bundle with its tests into a fresh regorus
engine; the OPA runner evaluates each test rule on a real OPA server (see :func:`run_tests_opa`).

Tests run on the bundle's own ``data.json`` documents, never on a site's ``[policy] data_overlay``: they
test the rules as shipped, so site values cannot make a shipped test fail (the overlay is checked by the
bundle's ``data.schema.json`` instead). On the embedded engine a failing test is explained
(:mod:`mcp_guard.policy.explain`: the failing expression, its file:line and values), its ``print()``
output is kept, and ``coverage=True`` measures line coverage (:mod:`mcp_guard.policy.coverage`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp
import anyio
from opa_client.opa_async import AsyncOpaClient

from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import Bundle, TestRule
from mcp_guard.policy.coverage import CoverageReport, coverage_from_regorus, format_coverage
from mcp_guard.policy.embedded import compile_bundle, regorus_message
from mcp_guard.policy.explain import Explainer, Explanation

__all__ = [
    "TestOutcome",
    "TestReport",
    "explain_opa_failures",
    "format_report",
    "gate_tests",
    "run_tests_embedded",
    "run_tests_opa",
]

Status = Literal["PASS", "FAIL", "ERROR"]
_UNDEFINED = '"<undefined>"'
_RULE = "-" * 80


@dataclass(frozen=True, slots=True)
class TestOutcome:
    rule: TestRule
    status: Status
    duration_ns: int
    message: str | None = None
    explanation: Explanation | None = None  # the failing expression (embedded engine, FAIL only)
    output: tuple[str, ...] = ()  # what the test print()ed (embedded engine)

    @property
    def detail(self) -> str | None:
        """The one-line why: the explanation when there is one, else the message."""
        return str(self.explanation) if self.explanation is not None else self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.rule.ref,
            "package": self.rule.package,
            "rule": self.rule.name,
            "file": self.rule.file,
            "status": self.status,
            "duration_ns": self.duration_ns,
            "message": self.message,
            "explanation": self.explanation.to_dict() if self.explanation is not None else None,
            "output": list(self.output),
        }


@dataclass(frozen=True, slots=True)
class TestReport:
    engine: str
    bundle: str
    revision: str
    outcomes: tuple[TestOutcome, ...] = field(default_factory=tuple)
    coverage: CoverageReport | None = None

    @property
    def passed(self) -> int:
        return sum(1 for o in self.outcomes if o.status == "PASS")

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.passed

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "bundle": self.bundle,
            "revision": self.revision,
            "passed": self.passed,
            "failed": self.failed,
            "total": len(self.outcomes),
            "tests": [o.to_dict() for o in self.outcomes],
            **({"coverage": self.coverage.to_dict()} if self.coverage is not None else {}),
        }


def _verdict(value: object) -> tuple[Status, str | None]:
    if value is True:
        return "PASS", None
    if value is None:
        return "FAIL", "undefined"
    return "FAIL", f"result {json.dumps(value)}"


def run_tests_embedded(
    bundle: Bundle,
    *,
    embedded: bool = True,
    pattern: re.Pattern[str] | None = None,
    coverage: bool = False,
    explain: bool = True,
) -> TestReport:
    """Every test rule of ``bundle`` (those whose ``data.<package>.<name>`` matches ``pattern``) on
    regorus. A test file that does not compile, or fails the static check, raises PolicyError.
    ``embedded=False`` (a bundle meant for OPA) lets policies call builtins regorus lacks: tests that
    reach one then report an ERROR instead of the check refusing the bundle."""
    rules = [r for r in bundle.test_rules() if pattern is None or pattern.search(r.ref)]
    shipped = bundle.without_overlays()
    engine = compile_bundle(shipped, include_tests=True, embedded=embedded)
    engine.set_gather_prints(True)
    if coverage:
        engine.set_enable_coverage(True)
    paths = {f.rel: str(f.path) for f in shipped.tests}
    rels = {str(f.path): f.rel for f in shipped.policies + shipped.tests}
    explainer: list[Explainer] = []  # made at the first failure (it reads the AST once)

    def why(rule: TestRule) -> Explanation | None:
        if not explain:
            return None
        if not explainer:
            explainer.append(Explainer(engine, rels))
        return explainer[0].test(paths.get(rule.file, rule.file), rule.name)

    outcomes = [_run_one(engine, rule, paths.get(rule.file, rule.file), why) for rule in rules]
    report = None
    if coverage:
        policies = {str(f.path): f.rel for f in shipped.policies}
        report = coverage_from_regorus(engine.get_coverage_report_as_json(), policies)
    return TestReport("embedded", str(bundle.root), bundle.revision, tuple(outcomes), report)


def _run_one(engine: Any, rule: TestRule, path: str, why: Callable[[TestRule], Explanation | None]) -> TestOutcome:
    start = time.perf_counter_ns()
    try:
        raw = engine.eval_rule_as_json(rule.ref)
    except RuntimeError as e:
        elapsed = time.perf_counter_ns() - start
        output = tuple(line.replace(path, rule.file, 1) for line in engine.take_prints())
        return TestOutcome(rule, "ERROR", elapsed, regorus_message(e), output=output)
    elapsed = time.perf_counter_ns() - start
    output = tuple(line.replace(path, rule.file, 1) for line in engine.take_prints())
    status, message = _verdict(None if raw == _UNDEFINED else json.loads(raw))
    if status == "PASS":
        return TestOutcome(rule, status, elapsed, output=output)
    return TestOutcome(rule, status, elapsed, message, why(rule), output)


def gate_tests(bundle: Bundle, *, embedded: bool = True, shown: int = 3) -> TestReport:
    """Run the bundle's tests (regorus) as a gate: raises :class:`PolicyError` naming the failing tests
    and why each failed (the failing expression and its file:line), in one line, so a bundle whose
    tests fail is not started (``run_tests_on_start``) or swapped in (``run_tests_on_reload``)."""
    report = run_tests_embedded(bundle, embedded=embedded)
    failed = [o for o in report.outcomes if o.status != "PASS"]
    if failed:
        names = "; ".join(
            f"{o.rule.ref} ({o.rule.file}) {o.status}" + (f": {o.detail}" if o.detail else "") for o in failed[:shown]
        )
        more = f"; and {len(failed) - shown} more" if len(failed) > shown else ""
        raise PolicyError(f"{bundle.root}: {len(failed)} policy test(s) failed: {names}{more}")
    return report


async def run_tests_opa(
    client: AsyncOpaClient,
    bundle: Bundle,
    *,
    bundle_loaded: bool,
    timeout_s: float = 10.0,
    pattern: re.Pattern[str] | None = None,
) -> TestReport:
    """Every test rule of ``bundle`` on a real OPA server.

    The test files are uploaded next to the policies and removed afterwards. With ``bundle_loaded``
    (``push_bundle = true``) the whole bundle is uploaded with its tests under the ``mcp-guard/``
    prefix and re-uploaded without them at the end; otherwise only the tests are uploaded (under
    ``mcp-guard-test/``) and run against the policies OPA already serves.
    """
    from mcp_guard.policy.opa import POLICY_ID_PREFIX, delete_policies, push_bundle

    rules = [r for r in bundle.test_rules() if pattern is None or pattern.search(r.ref)]
    test_prefix = "mcp-guard-test/"
    outcomes: list[TestOutcome] = []
    try:
        if bundle_loaded:
            await push_bundle(client, bundle.without_overlays(), include_tests=True, prefix=POLICY_ID_PREFIX)
        else:
            await push_bundle(client, _tests_only(bundle), prefix=test_prefix)
        for rule in rules:
            path = rule.package.replace(".", "/")
            start = time.perf_counter_ns()
            try:
                with anyio.fail_after(timeout_s):
                    body: Mapping[str, Any] = await client.query_rule(
                        input_data=None,
                        package_path=path,
                        rule_name=rule.name,
                        query_params={"strict-builtin-errors": "true"},
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                outcomes.append(TestOutcome(rule, "ERROR", time.perf_counter_ns() - start, str(e) or "timeout"))
                continue
            elapsed = time.perf_counter_ns() - start
            status, message = _verdict(body.get("result"))
            outcomes.append(TestOutcome(rule, status, elapsed, message))
    finally:
        with anyio.CancelScope(shield=True):
            try:
                if bundle_loaded:
                    await push_bundle(client, bundle, include_tests=False, prefix=POLICY_ID_PREFIX)
                else:
                    await delete_policies(client, test_prefix)
            except (PolicyError, aiohttp.ClientError, OSError):
                pass
    return TestReport("opa", str(bundle.root), bundle.revision, tuple(outcomes))


def explain_opa_failures(report: TestReport, bundle: Bundle) -> TestReport:
    """``report`` (from OPA, which only says "undefined") with each FAIL explained by regorus, when regorus
    fails that test too — the explanation is then of the same failure; otherwise the OPA outcome is kept
    as it is. A bundle regorus cannot compile is left unexplained."""
    failed = {o.rule.ref for o in report.outcomes if o.status == "FAIL"}
    if not failed:
        return report
    pattern = re.compile("^(?:" + "|".join(re.escape(ref) for ref in sorted(failed)) + ")$")
    try:
        local = run_tests_embedded(bundle, embedded=False, pattern=pattern)
    except PolicyError:
        return report
    why = {o.rule.ref: o.explanation for o in local.outcomes if o.status == "FAIL" and o.explanation is not None}
    outcomes = tuple(replace(o, explanation=why.get(o.rule.ref)) if o.status == "FAIL" else o for o in report.outcomes)
    return replace(report, outcomes=outcomes)


def _tests_only(bundle: Bundle) -> Bundle:
    """The bundle's test files as policies, without data (the server already has the bundle's data)."""
    return Bundle(root=bundle.root, policies=bundle.tests, tests=(), data_files=(), data={}, revision=bundle.revision)


def _duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f}ms"
    return f"{ns / 1e9:.2f}s"


def format_report(report: TestReport, *, verbose: bool = True) -> str:
    """The report as ``opa test`` prints it: per file, one line per test (``verbose``; otherwise only the
    tests that did not pass), each failure with why it failed and what it printed, then the coverage
    (when measured) and the summary."""
    lines: list[str] = []
    current: str | None = None
    for o in report.outcomes:
        if o.status == "PASS" and not verbose:
            continue
        if o.rule.file != current:
            if current is not None:
                lines.append("")
            current = o.rule.file
            lines.append(f"{o.rule.file}:")
        line = f"{o.rule.ref}: {o.status} ({_duration(o.duration_ns)})"
        if o.detail and o.status != "PASS":
            line += f"\n  {o.detail}"
        lines.append(line)
        lines.extend(f"  | {text}" for text in o.output)  # a passing test's only with verbose, as opa test -v
    if report.coverage is not None:
        if lines:
            lines.append("")
        lines.append(format_coverage(report.coverage))
    lines.append(_RULE)
    total = len(report.outcomes)
    if total == 0:
        lines.append("no test_* rules found")
    else:
        lines.append(f"PASS: {report.passed}/{total}")
        if report.failed:
            lines.append(f"FAIL: {report.failed}/{total}")
    return "\n".join(lines)
