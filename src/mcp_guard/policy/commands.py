"""``mcp-guard policy eval``, ``policy test`` and ``policy check`` (docs/architecture.md §8.1).

* ``policy eval --input FILE|-`` evaluates one input document (docs/architecture.md §8.3) with the configured engine
  and prints the decision JSON; exit 0 on allow, 1 on deny (fail-closed denies included).
* ``policy test [DIR]`` runs the ``test_*`` rules of a bundle (default: the configured one) with the
  configured engine (or ``--engine``) and prints each failure with why it failed (the failing
  expression, file:line and values; :mod:`mcp_guard.policy.explain`) like ``opa test --explain fails``
  (with ``--engine opa``, a failure regorus reproduces is explained by regorus);
  ``-v`` lists every test with its time, ``-r REGEX`` runs the tests whose ``data.pkg.test_name``
  matches, ``--coverage`` adds per-file and total line coverage and ``--threshold N`` (percent) makes a
  lower total exit 1. Exit 1 if any test fails. ``--json`` prints the report as JSON instead. A bundle
  that fails the static check is not tested: every finding is listed and the exit code is 2.
* ``policy check [DIR]`` parses the bundle (policies and tests) and runs the static check the embedded
  engine runs at load (:mod:`mcp_guard.policy.lint`), listing every finding as
  ``file:line:col: message (in rule …)``; exit 0 when there is no error (warnings allowed), 1 when
  there is one. ``--engine opa`` leaves out what only the embedded engine lacks; ``--strict`` also
  requires every local variable to be declared; ``--json`` prints the findings as JSON. The
  configured ``[policy] data_overlay`` files are merged over the bundle's data and checked against its
  ``data.schema.json``: a violation is a finding (``[error: schema]``) naming the file and the key. For CI.
* ``policy fmt [--check] [DIR]`` puts the bundle's ``.rego`` files in OPA's canonical format with OPA's
  own formatter (:mod:`mcp_guard.policy.fmt`; exit 2 without an ``opa`` binary). ``--check`` only lists
  the files that would change (exit 1 if any). After writing, the static check runs again: a rewrite
  the embedded engine would evaluate differently is listed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from mcp_guard.errors import PolicyError
from mcp_guard.policy import open_engine
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.embedded import compile_bundle
from mcp_guard.policy.fmt import format_bundle
from mcp_guard.policy.lint import Finding, PolicyCheckError, lint_ast
from mcp_guard.policy.opa import connect
from mcp_guard.policy.overlay import configured_overlays
from mcp_guard.policy.runner import (
    TestReport,
    explain_opa_failures,
    format_report,
    run_tests_embedded,
    run_tests_opa,
)
from mcp_guard.policy.schema import DataSchemaError
from mcp_guard.settings import Settings
from mcp_guard.urlhost import url_table

if TYPE_CHECKING:
    from mcp_guard.policy.history import HistoryStore

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
    te.add_argument("-r", "--run", metavar="REGEX", help="only the tests whose data.<package>.<name> matches")
    te.add_argument("-v", "--verbose", action="store_true", help="list every test with its result and time")
    te.add_argument("--coverage", action="store_true", help="per-file and total line coverage (embedded engine)")
    te.add_argument("--threshold", type=_percent, metavar="N", help="with --coverage: exit 1 below N percent")
    add_config_arg(te)
    te.set_defaults(func=cmd_test)

    ch = sub.add_parser("check", help="parse a bundle and run the static check (what OPA's compiler rejects)")
    ch.add_argument("dir", nargs="?", metavar="DIR", help="bundle directory (default: [policy] bundle)")
    ch.add_argument("--engine", choices=("embedded", "opa"), help="override [policy] engine")
    ch.add_argument("--strict", action="store_true", help="also require every local variable to be declared")
    ch.add_argument("--json", action="store_true", help="print the findings as JSON")
    add_config_arg(ch)
    ch.set_defaults(func=cmd_check)

    fm = sub.add_parser("fmt", help="format .rego files canonically (runs OPA's formatter)")
    fm.add_argument("dir", nargs="?", metavar="DIR", help="bundle directory (default: [policy] bundle)")
    fm.add_argument("--check", action="store_true", help="only list files that are not formatted (exit 1 if any)")
    add_config_arg(fm)
    fm.set_defaults(func=cmd_fmt)

    register_lifecycle(sub)


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


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"a percentage is between 0 and 100, not {text}")
    return value


def _pattern(text: str | None) -> re.Pattern[str] | None:
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise PolicyError(f"--run: {text!r} is not a regular expression: {e}") from None


def cmd_test(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = Path(args.dir) if args.dir else settings.resolve_path(settings.policy.bundle)
    pattern = _pattern(args.run)
    if args.threshold is not None and not args.coverage:
        raise PolicyError("--threshold needs --coverage")
    if args.coverage and settings.policy.engine != "embedded":
        raise PolicyError("--coverage is measured by the embedded engine only (leave out --engine opa)")
    # Tests run on the bundle's own data (runner.run_tests_embedded), so the site's overlays are read only
    # when the whole bundle is re-pushed to OPA after the run (it must get the site's data back).
    repush = settings.policy.engine == "opa" and settings.policy.push_bundle
    bundle = load_bundle(root, overlays=configured_overlays(settings) if repush else ())
    report: TestReport
    if settings.policy.engine == "embedded":
        try:
            report = run_tests_embedded(bundle, pattern=pattern, coverage=args.coverage)
        except PolicyCheckError as e:
            _print_findings(list(e.findings), file=sys.stderr)
            print(f"mcp-guard: error: {root}: the bundle fails the static check; no test was run", file=sys.stderr)
            return 2
    else:

        async def run() -> TestReport:
            async with connect(settings.policy.opa_url) as client:
                return await run_tests_opa(client, bundle, bundle_loaded=settings.policy.push_bundle, pattern=pattern)

        report = explain_opa_failures(anyio.run(run), bundle)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report, verbose=args.verbose))
    below = args.threshold is not None and report.coverage is not None and report.coverage.percent < args.threshold
    if below and report.coverage is not None:
        print(
            f"mcp-guard: coverage {report.coverage.percent:.2f}% is below the threshold {args.threshold:g}%",
            file=sys.stderr,
        )
    return 0 if report.ok and not below else 1


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
        bundle = load_bundle(root, overlays=configured_overlays(settings))
        findings = bundle_findings(bundle, embedded=settings.policy.engine == "embedded", strict_locals=args.strict)
    except PolicyError as e:  # does not even parse: that is this command's finding
        if args.json:
            print(json.dumps({"bundle": str(root), "ok": False, "error": str(e), "findings": []}, indent=2))
        else:
            print(f"{e} [error: {'schema' if isinstance(e, DataSchemaError) else 'parse'}]")
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


def cmd_fmt(args: argparse.Namespace) -> int:
    from mcp_guard.cli import load_config

    settings = load_config(args)
    root = Path(args.dir) if args.dir else settings.resolve_path(settings.policy.bundle)
    result = format_bundle(root, write=not args.check)
    for path in result.changed:
        print(path)
    if args.check:
        if result.changed:
            print(
                f"{root}: {len(result.changed)} file(s) not in canonical format (mcp-guard policy fmt)", file=sys.stderr
            )
        return 1 if result.changed else 0
    if not result.changed:
        return 0
    bundle = load_bundle(root)
    errors = [
        f for f in bundle_findings(bundle, embedded=settings.policy.engine == "embedded") if f.severity == "error"
    ]
    if errors:
        _print_findings(errors, file=sys.stderr)
        print(f"mcp-guard: {root}: formatted, but the bundle now fails the static check", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- life cycle
# policy replay | history | rollback (docs/architecture.md §3 "Policies": replay, shadow, signing, history).


def register_lifecycle(sub: Any) -> None:
    """``policy replay``, ``policy history`` and ``policy rollback``."""
    from mcp_guard.cli import add_config_arg

    rp = sub.add_parser(
        "replay", help="re-decide recorded calls with a candidate bundle; exit 1 when a decision would change"
    )
    rp.add_argument("--bundle", required=True, metavar="DIR", help="the candidate bundle directory")
    rp.add_argument("--since", metavar="WHEN", help="only decisions since WHEN (10m, 2h, 7d or RFC3339)")
    rp.add_argument("--principal", metavar="ID", help="only this principal's decisions")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_arg(rp)
    rp.set_defaults(func=cmd_replay)

    hi = sub.add_parser("history", help="list activated bundle revisions, newest first, and the pinned one")
    hi.add_argument("--limit", type=int, default=50, metavar="N", help="at most N activations (default 50)")
    hi.add_argument("--json", action="store_true", help="print the history as JSON")
    add_config_arg(hi)
    hi.set_defaults(func=cmd_history)

    ro = sub.add_parser(
        "rollback", help="pin a stored bundle revision (running proxies load it without a file edit); --clear unpins"
    )
    ro.add_argument("revision", nargs="?", metavar="REV", help="a revision from `policy history` (6+ hex characters)")
    ro.add_argument("--clear", action="store_true", help="remove the pin: the bundle directory rules again")
    ro.add_argument(
        "--as",
        dest="operator",
        metavar="PRINCIPAL",
        help="who rolls back (default $MCP_GUARD_OPERATOR, else user@host)",
    )
    add_config_arg(ro)
    ro.set_defaults(func=cmd_rollback)


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the configured audit log's decisions (:mod:`mcp_guard.policy.replay`) against ``--bundle``."""
    from mcp_guard.audit import Filters, open_reader, parse_since, row_to_dict
    from mcp_guard.cli import load_config
    from mcp_guard.errors import AuditError, ConfigError
    from mcp_guard.policy.embedded import EmbeddedEngine
    from mcp_guard.policy.replay import REPLAY_TIMEOUT_MS, format_report, replay_rows
    from mcp_guard.types import EventKind

    settings = load_config(args)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    candidate = EmbeddedEngine(
        load_bundle(Path(args.bundle), overlays=configured_overlays(settings)),
        decision=settings.policy.decision,
        timeout_ms=REPLAY_TIMEOUT_MS,
    )
    filters = Filters(since=since, principal=args.principal, kinds=(str(EventKind.CALL_DECISION),))
    try:
        with open_reader(settings) as reader, reader.snapshot():
            report = replay_rows((row_to_dict(r) for r in reader.rows(filters)), candidate)
    except AuditError as e:  # exit 2, not 1: 1 means "a decision would change" to a CI gate
        raise ConfigError(str(e)) from None
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), **report.to_dict()}, indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
    return 1 if report.changed else 0


