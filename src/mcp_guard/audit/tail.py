"""``mcp-guard audit tail``: the audit trail as one line per event, optionally followed live.

Follow mode polls for ``seq > last`` on a read-only connection every ``interval`` seconds. Each poll
is a short read transaction; in WAL mode it neither blocks the proxy's writer nor waits for it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from mcp_guard.audit.reader import Filters, connect_readonly, iter_rows, row_to_dict
from mcp_guard.errors import AuditError

__all__ = ["format_line", "tail", "use_colour"]

_RESET = "\x1b[0m"
_COLOURS = {"green": "\x1b[32m", "red": "\x1b[31;1m", "yellow": "\x1b[33m", "dim": "\x1b[2m", "bold": "\x1b[1m"}


def use_colour(stream: TextIO, choice: str = "auto") -> bool:
    """Colour for ``always``; for ``auto`` only on a terminal and without ``NO_COLOR`` set."""
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _short(value: Any, limit: int = 160) -> str:
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    )
    text = " ".join(text.split())  # one line, whatever the content
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _verdict(event: dict[str, Any]) -> tuple[str, str]:
    """The at-a-glance word for an event and its colour."""
    kind = event["kind"] or ""
    result = event["result"] if isinstance(event["result"], dict) else {}
    if event["decision"] == "allow":
        return "ALLOW", "green"
    if event["decision"] == "deny":
        return "DENY", "red"
    if kind == "call.error" or kind.endswith((".crash", ".failed", ".error")):
        return "ERROR", "red"
    if kind == "call.result":
        return ("ERROR", "red") if result.get("is_error") else ("OK", "green")
    return "·", "dim"


def format_line(event: dict[str, Any], *, colour: bool = False) -> str:
    """One readable line: time, seq, kind, verdict, who → what, then the reasons or the outcome."""

    def c(text: str, name: str) -> str:
        return f"{_COLOURS[name]}{text}{_RESET}" if colour else text

    ts = str(event["ts"] or "")
    when = ts.replace("T", " ").rstrip("Z")[:23]  # date and time to the millisecond, UTC
    verdict, hue = _verdict(event)
    target = "/".join(p for p in (event["server"], event["tool"]) if p)
    who = event["principal"] or "-"
    parts = [
        c(when, "dim"),
        c(f"#{event['seq']}", "dim"),
        f"{(event['kind'] or '?'):<14}",
        c(f"{verdict:<5}", hue),
        f"{who} → {target}" if target else who,
    ]
    reasons = event["reasons"]
    if reasons:
        shown = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
        parts.append(c(_short(shown), "red" if verdict == "DENY" else "yellow"))
    result = event["result"]
    if isinstance(result, dict) and event["kind"] == "call.result":
        parts.append(f"{result.get('bytes', '?')} bytes")
    elif result is not None:
        parts.append(_short(result))
    details = event["details"]
    if isinstance(details, dict):
        extra = {k: v for k, v in details.items() if k not in ("action", "call_id")}
        if extra:
            parts.append(c(_short(extra, 120), "dim"))
    if event["duration_ms"] is not None:
        parts.append(c(f"{event['duration_ms']:.1f}ms", "dim"))
    if event["policy_revision"] and event["decision"]:
        parts.append(c(f"rev {str(event['policy_revision'])[:12]}", "dim"))
    return "  ".join(parts)


def tail(
    path: str | Path,
    filters: Filters,
    out: TextIO,
    *,
    last: int | None,
    follow: bool,
    as_json: bool,
    colour: bool,
    interval: float = 0.05,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the matching events (the newest ``last`` of them, or all); with ``follow``, keep going.

    Returns the number of events printed. Follow mode waits for the database to appear and ends on
    KeyboardInterrupt; a closed output pipe raises BrokenPipeError.
    """
    p = Path(path)
    conn = _wait_and_connect(p, sleep) if follow else connect_readonly(p)
    printed = 0

    def emit(row: sqlite3.Row) -> None:
        nonlocal printed
        event = row_to_dict(row)
        if as_json:
            out.write(json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n")
        else:
            out.write(format_line(event, colour=colour) + "\n")
        printed += 1

    try:
        # The backlog is everything up to the head seen now; following resumes after it, so a burst
        # in between is neither skipped nor printed twice.
        head = _head(conn)
        for row in iter_rows(conn, replace(filters, until_seq=head), last=last):
            emit(row)
        out.flush()
        if not follow:
            return printed
        while True:
            sleep(interval)
            new_head = _head(conn)
            if new_head <= head:
                continue
            # Rows up to new_head that the filters skip still move the cursor past them.
            for row in iter_rows(conn, replace(filters, after_seq=head, until_seq=new_head)):
                emit(row)
            out.flush()
            head = new_head
    except KeyboardInterrupt:
        return printed
    except sqlite3.Error as e:
        raise AuditError(f"{p}: cannot read the audit database: {e}") from None
    finally:
        conn.close()


def _head(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM audit_events").fetchone()[0])


def _wait_and_connect(path: Path, sleep: Callable[[float], None], *, schema_grace: float = 10.0) -> sqlite3.Connection:
    """Follow mode: wait for the proxy to create the database, and (briefly) for its schema."""
    while not path.is_file():
        sleep(0.2)
    deadline = time.monotonic() + schema_grace
    while True:
        try:
            return connect_readonly(path)
        except AuditError:
            if time.monotonic() >= deadline:  # not a database being created: not ours at all
                raise
            sleep(0.1)
