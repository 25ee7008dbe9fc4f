"""Recognise values that look like credentials, whoever they belong to, and mask them.

Injected secrets are scrubbed by value (:mod:`mcp_guard.secrets.redact`). This module catches the
ones mcp-guard does not know: an agent pasting an AWS key into a tool argument, a tool returning a
private key. :func:`mask` rewrites JSON-able data with each finding replaced by
``[REDACTED:<kind>]`` and reports the kinds found; the secrets stage feeds those kinds to the policy
(``context.secrets_seen``), the audit row and the logs get the masked copy. The arguments actually
forwarded to the upstream are never changed by this module.

Kinds
    ``aws_access_key``  ``AKIA…``/``ASIA…`` access key ids (20 characters)
    ``private_key``     PEM ``-----BEGIN … PRIVATE KEY-----`` blocks (to the END line, or to the end
                        of the string when truncated)
    ``jwt``             ``eyJ….eyJ….<signature>`` JSON web tokens
    ``github_token``    ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` tokens and ``github_pat_`` tokens
    ``slack_token``     ``xoxb-``/``xoxp-``/``xoxa-``/``xoxr-``/``xoxs-``/``xoxe-`` and ``xapp-`` tokens
    ``slack_webhook``   ``https://hooks.slack.com/services/T…/B…/…`` URLs
    ``password``        any non-empty string in a field named like a password (``password``,
                        ``passwd``, ``passphrase``, ``pwd``, ``pass``): a low-entropy password is
                        still a password
    ``high_entropy``    a random-looking string (≥ 16 characters, no spaces, letters and digits,
                        ≥ 3 bits of entropy per character) in a field named like a credential
                        (``token``, ``secret``, ``api_key``, ``access_key``, ``private_key``,
                        ``credential``, ``authorization``, ``auth``, ``cookie``, ``session_id``, …);
                        a leading ``Bearer ``/``Basic ``/``token `` scheme is ignored when judging

Names that describe a credential rather than hold it are not credential fields: those ending in
``name``, ``id``, ``type``, ``url``, ``path``, ``ttl``, ``hint``, … and those with a word ``page``,
``cursor``, ``next``, ``count``, ``max``, ``progress``, … (``secret_name``, ``token_type``,
``next_page_token``, ``max_tokens``, MCP's ``progressToken``). Pagination tokens are random by
design and would otherwise make every paged call look like it carries a credential.

Field names are split into lower-case words (``apiKey``, ``API-KEY`` and ``api_key`` are all
``api key``) and matched on the words joined together. Only a string directly under such a key
(or in a list directly under it) is judged by its name; nested objects are judged by their own keys.
Pattern kinds are found anywhere in any string, and only the matching part is replaced.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

__all__ = ["KINDS", "field_kind", "find_kinds", "is_credential_field", "looks_random", "mask", "mask_text"]

KINDS = (
    "aws_access_key",
    "private_key",
    "jwt",
    "github_token",
    "slack_token",
    "slack_webhook",
    "password",
    "high_entropy",
)

# Order matters: a PEM block is masked as a whole before anything inside it is looked at.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
            re.DOTALL,
        ),
    ),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")),
    ("aws_access_key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Z0-9])")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251})\b")),
    ("slack_webhook", re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]+")),
    ("slack_token", re.compile(r"\b(?:xox[abposre]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,})")),
)

_PASSWORD_NAMES = frozenset({"password", "passwd", "passphrase", "pwd", "pass", "pw"})
_PASSWORD_PARTS = ("password", "passwd", "passphrase")
_CREDENTIAL_NAMES = frozenset({"auth"})
_CREDENTIAL_PARTS = (
    "token",
    "secret",
    "apikey",
    "accesskey",
    "privatekey",
    "signingkey",
    "encryptionkey",
    "credential",
    "authorization",
    "cookie",
    "sessionid",
    "sessionkey",
    "bearer",
)
# Names that talk *about* a credential rather than hold one (secret_name, token_type, page_token…).
_NOT_VALUE_SUFFIXES = frozenset(
    {
        "name",
        "names",
        "id",
        "ids",
        "type",
        "types",
        "url",
        "uri",
        "path",
        "file",
        "arn",
        "ref",
        "version",
        "expiry",
        "expires",
        "expiresat",
        "ttl",
        "length",
        "len",
        "format",
        "field",
        "provider",
        "hint",
        "policy",
        "scope",
        "scopes",
        "label",
        "description",
    }
)
_NOT_VALUE_WORDS = frozenset(
    {"page", "cursor", "continuation", "next", "sync", "count", "limit", "max", "min", "usage", "progress"}
)
_SCHEME = re.compile(r"^(?:bearer|basic|token|digest)\s+", re.IGNORECASE)
_MIN_RANDOM_LEN = 16
_MIN_BITS_PER_CHAR = 3.0


def _marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _words(key: str) -> list[str]:
    """``nextPageToken`` → ``["next", "page", "token"]``; ``X-API-Key`` → ``["x", "api", "key"]``."""
    return [w.lower() for w in _WORD.findall(key)]


_KIND_OF: dict[str, str | None] = {}
_KIND_OF_MAX = 4096  # names remembered (a client chooses its argument names: bounded, emptied when full)
_KIND_OF_KEY_CHARS = 256  # a longer name is judged every time, not remembered
_UNJUDGED = "unjudged"  # not a kind: the memo has no answer for the name yet


def field_kind(key: str) -> str | None:
    """``"password"`` or ``"credential"`` if a field of that name holds a secret, else ``None``.

    Remembered by name: a tool's argument names repeat on every call, and judging one (split into words, each
    compared with the lists above) was ~200 bytecodes a name, on every call's audit copy of its arguments."""
    kind = _KIND_OF.get(key, _UNJUDGED)
    if kind is not _UNJUDGED:
        return kind
    kind = _judge(key)
    if len(key) <= _KIND_OF_KEY_CHARS:
        if len(_KIND_OF) >= _KIND_OF_MAX:
            _KIND_OF.clear()
        _KIND_OF[key] = kind
    return kind


