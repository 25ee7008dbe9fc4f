"""The encoded forms a secret value can take on the way back to the agent.

An upstream that leaks a credential rarely echoes it verbatim: it may sit inside a JSON string, a URL,
a hex dump or a base64 blob. :func:`encoded_forms` lists every spelling of one value the
:class:`~mcp_guard.secrets.redact.Scrubber` looks for:

* raw (the UTF-8 text itself);
* JSON-escaped, with ``ensure_ascii`` on and off, with ``/`` escaped as ``\\/``, with ``<>&`` escaped the
  way Go's ``encoding/json`` does (``\\u003c``), and escaped twice
  (a JSON document carried inside a JSON string);
* URL-encoded: ``quote(v, safe="")``, ``quote(v)`` (keeps ``/``), ``quote_plus(v)`` and the
  ``encodeURIComponent`` flavour (keeps ``!'()*``), each with upper and lower case percent escapes;
* hex, lower and upper case;
* base64 (standard and URL-safe alphabets), padded and unpadded, **at all three alignments**.

Why three alignments: base64 maps 3 input bytes to 4 output characters, so a secret embedded at byte
offset ``k`` of a larger blob is encoded differently for ``k % 3 == 0, 1, 2``. For each alignment we
keep only the output characters that are fully determined by the secret's own bits (characters that
mix in bits of the neighbouring bytes are dropped), which is exactly the substring that appears in the
encoding of *any* blob containing the secret at that alignment. The characters dropped at the edges
carry at most 4 bits of the secret each.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

__all__ = ["base64_cores", "encoded_forms"]

_PERCENT = re.compile(r"%[0-9A-F]{2}")
_GO_HTML = re.compile(r"[<>&\u2028\u2029]")  # Go's encoding/json escapes these as \u003c, …


def base64_cores(raw: bytes, *, urlsafe: bool = False) -> list[str]:
    """The base64 substrings that any blob holding ``raw`` at byte offset 0, 1 or 2 (mod 3) contains."""
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    cores: list[str] = []
    n = len(raw)
    for k in range(3):
        text = enc(b"\0" * k + raw + b"\0\0").decode("ascii")
        first = -(-8 * k // 6)  # ceil: first character holding only the secret's bits
        last = 8 * (k + n) // 6  # floor: one past the last such character
        cores.append(text[first:last])
    return cores


def _url_forms(value: str) -> Iterator[str]:
    for form in (quote(value, safe=""), quote(value), quote_plus(value), quote(value, safe="!'()*")):
        yield form
        yield _PERCENT.sub(lambda m: m.group(0).lower(), form)


def _json_forms(value: str) -> Iterator[str]:
    for ascii_only in (True, False):
        once = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        for form in (once, json.dumps(once, ensure_ascii=ascii_only)[1:-1]):
            yield form
            yield form.replace("/", "\\/")
            yield _GO_HTML.sub(lambda m: f"\\u{ord(m.group(0)):04x}", form)


def encoded_forms(value: str) -> list[str]:
    """Every spelling of ``value`` to redact, longest first, without duplicates."""
    raw = value.encode("utf-8")
    forms: list[str] = [value, *_json_forms(value), *_url_forms(value), raw.hex(), raw.hex().upper()]
    for urlsafe in (False, True):
        full = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode("ascii")
        forms += [full, full.rstrip("=")]
        forms += base64_cores(raw, urlsafe=urlsafe)
    unique = dict.fromkeys(f for f in forms if f)
    return sorted(unique, key=len, reverse=True)
