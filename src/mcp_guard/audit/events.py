"""The one place audit rows are built: a constructor per :class:`~mcp_guard.types.EventKind` family.

Why one module: a row's columns (``principal``, ``server``, ``tool``, ``decision``, …) are what
``audit tail`` filters on and what the console shows, so every kind must fill the columns it has —
a pin event that names its tool only in ``details`` is invisible to ``audit tail --tool``. Writing each
row shape once, here, keeps that contract in one place (docs/architecture.md, "The audit row").

Constructors take plain values (no pipeline or frontend types), so every layer may call them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from mcp_guard.audit.chain import EncodedJson, digest_text, fast_json_text, json_string, json_text
from mcp_guard.memo import ByIdentity
from mcp_guard.state.base import FlowCall, FlowHistory
from mcp_guard.types import AuditEvent, Decision, EventKind, PolicyInput, Principal, SessionInfo, new_id, utc_now

__all__ = [
    "PREVIEW_CHARS",
    "TRUNCATED_KEY",
    "approval_event",
    "auth_reject",
    "bound_arguments",
    "call_cancelled",
    "call_decision",
    "call_error",
    "call_result",
    "call_withheld",
    "config_event",
    "console_event",
    "listing",
    "pin_event",
    "policy_load",
    "policy_record",
    "policy_reload_failed",
    "policy_rollback",
    "policy_shadow_diff",
    "recorded_input",
    "result_decision_doc",
    "session_end",
    "session_start",
    "summarize_result",
    "upstream_event",
]


TRUNCATED_KEY = "mcp-guard/truncated"
"""The one key of an ``arguments`` column that stands for arguments too large to store."""
PREVIEW_CHARS = 1024
"""How much of too-large arguments (their canonical JSON text) is kept as a preview."""


def bound_arguments(arguments: Mapping[str, Any] | None, max_bytes: int | None) -> Mapping[str, Any] | None:
    """``arguments`` as an audit row may store them: as they are up to ``max_bytes`` of canonical JSON, else
    ``{"mcp-guard/truncated": {"bytes", "sha256", "preview"}}`` — so one huge call cannot fill the disk.

    The digest and the preview are of the arguments given (for a call row, the audit copy: secrets already
    scrubbed and credential shapes masked), so neither can hold a secret the full text did not.
    """
    if arguments is None or max_bytes is None:
        return arguments
    bounded = _bounded(arguments, max_bytes)
    return arguments if isinstance(bounded, EncodedJson) else bounded


def _bounded(arguments: Mapping[str, Any], max_bytes: int) -> Mapping[str, Any]:
    """:func:`bound_arguments` for a row: arguments that fit come back as an :class:`EncodedJson` copy
    holding the text their size was measured on, which the writer then stores and hashes as it is."""
    text = json_text(arguments) or ""
    if len(text) * 4 <= max_bytes:  # a character is at most 4 bytes of UTF-8: cannot be too large
        return EncodedJson(arguments, text)
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= max_bytes:
        return EncodedJson(arguments, text)
    return {
        TRUNCATED_KEY: {
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "preview": text[:PREVIEW_CHARS],
        }
    }


POLICY_KEY = "policy"
"""The key of a ``call.decision`` row's ``details`` that keeps what the policy was asked and said (replay)."""
INPUT_KEY = "input_json"
"""In that record: the input document without ``arguments``, as canonical JSON text (see :func:`policy_record`)."""
UNREPLAYABLE_KEY = "unreplayable"
"""Set in that record instead of the input when the input was over the bound (its size and digest are kept)."""
OMITTED_KEY = "omitted"
"""In that record: the input paths left out of the input because no decision could read them (dotted)."""


