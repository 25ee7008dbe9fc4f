"""The row encoding of the writer, byte for byte against the encoder it replaced.

``reference_row`` below is the writer's serialisation as it was before the call-row work (a plain
``json.JSONEncoder`` per column, the clean-up path on any error): the oracle. Every event of a varied corpus —
unicode, floats, nested details, large and odd arguments, values that need cleaning — must give the same stored
values, the same hashed body and so the same chain hashes through today's writer (prebuilt C encoder, argument
text carried from ``bound_arguments``, remembered reasons text).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import pickle
import random
from collections.abc import Mapping
from typing import Any

import pytest

from mcp_guard.audit import events, writer
from mcp_guard.audit.chain import GENESIS, EncodedJson, chain_rows, json_string, json_text
from mcp_guard.state.base import Flow, FlowCall, FlowHistory, LabelOrigin
from mcp_guard.types import AuditEvent, Decision, EventKind, PolicyInput, Principal, ReasonCode, SessionInfo, ToolInfo

# ------------------------------------------------------------------------------------------------ the oracle


def _fallback(obj: object) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    return str(obj)


def _dumps(value: Any, default: Any = None) -> str:
    return json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=default
    ).encode(value)


def _clean_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _sanitize(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, Mapping):
        return {_clean_text(str(k)): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if value is None or isinstance(value, (bool, int)):
        return value
    return _sanitize(_fallback(value))


def _ref_json_text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        text = _dumps(value, _fallback)
        text.encode("utf-8")
    except (ValueError, TypeError):
        text = _dumps(_sanitize(value))
    return text


def _ref_fast(value: Any) -> str | None:
    return None if value is None else _dumps(value, _fallback)


def _ref_same(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        if value and "\x00" in value:
            raise ValueError("NUL")
        return value
    return _ref_same(str(value))


def _ref_clean(value: Any) -> str | None:
    if value is None:
        return None
    return _clean_text(value if isinstance(value, str) else str(value)).replace("\x00", "\\x00")


def _ref_values(event: AuditEvent, text: Any, js: Any) -> tuple[Any, ...]:
    duration = event.duration_ms
    if duration is not None:
        duration = float(duration)
        if not math.isfinite(duration):
            duration = None
    plain = dict(event.arguments) if isinstance(event.arguments, EncodedJson) else event.arguments
    return (
        text(event.event_id),
        text(event.ts),
        text(event.kind),
        text(event.session_id),
        text(event.decision_id),
        text(event.principal),
        text(event.server),
        text(event.tool),
        event.decision,
        None if event.reasons is None else js(list(event.reasons)),
        js(plain),
        js(event.result),
        duration,
        text(event.policy_revision),
        js(event.details),
    )


def reference_row(event: AuditEvent) -> tuple[tuple[Any, ...], bytes]:
    """The stored values and hashed body the writer made before (the oracle)."""
    try:
        values = _ref_values(event, _ref_same, _ref_fast)
        body = _dumps(values).encode("utf-8")
    except (ValueError, TypeError):
        values = _ref_values(event, _ref_clean, _ref_json_text)
        body = _dumps(values).encode("utf-8")
    return values, body


# ------------------------------------------------------------------------------------------------ the corpus

_TEXTS = [
    "plain",
    "",
    'quote " backslash \\ slash / tab \t newline \n cr \r',
    "control \x01\x1f \x7f bell \x07",
    "Grüße aus Köln — naïve café",
    "日本語のテキスト、中文、한국어",
    "emoji 🚀🔥 and a ZWJ family 👩‍👩‍👧",
    "line sep \u2028 para sep \u2029 bom \ufeff",
    "combining e\u0301 and rtl \u05e9\u05dc\u05d5\u05dd",
    "</script><!-- html -->",
]
_NUMBERS: list[Any] = [
    0,
    -1,
    2**53 + 1,
    2**70,
    -(2**64),
    0.1,
    -0.0,
    1.5,
    1e16,
    1e-7,
    123456789.123456789,
    1.7976931348623157e308,
    5e-324,
    True,
    False,
    None,
]


def _value(rng: random.Random, depth: int) -> Any:
    pick = rng.random()
    if depth <= 0 or pick < 0.45:
        return rng.choice(_TEXTS + _NUMBERS)
    if pick < 0.75:
        return {rng.choice(_TEXTS) + str(i): _value(rng, depth - 1) for i in range(rng.randint(0, 5))}
    return [_value(rng, depth - 1) for _ in range(rng.randint(0, 5))]


def _document(rng: random.Random) -> dict[str, Any]:
    return {f"k{i}-{rng.choice(_TEXTS)}": _value(rng, 4) for i in range(rng.randint(1, 6))}


def _decision(rng: random.Random) -> Decision:
    return Decision(
        allow=rng.random() < 0.7,
        reasons=tuple(rng.sample(_TEXTS, rng.randint(0, 3))),
        obligations=_document(rng) if rng.random() < 0.5 else {},
        revision=rng.choice([None, "rev-1", "b1946ac92492d2347c6235b4d2611184"]),
    )


def _columns(rng: random.Random) -> dict[str, Any]:
    return {
        "session_id": rng.choice([None, "s1", "sessión-ü"]),
        "principal": rng.choice(["alice", "bób", "agent 🚀"]),
        "action": "tools/call",
        "server": rng.choice([None, "tickets", "文件"]),
        "tool": rng.choice([None, "create_ticket", "grep ☃"]),
        "call_id": rng.choice([None, "c1"]),
        "duration_ms": rng.choice([None, 0.0, 1.234, 12.5, 1e-3]),
    }


def _call_rows(rng: random.Random) -> list[AuditEvent]:
    """The rows the pipeline writes for a call, through the constructors it uses."""
    decision = _decision(rng)
    arguments = _document(rng)
    if rng.random() < 0.15:
        arguments["blob"] = "x" * rng.choice([3000, 200_000]) + rng.choice(_TEXTS)  # truncated beyond the limit
    policy = events.policy_record(_document(rng), decision, rng.choice([None, 512, 4096, 65536]))
    era = rng.choice([None, "2025-06-18", "2026-07-28"])
    columns = _columns(rng)
    result = {"content": [{"type": "text", "text": rng.choice(_TEXTS)}], "isError": rng.random() < 0.2}
    return [
        events.call_decision(
            decision,
            arguments=arguments,
            max_arguments_bytes=rng.choice([None, 1024, 4096, 65536]),
            policy=policy,
            upstream_token={"audience": "api", "scopes": ["a", "b"]} if rng.random() < 0.2 else None,
            input_round=rng.choice([None, 0, 2]),
            upstream_protocol=era,
            **columns,
        ),
        events.call_result(
            decision,
            result,
            result_decision=_decision(rng) if rng.random() < 0.3 else None,
            redacted={"email": 2} if rng.random() < 0.3 else None,
            upstream_protocol=era,
            **columns,
        ),
        events.call_error(decision, -32000, rng.choice(_TEXTS), origin="upstream", upstream_protocol=era, **columns),
        events.call_withheld(
            decision,
            events.summarize_result(result),
            denial=Decision.deny(ReasonCode.AUDIT_UNAVAILABLE, "withheld"),
            result_decision=_decision(rng),
            upstream_protocol=era,
            **columns,
        ),
        events.call_cancelled(decision, upstream_protocol=era, **columns),
    ]


def _odd_rows() -> list[AuditEvent]:
    """Values the writer must clean up (its slow path) or store by their string form."""
    base = AuditEvent(kind=EventKind.CALL_DECISION, principal="alice", decision="deny", reasons=("x",))
    return [
        dataclasses.replace(base, arguments={"nan": float("nan"), "inf": [float("inf"), -float("inf")]}),
        dataclasses.replace(base, arguments={"lone": "\ud800 surrogate"}, details={"also": "\udfff"}),
        dataclasses.replace(base, principal="nul \x00 inside", tool="a\x00b"),
        dataclasses.replace(base, principal="lone \ud83d surrogate"),
        dataclasses.replace(base, principal=42, tool=0, policy_revision=False),  # type: ignore[arg-type]  # str()
        dataclasses.replace(base, session_id="", server=""),  # empty texts are texts
        dataclasses.replace(base, details={"set": {3, 1, 2}, "bytes": b"\xff\x00ok", "tuple": (1, "2")}),
        dataclasses.replace(base, details={1: "int key", 2.5: "float key", None: "null key", False: "bool key"}),
        dataclasses.replace(base, details={"mixed": {1: "a", "b": 2}}),  # keys of mixed types: cannot sort
        dataclasses.replace(base, duration_ms=float("nan")),
        dataclasses.replace(base, duration_ms=3),
        dataclasses.replace(base, reasons=("nan", "\ud800")),
        dataclasses.replace(base, reasons=()),
        dataclasses.replace(base, reasons=None, arguments={}, result={}, details={}),
    ]


def _corpus() -> list[AuditEvent]:
    rng = random.Random(19)
    rows = [row for _ in range(300) for row in _call_rows(rng)]
    return rows + _odd_rows()


CORPUS = _corpus()


# ------------------------------------------------------------------------------------------------ the tests


def test_the_corpus_has_what_it_claims() -> None:
    """The corpus reaches both paths of the writer and the carried argument text, truncated and not."""
    carried = [e for e in CORPUS if isinstance(e.arguments, EncodedJson)]
    truncated = [e for e in CORPUS if e.arguments is not None and events.TRUNCATED_KEY in e.arguments]
    assert len(carried) > 100 and len(truncated) > 10
    slow = 0
    for e in CORPUS:
        try:
            _dumps(_ref_values(e, _ref_same, _ref_fast)).encode("utf-8")
        except (ValueError, TypeError):
            slow += 1
    assert slow >= 7


def test_rows_are_byte_identical_to_the_old_encoder() -> None:
    mismatched = []
    for index, event in enumerate(CORPUS):
        values, body = reference_row(event)
        pending = writer._prepare(event)
        if pending.values != values or pending.body != body:
            mismatched.append(index)
    assert mismatched == []


def test_the_chain_hashes_are_those_of_the_old_encoder() -> None:
    new_rows, new_head = chain_rows(GENESIS, [writer._prepare(e) for e in CORPUS])

    class _Old:
        def __init__(self, event: AuditEvent) -> None:
            self.values, self.body = reference_row(event)

    old_rows, old_head = chain_rows(GENESIS, [_Old(e) for e in CORPUS])
    assert new_rows == old_rows and new_head == old_head


def test_carried_argument_text_is_what_serialising_the_arguments_makes() -> None:
    """An EncodedJson's text is json_text of the same object: taking it is the same as serialising again."""
    for event in CORPUS:
        if isinstance(event.arguments, EncodedJson):
            assert event.arguments.text == _ref_json_text(dict(event.arguments))
            plain = dataclasses.replace(event, arguments=dict(event.arguments))
            assert writer._prepare(plain).body == writer._prepare(event).body


