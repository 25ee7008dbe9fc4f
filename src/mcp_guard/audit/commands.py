"""``mcp-guard audit tail|verify|export|migrate`` (docs/architecture.md §8.1).

Each reads the SQLite file named by ``--db``, the PostgreSQL log named by ``--dsn``, else the log
``[audit]`` of the config names (through :func:`mcp_guard.audit.open_reader`, so any backend; a
relative ``path`` resolves against the config file's directory). ``migrate --to DSN`` copies the
SQLite log (``--db``, else ``[audit] path``) into PostgreSQL (:mod:`mcp_guard.audit.migrate`).
Exit codes: 0 ok, 1 the chain is broken (verify), a migrate was refused or the database cannot be
read, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from mcp_guard.errors import ConfigError

if TYPE_CHECKING:
    from mcp_guard.audit.reader import AuditReader

__all__ = ["register"]


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="read the audit trail: tail, verify, export; migrate it to PostgreSQL",
        description=(
            "Read the audit trail the proxy writes (tail it live, verify its hash chain, export it), "
            "or copy a SQLite log into PostgreSQL."
        ),
    )
    audit.set_defaults(func=lambda _args: _usage(audit))
    sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND")

    tail = sub.add_parser(
        "tail",
        help="show recent events, one line each; -f to follow live",
        description="Show audit events, one line each (newest last).",
    )
    _add_source(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they are written")
    tail.add_argument(
        "-n",
        "--lines",
        type=_non_negative,
        metavar="N",
        help="show the last N matching events first (default 20; all of them with --since)",
    )
    _add_filters(tail)
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--color",
        "--colour",
        dest="color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output (default: auto, only on a terminal and without NO_COLOR)",
    )
    tail.add_argument("--interval", type=float, metavar="SECONDS", help=argparse.SUPPRESS)  # poll (safety net)
    tail.set_defaults(func=_tail)

    verify = sub.add_parser(
        "verify",
        help="check the hash chain; exit 1 naming the first bad row",
        description="Walk the hash chain; print the head (seq, hash) to anchor elsewhere.",
    )
    _add_source(verify)
    verify.add_argument("--json", action="store_true", help="print the result as one JSON object")
    verify.set_defaults(func=_verify)

    export = sub.add_parser(
        "export",
        help="write events as JSON Lines (for a SIEM)",
        description="Write audit events as JSON Lines, every column included.",
    )
    _add_source(export)
    export.add_argument(
        "--format",
        choices=("jsonl", "opa"),
        default="jsonl",
        help="jsonl: every column of every event (default); opa: decisions as OPA decision logs, masked",
    )
    export.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="POINTER",
        help="with --format opa: remove this JSON pointer (/input/... or /result/...); adds to [audit] export_mask",
    )
    export.add_argument("--since", metavar="WHEN", help="only events since WHEN (10m, 2h, 1d or RFC3339)")
    export.add_argument(
        "--after-seq", type=_non_negative, metavar="SEQ", help="only events after this seq (incremental shipping)"
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(func=_export)

    migrate = sub.add_parser(
        "migrate",
        help="copy a SQLite audit log into PostgreSQL, its chain verified before and after",
        description=(
            "Copy the SQLite audit log (--db, else [audit] path of the config) into the PostgreSQL "
            "database DSN, rows unchanged (seq, prev_hash, hash), so its chain and head stay the same. "
            "A broken source chain is refused; a non-empty target only if it holds a prefix of the "
            "source chain (an earlier migrate), and then only the missing rows are copied."
        ),
    )
    from mcp_guard.cli import add_config_arg

    add_config_arg(migrate)
    migrate.add_argument("--db", metavar="PATH", help="the SQLite audit file (default: [audit] path of the config)")
    migrate.add_argument(
        "--to",
        required=True,
        metavar="DSN",
        help="the PostgreSQL database (postgresql://user@host:port/dbname; password via PGPASSWORD or .pgpass)",
    )
    migrate.set_defaults(func=_migrate)


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly, and keep Python's exit flush quiet too."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _add_source(parser: argparse.ArgumentParser) -> None:
    from mcp_guard.cli import add_config_arg

    add_config_arg(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help="a SQLite audit file (default: the log [audit] names)")
    where.add_argument("--dsn", metavar="DSN", help="a PostgreSQL audit log (postgresql://user@host:port/dbname)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="WHEN", help="only events since WHEN (10m, 2h, 1d or RFC3339)")
    parser.add_argument("--principal", metavar="ID", help="only events of this principal")
    parser.add_argument("--server", metavar="NAME", help="only events about this upstream")
    parser.add_argument("--tool", metavar="NAME", help="only events about this tool (upstream-local name)")
    parser.add_argument("--decision", choices=("allow", "deny"), help="only decisions of this kind")
    parser.add_argument(
        "--kind",
        action="append",
        default=[],
        type=_kind,
        metavar="KIND",
        help="only events of this kind (repeatable; 'call.*' matches a prefix)",
    )


def _open_reader(args: argparse.Namespace, *, wait: bool = False) -> AbstractContextManager[AuditReader]:
    """``--db PATH`` (SQLite), ``--dsn DSN`` (PostgreSQL), else the log ``[audit]`` of the config names."""
    from mcp_guard.audit import open_reader
    from mcp_guard.audit.sqlite import open_sqlite_reader

    if args.db:
        return open_sqlite_reader(args.db, wait=wait)
    if args.dsn:
        from mcp_guard.audit.postgres import open_postgres_reader

        return open_postgres_reader(_checked_dsn(args.dsn, "--dsn"), wait=wait)
    from mcp_guard.cli import load_config

    return open_reader(load_config(args), wait=wait)


def _kind(text: str) -> str:
    """A ``--kind`` value: an event kind, or a prefix ending in ``*`` that matches one."""
    from mcp_guard.types import EventKind

    kinds = [k.value for k in EventKind]
    if text in kinds or (text.endswith("*") and any(k.startswith(text[:-1]) for k in kinds)):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not an event kind (one of: {', '.join(kinds)}; or a prefix*)")


def _since(text: str | None) -> str | None:
    if text is None:
        return None
    from mcp_guard.audit.reader import parse_since

    try:
        return parse_since(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _tail(args: argparse.Namespace) -> int:
    from mcp_guard.audit.reader import Filters
    from mcp_guard.audit.tail import tail, use_colour

    filters = Filters(
        since=_since(args.since),
        principal=args.principal,
        server=args.server,
        tool=args.tool,
        decision=args.decision,
        kinds=tuple(args.kind),
    )
    last = args.lines if args.lines is not None else (None if args.since else 20)
    try:
        with _open_reader(args, wait=args.follow) as reader:
            sleep, interval = _pacing(reader, args.interval)
            tail(
                reader,
                filters,
                sys.stdout,
                last=last,
                follow=args.follow,
                as_json=args.json,
                colour=not args.json and use_colour(sys.stdout, args.color),
                interval=interval,
                sleep=sleep,
            )
    except BrokenPipeError:
        return _quiet_broken_pipe()
    return 0


POLL_S = 0.05  # follow mode: how often a reader that cannot be woken is polled
SAFETY_POLL_S = 1.0  # ... and one that can (NOTIFY), in case a wake-up is lost


def _pacing(reader: AuditReader, interval: float | None) -> tuple[Callable[[float], None], float]:
    """How ``tail -f`` waits between polls: on the reader's wake-ups if it has them, else by sleeping."""
    import time

    from mcp_guard.audit.reader import WakingReader

    if isinstance(reader, WakingReader):
        return reader.wait_for_rows, max(interval if interval is not None else SAFETY_POLL_S, 0.001)
    return time.sleep, max(interval if interval is not None else POLL_S, 0.001)