def policy_record(
    document: Mapping[str, Any],
    decision: Decision,
    max_bytes: int | None,
    *,
    omitted: Sequence[str] = (),
    source: PolicyInput | None = None,
) -> dict[str, Any]:
    """What a decision row keeps of the policy question (``details.policy``), for ``mcp-guard policy replay``.

    The policy's own verdict (``allow``, ``reasons``, ``obligations`` of an allow — before any stage replaced
    it) and the input document it saw **without** ``arguments``: replay takes those from the row's
    ``arguments`` column, the audit copy (secrets scrubbed, credential shapes masked, bounded), so a raw
    argument is never stored. The rest of the input (principal, session, tool_info, context with the
    recorded time, usage and flow) is kept when it fits in ``max_bytes``; beyond that only its size and
    sha256 are kept and the row is marked unreplayable, never cut.

    The input is kept as canonical JSON *text* (``input_json``; :func:`recorded_input` reads it back): its
    size must be measured by serialising it anyway, and the writer then stores a string at the cost of an
    escape instead of serialising the whole document a second time on the call's path.

    ``omitted`` names the input paths the proxy left out because no decision could read them (a flow's history:
    :class:`~mcp_guard.state.base.Flow`); kept as ``omitted``, so a replay of a candidate that reads one of them
    counts the row as not replayable instead of deciding on what was never recorded.

    ``source``: the :class:`~mcp_guard.types.PolicyInput` whose ``to_dict()`` ``document`` is (its keys before
    ``principal`` may differ): the text's unchanging part is then remembered (:func:`input_text`).
    """
    record: dict[str, Any] = {"allow": decision.allow, "reasons": list(decision.reasons)}
    if decision.allow and decision.obligations:
        record["obligations"] = dict(decision.obligations)
    if omitted:
        record[OMITTED_KEY] = list(omitted)
    text = input_text({k: v for k, v in document.items() if k != "arguments"}, source)
    if max_bytes is None or len(text) * 4 <= max_bytes:
        record[INPUT_KEY] = text
        return record
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= max_bytes:
        record[INPUT_KEY] = text
    else:
        record[UNREPLAYABLE_KEY] = {
            "reason": "input_too_large",
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
    return record


def input_text(document: Mapping[str, Any], source: PolicyInput | None = None) -> str:
    """The canonical JSON text of a policy input ``document`` (:func:`json_text`; ``"{}"`` for nothing).

    A flow's history (:class:`~mcp_guard.state.base.FlowHistory`) is spliced in from its calls' texts, each
    encoded once (:func:`_call_texts`), instead of encoded again on every call of the flow. The splice is exact
    because canonical JSON sorts keys: ``action`` then ``context`` at the top, ``flow`` first in ``context`` and
    ``history`` first in ``flow``, so the document encoded with an empty history begins with a prefix known in
    advance, ending in that ``[]``. Any other shape (or that prefix missing) is encoded whole.

    Without a history (the shipped bundle reads none, so the proxy leaves it out: :class:`~mcp_guard.state.base.Flow`)
    and ``source``, the :class:`~mcp_guard.types.PolicyInput` the document was made from, the document's *tail* —
    ``principal``, ``server``, ``session``, ``tool``, ``tool_info``: the keys that sort after ``context``, the same
    call after call of one session and tool, two thirds of the text — is taken from memory with its escapes
    (:func:`_tail_spliced`); only ``action`` and ``context`` are encoded per call."""
    spliced = _spliced(document)
    if spliced is None and source is not None:
        spliced = _tail_spliced(document, source)
    if spliced is not None:
        return spliced
    return json_text(document) or "{}"


class InputText(str):
    """A replay input's text (:func:`input_text`) spliced from its flow's calls, with the text as it reads inside
    one JSON string (:attr:`escaped`) and inside two (:attr:`escaped_twice`: the row body holds ``details`` as a
    string, and ``details`` holds this text as a string).

    Why: made from the calls' remembered pieces at the cost of a join, where escaping the finished ~6 KB text for
    ``details`` and again for the row body cost as much as encoding the rest of the row twice. The value is the
    text itself (a ``str`` to every reader); :func:`call_decision` uses the escapes."""

    escaped: str
    escaped_twice: str


def _escaped(text: str) -> str:
    return json_string(text)[1:-1]


def _spliced(document: Mapping[str, Any]) -> InputText | None:
    context = document.get("context")
    flow = context.get("flow") if isinstance(context, dict) else None
    history = flow.get("history") if isinstance(flow, dict) else None
    action = document.get("action")
    if type(history) is not FlowHistory or not history or not isinstance(action, str):
        return None
    assert isinstance(context, dict) and isinstance(flow, dict)
    text = json_text({**document, "context": {**context, "flow": {**flow, "history": []}}}) or ""
    head = f'{{"action":{json_text(action)},"context":{{"flow":{{"history":[]'
    if not text.startswith(head):
        return None
    pieces = [_call_texts(call, entry) for call, entry in zip(history.calls, history, strict=True)]
    texts, escaped, twice = zip(*pieces, strict=True)
    before, after = head[:-1], text[len(head) - 1 :]
    spliced = InputText(f"{before}{','.join(texts)}{after}")
    once_before, once_after = _escaped(before), _escaped(after)
    spliced.escaped = f"{once_before}{','.join(escaped)}{once_after}"
    spliced.escaped_twice = f"{_escaped(once_before)}{','.join(twice)}{_escaped(once_after)}"
    return spliced


_TAIL_KEYS = frozenset({"principal", "server", "session", "tool", "tool_info"})
"""The keys of a call's input document that sort after ``context`` (a ``tools/result`` input also has ``result``)."""
# The tail's text and escapes by the principal, session, tool info, server and tool they are made of (an HTTP
# request with a token brings its own principal object: at most this many held, then forgotten).
_TAILS: ByIdentity[tuple[str, str, str]] = ByIdentity(1024)
_TAIL_HEADS: ByIdentity[tuple[str, str, str]] = ByIdentity(1024)  # "principal":…,"server":… by their objects
_TAIL_TOOLS: ByIdentity[tuple[str, str, str]] = ByIdentity(1024)  # "tool":…,"tool_info":… by their objects


def _tail_spliced(document: Mapping[str, Any], source: PolicyInput) -> InputText | None:
    """:func:`input_text` of ``document`` — made by ``source.to_dict()``, keys before ``principal`` changed at
    most — with the text and escapes of its *tail* (the keys from ``principal`` on: :data:`_TAIL_KEYS`) remembered
    by the objects they are made of; None for any other shape.

    Canonical JSON sorts keys, so the text is the head's members (``action``, ``context``, ``input_responses``),
    a comma, then the tail's — and JSON escapes character by character, so the text's escapes are the head's
    followed by the tail's. The tail is made of ``source``'s principal, session and tool info (frozen values, the
    same objects call after call of one stdio session and tool: ``ExposedTool.tool_info``), server and tool; a
    remembered tail holds those objects, so it is used again only for them."""
    head: dict[str, Any] = {}
    tail_keys = 0
    for key, value in document.items():
        if not isinstance(key, str):
            return None
        if key < "principal":
            head[key] = value
        elif key in _TAIL_KEYS:
            tail_keys += 1
        else:
            return None  # ``result``: not the same call after call
    if not head or tail_keys != 4 + (source.tool_info is not None):
        return None
    texts = _tail_texts(document, source)
    if texts is None:
        return None
    try:
        head_text = _exact_text(head)
    except (ValueError, TypeError):  # a value json_text would clean up: encoded whole, as before
        return None
    tail_text, tail_escaped, tail_twice = texts
    before = f"{head_text[:-1]},"  # "{…head members," — the tail's text goes on without its opening brace
    spliced = InputText(before + tail_text)
    once = _escaped(before)
    spliced.escaped = once + tail_escaped
    spliced.escaped_twice = _escaped(once) + tail_twice
    return spliced


def _tail_texts(document: Mapping[str, Any], source: PolicyInput) -> tuple[str, str, str] | None:
    """The tail's text without its opening brace, escaped once and twice; None if it cannot be encoded as it is.

    Remembered whole by the objects it is made of; made, on a miss, of three pieces of its own: the members before
    ``session`` (``principal``, ``server``) and after it (``tool``, ``tool_info``), each remembered by their objects,
    and ``session`` encoded for the call. Canonical JSON sorts the members and writes them joined by commas, so the
    pieces joined by commas are the whole. Why: a 2026-07-28 client's every request is a session of its own, so its
    whole tail is never met again, while its principal and tool are — they were encoded anew on every call. Such a
    call's tail is not remembered whole (it would only push out the others)."""
    sources = (source.principal, source.session, source.tool_info, source.server, source.tool)
    hit = _TAILS.get_from(sources)
    if hit is not None:
        return hit
    heads, tools = (source.principal, source.server), (source.tool, source.tool_info)
    try:
        before = _TAIL_HEADS.get_from(heads) or _TAIL_HEADS.put_from(_members(document, "principal", "server"), heads)
        session = _members(document, "session")
        after = _TAIL_TOOLS.get_from(tools) or _TAIL_TOOLS.put_from(_members(document, "tool", "tool_info"), tools)
    except (ValueError, TypeError):
        return None
    texts = (
        f"{before[0]},{session[0]},{after[0]}}}",
        f"{before[1]},{session[1]},{after[1]}}}",  # commas and braces escape to themselves
        f"{before[2]},{session[2]},{after[2]}}}",
    )
    return texts if source.session.stateless else _TAILS.put_from(texts, sources)


def _members(document: Mapping[str, Any], *keys: str) -> tuple[str, str, str]:
    """The members ``keys`` of ``document`` (those present) as canonical JSON writes them inside an object — no
    braces — escaped once and twice."""
    text = _exact_text({k: document[k] for k in keys if k in document})[1:-1]
    escaped = _escaped(text)
    return text, escaped, _escaped(escaped)


def _exact_text(value: dict[str, Any]) -> str:
    """:func:`json_text` of ``value`` when it needs none of its clean-ups; else ValueError or TypeError (the whole
    document is then encoded by json_text, which cleans the whole)."""
    text = fast_json_text(value)
    if text is None:
        raise TypeError("nothing to encode")
    text.encode("utf-8")  # lone surrogates: json_text would clean them
    return text


_CALL_TEXTS: ByIdentity[tuple[str, str, str]] = ByIdentity(8192)


def _call_texts(call: FlowCall, entry: Mapping[str, Any]) -> tuple[str, str, str]:
    """``json_text(entry)`` for the history entry of ``call``, and that text escaped once and twice (see
    :class:`InputText`), remembered by the call's identity: a flow keeps its :class:`FlowCall` values (the state
    store's cache hands the same ones out again), so each is encoded once (:class:`~mcp_guard.memo.ByIdentity`)."""
    hit = _CALL_TEXTS.get(call)
    if hit is not None:
        return hit
    text = json_text(entry) or "null"
    escaped = _escaped(text)
    return _CALL_TEXTS.put((text, escaped, _escaped(escaped)), call)


_BLANK_INPUT = f'"{INPUT_KEY}":""'


def _with_input_text(details: dict[str, Any], text: InputText) -> Mapping[str, Any]:
    """``details`` (whose ``policy`` record holds ``text``) as an :class:`EncodedJson` carrying its stored text and
    that text's JSON string literal, both spliced from ``text``'s own escapes (:class:`InputText`) — the row body
    then takes the literal instead of escaping the whole text again
    (:func:`mcp_guard.audit.chain.canonical_json_quoted_last`).

    The rest of ``details`` is encoded with the input blanked; its one ``"input_json":""`` is where the text goes.
    Keys are sorted and every quote inside a string is escaped, so that sequence appears once unless an
    obligation has the same key — then ``details`` is left as it is, to be encoded whole."""
    policy = details[POLICY_KEY]
    around = json_text({**details, POLICY_KEY: {**policy, INPUT_KEY: ""}}) or ""
    if around.count(_BLANK_INPUT) != 1:
        return details
    at = around.index(_BLANK_INPUT) + len(_BLANK_INPUT) - 2  # the blank string's opening quote
    before, after = around[:at], around[at + 2 :]
    stored = f'{before}"{text.escaped}"{after}'
    quoted = f'"{_escaped(before)}\\"{text.escaped_twice}\\"{_escaped(after)}"'
    return EncodedJson(details, stored, quoted)


def recorded_input(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The input document (without ``arguments``) a :func:`policy_record` kept; None if it kept none."""
    text = record.get(INPUT_KEY)
    if not isinstance(text, str):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


_RESULT_TEXT = digest_text  # a name of this module's own, so bench/ablate.py old-audit-rows can put json.dumps back


def summarize_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """is_error, size and sha256 of a result — never its content."""
    raw = _RESULT_TEXT(result).encode()
    return {
        "is_error": bool(result.get("isError", False)),
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def call_decision(
    decision: Decision,
    *,
    session_id: str | None,
    principal: str,
    action: str,
    server: str | None,
    tool: str | None,
    arguments: Mapping[str, Any] | None = None,
    call_id: str | None = None,
    duration_ms: float | None = None,
    max_arguments_bytes: int | None = None,
    policy: Mapping[str, Any] | None = None,
    upstream_token: Mapping[str, Any] | None = None,
    input_round: int | None = None,
    upstream_protocol: str | None = None,
) -> AuditEvent:
    """The row that records what governed a call (allow or deny), with its obligations.

    ``upstream_protocol`` (``details.upstream_protocol``) is the era the call's upstream is spoken to in, when
    known (:func:`mcp_guard.pipeline.audit.decision_row`).

    ``input_round`` (``details.input_round``) marks a re-decision: the policy asked again, under the same
    ``call_id``, with the client's answers to the n-th round of an upstream's mid-call questions
    (mcp_guard.pipeline.redecide); absent on a call's first decision.

    ``upstream_token`` says who an exchanged token sent with the call is for and what it may do (audience,
    scopes: ``details.upstream_token``), never the token (mcp_guard.pipeline.exchange).

    Arguments over ``max_arguments_bytes`` (``[audit] max_arguments_bytes``) are stored bounded
    (:func:`bound_arguments`); ``None`` stores them as they are. ``policy`` is the policy question and its
    own answer (:func:`policy_record`), kept in ``details.policy`` when the policy was asked — inside the
    hashed row, so a replayed input is as tamper-evident as the decision.
    """
    details: dict[str, Any] = {"action": action}
    if call_id is not None:
        details["call_id"] = call_id
    if decision.obligations:
        details["obligations"] = dict(decision.obligations)
    if policy is not None:
        details[POLICY_KEY] = policy
    if upstream_token is not None:
        details["upstream_token"] = dict(upstream_token)
    if input_round:
        details["input_round"] = input_round
    if upstream_protocol is not None:
        details["upstream_protocol"] = upstream_protocol
    if arguments is not None and max_arguments_bytes is not None:
        arguments = _bounded(arguments, max_arguments_bytes)
    replayed = policy.get(INPUT_KEY) if policy is not None else None
    return AuditEvent(
        kind=EventKind.CALL_DECISION,
        session_id=session_id,
        decision_id=decision.decision_id,
        principal=principal,
        server=server,
        tool=tool,
        decision="allow" if decision.allow else "deny",
        reasons=decision.reasons,
        arguments=arguments,
        policy_revision=decision.revision,
        duration_ms=duration_ms,
        details=_with_input_text(details, replayed) if type(replayed) is InputText else details,
        event_id=new_id(),
        ts=utc_now(),
    )


def _outcome_row(
    kind: EventKind,
    decision: Decision | None,
    *,
    session_id: str | None,
    principal: str,
    action: str,
    server: str | None,
    tool: str | None,
    call_id: str | None,
    duration_ms: float | None,
    result: Mapping[str, Any] | None,
    upstream_protocol: str | None,
    extra: Mapping[str, Any] | None = None,
    denial: Decision | None = None,
) -> AuditEvent:
    """An outcome row, built in one go: ``extra`` details beside the call's, and for a withheld result the
    ``denial`` the client was given (its reasons and revision; ``decision = "deny"``)."""
    details: dict[str, Any] = {"action": action, "call_id": call_id} if call_id is not None else {"action": action}
    if extra:
        details.update(extra)
    if upstream_protocol is not None:
        details["upstream_protocol"] = upstream_protocol
    if denial is not None:
        verdict: Literal["allow", "deny"] | None = "deny"
        reasons: tuple[str, ...] | None = denial.reasons
        revision = denial.revision
    else:
        verdict, reasons, revision = None, None, decision.revision if decision else None
    return AuditEvent(
        kind=kind,
        session_id=session_id,
        decision_id=decision.decision_id if decision else None,
        principal=principal,
        server=server,
        tool=tool,
        decision=verdict,
        reasons=reasons,
        result=result,
        duration_ms=duration_ms,
        policy_revision=revision,
        details=details,
        event_id=new_id(),
        ts=utc_now(),
    )


def call_result(
    decision: Decision | None,
    result: Mapping[str, Any],
    *,
    session_id: str | None,
    principal: str,
    action: str,
    server: str | None,
    tool: str | None,
    call_id: str | None = None,
    duration_ms: float | None = None,
    result_decision: Decision | None = None,
    redacted: Mapping[str, int] | None = None,
    upstream_protocol: str | None = None,
) -> AuditEvent:
    """How an allowed call ended with a result: its summary (never its content) and the governing decision.

    When the result policy was asked: ``details.result_decision`` (:func:`result_decision_doc`) and, if
    ``obligations.redact`` replaced anything, ``result.redacted`` (counts by kind; the summary is of the
    result the client got)."""
    summary = summarize_result(result)
    if redacted:
        summary["redacted"] = dict(redacted)
    return _outcome_row(
        EventKind.CALL_RESULT,
        decision,
        session_id=session_id,
        principal=principal,
        action=action,
        server=server,
        tool=tool,
        call_id=call_id,
        duration_ms=duration_ms,
        result=summary,
        upstream_protocol=upstream_protocol,
        extra=None if result_decision is None else {"result_decision": result_decision_doc(result_decision)},
    )


def call_withheld(
    decision: Decision | None,
    summary: Mapping[str, Any],
    *,
    denial: Decision,
    result_decision: Decision,
    session_id: str | None,
    principal: str,
    action: str,
    server: str | None,
    tool: str | None,
    call_id: str | None = None,
    duration_ms: float | None = None,
    upstream_protocol: str | None = None,
) -> AuditEvent:
    """How an allowed call ended whose result the result policy withheld: a ``call.result`` row with
    ``decision = "deny"``, the reasons the client was given (``denial``), ``result.withheld = true`` beside
    the summary of the withheld result, and the ``tools/result`` decision in ``details.result_decision``.
    ``decision_id`` is the governing (call) decision's, like every outcome row of the call."""
    return _outcome_row(
        EventKind.CALL_RESULT,
        decision,
        session_id=session_id,
        principal=principal,
        action=action,
        server=server,
        tool=tool,
        call_id=call_id,
        duration_ms=duration_ms,
        result={**summary, "withheld": True},
        upstream_protocol=upstream_protocol,
        extra={"result_decision": result_decision_doc(result_decision)},
        denial=denial,
    )


def result_decision_doc(decision: Decision) -> dict[str, Any]:
    """A ``tools/result`` decision as an outcome row holds it (``details.result_decision``)."""
    return {
        "decision_id": decision.decision_id,
        "allow": decision.allow,
        "reasons": list(decision.reasons),
        "obligations": dict(decision.obligations),
        "policy_revision": decision.revision,
        "code": decision.code,
    }


def call_error(
    decision: Decision | None,
    code: int,
    message: str,
    *,
    session_id: str | None,
    principal: str,
    action: str,
    server: str | None,
    tool: str | None,
    call_id: str | None = None,
    duration_ms: float | None = None,
    origin: str | None = None,
    upstream_protocol: str | None = None,
) -> AuditEvent:
    """How an allowed call ended with an error; ``origin`` says whose (``"upstream"`` or ``"guard"``)."""
    return _outcome_row(
        EventKind.CALL_ERROR,
        decision,
        session_id=session_id,
        principal=principal,
        action=action,
        server=server,
        tool=tool,
        call_id=call_id,
        duration_ms=duration_ms,
        result={"code": code, "message": message},
        upstream_protocol=upstream_protocol,
        extra=None if origin is None else {"origin": origin},
    )


def call_cancelled(
    decision: Decision | None,
    *,
    session_id: str | None,
    principal: str,
    action: str,
    server: str | None,
    tool: str | None,
    call_id: str | None = None,
    duration_ms: float | None = None,
    upstream_protocol: str | None = None,
) -> AuditEvent:
    """How an allowed call ended when it was cancelled before it ended otherwise (the client cancelled it,
    its session closed, mcp-guard shut down): the outcome row it would otherwise never get."""
    return _outcome_row(
        EventKind.CALL_CANCELLED,
        decision,
        session_id=session_id,
        principal=principal,
        action=action,
        server=server,
        tool=tool,
        call_id=call_id,
        duration_ms=duration_ms,
        result=None,
        upstream_protocol=upstream_protocol,
    )


def listing(kind: EventKind, session: SessionInfo, principal: Principal, names: list[str]) -> AuditEvent:
    """What a principal was shown by a listing (``tools.list``)."""
    return AuditEvent(
        kind=kind, session_id=session.id, principal=principal.id, details={"visible": names, "count": len(names)}
    )


def session_start(session: SessionInfo, principal: Principal) -> AuditEvent:
    """A client session began: who (principal, roles, scopes) and how it authenticated — the method, the
    token's issuer and client, the sha256 of its ``jti`` — never the credential."""
    return AuditEvent(
        kind=EventKind.SESSION_START,
        session_id=session.id,
        principal=principal.id,
        details={
            "transport": session.transport,
            "client": {"name": session.client_name, "version": session.client_version},
            "roles": list(principal.roles),
            "scopes": list(principal.scopes),
            "auth": principal.auth.to_audit(),
        },
    )


def session_end(session: SessionInfo, principal: Principal, calls: int) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.SESSION_END, session_id=session.id, principal=principal.id, details={"calls": calls}
    )


def auth_reject(reason: str, client: str | None, *, subject: str | None = None, **details: Any) -> AuditEvent:
    """An HTTP request refused before any MCP processing, with why (an ``AuthFailure``) — never the credential.

    ``subject`` (the principal column) and ``details`` (method, alg, kid, issuer, client_id) are what the front
    may know about the credential: who a token names only when its signature verified.
    """
    return AuditEvent(
        kind=EventKind.AUTH_REJECT,
        principal=subject,
        decision="deny",
        reasons=(str(reason),),
        details={"client": client, **details},
    )


def console_event(
    kind: EventKind, *, principal: str | None, client: str | None, reason: str | None = None, **details: Any
) -> AuditEvent:
    """``console.login`` / ``console.login_failed`` / ``console.logout``: who, from where, how (``method``: the
    API key or an IdP token) and with which console ``role`` — never the key, the token or the session id. A
    refused login is a deny with its ``reason``; ``principal`` is set only when the credential proved one."""
    failed = kind is EventKind.CONSOLE_LOGIN_FAILED
    return AuditEvent(
        kind=kind,
        principal=principal,
        decision="deny" if failed else ("allow" if kind is EventKind.CONSOLE_LOGIN else None),
        reasons=(reason,) if reason else None,
        details={"client": client, **details},
    )


def config_event(kind: EventKind, source: str | None, **details: Any) -> AuditEvent:
    """``config.load`` / ``config.reload``: which file, and what it configured or changed."""
    return AuditEvent(kind=kind, details={"source": source, **details})


def policy_load(revision: str | None, **details: Any) -> AuditEvent:
    """A bundle became the active policy (at start or on reload): which revision decides from now on."""
    return AuditEvent(kind=EventKind.POLICY_LOAD, policy_revision=revision, details=details)


def policy_shadow_diff(
    *,
    decision_id: str | None,
    session_id: str | None,
    principal: str | None,
    server: str | None,
    tool: str | None,
    enforced: Decision,
    shadow: Decision,
    change: str,
) -> AuditEvent:
    """The shadow bundle decided a call differently from the enforcing one; ``decision`` is the enforced
    decision (what happened), ``details`` hold both and the kind of ``change`` (allow→deny, …)."""
    return AuditEvent(
        kind=EventKind.POLICY_SHADOW_DIFF,
        session_id=session_id,
        decision_id=decision_id,
        principal=principal,
        server=server,
        tool=tool,
        decision="allow" if enforced.allow else "deny",
        reasons=enforced.reasons,
        policy_revision=enforced.revision,
        details={
            "change": change,
            "enforced": {"allow": enforced.allow, "reasons": list(enforced.reasons), "revision": enforced.revision},
            "shadow": {"allow": shadow.allow, "reasons": list(shadow.reasons), "revision": shadow.revision},
        },
    )


def policy_rollback(revision: str | None, *, principal: str | None, **details: Any) -> AuditEvent:
    """An operator pinned bundle revision ``revision`` (None: cleared the pin, the bundle directory rules again)."""
    return AuditEvent(kind=EventKind.POLICY_ROLLBACK, principal=principal, policy_revision=revision, details=details)


def policy_reload_failed(active_revision: str | None, **details: Any) -> AuditEvent:
    """A rejected bundle: the active revision stays, the error is on record."""
    return AuditEvent(kind=EventKind.POLICY_RELOAD_FAILED, policy_revision=active_revision, details=details)


def upstream_event(kind: EventKind, server: str, details: Mapping[str, Any]) -> AuditEvent:
    """An upstream's life cycle (start, restart, crash, start_failed; pool_start, pool_stop). A per-principal
    connection's events name its principal (mcp_guard.upstream.pool), in the row's ``principal`` column too."""
    principal = details.get("principal")
    return AuditEvent(
        kind=kind, server=server, principal=principal if isinstance(principal, str) else None, details=dict(details)
    )


def pin_event(kind: EventKind, server: str, tool: str, *, principal: str | None = None, **details: Any) -> AuditEvent:
    """A tool pin was made, changed or approved; ``tool`` fills its column so ``audit tail --tool`` finds it.

    ``principal`` is who approved (an operator), when one did.
    """
    return AuditEvent(kind=kind, server=server, tool=tool, principal=principal, details={"tool": tool, **details})


_APPROVAL_DECISION: dict[EventKind, Literal["allow", "deny"]] = {
    EventKind.APPROVAL_GRANTED: "allow",
    EventKind.APPROVAL_EXECUTED: "allow",
    EventKind.APPROVAL_DENIED: "deny",
    EventKind.APPROVAL_EXPIRED: "deny",
}
"""The ``decision`` column of an approval step that lets a call go on or stops it (requested: none yet)."""


def approval_event(
    kind: EventKind,
    approval: Mapping[str, Any],
    *,
    principal: str | None,
    decision_id: str | None = None,
    session_id: str | None = None,
    **details: Any,
) -> AuditEvent:
    """A step of a human approval (requested, granted, denied, expired, executed).

    ``approval`` is the approval's JSON form (``Approval.to_dict``); its server, tool and policy revision fill
    their columns, its id, requester, status and expiry go in ``details``. ``principal`` is who acted: the
    requester for requested/expired/executed, the approver for granted/denied.
    """
    body = {
        "approval_id": approval["id"],
        "requester": approval["principal"],
        "status": approval["status"],
        "expires_at": approval["expires_at"],
        "action": approval["action"],
        **details,
    }
    return AuditEvent(
        kind=kind,
        session_id=session_id,
        decision_id=decision_id if decision_id is not None else approval.get("decision_id"),
        principal=principal,
        server=approval["server"],
        tool=approval["tool"],
        decision=_APPROVAL_DECISION.get(kind),
        policy_revision=approval.get("policy_revision"),
        details=body,
    )