def test_an_encoded_object_refuses_changes_and_survives_a_copy() -> None:
    encoded = EncodedJson({"a": 1}, '{"a":1}')
    for change in (
        lambda: encoded.__setitem__("b", 2),
        lambda: encoded.update(b=2),
        lambda: encoded.pop("a"),
        lambda: encoded.clear(),
        lambda: encoded.setdefault("b", 2),
        lambda: encoded.__delitem__("a"),
    ):
        with pytest.raises(TypeError):
            change()
    assert encoded == {"a": 1}
    clone = dataclasses.replace(AuditEvent(kind=EventKind.CALL_DECISION, arguments=encoded))
    assert json_text(clone.arguments) == '{"a":1}'
    assert pickle.loads(pickle.dumps(encoded)).text == '{"a":1}'
    assert copy.deepcopy(encoded).text == '{"a":1}'


def test_bound_arguments_still_hands_back_the_callers_object() -> None:
    arguments = {"text": "hi"}
    assert events.bound_arguments(arguments, 4096) is arguments
    assert events.bound_arguments(arguments, None) is arguments


def test_remembered_reasons_text_is_the_serialised_text() -> None:
    for reasons in [("a", "b"), ("ü", "🚀"), (), ("\ud800",)]:
        for _ in range(2):  # the first serialises, the second remembers
            assert writer._reasons_text(reasons) == _ref_json_text(list(reasons))
    # Equal tuples that serialise differently are never answered from memory.
    assert writer._reasons_text((1,)) == "[1]"  # type: ignore[arg-type]
    assert writer._reasons_text((1.0,)) == "[1.0]"  # type: ignore[arg-type]
    assert writer._reasons_text((True,)) == "[true]"  # type: ignore[arg-type]
    assert writer._reasons_text(([1], "x")) == '[[1],"x"]'  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": t}], "isError": False}
        for t in ["plain", "Grüße 🚀", 'quote " \\ \n \x01', "\u2028"]
    ]
    + [{"structuredContent": {"n": v}} for v in (0.1, 1e16, 2**70, float("nan"), float("inf"), None, True)],
)
def test_result_summary_digests_what_json_dumps_made(result: dict[str, Any]) -> None:
    raw = json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    summary = events.summarize_result(result)
    assert summary["bytes"] == len(raw) and summary["sha256"] == hashlib.sha256(raw).hexdigest()