def cmd_history(args: argparse.Namespace) -> int:
    """The bundle history (:mod:`mcp_guard.policy.history`): activations newest first, the pin marked."""
    from mcp_guard.cli import load_config
    from mcp_guard.policy.history import open_history

    store = open_history(load_config(args))
    try:
        activations = store.activations(args.limit if args.limit > 0 else None)
        pin = store.pinned()
    finally:
        store.close()
    if args.json:
        doc = {
            "store": store.location,
            "pinned": None if pin is None else {"revision": pin.revision, "ts": pin.ts, "actor": pin.actor},
            "activations": [a.to_dict() for a in activations],
        }
        print(json.dumps(doc, indent=2))
        return 0
    if pin is not None:
        print(f"pinned: {pin.revision} by {pin.actor or '-'} at {pin.ts} (the bundle directory is set aside)")
    print(f"{'REVISION':<14}{'ACTIVATED':<29}{'SOURCE':<10}{'BY':<28}BUNDLE")
    for a in activations:
        print(f"{a.revision[:12]:<14}{a.ts:<29}{a.source:<10}{(a.actor or '-')[:27]:<28}{a.bundle or '-'}")
    if not activations:
        print(f"(no activation recorded in {store.location})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Pin ``REV`` (or clear the pin) in the history store, audited as ``policy.rollback``.

    The stored revision is loaded here first exactly as a proxy will load it (signature, static check, tests),
    so a revision that can no longer start is refused now rather than by every proxy later. The audit row is
    written before the pin: a rollback that could not be recorded does not happen.
    """
    from mcp_guard.cli import load_config
    from mcp_guard.errors import ConfigError
    from mcp_guard.policy.history import open_history

    if args.clear == (args.revision is not None):
        raise ConfigError("policy rollback: give either a revision or --clear")
    settings = load_config(args)
    if settings.policy.engine == "opa" and not settings.policy.push_bundle:
        raise ConfigError(
            'policy rollback: OPA loads its own bundles here (engine = "opa" without push_bundle); roll back there',
            file=settings.source,
            key="policy.engine",
        )
    store = open_history(settings)
    try:
        return _rollback(args, settings, store)
    finally:
        store.close()


def _rollback(args: argparse.Namespace, settings: Settings, store: HistoryStore) -> int:
    import os
    import tempfile

    from mcp_guard.audit import events, open_sink
    from mcp_guard.policy.history import default_actor, materialize
    from mcp_guard.policy.runner import gate_tests
    from mcp_guard.policy.signing import bundle_loader

    operator = args.operator or os.environ.get("MCP_GUARD_OPERATOR") or default_actor()
    previous = store.pinned()
    revision: str | None = None
    if not args.clear:
        revision = store.resolve(args.revision)
        files = store.files(revision)
        if files is None:  # pragma: no cover - resolve found it in the same table
            raise PolicyError(f"{store.location}: revision {revision} has no stored files")
        with tempfile.TemporaryDirectory(prefix="mcp-guard-rollback-") as tmp:
            bundle = bundle_loader(settings)(materialize(files, Path(tmp) / "bundle"))
            if bundle.revision != revision:
                raise PolicyError(f"{store.location}: the stored files of {revision} give revision {bundle.revision}")
            embedded = settings.policy.engine == "embedded"
            if embedded:
                compile_bundle(bundle)
            if settings.policy.run_tests_on_reload and bundle.tests:
                gate_tests(bundle, embedded=embedded)

    async def audit() -> None:
        async with open_sink(settings) as sink:
            await sink.record(
                events.policy_rollback(
                    revision,
                    principal=operator,
                    previous_pin=previous.revision if previous else None,
                    cleared=args.clear,
                    store=store.location,
                )
            )

    anyio.run(audit)
    store.pin(revision, operator)
    if revision is None:
        print("pin cleared: running proxies load the bundle directory at their next look (or on SIGHUP)")
    else:
        print(
            f"pinned {revision} (by {operator}): running proxies load it at their next look (within a second "
            "with hot_reload, else on SIGHUP) and at every start until `mcp-guard policy rollback --clear`"
        )
    return 0
