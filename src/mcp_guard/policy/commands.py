"""``mcp-guard policy eval``, ``policy test`` and ``policy check`` (docs/architecture.md §8.1).

* ``policy eval --input FILE|-`` evaluates one input document (docs/architecture.md §8.3) with the configured engine
  and prints the decision JSON; exit 0 on allow, 1 on deny (fail-closed denies included).
* ``policy test [DIR]`` runs the ``test_*`` rules of a bundle (default: the configured one) with the
  configured engine (or ``--engine``) and prints one line per test like ``opa test -v``; exit 1 if any
  test fails. ``--json`` prints the report as JSON instead. A bundle that fails the static check is
  not tested: every finding is listed and the exit code is 2.
* ``policy check [DIR]`` parses the bundle (policies and tests) and runs the static check the embedded
  engine runs at load (:mod:`mcp_guard.policy.lint`), listing every finding as
  ``file:line:col: message (in rule …)``; exit 0 when there is no error (warnings allowed), 1 when
  there is one. ``--engine opa`` leaves out what only the embedded engine lacks; ``--strict`` also
  requires every local variable to be declared; ``--json`` prints the findings as JSON. For CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from mcp_guard.errors import PolicyError
from mcp_guard.policy import open_engine
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.embedded import compile_bundle
from mcp_guard.policy.lint import Finding, PolicyCheckError, lint_ast
from mcp_guard.policy.opa import connect
from mcp_guard.policy.runner import TestReport, format_report, run_tests_embedded, run_tests_opa
from mcp_guard.settings import Settings
from mcp_guard.urlhost import url_table

__all__ = ["register"]


def register(subparsers: Any) -> None:
    from mcp_guard.cli import add_config_arg

    policy = subparsers.add_parser("policy", help="evaluate and test Rego policies")
    sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    policy.set_defaults(func=lambda _args: _usage(policy))

    ev = sub.add_parser("eval", help="print the decision for one policy input (exit 1 on deny)")
    ev.add_argument("--input", "-i", required=True, metavar="FILE", help="input document (JSON), '-' for stdin")
    ev.add_argument("--engine", choices=("embedded", "opa"), help="override [policy] engine")
    add_config_arg(ev)
    ev.set_defaults(func=cmd_eval)

    te = sub.add_parser("test", help="run the bundle's Rego unit tests (test_* rules)")
    te.add_argument("dir", nargs="?", metavar="DIR", help="bundle directory (default: [policy] bundle)")
    te.add_argument("--engine", choices=("embedded", "opa"), help="override [policy] engine")
    te.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_arg(te)
    te.set_defaults(func=cmd_test)

    ch = sub.add_parser("check", help="parse a bundle and run the static check (what OPA's compiler rejects)")
    ch.add_argument("dir", nargs="?", metavar="DIR", help="bundle directory (default: [policy] bundle)")
    ch.add_argument("--engine", choices=("embedded", "opa"), help="override [policy] engine")
    ch.add_argument("--strict", action="store_true", help="also require every local variable to be declared")
    ch.add_argument("--json", action="store_true", help="print the findings as JSON")
    add_config_arg(ch)
    ch.set_defaults(func=cmd_check)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> Settings:
    from mcp_guard.cli import load_config

    settings = load_config(args)
    if args.engine:
        settings = settings.model_copy(update={"policy": settings.policy.model_copy(update={"engine": args.engine})})
    return settings


def _read_input(name: str) -> dict[str, Any]:
    label = "<stdin>" if name == "-" else name
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"{label}: cannot read input: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError(f"{label}:{e.lineno}:{e.colno}: input is not JSON: {e.msg}") from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{label}: the input document must be a JSON object")
    return doc


def cmd_eval(args: argparse.Namespace) -> int:
    settings = _settings(args)
    document = _read_input(args.input)
    _add_url_table(document)

    async def run() -> dict[str, Any]:
        async with open_engine(settings, watch=False, run_tests=False) as engine:
            decision = await engine.evaluate_document(document)
            return decision.to_dict()

    result = anyio.run(run)
    print(json.dumps(result, indent=2))
    return 0 if result["allow"] is True else 1


def _add_url_table(document: dict[str, Any]) -> None:
    """Fill ``context.urls`` as the proxy does (mcp_guard.urlhost) unless the document brings its own."""
    context = document.get("context")
    if context is None:
        context = document["context"] = {}
    if isinstance(context, dict) and "urls" not in context:
        context["urls"] = url_table(document.get("arguments", {}))


def _print_findings(findings: list[Finding], *, file: Any = None) -> None:
    for f in findings:
        print(f"{f} [{f.severity}: {f.code}]", file=file or sys.stdout)


def cmd_test(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = Path(args.dir) if args.dir else settings.resolve_path(settings.policy.bundle)
    bundle = load_bundle(root)
    report: TestReport
    if settings.policy.engine == "embedded":
        try:
            report = run_tests_embedded(bundle)
        except PolicyCheckError as e:
            _print_findings(list(e.findings), file=sys.stderr)
            print(f"mcp-guard: error: {root}: the bundle fails the static check; no test was run", file=sys.stderr)
            return 2
    else:

        async def run() -> TestReport:
            async with connect(settings.policy.opa_url) as client:
                return await run_tests_opa(client, bundle, bundle_loaded=settings.policy.push_bundle)

        report = anyio.run(run)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def bundle_findings(bundle: Bundle, *, embedded: bool, strict_locals: bool = False) -> list[Finding]:
    """The static check on the policies alone (what the engine loads) and with the tests (what the test
    runner loads), each finding once."""
    seen: set[tuple[str, int, int, str]] = set()
    found: list[Finding] = []
    for include_tests in (False, True) if bundle.tests else (False,):
        engine = compile_bundle(bundle, include_tests=include_tests, check=False)
        for f in lint_ast(engine.get_ast_as_json(), embedded=embedded, strict_locals=strict_locals):
            key = (f.file, f.line, f.col, f.message)
            if key not in seen:
                seen.add(key)
                found.append(f)
    return sorted(found, key=lambda f: (f.severity != "error", f.file, f.line, f.col))


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = Path(args.dir) if args.dir else settings.resolve_path(settings.policy.bundle)
    try:
        bundle = load_bundle(root)
        findings = bundle_findings(bundle, embedded=settings.policy.engine == "embedded", strict_locals=args.strict)
    except PolicyError as e:  # does not even parse: that is this command's finding
        if args.json:
            print(json.dumps({"bundle": str(root), "ok": False, "error": str(e), "findings": []}, indent=2))
        else:
            print(f"{e} [error: parse]")
        return 1
    errors = sum(1 for f in findings if f.severity == "error")
    if args.json:
        doc = {"bundle": str(root), "ok": errors == 0, "findings": [f.to_dict() for f in findings]}
        print(json.dumps(doc, indent=2))
    else:
        _print_findings(findings)
        warnings = len(findings) - errors
        files = len(bundle.policies) + len(bundle.tests)
        print(f"{root}: {files} file(s) checked, {errors} error(s), {warnings} warning(s)")
    return 0 if errors == 0 else 1