def test_call_rows_carry_their_era_without_copies() -> None:
    decision = Decision(allow=True, reasons=("ok",), revision="r")
    cols = _columns(random.Random(1)) | {"call_id": "c1"}
    row = events.call_decision(decision, arguments={"a": 1}, max_arguments_bytes=4096, upstream_protocol="e", **cols)
    assert row.details == {"action": "tools/call", "call_id": "c1", "upstream_protocol": "e"}
    withheld = events.call_withheld(
        decision,
        {"bytes": 1},
        denial=Decision(allow=False, reasons=("no",), revision="r2"),
        result_decision=decision,
        upstream_protocol="e",
        **cols,
    )
    assert (withheld.decision, withheld.reasons, withheld.policy_revision) == ("deny", ("no",), "r2")
    assert withheld.result == {"bytes": 1, "withheld": True}
    assert withheld.details is not None and set(withheld.details) == {
        "action",
        "call_id",
        "result_decision",
        "upstream_protocol",
    }
    error = events.call_error(decision, 1, "m", origin="guard", **cols)
    assert error.details == {"action": "tools/call", "call_id": "c1", "origin": "guard"}
    assert (error.decision, error.reasons, error.policy_revision) == (None, None, "r")


# ------------------------------------------------------------------------------------------------ flow history splice

