"""Replay: re-decide recorded traffic with a candidate bundle and say what would change.

Every ``call.decision`` row of a call the policy was asked about keeps the question and the policy's own
answer in ``details.policy`` (:func:`mcp_guard.audit.events.policy_record`): the input document without
``arguments`` — principal, session, tool_info and the *recorded* context (time, usage, flow) — and
``allow``/``reasons``/``obligations``. Replay rebuilds the input with the row's ``arguments`` column (the
audit copy: secrets scrubbed, credential shapes masked), evaluates it with the candidate bundle in the
embedded engine and compares (:func:`compare`, shared with the shadow stage).

A row that cannot be replayed is counted under why, never dropped silently (:class:`Skip`):

* ``no_input`` — the policy was never asked (a deny made before it: ``tool_changed``, ``unknown_target``,
  ``state_unavailable`` …) or the row predates input recording;
* ``input_too_large`` — the input was over ``[audit] max_arguments_bytes``, only its digest was kept;
* ``arguments_truncated`` — the arguments were, likewise;
* ``history_not_recorded`` — the candidate can read ``input.context.flow.history``, and the row's input went
  without it: the bundle deciding it (and the shadow candidate, if any) could not read it, so the proxy left it
  out (the row lists it under ``omitted``). Run such a candidate as the shadow bundle first to have it recorded.

Limits: the candidate sees the audit copy of the arguments, so a rule that looks at a secret value or a
credential-shaped string sees it masked; a rule reading something the input does not carry (the clock,
``http.send``) is evaluated now, not then. Several rows of one decision id (an allow row and the
``audit_unavailable`` deny written for it) are replayed once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mcp_guard.audit.events import OMITTED_KEY, POLICY_KEY, TRUNCATED_KEY, UNREPLAYABLE_KEY, recorded_input
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.reads import bundle_reads_path
from mcp_guard.state.base import FLOW_HISTORY, FLOW_HISTORY_PATH
from mcp_guard.types import Decision

__all__ = ["REPLAY_TIMEOUT_MS", "Change", "ReplayReport", "Skip", "compare", "replay_rows"]

REPLAY_TIMEOUT_MS = 10_000
"""The per-decision budget of a replay: offline, so a busy CI machine must not turn a slow rule into a
``timeout`` deny that reads as a change (the live ``[policy] timeout_ms`` is for the proxy)."""


class Change(StrEnum):
    """How a candidate's decision differs from a recorded (or enforced) one; the first that applies."""

    ALLOW_TO_DENY = "allow→deny"
    DENY_TO_ALLOW = "deny→allow"
    REASONS = "reasons"
    OBLIGATIONS = "obligations"


class Skip(StrEnum):
    NO_INPUT = "no_input"
    INPUT_TOO_LARGE = "input_too_large"
    ARGUMENTS_TRUNCATED = "arguments_truncated"
    HISTORY_NOT_RECORDED = "history_not_recorded"


def compare(
    allow: bool, reasons: Iterable[str], obligations: Mapping[str, Any] | None, candidate: Decision
) -> Change | None:
    """What changes from the decision (``allow``, ``reasons``, ``obligations``) to ``candidate``; None if
    nothing. Reasons compare as a set (a rule order is not a change); obligations only matter on an allow."""
    if allow != candidate.allow:
        return Change.ALLOW_TO_DENY if allow else Change.DENY_TO_ALLOW
    if set(reasons) != set(candidate.reasons):
        return Change.REASONS
    if allow and dict(obligations or {}) != dict(candidate.obligations):
        return Change.OBLIGATIONS
    return None


@dataclass(frozen=True, slots=True)
class Changed:
    """One recorded decision the candidate decides differently."""

    seq: int
    ts: str
    decision_id: str | None
    principal: str | None
    server: str | None
    tool: str | None
    change: Change
    recorded: Mapping[str, Any]
    candidate: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "decision_id": self.decision_id,
            "principal": self.principal,
            "server": self.server,
            "tool": self.tool,
            "change": str(self.change),
            "recorded": dict(self.recorded),
            "candidate": dict(self.candidate),
        }


@dataclass(slots=True)
class ReplayReport:
    candidate_revision: str
    rows: int = 0  # call.decision rows read
    replayed: int = 0
    unchanged: int = 0
    changed: list[Changed] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(str(c.change) for c in self.changed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_revision": self.candidate_revision,
            "rows": self.rows,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed_count": len(self.changed),
            "counts": self.counts,
            "skipped": dict(self.skipped),
            "skipped_count": sum(self.skipped.values()),
            "changed": [c.to_dict() for c in self.changed],
        }


