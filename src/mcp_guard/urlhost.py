"""The host a URL names, read the way WHATWG URL parsers read it (browsers, Node's ``fetch``, ``new URL()``).

Why here and not in Rego: a policy that allowlists hosts must see the host the upstream's HTTP client will
connect to. A regular expression over ``scheme://authority`` disagrees with WHATWG parsers on hostile
inputs — ``https://169.254.169.254\\.example.com/`` is read as host ``169.254.169.254`` (a backslash ends the
authority of a special scheme), ``https://0x7f.1/`` as ``127.0.0.1``, ``https:evil.com`` as ``evil.com``. So
mcp-guard parses every URL-looking argument once, here, and hands the policy the result
(``input.context.urls``, docs/architecture.md §8.3); the default bundle reads hosts only from there.

What is implemented, from the URL Standard's basic URL parser, for an absolute URL without a base:
leading/trailing C0-or-space stripping, tab/newline removal anywhere, the scheme, the special schemes'
slash quirks (any run of ``/`` and ``\\``, none at all), userinfo up to the last ``@``, the port, and the
host parser — IPv6 (with embedded IPv4, serialised compressed), percent-decoding, domain-to-ASCII (ASCII
lower-casing; non-ASCII through UTS #46 via the ``idna`` package), forbidden code points, and the IPv4
parser (1–4 parts, decimal/octal/hex, "ends in a number"). Opaque hosts of non-special schemes and the
``file`` scheme's host are handled too. Anything the parser cannot read is a failure (``error`` set), which
the bundle denies: where this module and a browser could disagree (exotic IDNA), the answer is a deny,
never a different host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import idna

SPECIAL_SCHEMES = frozenset({"ftp", "file", "http", "https", "ws", "wss"})
DEFAULT_PORTS = {"ftp": 21, "http": 80, "https": 443, "ws": 80, "wss": 443}

# At most this many URL-looking strings per input, each at most this long, are parsed (bounded work per
# call); a URL argument not in the table is denied by the bundle as "not an absolute URL".
MAX_URLS = 256
MAX_URL_CHARS = 65536

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")
_FORBIDDEN_HOST = frozenset("\x00\t\n\r #/:<>?@[\\]^|")
_FORBIDDEN_DOMAIN = _FORBIDDEN_HOST | frozenset(chr(c) for c in range(0x20)) | {"%", "\x7f"}
_HEX = frozenset("0123456789abcdefABCDEF")
_SPECIAL_STOP = re.compile(r"[/?#\\]")
_OPAQUE_STOP = re.compile(r"[/?#]")
_FORBIDDEN_DOMAIN_RE = re.compile("[" + re.escape("".join(sorted(_FORBIDDEN_DOMAIN))) + "]")


class UrlError(ValueError):
    """The URL Standard's parser would fail on this input."""


class NoScheme(UrlError):
    """Not an absolute URL at all (no ``scheme:`` at the start)."""


def _clean(text: str) -> str:
    """The parser's first steps: strip leading/trailing C0 controls and spaces, drop tabs and newlines."""
    s = text.strip(_C0_OR_SPACE)
    if "\t" in s or "\n" in s or "\r" in s:
        s = s.translate(_TAB_OR_NEWLINE)
    return s


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """What a policy needs of a URL: scheme, serialised host (None: the URL has none), port, credentials."""

    scheme: str
    host: str | None
    port: int | None
    userinfo: bool

    def to_policy(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "host": self.host, "port": self.port, "userinfo": self.userinfo}


def parse_url(text: str) -> ParsedUrl:
    """Parse an absolute URL as WHATWG parsers do, far enough to know its host. Raises :class:`UrlError`."""
    s = _clean(text)
    m = _SCHEME.match(s)
    if m is None:
        raise NoScheme("no scheme (not an absolute URL)")
    scheme = m.group()[:-1].lower()
    rest = s[m.end() :]
    special = scheme in SPECIAL_SCHEMES
    if scheme == "file":
        return _parse_file(rest)
    if special:
        rest = rest.lstrip("/\\")  # "special authority (ignore) slashes": any run of / and \, or none
    elif rest.startswith("//"):
        rest = rest[2:]
    else:
        return ParsedUrl(scheme, None, None, userinfo=False)  # opaque path: no host
    end = _authority_end(rest, special)
    authority = rest[:end]
    userinfo, _, host_port = authority.rpartition("@")
    has_at = "@" in authority
    if has_at and not host_port:
        raise UrlError("credentials without a host")
    host_text, port = _split_port(host_port, scheme)
    if special and not host_text:
        raise UrlError("empty host")
    host = parse_host(host_text, special=special) if host_text or special else ""
    return ParsedUrl(scheme, host, port, userinfo=userinfo not in ("", ":"))  # a username or password