_ODD = ["lone \ud800 surrogate", "nan", "NUL \x00 inside"]


def _flow_call(rng: random.Random, i: int) -> FlowCall:
    return FlowCall(
        decision_id=f"d-{i}",
        action="tools/call",
        server=rng.choice(_TEXTS + _ODD),
        tool=rng.choice(_TEXTS),
        decision=rng.choice(["allow", "deny"]),
        labels=tuple(rng.sample(_TEXTS + _ODD, rng.randint(0, 2))),
        time=f"2026-12-01T00:00:{i % 60:02d}Z",
    )


def _policy_document(rng: random.Random, calls: tuple[FlowCall, ...]) -> dict[str, Any]:
    """A policy input as Authorize builds it (PolicyInput.to_dict), with a flow of ``calls`` and odd values."""
    labels = {c.labels[0]: LabelOrigin.of(c) for c in calls if c.labels}
    flow = Flow(rng.choice(_TEXTS), labels, calls).to_policy()
    tool_info = ToolInfo(annotations={"x": rng.choice([float("nan"), 1.5, "\ud800", None])})
    return PolicyInput(
        action=rng.choice(["tools/call", "resources/read"]),
        principal=Principal(id=rng.choice(_TEXTS), roles=("dev",), attributes=_document(rng)),
        session=SessionInfo(id=rng.choice(_TEXTS), transport="stdio"),
        server=rng.choice(_TEXTS),
        tool=rng.choice(_TEXTS),
        tool_info=tool_info if rng.random() < 0.5 else None,
        usage={"k": rng.randint(0, 9)} if rng.random() < 0.5 else {},
        flow=flow,
    ).to_dict()


def test_a_flow_history_is_spliced_in_as_the_whole_document_would_encode() -> None:
    """events.input_text (the decision row's replay input) against the oracle, for flows of 0 to 40 calls whose
    calls are shared from one document to the next (as a flow's cached history is), odd values included; the
    splice must actually be taken for every document with a history."""
    rng = random.Random(20261201)
    calls: tuple[FlowCall, ...] = ()
    spliced = 0
    for i in range(400):
        calls = (*calls, _flow_call(rng, i))[-rng.randint(0, 40) :] if rng.random() < 0.9 else ()
        document = {k: v for k, v in _policy_document(rng, calls).items() if k != "arguments"}
        assert events.input_text(document) == _ref_json_text(document), i
        spliced += events._spliced(document) is not None
    assert spliced > 300  # the history took the splice, not the whole-document fallback