def _checked_dsn(dsn: str, option: str) -> str:
    """``dsn`` if libpq can parse it; else a usage error naming ``option`` (never the DSN: a password)."""
    from mcp_guard.audit.postgres import check_dsn

    try:
        check_dsn(dsn)
    except ValueError as e:
        raise ConfigError(f"{option}: {e}") from None
    return dsn


def _verify(args: argparse.Namespace) -> int:
    import json

    from mcp_guard.audit.verify import verify_chain

    with _open_reader(args) as reader:
        path = reader.location
        result = verify_chain(reader)
    for warning in result.warnings:
        print(f"warning: {path}: {warning}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "rows": result.rows,
                    "bad_seq": result.bad_seq,
                    "problem": result.problem,
                    "head": {"seq": result.head_seq, "hash": result.head_hash},
                    "last_good": {"seq": result.last_good_seq, "hash": result.last_good_hash},
                    "warnings": list(result.warnings),
                },
                sort_keys=True,
            )
        )
        return 0 if result.ok else 1
    if result.ok:
        if result.head_seq is None:
            print(f"ok: {path}: empty audit log (no rows yet)")
        else:
            print(f"ok: {path}: {result.rows} rows, chain intact")
            print(f"head: seq={result.head_seq} hash={result.head_hash}")
        return 0
    print(f"FAILED: {path}: chain broken at seq {result.bad_seq}: {result.problem}")
    if result.last_good_seq is not None:
        print(f"last good: seq={result.last_good_seq} hash={result.last_good_hash}")
    print(f"head: seq={result.head_seq} hash={result.head_hash}")
    return 1