def _parse_file(rest: str) -> ParsedUrl:
    """``file:`` URLs: a host only after two slashes (of either kind); ``localhost`` and drive letters are none."""
    if len(rest) < 2 or rest[0] not in "/\\" or rest[1] not in "/\\":
        return ParsedUrl("file", "", None, userinfo=False)
    rest = rest[2:]
    host_text = rest[: _authority_end(rest, special=True)]
    if re.fullmatch(r"[A-Za-z][:|]", host_text) or not host_text:
        return ParsedUrl("file", "", None, userinfo=False)
    host = parse_host(host_text, special=True)
    return ParsedUrl("file", "" if host == "localhost" else host, None, userinfo=False)


def _authority_end(rest: str, special: bool) -> int:
    """Index where the authority ends: the first ``/ ? #`` (and ``\\`` for special schemes)."""
    m = (_SPECIAL_STOP if special else _OPAQUE_STOP).search(rest)
    return m.start() if m else len(rest)


def _split_port(host_port: str, scheme: str) -> tuple[str, int | None]:
    """Split ``host:port`` at the first colon outside brackets; the default port of the scheme is none."""
    if "[" not in host_port and ":" not in host_port:
        return host_port, None
    in_brackets = False
    for i, ch in enumerate(host_port):
        if ch == "[":
            in_brackets = True
        elif ch == "]":
            in_brackets = False
        elif ch == ":" and not in_brackets:
            digits = host_port[i + 1 :]
            if not digits:
                return host_port[:i], None
            if not digits.isascii() or not digits.isdigit():
                raise UrlError("invalid port")
            port = int(digits)
            if port > 65535:
                raise UrlError("port out of range")
            return host_port[:i], None if DEFAULT_PORTS.get(scheme) == port else port
    return host_port, None


def parse_host(text: str, *, special: bool = True) -> str:
    """The URL Standard's host parser; returns the serialised host. Raises :class:`UrlError`."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise UrlError("unclosed IPv6 address")
        return "[" + _serialize_ipv6(_parse_ipv6(text[1:-1])) + "]"
    if not special:
        if any(ch in _FORBIDDEN_HOST for ch in text):
            raise UrlError("forbidden host code point")
        return "".join(ch if 0x20 < ord(ch) < 0x7F else _percent_encode(ch) for ch in text)
    decoded = unquote_to_bytes(text).decode("utf-8", errors="replace")
    ascii_domain = _domain_to_ascii(decoded)
    if _FORBIDDEN_DOMAIN_RE.search(ascii_domain):
        raise UrlError("forbidden domain code point")
    if _ends_in_number(ascii_domain):
        return _serialize_ipv4(_parse_ipv4(ascii_domain))
    return ascii_domain


def _percent_encode(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def _domain_to_ascii(domain: str) -> str:
    """UTS #46 ToASCII as the URL Standard calls it (non-transitional, no STD3 rules, no DNS length check)."""
    if domain.isascii():
        lowered = domain.lower()
        for label in lowered.split("."):
            if label.startswith("xn--"):
                try:
                    idna.decode(label)
                except (idna.IDNAError, UnicodeError) as exc:
                    raise UrlError("invalid punycode label") from exc
        return lowered
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        labels = [label if label.isascii() else idna.alabel(label).decode("ascii") for label in mapped.split(".")]
    except (idna.IDNAError, UnicodeError) as exc:
        raise UrlError("invalid internationalised domain") from exc
    return ".".join(labels).lower()


def _ends_in_number(domain: str) -> bool:
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    if last[:2] not in ("0x", "0X"):
        return False  # neither decimal nor hex: the IPv4 number parser would fail on it
    try:
        _parse_ipv4_number(last)
    except UrlError:
        return False
    return True


def _parse_ipv4_number(part: str) -> int:
    if not part:
        raise UrlError("empty IPv4 part")
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    digits = {10: "0123456789", 16: "0123456789abcdefABCDEF", 8: "01234567"}[radix]
    if any(ch not in digits for ch in part):
        raise UrlError("invalid IPv4 number")
    return int(part, radix)