def _judge(key: str) -> str | None:
    """:func:`field_kind`, worked out."""
    words = _words(key)
    if not words or words[-1] in _NOT_VALUE_SUFFIXES or any(w in _NOT_VALUE_WORDS for w in words):
        return None
    k = "".join(words)
    if k in _PASSWORD_NAMES or any(p in k for p in _PASSWORD_PARTS):
        return "password"
    if k in _CREDENTIAL_NAMES or any(p in k for p in _CREDENTIAL_PARTS):
        return "credential"
    return None


def is_credential_field(key: str) -> bool:
    """Whether a field called ``key`` is expected to hold a password, token or other secret."""
    return field_kind(key) is not None


def looks_random(value: str) -> bool:
    """Whether ``value`` looks like a generated credential rather than a word, sentence or number."""
    v = _SCHEME.sub("", value.strip())
    if len(v) < _MIN_RANDOM_LEN or any(c.isspace() for c in v):
        return False
    if not (any(c.isdigit() for c in v) and any(c.isalpha() for c in v)):
        return False
    counts = Counter(v)
    n = len(v)
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    return entropy >= _MIN_BITS_PER_CHAR


def mask_text(text: str) -> tuple[str, set[str]]:
    """``text`` with every well-known credential shape replaced, and the kinds replaced."""
    kinds: set[str] = set()
    for kind, pattern in _PATTERNS:
        if pattern.search(text):
            text = pattern.sub(_marker(kind), text)
            kinds.add(kind)
    return text, kinds


def find_kinds(obj: Any) -> tuple[str, ...]:
    """The kinds of credential found in ``obj`` (what :func:`mask` would report)."""
    return mask(obj)[1]


def mask(obj: Any) -> tuple[Any, tuple[str, ...]]:
    """A copy of JSON-able ``obj`` with credentials masked, and the sorted kinds found.

    Dict keys are kept as they are; numbers, booleans and ``None`` pass through.
    """
    kinds: set[str] = set()
    masked = _walk(obj, None, kinds)
    return masked, tuple(sorted(kinds))


def _walk(obj: Any, fkind: str | None, kinds: set[str]) -> Any:
    if isinstance(obj, str):
        text, found = mask_text(obj)
        kinds |= found
        if fkind == "password" and obj:
            kinds.add("password")
            return _marker("password")
        if fkind == "credential" and not found and looks_random(obj):
            kinds.add("high_entropy")
            return _marker("high_entropy")
        return text
    if type(obj) is dict or isinstance(obj, Mapping):  # a plain dict skips the Mapping ABC's (costly) check
        return {k: _walk(v, field_kind(k) if isinstance(k, str) else None, kinds) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [_walk(v, fkind, kinds) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    return obj
