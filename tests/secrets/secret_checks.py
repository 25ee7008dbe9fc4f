"""Test helper: prove a secret value is absent from a blob of bytes in every encoding.

Deliberately independent of ``mcp_guard.secrets.forms`` (a bug there must not hide a leak here):
the base64 spellings at each alignment are found by encoding the value between two different
fillers and keeping the longest run of characters both encodings agree on, instead of by bit
arithmetic.

Use: ``assert_no_secret(Path("audit.db").read_bytes(), token)``. For a SQLite file, check the
``-wal`` file as well (or checkpoint first).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus

__all__ = ["assert_no_secret", "secret_spellings"]


def _stable_run(a: str, b: str) -> str:
    """The longest run of positions where ``a`` and ``b`` hold the same character."""
    best = (0, 0)
    start = None
    for i in range(min(len(a), len(b)) + 1):
        same = i < min(len(a), len(b)) and a[i] == b[i]
        if same and start is None:
            start = i
        elif not same and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return a[best[0] : best[1]]


def _aligned_base64(raw: bytes, encode: Callable[[bytes], bytes]) -> list[str]:
    runs = []
    for k in range(3):
        x = encode(b"\x00" * k + raw + b"\x00\x00").decode()
        y = encode(b"\xff" * k + raw + b"\xff\xff").decode()
        runs.append(_stable_run(x, y))
    return runs


def secret_spellings(value: str) -> dict[str, str]:
    """``{description: spelling}`` of ``value``: raw, JSON, URL, hex, base64/base64url (3 alignments)."""
    raw = value.encode()
    out: dict[str, str] = {"raw": value}
    out["json"] = json.dumps(value)[1:-1]
    out["json-unicode"] = json.dumps(value, ensure_ascii=False)[1:-1]
    out["json-twice"] = json.dumps(out["json"])[1:-1]
    out["url"] = quote(value, safe="")
    out["url-keep-slash"] = quote(value)
    out["url-plus"] = quote_plus(value)
    out["url-lower-escapes"] = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), out["url"])
    out["hex"] = binascii.hexlify(raw).decode()
    out["HEX"] = out["hex"].upper()
    for label, enc in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        full = enc(raw).decode()
        out[label] = full
        out[f"{label}-unpadded"] = full.rstrip("=")
        for k, run in enumerate(_aligned_base64(raw, enc)):
            out[f"{label}@{k}"] = run
    return {k: v for k, v in out.items() if v}


def assert_no_secret(blob: bytes, value: str) -> None:
    """Fail if any spelling of ``value`` occurs in ``blob`` (as UTF-8 or, for the ASCII ones, UTF-16-LE)."""
    assert value, "assert_no_secret needs a non-empty value"
    found = []
    for label, spelling in secret_spellings(value).items():
        needles = [spelling.encode("utf-8")]
        if spelling.isascii():
            needles.append(spelling.encode("utf-16-le"))
        for needle in needles:
            at = blob.find(needle)
            if at >= 0:
                found.append(f"{label} at byte {at}")
    assert not found, f"secret present in blob ({len(blob)} bytes): " + ", ".join(found)