def _parse_ipv4(domain: str) -> int:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        raise UrlError("IPv4 address with more than four parts")
    numbers = [_parse_ipv4_number(p) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise UrlError("IPv4 address out of range")
    address = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        address += n * 256 ** (3 - i)
    return address


def _serialize_ipv4(address: int) -> str:
    return ".".join(str((address >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _parse_ipv6(text: str) -> list[int]:  # the standard's state machine, in one piece
    """The URL Standard's IPv6 parser (eight 16-bit pieces)."""
    address = [0] * 8
    piece = 0
    compress: int | None = None
    i = 0
    n = len(text)

    def at(k: int) -> str:
        return text[k] if k < n else ""

    if at(0) == ":":
        if at(1) != ":":
            raise UrlError("IPv6 address starts with a single colon")
        i, piece = 2, 1
        compress = piece
    while i < n:
        if piece == 8:
            raise UrlError("IPv6 address too long")
        if at(i) == ":":
            if compress is not None:
                raise UrlError("IPv6 address compressed twice")
            i += 1
            piece += 1
            compress = piece
            continue
        value = length = 0
        while length < 4 and at(i) in _HEX and at(i):
            value = value * 16 + int(at(i), 16)
            i += 1
            length += 1
        if at(i) == ".":
            if length == 0 or piece > 6:
                raise UrlError("invalid IPv4 part in IPv6 address")
            i -= length
            seen = 0
            while i < n:
                if seen > 0:
                    if at(i) == "." and seen < 4:
                        i += 1
                    else:
                        raise UrlError("invalid IPv4 part in IPv6 address")
                if not at(i).isdigit() or not at(i).isascii():
                    raise UrlError("invalid IPv4 part in IPv6 address")
                v4: int | None = None
                while at(i) and at(i).isascii() and at(i).isdigit():
                    if v4 == 0:
                        raise UrlError("leading zero in IPv4 part of IPv6 address")
                    v4 = int(at(i)) if v4 is None else v4 * 10 + int(at(i))
                    if v4 > 255:
                        raise UrlError("IPv4 part of IPv6 address out of range")
                    i += 1
                address[piece] = address[piece] * 0x100 + (v4 or 0)
                seen += 1
                if seen in (2, 4):
                    piece += 1
            if seen != 4:
                raise UrlError("invalid IPv4 part in IPv6 address")
            break
        if at(i) == ":":
            i += 1
            if i >= n:
                raise UrlError("IPv6 address ends with a single colon")
        elif i < n:
            raise UrlError("invalid IPv6 code point")
        address[piece] = value
        piece += 1
    if compress is not None:
        swaps = piece - compress
        piece = 7
        while piece != 0 and swaps > 0:
            address[piece], address[compress + swaps - 1] = address[compress + swaps - 1], address[piece]
            piece -= 1
            swaps -= 1
    elif piece != 8:
        raise UrlError("IPv6 address too short")
    return address


def _serialize_ipv6(address: list[int]) -> str:
    """Lower-case hex pieces; the first longest run of two or more zero pieces becomes ``::``."""
    best_start, best_len = -1, 1
    i = 0
    while i < 8:
        if address[i] == 0:
            j = i
            while j < 8 and address[j] == 0:
                j += 1
            if j - i > best_len:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    if best_start < 0:
        return ":".join(f"{p:x}" for p in address)
    head = ":".join(f"{p:x}" for p in address[:best_start])
    tail = ":".join(f"{p:x}" for p in address[best_start + best_len :])
    return f"{head}::{tail}"


def url_table(arguments: Any) -> dict[str, dict[str, Any]]:
    """Every URL-looking string among the arguments (however nested) → its parse, for ``input.context.urls``.

    A string is URL-looking when, after the parser's own stripping, it starts with a scheme and a colon. A
    parse failure is an entry with ``host: null`` and an ``error``. At most :data:`MAX_URLS` strings of at
    most :data:`MAX_URL_CHARS` characters are parsed; the policy denies a URL argument it finds no entry for.
    """
    table: dict[str, dict[str, Any]] = {}
    stack = [arguments]
    while stack and len(table) < MAX_URLS:
        node = stack.pop()
        if isinstance(node, str):
            if node not in table and ":" in node and len(node) <= MAX_URL_CHARS:
                entry = _entry(node)
                if entry is not None:
                    table[node] = entry
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return table


def _entry(text: str) -> dict[str, Any] | None:
    try:
        return parse_url(text).to_policy()
    except NoScheme:
        return None
    except UrlError as exc:
        scheme = _SCHEME.match(_clean(text))
        name = scheme.group()[:-1].lower() if scheme else None
        return {"scheme": name, "host": None, "port": None, "userinfo": False, "error": str(exc)}