def test_other_shapes_are_encoded_whole() -> None:
    history = FlowHistory((FlowCall("d", "tools/call", "s", "t", "allow", (), "T"),))
    for document in (
        {"context": {"flow": {"history": history}}},  # no action
        {"action": "tools/call", "context": {"flow": {"history": list(history)}}},  # a plain list
        {"action": "tools/call", "context": {"flow": {"history": FlowHistory(())}}},  # empty
        {"action": "tools/call", "context": {"flow": None}},
        {"action": "tools/call", "context": {"flow": {"history": history}}, "aa": 1},  # a key before "action"
    ):
        assert events._spliced(document) is None
        assert events.input_text(document) == _ref_json_text(document)


def test_a_flow_history_cannot_be_changed_and_copies_are_plain_lists() -> None:
    history = FlowHistory((FlowCall("d", "tools/call", "s", "t", "allow", ("x",), "T"),))
    for change in (lambda: history.append({}), lambda: history.__setitem__(0, {}), lambda: history.clear()):
        with pytest.raises(TypeError):
            change()
    assert type(copy.deepcopy(history)) is list and copy.deepcopy(history) == history
    assert type(pickle.loads(pickle.dumps(history))) is list


def _flow_decision_rows() -> list[AuditEvent]:
    """Decision rows whose replay input holds a flow history (the spliced ``details``), odd values and all; a few
    with an obligation keyed ``input_json`` (the splice must step aside) and inputs over the bound."""
    rng = random.Random(20261202)
    calls: tuple[FlowCall, ...] = ()
    rows = []
    for i in range(300):
        calls = (*calls, _flow_call(rng, i))[-rng.randint(1, 40) :]
        decision = _decision(rng)
        if i % 25 == 0:
            decision = dataclasses.replace(decision, allow=True, obligations={"x": {events.INPUT_KEY: ""}})
        document = _policy_document(rng, calls)
        policy = events.policy_record(document, decision, rng.choice([None, 65536, 65536, 2048]))
        rows.append(events.call_decision(decision, arguments=_document(rng), policy=policy, **_columns(rng)))
    return rows


FLOW_ROWS = _flow_decision_rows()


def test_decision_rows_with_a_flow_are_byte_identical_to_the_old_encoder() -> None:
    """The spliced ``details`` text and the row body made from its literal (chain.canonical_json_quoted_last) are
    what encoding the row whole makes: values, body and so the chain hashes; the splice is taken for most rows,
    and stands aside for an obligation that has the input's key."""
    mismatched = [i for i, event in enumerate(FLOW_ROWS) if _stored(writer._prepare(event)) != reference_row(event)]
    assert mismatched == []
    rows, _ = chain_rows(GENESIS, [writer._prepare(e) for e in FLOW_ROWS])
    reference, _ = chain_rows(GENESIS, [_as_pending(e) for e in FLOW_ROWS])
    assert rows == reference
    spliced = [e for e in FLOW_ROWS if isinstance(e.details, EncodedJson) and e.details.quoted is not None]
    assert len(spliced) > 200
    blocked = [e for e in FLOW_ROWS if "x" in e.details.get("obligations", {})]
    assert blocked and not any(isinstance(e.details, EncodedJson) for e in blocked)


def _as_pending(event: AuditEvent) -> writer._Pending:
    values, body = reference_row(event)
    return writer._Pending(values=values, body=body, done=None)


def _stored(pending: writer._Pending) -> tuple[tuple[Any, ...], bytes]:
    return pending.values, pending.body


def test_a_text_escapes_piece_by_piece() -> None:
    """What the splice rests on: the JSON string literal of a concatenation is its pieces' literals joined."""
    pieces = [*_TEXTS, *_ODD, '"', "\\", "\n\t\x01", ""]
    rng = random.Random(7)
    for _ in range(200):
        chosen = rng.sample(pieces, rng.randint(1, 6))
        whole = json_string("".join(chosen))
        assert whole == '"' + "".join(json_string(p)[1:-1] for p in chosen) + '"'
        assert whole == json.dumps("".join(chosen), ensure_ascii=False)


