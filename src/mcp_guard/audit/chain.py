"""The hash chain that makes the audit log tamper-evident.

Every row carries ``prev_hash`` (the ``hash`` of the row before it) and its own ``hash``::

    hash = sha256( prev_hash  +  canonical_json(row without "hash") ).hexdigest()

where ``prev_hash`` is the 64-character lowercase hex string (ASCII bytes) and ``canonical_json`` is
JSON with sorted keys, no whitespace, UTF-8 (non-ASCII characters written as themselves) and no NaN
or Infinity. The row object contains every column except ``hash`` — including ``seq`` and
``prev_hash`` — with the values exactly as stored in SQLite: the JSON columns (``reasons``,
``arguments``, ``result``, ``details``) enter as their stored canonical-JSON *text*, ``duration_ms`` as
a float, absent values as ``null``. Because ``seq`` is hashed, moving or swapping rows is detected,
and because each row hashes its predecessor's hash, deleting or inserting a row breaks the link.

The first row's ``prev_hash`` is :data:`GENESIS_HASH`, 64 zeros.

What the chain cannot show on its own: a truncated *tail* (the newest rows deleted), or a log
rewritten from some row on with freshly computed hashes. For those, anchor the head — the
``(seq, hash)`` that ``mcp-guard audit verify`` prints — somewhere the attacker cannot write (a
ticket, a SIEM, a signed message) and compare later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["GENESIS_HASH", "canonical_json", "json_text", "row_hash"]

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, NaN/Infinity rejected (ValueError)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


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


def json_text(value: Any) -> str | None:
    """The stored form of a JSON column: canonical JSON text, or None for an absent value.

    Raises ValueError for NaN/Infinity and for text that cannot be UTF-8 encoded (lone surrogates).
    """
    if value is None:
        return None
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_fallback
    )
    text.encode("utf-8")  # lone surrogates would fail later, inside the writer; fail here instead
    return text


def row_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """The chain hash of ``row`` (every column but ``hash``, values as stored) after ``prev_hash``."""
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(canonical_json(row))
    return h.hexdigest()
