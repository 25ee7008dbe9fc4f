"""``mcp-guard audit tail``: the audit trail as one line per event, optionally followed live.

A line has fixed columns, then who did what to which tool, then whatever room is left::

    2026-11-25T06:31:00.123Z  #42      call.decision          DENY       bob → github/delete_repo  no; weekend  0.8ms
    2026-11-25T06:31:02.004Z  #43      tool.pin_changed       !CHANGED   - → tickets/search  new=cdcdcdcdcdcd… old=…
    │                         │        │                      │          │                 └ reasons, outcome,
    │                         │        │                      │          │                   details, ms, revision
    │                         │        │                      │          └ principal → server/tool (never cut)
    │                         │        │                      └ ALLOW DENY OK ERROR · (or an alert: see below)
    │                         │        └ kind, wide enough for every EventKind
    │                         └ seq
    └ UTC, to the millisecond, RFC3339 (paste it into --since)

Lines fit :data:`LINE_WIDTH` columns: the reasons, outcome and details are shortened (``…``) to make
room, the tool name never is. Events an operator must not miss — a rejected policy reload, a changed
tool definition — stand out: in colour on a terminal, with a ``!`` before their verdict without.

Follow mode polls the reader's head every ``interval`` seconds and prints the rows after the last
one printed; each poll is a short read, which in WAL mode neither blocks the proxy's writer nor
waits for it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TextIO

from mcp_guard.audit.reader import AuditReader, Filters, row_to_dict
from mcp_guard.types import EventKind

__all__ = ["LINE_WIDTH", "format_line", "tail", "use_colour"]

LINE_WIDTH = 160

_RESET = "\x1b[0m"
_COLOURS = {
    "green": "\x1b[32m",
    "red": "\x1b[31;1m",
    "yellow": "\x1b[33m",
    "dim": "\x1b[2m",
    "bold": "\x1b[1m",
    "alert": "\x1b[1;33m",  # the kind of an event not to miss
    "alert_mark": "\x1b[1;7;33m",  # its verdict: reverse video
}

# Events an operator must not miss, and the word that says why.
_ALERTS: dict[str, str] = {
    EventKind.POLICY_RELOAD_FAILED: "REJECTED",
    EventKind.TOOL_PIN_CHANGED: "CHANGED",
}
_ALERT_MARK = "!"  # before an alert's verdict when there is no colour to show it
_FAILURES = frozenset({EventKind.CALL_ERROR, EventKind.UPSTREAM_CRASH, EventKind.UPSTREAM_START_FAILED})

_TIME_WIDTH = len("2026-11-25T06:31:00.123Z")
_SEQ_WIDTH = len("#123456")
_KIND_WIDTH = max(len(kind) for kind in EventKind)
_VERDICT_WIDTH = len(_ALERT_MARK) + max(len(w) for w in (*_ALERTS.values(), "ALLOW", "DENY", "ERROR", "OK"))
_GAP = "  "
_MIN_PIECE = 12  # a shortened piece keeps at least this much, else it is left out
_FIRST_PIECE = 60  # room the first piece (a deny's reasons) gets before duration and revision give way
_MIN_WHO = 8  # a principal is shortened to no less than this

_Piece = tuple[str, str | None]  # text and its colour name
_DIGEST = re.compile(r"^[0-9a-f]{40,}$")  # sha256/sha1 hex: the first 12 characters identify it
# What a client or an upstream could use to forge a line or drive the operator's terminal: C0/C1 controls
# (ESC starts colour and OSC sequences; CR/LF start lines), DEL, line/paragraph separators, bidi overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# The same on every call row, or (policy: the replay input, events.policy_record) too big for a one-line view.
_HIDDEN_DETAILS = ("action", "call_id", "policy")


def use_colour(stream: TextIO, choice: str = "auto") -> bool:
    """Colour for ``always``; for ``auto`` only on a terminal and without ``NO_COLOR`` set."""
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _escaped(char: re.Match[str]) -> str:
    code = ord(char.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _safe(value: Any) -> Any:
    """``value`` with every string in it escaped for display: names, reasons and details are chosen by
    clients and upstreams, and must not forge a line or send control sequences to the operator's terminal."""
    if isinstance(value, str):
        return _UNSAFE.sub(_escaped, value)
    if isinstance(value, dict):
        return {_safe(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return value


def _one_line(value: Any) -> str:
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    )
    return " ".join(text.split())  # one line, whatever the content


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return _shorten(value, 13) if _DIGEST.match(value) else value
    return _one_line(value)


def _pairs(mapping: dict[str, Any]) -> str:
    """``key=value`` pairs: shorter than JSON, and long hex digests cut to what identifies them."""
    return " ".join(f"{k}={_value(v)}" for k, v in mapping.items())


def _verdict(event: dict[str, Any]) -> tuple[str, str]:
    """The at-a-glance word for an event and its colour."""
    kind = event["kind"] or ""
    if kind in _ALERTS:
        return _ALERTS[kind], "alert_mark"
    if event["decision"] == "allow":
        return "ALLOW", "green"
    if event["decision"] == "deny":
        return "DENY", "red"
    if kind in _FAILURES:
        return "ERROR", "red"
    if kind == EventKind.CALL_RESULT:
        result = event["result"] if isinstance(event["result"], dict) else {}
        return ("ERROR", "red") if result.get("is_error") else ("OK", "green")
    return "·", "dim"


def _extras(event: dict[str, Any], verdict: str) -> tuple[list[_Piece], list[_Piece]]:
    """What follows the target: (pieces that may be shortened, short pieces kept whole), with colours."""
    flexible: list[_Piece] = []
    reasons = event["reasons"]
    if reasons:
        shown = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
        flexible.append((_one_line(shown), "red" if verdict == "DENY" else "yellow"))
    result = event["result"]
    if isinstance(result, dict) and event["kind"] == EventKind.CALL_RESULT:
        flexible.append((f"{result.get('bytes', '?')} bytes", None))
    elif isinstance(result, dict):
        flexible.append((_pairs(result), None))
    elif result is not None:
        flexible.append((_one_line(result), None))
    details = event["details"]
    if isinstance(details, dict):
        extra = {
            k: v
            for k, v in details.items()
            if k not in _HIDDEN_DETAILS and not (k == "tool" and v == event["tool"])  # already in its column
        }
        if extra:
            flexible.append((_one_line(_pairs(extra)), "alert" if event["kind"] in _ALERTS else "dim"))
    elif details is not None:
        flexible.append((_one_line(details), "dim"))
    fixed: list[_Piece] = []
    if isinstance(event["duration_ms"], (int, float)):
        fixed.append((f"{event['duration_ms']:.1f}ms", "dim"))
    if event["policy_revision"] and event["decision"]:
        fixed.append((f"rev {str(event['policy_revision'])[:12]}", "dim"))
    return flexible, fixed


def _fit(who: str, target: str, flexible: list[_Piece], fixed: list[_Piece], room: int) -> tuple[str, list[_Piece]]:
    """``principal → server/tool`` and the pieces after it, within ``room`` columns.

    The target is never cut. When room is short, in this order: the short pieces (revision, then
    duration) give way to the first flexible piece (up to :data:`_FIRST_PIECE` of it), the principal
    is shortened (to :data:`_MIN_WHO`) to keep :data:`_MIN_PIECE` of it, and the flexible pieces
    (reasons, outcome, details) are shortened with ``…`` or left out, the first one last.
    """
    arrow = f" → {target}" if target else ""
    fixed = list(fixed)
    first = min(len(flexible[0][0]), _FIRST_PIECE) + len(_GAP) if flexible else 0

    def spare() -> int:
        return room - len(who) - len(arrow) - sum(len(_GAP) + len(t) for t, _ in fixed) - first

    while fixed and spare() < 0:
        fixed.pop()
    first = min(first, _MIN_PIECE + len(_GAP))
    if spare() < 0:
        who = _shorten(who, max(len(who) + spare(), _MIN_WHO))
    left = room - len(who) - len(arrow) - sum(len(_GAP) + len(t) for t, _ in fixed)
    kept: list[_Piece] = []
    for text, hue in flexible:
        space = left - len(_GAP)
        if len(text) <= space:
            kept.append((text, hue))
            left -= len(_GAP) + len(text)
            continue
        if space >= min(len(text), _MIN_PIECE):
            kept.append((_shorten(text, space), hue))
        break
    return who + arrow, kept + fixed


def format_line(event: dict[str, Any], *, colour: bool = False, width: int = LINE_WIDTH) -> str:
    """One line of at most ``width`` columns (unless the server/tool name alone is too long for it).

    Every untrusted field is escaped first (``\\x1b`` for ESC, ``\\x0a`` for a newline, …): the only
    control sequences on the line are the colours this function adds."""
    event = _safe(event)

    def c(text: str, name: str | None) -> str:
        return f"{_COLOURS[name]}{text}{_RESET}" if colour and name else text

    ts = str(event["ts"] or "")
    when = ts[:23] + "Z" if len(ts) > 23 and ts.endswith("Z") else ts  # to the millisecond, UTC
    kind = str(event["kind"] or "?")
    verdict, hue = _verdict(event)
    alert = kind in _ALERTS
    shown_verdict = verdict if colour or not alert else _ALERT_MARK + verdict
    columns = [
        c(f"{when:<{_TIME_WIDTH}}", "dim"),
        c(f"{'#' + str(event['seq']):<{_SEQ_WIDTH}}", "dim"),
        c(f"{kind:<{_KIND_WIDTH}}", "alert" if alert else None),
        c(f"{shown_verdict:<{_VERDICT_WIDTH}}", hue),
    ]
    used = sum(len(_GAP) + n for n in (len(when), _SEQ_WIDTH, max(len(kind), _KIND_WIDTH), _VERDICT_WIDTH))
    target = "/".join(str(p) for p in (event["server"], event["tool"]) if p)
    who = _one_line(event["principal"]) if event["principal"] else "-"
    flexible, fixed = _extras(event, verdict)
    who_what, pieces = _fit(who, target, flexible, fixed, width - used)
    return _GAP.join([*columns, who_what, *(c(text, name) for text, name in pieces)])


def tail(
    reader: AuditReader,
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

    Returns the number of events printed. Follow mode ends on KeyboardInterrupt; a closed output
    pipe raises BrokenPipeError; a log that cannot be read raises AuditError.
    """
    printed = 0

    def emit(row: Sequence[Any]) -> None:
        nonlocal printed
        event = row_to_dict(row)
        if as_json:
            out.write(json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n")
        else:
            out.write(format_line(event, colour=colour) + "\n")
        printed += 1

    def head_seq() -> int:
        head = reader.head()
        return head.seq if head else 0

    try:
        # The backlog is everything up to the head seen now; following resumes after it, so a burst
        # in between is neither skipped nor printed twice.
        head = head_seq()
        for row in reader.rows(replace(filters, until_seq=head), last=last):
            emit(row)
        out.flush()
        if not follow:
            return printed
        while True:
            sleep(interval)
            new_head = head_seq()
            if new_head <= head:
                continue
            # Rows up to new_head that the filters skip still move the cursor past them.
            for row in reader.rows(replace(filters, after_seq=head, until_seq=new_head)):
                emit(row)
            out.flush()
            head = new_head
    except KeyboardInterrupt:
        return printed
