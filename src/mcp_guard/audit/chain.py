"""The hash chain that makes the audit log tamper-evident.

Every row carries ``prev_hash`` (the ``hash`` of the row before it) and its own ``hash``::

    hash = sha256( prev_hash + ":" + str(seq) + ":" + body ).hexdigest()

``prev_hash`` is a 64-character lowercase hex string and ``seq`` the row's decimal sequence number,
both ASCII. ``body`` is the canonical JSON (:func:`canonical_json`: no whitespace, UTF-8 with
non-ASCII characters written as themselves, no NaN/Infinity) of an *array* of every other column's
value, in the order of :data:`mcp_guard.audit.schema.BODY_COLUMNS` (``event_id, ts, kind, session_id,
decision_id, principal, server, tool, decision, reasons, arguments, result, duration_ms,
policy_revision, details``), each exactly as stored in SQLite: the JSON columns (``reasons``,
``arguments``, ``result``, ``details``) as their stored JSON *text*, ``duration_ms`` as a float,
absent values as ``null``. (An array rather than an object: it is the writer's hot path, and an
array encodes in a third of the time. A migration that adds a column must therefore keep it out of
the body, or mark which body layout each row uses.)

Because ``seq`` is hashed, moving or swapping rows is detected; because each row hashes its
predecessor's hash, deleting or inserting a row breaks the link to the row after it. The first row's
``prev_hash`` is :data:`GENESIS_HASH`, 64 zeros. (Keeping ``seq`` and ``prev_hash`` out of the JSON body
lets the body be serialised by the caller, off the writer's serial path.)

What the chain cannot show on its own: a truncated *tail* (the newest rows deleted), or a log
rewritten from some row on with freshly computed hashes. For those, anchor the head — the
``(seq, hash)`` that ``mcp-guard audit verify`` prints — somewhere the attacker cannot write (a
ticket, a SIEM, a signed message) and compare later.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "GENESIS",
    "GENESIS_HASH",
    "ChainHead",
    "EncodedJson",
    "RowBody",
    "canonical_json",
    "canonical_json_quoted_last",
    "chain_rows",
    "clean_text",
    "digest_text",
    "fast_json_text",
    "json_string",
    "json_text",
    "row_hash",
]

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest row of a chain: the ``seq`` and ``hash`` the next row continues from."""

    seq: int
    hash: str


GENESIS = ChainHead(0, GENESIS_HASH)  # the head of an empty log


class RowBody(Protocol):
    """One event ready to be chained: its stored values and their canonical JSON body."""

    @property
    def values(self) -> tuple[Any, ...]:
        """The row's ``schema.BODY_COLUMNS`` values, exactly as they will be stored."""
        ...

    @property
    def body(self) -> bytes:
        """The canonical JSON of :attr:`values` (:func:`canonical_json`)."""
        ...


def _encoder(default: Callable[[Any], Any] | None = None, *, allow_nan: bool = False) -> Callable[[Any], str]:
    """A canonical-JSON encoding function, built once.

    ``JSONEncoder.encode`` builds its C encoder again on every call; for the audit hot path (several
    encodes per event) the C encoder is built here once, with exactly the arguments ``encode`` would
    pass, so the output is identical. Without the C accelerator, the public encoder is used.
    ``allow_nan`` writes NaN/Infinity as ``json.dumps`` does (only for digests that always did so).
    """
    public = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan, default=default
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return public.encode
    c_encode = make(None, public.default, basestring, None, ":", ",", True, False, allow_nan)

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return basestring(value)  # type: ignore[no-any-return]
        return "".join(c_encode(value, 0))

    return encode


_CANONICAL = _encoder()


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, NaN/Infinity rejected (ValueError)."""
    return _CANONICAL(value).encode("utf-8")


def canonical_json_quoted_last(values: tuple[Any, ...], quoted: str) -> bytes:
    """``canonical_json(values)`` for a tuple whose last value is a text with the JSON string literal ``quoted``
    (:func:`json_string` of it, made by whoever built the text — see :class:`EncodedJson`).

    Why: a decision row's ``details`` text is ~7 KB (its replay input, a flow's history) and encoding it into the
    row body escapes it once more — as long as encoding the whole row. The literal is made from pieces escaped
    once each instead (:func:`mcp_guard.audit.events.call_decision`); the rest of the row is encoded as ever.
    The bytes are those of ``canonical_json(values)`` (tests/audit/test_encoding.py compares them)."""
    assert len(values) >= 2, "a row body has more than one value"
    head = _CANONICAL(values[:-1])  # "[v1,…,vn-1]": its closing bracket gives way to the last value
    return f"{head[:-1]},{quoted}]".encode()


def _string_quoter() -> Callable[[str], str]:
    quote = getattr(json.encoder, "c_encode_basestring", None)
    return quote if quote is not None else json.encoder.py_encode_basestring


json_string: Callable[[str], str] = _string_quoter()
"""The JSON string literal of a text (quotes included), exactly as every canonical encoder here writes a string:
the same function the encoders call. JSON escapes character by character, so the literal of a concatenation is
the concatenation of the pieces' literals, quotes aside — what lets a long text be escaped from remembered
pieces (:func:`canonical_json_quoted_last`)."""


def clean_text(text: str) -> str:
    """``text`` made storable: lone surrogates (not encodable as UTF-8) become backslash escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _fallback(obj: object) -> Any:
    # Values that are not JSON-native (tuples become lists by themselves) are recorded by their
    # string form rather than lost: an audit row with str(obj) beats no audit row.
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    return str(obj)