# ------------------------------------------------------------------------------------------------ the unchanging tail


def _tail_inputs(rng: random.Random, n: int) -> list[PolicyInput]:
    """Policy inputs as Authorize builds them, without a flow history, drawn from a few principal, session and tool
    info objects (as the calls of a few sessions and tools reuse them), odd values included; some with input
    responses (a head key) or a result (a tail key that changes: no splice)."""
    principals = [
        Principal(id=rng.choice(_TEXTS), roles=("dev",), attributes=_document(rng) if i % 2 else {}) for i in range(4)
    ]
    principals.append(Principal(id="odd", attributes={"x": "\ud800 lone", "n": float("nan")}))
    sessions = [SessionInfo(id=rng.choice(_TEXTS), transport="stdio", client_name=rng.choice(_TEXTS)) for _ in range(3)]
    infos: list[ToolInfo | None] = [None, ToolInfo(annotations={"readOnlyHint": True})]
    infos += [ToolInfo(suspicious=("\u200b",)), ToolInfo(annotations={"x": float("nan")})]
    made = []
    for _ in range(n):
        made.append(
            PolicyInput(
                action=rng.choice(["tools/call", "tools/call", "resources/read"]),
                principal=rng.choice(principals),
                # A 2026-07-28 request is a session of its own: a new, stateless SessionInfo each time.
                session=rng.choice(sessions)
                if rng.random() < 0.7
                else SessionInfo(id=rng.choice(_TEXTS), transport="http", client_name="c", stateless=True),
                server=rng.choice(["tickets", "文件"]),
                tool=rng.choice(["create", "grep ☃"]),
                tool_info=rng.choice(infos),
                usage={"k": rng.randint(0, 9)} if rng.random() < 0.5 else {},
                flow=Flow(rng.choice(_TEXTS), {}, ()).without_history().to_policy(),
                secrets_seen=("aws",) if rng.random() < 0.2 else (),
                input_responses={"q": _document(rng)} if rng.random() < 0.1 else None,
                result={"is_error": False} if rng.random() < 0.05 else None,
            )
        )
    return made


def test_a_calls_unchanging_tail_is_spliced_in_as_the_whole_document_would_encode() -> None:
    """events.input_text with the input it was made from, against the oracle: the same text, and escapes that are
    the text's own; the remembered tail is taken for most inputs, never for one with a ``result``, and a value that
    needs cleaning (a lone surrogate, NaN) sends the document whole to json_text as before."""
    rng = random.Random(20261202)
    spliced = stateless = 0
    for i, source in enumerate(_tail_inputs(rng, 600)):
        document = {k: v for k, v in source.to_dict().items() if k != "arguments"}
        text = events.input_text(document, source)
        assert text == _ref_json_text(document), i
        if isinstance(text, events.InputText):
            spliced += 1
            stateless += source.session.stateless
            assert "result" not in document
            assert text.escaped == json_string(text)[1:-1]
            assert text.escaped_twice == json_string(text.escaped)[1:-1]
        assert events.input_text(document) == text  # without the source: encoded whole, the same text
    assert spliced > 300 and stateless > 60  # a stateless call's tail is made of remembered pieces
    held = [sources for sources, _ in events._TAILS._entries.values()]
    assert not any(session.stateless for _, session, *_ in held)  # and is not remembered whole


def test_decision_rows_with_a_remembered_tail_are_byte_identical_to_the_old_encoder() -> None:
    rng = random.Random(20261203)
    rows = []
    for source in _tail_inputs(rng, 300):
        decision = _decision(rng)
        policy = events.policy_record(source.to_dict(), decision, rng.choice([None, 65536, 1024]), source=source)
        rows.append(events.call_decision(decision, arguments=_document(rng), policy=policy, **_columns(rng)))
    assert [i for i, e in enumerate(rows) if _stored(writer._prepare(e)) != reference_row(e)] == []
    assert sum(isinstance(e.details, EncodedJson) and e.details.quoted is not None for e in rows) > 100
