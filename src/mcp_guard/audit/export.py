"""``mcp-guard audit export``: the audit trail for shipping to a SIEM, as JSON Lines or as OPA decision logs.

``jsonl``: one object per line with every column (``seq``, ``prev_hash`` and ``hash`` included, so the
receiving side can re-verify the chain) and the JSON columns decoded. ``after_seq`` makes incremental
shipping simple: remember the last ``seq`` exported and pass it next time.

``opa``: one line per *decision* (``call.decision`` rows) in the shape of OPA's decision logs, so a
pipeline built for OPA ingests mcp-guard unchanged: ``decision_id``, ``path`` (the decision rule,
``[policy] decision``), ``input``, ``result``, ``bundles`` (``{"mcp-guard": {"revision": …}}``, the
policy revision that decided), ``timestamp``, ``labels`` (``app``, ``version``), ``metrics``
(``timer_mcp_guard_decision_ns``, the row's ``duration_ms``) and, under ``mcp_guard``, the row's
``seq``/``event_id``/``hash`` to tie a line back to the hash chain and ``decision``, what governed the
call (a stage may have refused what the policy allowed).

When the row keeps what the policy was asked and answered (``details.policy``, written for ``policy
replay``: the input without ``arguments``, and the policy's own ``allow``/``reasons``/``obligations``),
``input`` is that document with the row's audited ``arguments`` put back (the audit copy: secrets
scrubbed, credential shapes masked) and ``result`` is the policy's answer; ``mcp_guard.input`` says
``"recorded"``. Older rows, and rows whose input was too large to keep, get an ``input`` rebuilt from
the columns — action, principal id, session id, server, tool, arguments — (``"reconstructed"``) and a
``result`` of ``{allow, reasons, obligations?}`` from the row.

Masking follows OPA's ``system.log.mask``: each rule is a JSON pointer under ``/input`` or ``/result``
that is removed (listed in the event's ``erased``), or an ``upsert`` that replaces the value (listed
in ``masked``), applied before the line is written. Rules come from ``[audit] export_mask`` and
``--mask``. A pointer to nothing is skipped, as OPA does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from mcp_guard import __version__
from mcp_guard.audit.reader import AuditReader, Filters, row_to_dict
from mcp_guard.types import EventKind

__all__ = ["FORMATS", "Mask", "export", "opa_event", "parse_masks"]

FORMATS = ("jsonl", "opa")
DEFAULT_PATH = "mcp_guard/decision"


@dataclass(frozen=True, slots=True)
class Mask:
    """One masking rule: remove the value at ``pointer``, or upsert ``value`` there."""

    op: Literal["remove", "upsert"]
    pointer: str
    value: Any = None


def parse_masks(entries: Iterable[Any]) -> list[Mask]:
    """``[audit] export_mask`` / ``--mask`` entries (a pointer string, or an object/model with ``op``,
    ``path``, ``value``; validated by settings) as :class:`Mask` rules."""
    out: list[Mask] = []
    for e in entries:
        if isinstance(e, str):
            out.append(Mask("remove", e))
        else:
            fields = e if isinstance(e, Mapping) else {k: getattr(e, k) for k in ("op", "path", "value")}
            out.append(Mask(fields.get("op", "remove"), str(fields["path"]), fields.get("value")))
    return out


def _tokens(pointer: str) -> list[str]:
    """RFC 6901: ``/a/b~1c`` → ``["a", "b/c"]``."""
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def _apply(event: dict[str, Any], mask: Mask) -> bool:
    """Apply one rule to ``event``; whether it changed something."""
    tokens = _tokens(mask.pointer)
    if not tokens:
        return False
    parent: Any = event
    for token in tokens[:-1]:
        child = _child(parent, token)
        if child is None:
            if mask.op != "upsert" or not isinstance(parent, dict):
                return False
            parent[token] = child = {}  # upsert creates the objects on its way, as OPA does
        parent = child
    last = tokens[-1]
    if mask.op == "remove":
        if isinstance(parent, dict) and last in parent:
            del parent[last]
            return True
        if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
            del parent[int(last)]
            return True
        return False
    if isinstance(parent, dict):
        parent[last] = mask.value
        return True
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent[int(last)] = mask.value
        return True
    return False


def _child(node: Any, token: str) -> Any:
    if isinstance(node, dict):
        return node.get(token)
    if isinstance(node, list) and token.isdigit() and int(token) < len(node):
        return node[int(token)]
    return None


_POLICY_RECORD = "policy"  # the details key of audit.events.call_decision's policy record (policy replay)


def _recorded(row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(input, result) from the row's policy record, copied (masking edits them), or None."""
    record = (row.get("details") or {}).get(_POLICY_RECORD)
    if not isinstance(record, Mapping) or not isinstance(record.get("input"), Mapping):
        return None
    doc: dict[str, Any] = json.loads(json.dumps(record["input"]))
    if row.get("arguments") is not None:
        doc["arguments"] = json.loads(json.dumps(row["arguments"]))
    result: dict[str, Any] = {"allow": record.get("allow") is True, "reasons": list(record.get("reasons") or [])}
    if record.get("obligations"):
        result["obligations"] = json.loads(json.dumps(record["obligations"]))
    return doc, result