def _verdict(decision: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {"allow": decision.allow, "reasons": list(decision.reasons)}
    if decision.allow and decision.obligations:
        out["obligations"] = dict(decision.obligations)
    return out


def _input_of(
    row: Mapping[str, Any], reads_history: bool
) -> tuple[dict[str, Any] | None, Mapping[str, Any] | None, Skip | None]:
    """The input document to replay and the recorded policy answer, or why there is none (``reads_history``:
    whether the candidate can read the flow's history)."""
    details = row.get("details")
    record = details.get(POLICY_KEY) if isinstance(details, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("allow"), bool):
        return None, None, Skip.NO_INPUT
    recorded = recorded_input(record)
    if UNREPLAYABLE_KEY in record or recorded is None:
        return None, record, Skip.INPUT_TOO_LARGE
    arguments = row.get("arguments")
    if isinstance(arguments, dict) and TRUNCATED_KEY in arguments:
        return None, record, Skip.ARGUMENTS_TRUNCATED
    omitted = record.get(OMITTED_KEY)
    if reads_history and isinstance(omitted, list) and FLOW_HISTORY in omitted:
        return None, record, Skip.HISTORY_NOT_RECORDED
    document = recorded
    document["arguments"] = arguments if isinstance(arguments, dict) else {}
    return document, record, None


def replay_rows(rows: Iterable[Mapping[str, Any]], engine: EmbeddedEngine) -> ReplayReport:
    """Replay decoded ``call.decision`` rows (``reader.row_to_dict``) in order with ``engine``."""
    report = ReplayReport(candidate_revision=engine.revision)
    reads_history = bundle_reads_path(engine.bundle, engine.rule, FLOW_HISTORY_PATH)
    seen: set[str] = set()
    for row in rows:
        decision_id = row.get("decision_id")
        if isinstance(decision_id, str):
            if decision_id in seen:
                continue
            seen.add(decision_id)
        report.rows += 1
        document, record, skip = _input_of(row, reads_history)
        if skip is not None or document is None or record is None:
            report.skipped[str(skip or Skip.NO_INPUT)] += 1
            continue
        candidate = engine.evaluate_sync(document)
        report.replayed += 1
        obligations = record.get("obligations")
        change = compare(
            record["allow"],
            [str(r) for r in record.get("reasons") or []],
            obligations if isinstance(obligations, dict) else None,
            candidate,
        )
        if change is None:
            report.unchanged += 1
            continue
        recorded = {k: record[k] for k in ("allow", "reasons", "obligations") if k in record}
        report.changed.append(
            Changed(
                seq=int(row.get("seq") or 0),
                ts=str(row.get("ts") or ""),
                decision_id=decision_id if isinstance(decision_id, str) else None,
                principal=row.get("principal"),
                server=row.get("server"),
                tool=row.get("tool"),
                change=change,
                recorded={**recorded, "revision": row.get("policy_revision")},
                candidate={**_verdict(candidate), "revision": candidate.revision},
            )
        )
    return report


def format_report(report: ReplayReport) -> str:
    """The human form: one line per change, then a summary that names every skipped row's reason."""
    lines: list[str] = []
    if report.changed:
        lines.append(
            f"{'SEQ':>7}  {'TIME':<27}  {'PRINCIPAL':<14}  {'TARGET':<28}  {'CHANGE':<11}  REASONS (candidate)"
        )
        for c in report.changed:
            target = f"{c.server or '-'}/{c.tool or '-'}"
            reasons = "; ".join(str(r) for r in c.candidate.get("reasons", [])) or "-"
            lines.append(
                f"{c.seq:>7}  {c.ts:<27}  {(c.principal or '-')[:14]:<14}  {target[:28]:<28}  "
                f"{c.change:<11}  {reasons[:120]}"
            )
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items()))
    skipped = sum(report.skipped.values())
    why = ", ".join(f"{k}: {n}" for k, n in sorted(report.skipped.items()))
    lines.append(
        f"candidate {report.candidate_revision[:12]}: {report.rows} decision(s) read, {report.replayed} replayed, "
        f"{len(report.changed)} would change{f' ({counts})' if counts else ''}, {skipped} skipped"
        f"{f' ({why})' if why else ''}"
    )
    return "\n".join(lines)