def _export(args: argparse.Namespace) -> int:
    from mcp_guard.audit.export import export
    from mcp_guard.audit.reader import Filters

    filters = Filters(since=_since(args.since), after_seq=args.after_seq)
    if args.mask and args.format != "opa":
        raise ConfigError("--mask applies to --format opa (jsonl is the raw, verifiable trail)")
    shape = _opa_export_options(args) if args.format == "opa" else {}
    with _open_reader(args) as reader:
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                count = export(reader, out, filters=filters, fmt=args.format, **shape)
        else:
            try:
                count = export(reader, sys.stdout, filters=filters, fmt=args.format, **shape)
            except BrokenPipeError:
                return _quiet_broken_pipe()
    print(f"exported {count} events", file=sys.stderr)
    return 0


def _opa_export_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decision path and masks of ``--format opa``: ``--mask`` plus, when the log is the config's
    (no ``--db``/``--dsn``), ``[audit] export_mask`` and ``[policy] decision``."""
    from mcp_guard.audit.export import DEFAULT_PATH, parse_masks
    from mcp_guard.settings import mask_pointer

    masks: list[Any] = []
    path = DEFAULT_PATH
    if not args.db and not args.dsn:
        from mcp_guard.cli import load_config

        settings = load_config(args)
        masks += settings.audit.export_mask
        path = settings.policy.decision
    for pointer in args.mask:
        try:
            masks.append(mask_pointer(pointer))
        except ValueError as e:
            raise ConfigError(f"--mask: {e}") from None
    return {"path": path, "masks": parse_masks(masks)}


def _migrate(args: argparse.Namespace) -> int:
    from mcp_guard.audit.migrate import migrate_log
    from mcp_guard.audit.sqlite import open_sqlite_reader

    dsn = _checked_dsn(args.to, "--to")
    if args.db:
        path = args.db
    else:
        from mcp_guard.cli import load_config

        settings = load_config(args)
        path = str(settings.resolve_path(settings.audit.path))
    with open_sqlite_reader(path) as source:
        result = migrate_log(source, dsn)
    if result.head is None:
        print(f"ok: {result.source} is empty: nothing to copy (schema ready in {result.target})")
        return 0
    kept = f", {result.already} already there" if result.already else ""
    print(f"ok: copied {result.copied} rows from {result.source} to {result.target}{kept}; chain verified")
    print(f"head: seq={result.head.seq} hash={result.head.hash}")
    return 0
