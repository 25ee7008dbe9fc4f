"""``mcp-guard policy eval`` and ``mcp-guard policy test`` (DESIGN §3).

* ``policy eval --input FILE|-`` evaluates one input document (DESIGN §5) with the configured engine
  and prints the decision JSON; exit 0 on allow, 1 on deny (fail-closed denies included).
* ``policy test [DIR]`` runs the ``test_*`` rules of a bundle (default: the configured one) with the
  configured engine (or ``--engine``) and prints one line per test like ``opa test -v``; exit 1 if any
  test fails. ``--json`` prints the report as JSON instead.
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
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.opa import connect
from mcp_guard.policy.runner import TestReport, format_report, run_tests_embedded, run_tests_opa
from mcp_guard.settings import Settings

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

    async def run() -> dict[str, Any]:
        async with open_engine(settings, watch=False) as engine:
            decision = await engine.evaluate_document(document)
            return decision.to_dict()

    result = anyio.run(run)
    print(json.dumps(result, indent=2))
    return 0 if result["allow"] is True else 1


def cmd_test(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = Path(args.dir) if args.dir else settings.resolve_path(settings.policy.bundle)
    bundle = load_bundle(root)
    report: TestReport
    if settings.policy.engine == "embedded":
        report = run_tests_embedded(bundle)
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
