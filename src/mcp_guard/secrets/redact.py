"""Scrub injected secret values out of everything that flows back to the agent (and into logs).

A :class:`Scrubber` is built from the ``(name, value)`` pairs of the secrets mcp-guard injected. It
replaces every occurrence of a value — raw or in any of the encodings listed in
:mod:`mcp_guard.secrets.forms` (JSON-escaped, URL-encoded, hex, base64 / base64url at every
alignment) — and every long enough *fragment* of a value with ``[REDACTED:<secret name>]``.

Algorithm
    All encoded forms of all secrets, and the fragment anchors (below), are folded into one trie-shaped
    regular expression (:mod:`mcp_guard.secrets.matcher`), so a text is scanned once whatever the
    number of secrets; each match maps back to the secret's name. A form is entered a few characters in,
    at a character chosen to keep the scan cheap, and the rest of it is checked to the left of the match
    (:class:`~mcp_guard.secrets.matcher.Finder`). A scrubber with no secrets is a fast path: every
    method returns its input unchanged (the very same object).

Fragments
    A truncated value leaks too: an error text that quotes the last 20 characters of a line holding a
    token, a log line cut at 2,000 characters. Any run of at least ``min_fragment`` characters (8 by
    default, ``[redaction] min_fragment_chars``) of a value — raw or JSON-escaped — is scrubbed as well.
    Finding every such run without one literal per substring: each value gets a few short *anchors*
    (:data:`ANCHOR_LENGTH` characters) placed so that every window of ``min_fragment`` characters of the
    value holds one; the regex finds an anchor, and the match is then extended left and right while the
    text goes on agreeing with the value, and kept if it spans ``min_fragment`` characters. Anchors start,
    where the value allows, with characters the regex already starts with (so positions the scan skips
    stay skipped) and with characters rare in text (not spaces, quotes or frequent lowercase letters).
    A run made only of letters in one case (or Capitalised) — a word of a passphrase-like secret, which
    ordinary text holds too — counts only from twice ``min_fragment`` on; one with a digit, a symbol, a
    space or mixed case from ``min_fragment`` on. Fragments of the other encodings (hex, base64, URL) are
    not looked for; fragments of a value are looked for in decoded base64 blobs like everything else.
    ``min_fragment = 0`` turns fragments off.

Split across blocks
    An upstream can leak a value in pieces: a tool result whose first text block ends in ``"sk-ab"``
    and whose second starts with ``"cd12"``. :meth:`Scrubber.scrub_texts` scans the *concatenation* of
    consecutive texts and maps each match span back onto the blocks: the marker goes where the match
    starts, the remaining pieces are removed from the following blocks. :meth:`Scrubber.scrub_obj`
    applies this to every run of consecutive text-bearing items of a list: MCP text content blocks
    (``{"type": "text", "text": …}``), resource contents (``{"uri": …, "text": …}``), embedded
    resources and prompt messages (``{"resource"|"content": {"text": …}}``) and plain strings.
    Secrets split across the values of different dict keys are not reassembled.

Binary content
    A string under a ``blob`` or ``data`` key that is valid base64 (embedded resources, images,
    audio) is also decoded, scrubbed as bytes and re-encoded, so a secret anywhere in the payload is
    caught whatever its alignment; the encoded text is scrubbed as well. Base64 wrapped in lines
    (MIME, PEM) is decoded too; if something had to be removed it is re-encoded unwrapped.

Short secrets
    Values shorter than :data:`MIN_SECRET_LENGTH` (4) characters are *not* redacted: replacing every
    ``"a"`` of a result is absurd and such a value offers no protection anyway. They are listed in
    :attr:`Scrubber.skipped` (the :class:`~mcp_guard.secrets.manager.SecretManager` logs a warning).

Pydantic models (e.g. ``mcp.types.CallToolResult``) are dumped to JSON-able data, scrubbed and
validated back into the same type.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr

from mcp_guard.secrets.forms import encoded_forms
from mcp_guard.secrets.matcher import Finder, Span, compile_literals, entry_point

# The bounds are configuration ([redaction] min_fragment_chars), so settings owns them; re-exported here.
from mcp_guard.settings import DEFAULT_MIN_FRAGMENT, MIN_FRAGMENT_FLOOR

__all__ = [
    "ANCHOR_LENGTH",
    "DEFAULT_MIN_FRAGMENT",
    "MIN_FRAGMENT_FLOOR",
    "MIN_SECRET_LENGTH",
    "Scrubber",
    "anchor_offsets",
    "marker",
]

MIN_SECRET_LENGTH = 4
ANCHOR_LENGTH = 4
"""Length of the literal that finds a fragment candidate (shorter than any accepted ``min_fragment``)."""

_BASE64_KEYS = frozenset({"blob", "data"})
_NESTED_TEXT_KEYS = ("content", "resource")

_S = TypeVar("_S", str, bytes)
_MAX_SHIFT = 8
"""How far into an encoded form its literal may be entered (see ``matcher``): the rest is checked."""


def marker(name: str) -> str:
    """The text that replaces a secret called ``name``."""
    return f"[REDACTED:{name}]"


def _plain(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def anchor_offsets(value: str, min_fragment: int, starts: set[str]) -> list[int]:
    """Offsets of :data:`ANCHOR_LENGTH`-long anchors of ``value``: every ``min_fragment`` window holds one.

    A window ``[w, w + min_fragment)`` holds the anchor at ``p`` iff ``w <= p <= w + min_fragment -
    ANCHOR_LENGTH``. Greedy: for the first window not yet covered, the cheapest offset in that range
    (:func:`~mcp_guard.secrets.matcher.entry_point`; ties to the rightmost, which covers the most
    windows after it). ``starts`` (the first characters of every literal so far) is updated.
    """
    reach = min_fragment - ANCHOR_LENGTH
    chosen: list[int] = []
    for w in range(len(value) - min_fragment + 1):
        if not chosen or chosen[-1] < w:
            chosen.append(entry_point(value, range(w, w + reach + 1), starts))
    return chosen


def _apply(text: _S, spans: list[Span], markers: Mapping[str, _S]) -> _S:
    pieces: list[_S] = []
    cur = 0
    for start, end, name in spans:
        pieces.append(text[cur:start])
        pieces.append(markers[name])
        cur = end
    pieces.append(text[cur:])
    return text[:0].join(pieces)


class Scrubber:
    """Removes a fixed set of secret values, in all their encodings, from text, bytes and JSON data."""

    __slots__ = ("_bytes", "_bytes_markers", "_markers", "_text", "min_fragment", "names", "skipped")

    def __init__(
        self, secrets: Iterable[tuple[str, str | SecretStr]] = (), *, min_fragment: int = DEFAULT_MIN_FRAGMENT
    ) -> None:
        if min_fragment and min_fragment < MIN_FRAGMENT_FLOOR:
            raise ValueError(f"min_fragment must be 0 (off) or at least {MIN_FRAGMENT_FLOOR}")
        owners: dict[str, str] = {}  # form -> secret name
        names: set[str] = set()
        skipped: list[str] = []
        values: list[tuple[str, str]] = []
        for name, secret in secrets:
            value = _plain(secret)
            if len(value) < MIN_SECRET_LENGTH:
                skipped.append(name)
                continue
            names.add(name)
            values.append((value, name))
            for form in encoded_forms(value):
                owners.setdefault(form, name)
        self.names: frozenset[str] = frozenset(names)
        self.skipped: tuple[str, ...] = tuple(sorted(set(skipped)))
        self.min_fragment = min_fragment
        self._markers = {name: marker(name) for name in names}
        self._bytes_markers = {name: m.encode("utf-8") for name, m in self._markers.items()}
        starts: set[str] = set()
        exact: dict[str, list[tuple[str, str]]] = {}  # tail -> [(secret name, head)]
        for form, name in owners.items():
            j = entry_point(form, range(min(_MAX_SHIFT, len(form) // 2) + 1), starts)
            exact.setdefault(form[j:], []).append((name, form[:j]))
        sources = _fragment_sources(values, min_fragment) if min_fragment else []
        anchors = {src[p : p + ANCHOR_LENGTH] for src, _ in sources for p in anchor_offsets(src, min_fragment, starts)}
        compiled = compile_literals([*exact, *anchors])
        exact_only = compile_literals(exact) if anchors else None
        self._text: Finder[str] | None = None
        self._bytes: Finder[bytes] | None = None
        if compiled is not None:
            self._text = Finder(
                compiled[0], exact, sources, anchors, min_fragment, exact_only[0] if exact_only else None
            )
            self._bytes = Finder(
                compiled[1],
                {t.encode("utf-8"): [(n, h.encode("utf-8")) for n, h in e] for t, e in exact.items()},
                [(src.encode("utf-8"), name) for src, name in sources],
                [a.encode("utf-8") for a in anchors],
                min_fragment,
                exact_only[1] if exact_only else None,
            )

    def __bool__(self) -> bool:
        return self._text is not None

    def __repr__(self) -> str:
        return f"Scrubber(names={sorted(self.names)!r})"

    # -- text ---------------------------------------------------------------------------------

    def spans(self, text: str) -> list[Span]:
        """Where secrets (and fragments of them) sit in ``text``."""
        return self._text.spans(text) if self._text is not None else []

    def scrub_text(self, text: str) -> str:
        """``text`` with every secret form (and fragment) replaced by its marker."""
        if self._text is None:
            return text
        spans = self._text.spans(text)
        return _apply(text, spans, self._markers) if spans else text

    def scrub_bytes(self, data: bytes) -> bytes:
        """Like :meth:`scrub_text` on raw bytes (forms matched as UTF-8)."""
        if self._bytes is None:
            return data
        spans = self._bytes.spans(data)
        return _apply(data, spans, self._bytes_markers) if spans else data

    def found(self, text: str) -> set[str]:
        """Names of the secrets present (in any form, or as a fragment) in ``text``."""
        return {name for _, _, name in self.spans(text)}

    def found_in(self, obj: Any) -> set[str]:
        """Names of the secrets present in any string (value or key) of JSON-able ``obj``."""
        if self._text is None:
            return set()
        names: set[str] = set()
        stack = [obj]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                names |= self.found(item)
            elif isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                stack.extend(item)
            elif isinstance(item, bytes | bytearray) and self._bytes is not None:
                names |= {name for _, _, name in self._bytes.spans(bytes(item))}
        return names

    def scrub_texts(self, texts: Sequence[str]) -> list[str]:
        """Scrub consecutive text blocks jointly, so a secret split across blocks is caught too.

        The marker replaces the part of a match in the block where it starts; the parts of the same
        match in later blocks are removed.
        """
        if self._text is None:
            return list(texts)
        joined = "".join(texts)
        markers = self._markers
        matches = [(start, end, markers[name]) for start, end, name in self._text.spans(joined)]
        if not matches:
            return list(texts)
        out: list[str] = []
        block_start = 0
        j = 0
        for text in texts:
            block_end = block_start + len(text)
            pieces: list[str] = []
            cur = block_start
            while j < len(matches) and matches[j][0] < block_end:
                start, end, mark = matches[j]
                if start > cur:
                    pieces.append(joined[cur:start])
                if start >= block_start:
                    pieces.append(mark)
                cur = max(cur, min(end, block_end))
                if end > block_end:
                    break  # the match continues into the next block
                j += 1
            if cur < block_end:
                pieces.append(joined[cur:block_end])
            out.append("".join(pieces))
            block_start = block_end
        return out

    # -- structured data ----------------------------------------------------------------------

    def scrub_obj(self, obj: Any) -> Any:
        """A copy of JSON-able ``obj`` (dicts, lists, tuples, strings, bytes, pydantic models) scrubbed.

        Keys are scrubbed as well as values; numbers, booleans and ``None`` pass through. With no
        secrets ``obj`` itself is returned.
        """
        if self._text is None:
            return obj
        return self._walk(obj, None)

    def _walk(self, obj: Any, key: str | None) -> Any:
        if isinstance(obj, str):
            if key in _BASE64_KEYS:
                obj = self._scrub_base64(obj)
            return self.scrub_text(obj)
        if isinstance(obj, Mapping):
            return {
                (self.scrub_text(k) if isinstance(k, str) else k): self._walk(v, k if isinstance(k, str) else None)
                for k, v in obj.items()
            }
        if isinstance(obj, list | tuple):
            items = self._walk_seq(obj)
            return tuple(items) if isinstance(obj, tuple) else items
        if isinstance(obj, bytes | bytearray):
            return self.scrub_bytes(bytes(obj))
        if isinstance(obj, BaseModel):
            data = self._walk(obj.model_dump(mode="json", by_alias=True), None)
            return type(obj).model_validate(data)
        return obj

    def _scrub_base64(self, text: str) -> str:
        compact = "".join(text.split()) if any(c in text for c in " \r\n\t") else text
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            return text
        scrubbed = self.scrub_bytes(raw)
        return text if scrubbed == raw else base64.b64encode(scrubbed).decode("ascii")

    def _walk_seq(self, items: Sequence[Any]) -> list[Any]:
        out = [self._walk(item, None) for item in items]
        # Re-scrub runs of consecutive text-bearing items jointly (secrets split across blocks).
        run: list[int] = []
        for i in range(len(items) + 1):
            path = _text_path(items[i]) if i < len(items) else None
            if path is not None:
                run.append(i)
                continue
            if len(run) > 1:
                self._scrub_run(items, out, run)
            run = []
        return out

    def _scrub_run(self, items: Sequence[Any], out: list[Any], run: list[int]) -> None:
        paths = [_text_path(items[i]) or () for i in run]
        texts = [_get(items[i], p) for i, p in zip(run, paths, strict=True)]
        joint = self.scrub_texts(texts)
        if joint == texts:
            return
        for i, path, text in zip(run, paths, joint, strict=True):
            out[i] = _put(out[i], path, self.scrub_text(text))


def _text_path(item: Any) -> tuple[str, ...] | None:
    """Where the text of a text-bearing list item sits (``()`` for a plain string), else ``None``."""
    if isinstance(item, str):
        return ()
    if isinstance(item, Mapping):
        if isinstance(item.get("text"), str):
            return ("text",)
        for key in _NESTED_TEXT_KEYS:
            inner = item.get(key)
            if isinstance(inner, Mapping) and isinstance(inner.get("text"), str):
                return (key, "text")
    return None


def _get(item: Any, path: tuple[str, ...]) -> str:
    for key in path:
        item = item[key]
    assert isinstance(item, str)
    return item


def _put(item: Any, path: tuple[str, ...], text: str) -> Any:
    """``item`` (an already scrubbed copy) with the text at ``path`` replaced."""
    if not path:
        return text
    head, *rest = path
    return {**item, head: _put(item[head], tuple(rest), text)}


def _fragment_sources(values: Iterable[tuple[str, str]], min_fragment: int) -> list[tuple[str, str]]:
    """The spellings of each value whose fragments are scrubbed: raw and JSON-escaped (distinct ones)."""
    out: dict[str, str] = {}
    for value, name in values:
        for spelling in (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]):
            if len(spelling) > min_fragment:
                out.setdefault(spelling, name)
    return [(spelling, name) for spelling, name in out.items()]