_WITH_FALLBACK = _encoder(_fallback)

digest_text = _encoder(allow_nan=True)
"""``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` — NaN and Infinity written as it
writes them — with its C encoder built once: the text a result's digest (``events.summarize_result``) is taken of."""


def _sanitize(value: Any) -> Any:
    """A JSON-able copy of ``value`` with non-finite floats as strings and text made storable."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if value is None or isinstance(value, (bool, int)):
        return value
    return _sanitize(_fallback(value))


class EncodedJson(dict[str, Any]):
    """A JSON object that carries its stored form (:func:`json_text`), made once by whoever built it.

    Why: a row's ``arguments`` are serialised to be measured against ``[audit] max_arguments_bytes``
    (:func:`mcp_guard.audit.events.bound_arguments`); the writer takes the same text for the column and the
    hashed body instead of serialising the arguments a second time. :func:`json_text` and
    :func:`fast_json_text` answer :attr:`text` for it, so the stored row is byte-for-byte what they would
    have made of the object (tests/audit/test_encoding.py compares them). A decision row's ``details`` carry
    their text the same way, and with it :attr:`quoted`, the text's own JSON string literal, which the row body
    needs (:func:`canonical_json_quoted_last`; made by :func:`mcp_guard.audit.events.call_decision`).

    The object is a copy that refuses changes at its top level; nested values are the caller's, and a
    caller must not change them after building it (the row constructors hand it straight to the writer).
    """

    __slots__ = ("quoted", "text")

    def __init__(self, value: Mapping[str, Any], text: str, quoted: str | None = None) -> None:
        super().__init__(value)
        self.text = text
        self.quoted = quoted  # json_string(text) when its maker knew it cheaply, else None

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("an EncodedJson object cannot be changed (its stored text is made)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (EncodedJson, (dict(self), self.text, self.quoted))


def json_text(value: Any) -> str | None:
    """The stored form of a JSON column: canonical JSON text, or None for an absent value.

    Never raises for odd input: non-finite floats are recorded as strings (``"nan"``), lone
    surrogates as backslash escapes and other objects by their string form — a record that is
    slightly rewritten beats a call denied because its record could not be written.
    """
    if value is None:
        return None
    if type(value) is EncodedJson:
        return value.text
    try:
        text = _WITH_FALLBACK(value)
        text.encode("utf-8")  # lone surrogates would only fail later, in the writer
    except (ValueError, TypeError):  # NaN/Infinity, lone surrogates, non-string keys of mixed types
        text = _CANONICAL(_sanitize(value))
    return text


def fast_json_text(value: Any) -> str | None:
    """:func:`json_text` without its safety net: raises ValueError/TypeError on values it would clean.

    The text may hold lone surrogates (only encoding it, e.g. in :func:`canonical_json`, fails).
    """
    if value is None:
        return None
    if type(value) is EncodedJson:
        return value.text
    return _WITH_FALLBACK(value)


def row_hash(prev_hash: str, seq: int, body: bytes) -> str:
    """The chain hash of the row numbered ``seq`` with canonical JSON ``body``, after ``prev_hash``."""
    h = hashlib.sha256(f"{prev_hash}:{seq}:".encode("ascii"))
    h.update(body)
    return h.hexdigest()


def chain_rows(head: ChainHead, batch: Sequence[RowBody]) -> tuple[list[tuple[Any, ...]], ChainHead]:
    """Number and hash ``batch`` after ``head``: the rows in ``schema.COLUMNS`` order and the new head.

    Every backend stores exactly these tuples, so a log verifies the same whatever stored it.
    """
    seq, prev = head.seq, head.hash
    rows: list[tuple[Any, ...]] = []
    for p in batch:
        seq += 1
        h = row_hash(prev, seq, p.body)
        rows.append((seq, *p.values, prev, h))
        prev = h
    return rows, ChainHead(seq, prev)