def _reconstructed_input(row: Mapping[str, Any]) -> dict[str, Any]:
    details = row.get("details") or {}
    doc: dict[str, Any] = {
        "action": details.get("action"),
        "principal": {"id": row.get("principal")},
        "session": {"id": row.get("session_id")},
        "server": row.get("server"),
        "tool": row.get("tool"),
        "arguments": json.loads(json.dumps(row.get("arguments"))),
    }
    return {k: v for k, v in doc.items() if v is not None}


def opa_event(row: Mapping[str, Any], *, path: str = DEFAULT_PATH, masks: Sequence[Mask] = ()) -> dict[str, Any]:
    """A ``call.decision`` row (decoded, :func:`row_to_dict`) as an OPA decision-log event, masked."""
    details = row.get("details") or {}
    recorded = _recorded(row)
    if recorded is not None:
        doc, result = recorded
    else:
        doc = _reconstructed_input(row)
        result = {"allow": row.get("decision") == "allow", "reasons": list(row.get("reasons") or [])}
        if details.get("obligations"):
            result["obligations"] = json.loads(json.dumps(details["obligations"]))
    event: dict[str, Any] = {
        "decision_id": row.get("decision_id"),
        "path": path,
        "input": doc,
        "result": result,
        "bundles": {"mcp-guard": {"revision": row.get("policy_revision") or ""}},
        "timestamp": row.get("ts"),
        "labels": {"app": "mcp-guard", "version": __version__},
        "mcp_guard": {
            "seq": row.get("seq"),
            "event_id": row.get("event_id"),
            "hash": row.get("hash"),
            "input": "recorded" if recorded is not None else "reconstructed",
            "decision": row.get("decision"),
        },
    }
    if row.get("duration_ms") is not None:
        event["metrics"] = {"timer_mcp_guard_decision_ns": int(float(row["duration_ms"]) * 1_000_000)}
    erased: list[str] = []
    masked: list[str] = []
    for m in masks:  # in order, as OPA applies its rules
        if _apply(event, m):
            (erased if m.op == "remove" else masked).append(m.pointer)
    if erased:
        event["erased"] = erased
    if masked:
        event["masked"] = masked
    return event


def export(
    reader: AuditReader,
    out: TextIO,
    *,
    filters: Filters | None = None,
    fmt: str = "jsonl",
    path: str = DEFAULT_PATH,
    masks: Sequence[Mask] = (),
) -> int:
    """Write the matching events ``reader`` sees to ``out`` (``opa``: only the decisions); return how many."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    count = 0
    with reader.snapshot():  # one consistent snapshot, even while the proxy writes
        for row in reader.rows(filters):
            doc = row_to_dict(row)
            if fmt == "opa":
                if doc.get("kind") != EventKind.CALL_DECISION:
                    continue
                doc = opa_event(doc, path=path, masks=masks)
            out.write(json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    out.flush()
    return count
