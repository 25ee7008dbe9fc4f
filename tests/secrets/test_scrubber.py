"""Scrubber: every encoding of an injected value, split across blocks, nested MCP shapes."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, quote_plus

import mcp_types as types
import pytest
from pydantic import SecretStr
from secret_checks import assert_no_secret, secret_spellings

from mcp_guard.secrets.forms import base64_cores, encoded_forms
from mcp_guard.secrets.matcher import compile_literals
from mcp_guard.secrets.redact import MIN_SECRET_LENGTH, Scrubber, marker

TOKEN = "tok-9f8e7d6c5b4a/+=AbCdEf!'()*<>&é"  # characters every encoding treats specially
SIMPLE = "sk-live-4f7Qz9XwPp2LmN8v"


@pytest.fixture
def scrubber() -> Scrubber:
    return Scrubber([("api_token", TOKEN), ("simple", SecretStr(SIMPLE))])


ENCODINGS = {
    "raw": lambda v: v,
    "json": lambda v: json.dumps(v)[1:-1],
    "json-no-ascii": lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    "json-escaped-slash": lambda v: json.dumps(v)[1:-1].replace("/", "\\/"),
    "json-twice": lambda v: json.dumps(json.dumps(v)[1:-1])[1:-1],
    "go-json": lambda v: (
        json.dumps(v, ensure_ascii=False)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    ),
    "url": lambda v: quote(v, safe=""),
    "url-keep-slash": lambda v: quote(v),
    "url-plus": lambda v: quote_plus(v),
    "url-js": lambda v: quote(v, safe="!'()*"),
    "hex": lambda v: v.encode().hex(),
    "HEX": lambda v: v.encode().hex().upper(),
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64-unpadded": lambda v: base64.b64encode(v.encode()).decode().rstrip("="),
    "base64url": lambda v: base64.urlsafe_b64encode(v.encode()).decode(),
    "base64url-unpadded": lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("value", [TOKEN, SIMPLE], ids=["tricky", "simple"])
def test_each_encoding_is_scrubbed(scrubber: Scrubber, encoding: str, value: str) -> None:
    leaked = ENCODINGS[encoding](value)
    text = f"before {leaked} after"
    out = scrubber.scrub_text(text)
    assert leaked not in out
    assert out.startswith("before [REDACTED:") and out.endswith("] after")
    assert_no_secret(out.encode(), value)


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("prefix_len", range(6))
def test_base64_inside_a_larger_blob_at_every_alignment(scrubber: Scrubber, urlsafe: bool, prefix_len: int) -> None:
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = enc(b"P" * prefix_len + f'{{"auth": "{SIMPLE}"}}'.encode() + b"\x00tail").decode()
    out = scrubber.scrub_text(f"dump: {blob}")
    assert "[REDACTED:simple]" in out
    assert_no_secret(out.encode(), SIMPLE)


def test_base64_cores_are_what_any_blob_contains() -> None:
    raw = SIMPLE.encode()
    for k, core in enumerate(base64_cores(raw)):
        for fill in (b"\x00", b"\x7f", b"\xff"):
            blob = base64.b64encode(fill * k + raw + fill * 2).decode()
            assert core in blob


def test_secret_spellings_helper_agrees_with_forms() -> None:
    """The independent test helper and the product find the same spellings (both must miss nothing)."""
    forms = set(encoded_forms(TOKEN))
    for label, spelling in secret_spellings(TOKEN).items():
        assert spelling in forms, label


def test_assert_no_secret_fails_on_a_leak() -> None:
    for label, spelling in secret_spellings(SIMPLE).items():
        with pytest.raises(AssertionError, match="secret present"):
            assert_no_secret(b"xx" + spelling.encode() + b"yy", SIMPLE)
        assert label
    with pytest.raises(AssertionError):
        assert_no_secret(SIMPLE.encode("utf-16-le"), SIMPLE)
    assert_no_secret(b"nothing to see", SIMPLE)


def test_keys_and_bytes_are_scrubbed(scrubber: Scrubber) -> None:
    out = scrubber.scrub_obj({SIMPLE: [1, True, None, SIMPLE.encode()]})
    assert out == {"[REDACTED:simple]": [1, True, None, b"[REDACTED:simple]"]}


def test_found_in_names_the_secrets(scrubber: Scrubber) -> None:
    obj = {"a": ["x", {"k": base64.b64encode(SIMPLE.encode()).decode()}], quote(TOKEN, safe=""): 1}
    assert scrubber.found_in(obj) == {"simple", "api_token"}
    assert scrubber.found_in({"a": "clean"}) == set()


# --------------------------------------------------------------------------- split across blocks
def _text_blocks(*texts: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": t} for t in texts], "isError": False}


@pytest.mark.parametrize("cut", [1, 5, len(SIMPLE) // 2, len(SIMPLE) - 1])
def test_secret_split_across_two_text_blocks(scrubber: Scrubber, cut: int) -> None:
    result = _text_blocks("the key is " + SIMPLE[:cut], SIMPLE[cut:] + " (keep it safe)")
    out = scrubber.scrub_obj(result)
    texts = [b["text"] for b in out["content"]]
    assert texts == ["the key is [REDACTED:simple]", " (keep it safe)"]
    assert_no_secret("".join(texts).encode(), SIMPLE)


def test_secret_split_across_many_blocks_and_encoded(scrubber: Scrubber) -> None:
    hexed = SIMPLE.encode().hex()
    pieces = [hexed[i : i + 7] for i in range(0, len(hexed), 7)]
    out = scrubber.scrub_obj(_text_blocks("hex:", *pieces, "done"))
    texts = [b["text"] for b in out["content"]]
    assert texts[0] == "hex:"
    assert texts[1] == "[REDACTED:simple]"
    assert all(t == "" for t in texts[2:-1])
    assert texts[-1] == "done"


def test_split_across_resource_contents_and_prompt_messages(scrubber: Scrubber) -> None:
    read = {"contents": [{"uri": "file:///a", "text": "x" + SIMPLE[:6]}, {"uri": "file:///b", "text": SIMPLE[6:]}]}
    out = scrubber.scrub_obj(read)
    assert [c["text"] for c in out["contents"]] == ["x[REDACTED:simple]", ""]
    prompt = {
        "messages": [
            {"role": "user", "content": {"type": "text", "text": "use " + SIMPLE[:10]}},
            {"role": "assistant", "content": {"type": "text", "text": SIMPLE[10:] + " ok"}},
        ]
    }
    out = scrubber.scrub_obj(prompt)
    assert [m["content"]["text"] for m in out["messages"]] == ["use [REDACTED:simple]", " ok"]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"]


def test_split_across_embedded_resources(scrubber: Scrubber) -> None:
    result = {
        "content": [
            {"type": "resource", "resource": {"uri": "mem://1", "text": SIMPLE[:3]}},
            {"type": "text", "text": SIMPLE[3:]},
        ]
    }
    out = scrubber.scrub_obj(result)
    assert out["content"][0]["resource"] == {"uri": "mem://1", "text": "[REDACTED:simple]"}
    assert out["content"][1]["text"] == ""


def test_no_false_join_when_blocks_only_look_like_a_prefix(scrubber: Scrubber) -> None:
    result = _text_blocks("sk-live-", "nothing")
    assert scrubber.scrub_obj(result) == result


def test_structured_content_and_binary_blobs(scrubber: Scrubber) -> None:
    image = base64.b64encode(b"\x89PNG..." + SIMPLE.encode() + b"...").decode()
    wrapped = "\n".join(image[i : i + 8] for i in range(0, len(image), 8))
    result = {
        "content": [
            {"type": "image", "data": image, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "mem://b", "blob": wrapped, "mimeType": "x/y"}},
        ],
        "structuredContent": {"nested": {"deep": [f"value={quote(SIMPLE)}"]}},
    }
    out = scrubber.scrub_obj(result)
    for blob in (out["content"][0]["data"], out["content"][1]["resource"]["blob"]):
        decoded = base64.b64decode(blob)
        assert SIMPLE.encode() not in decoded
        assert b"[REDACTED:simple]" in decoded
    assert out["structuredContent"]["nested"]["deep"] == ["value=[REDACTED:simple]"]


def test_pydantic_models_round_trip(scrubber: Scrubber) -> None:
    result = types.CallToolResult(content=[types.TextContent(type="text", text=f"k={SIMPLE}")])
    out = scrubber.scrub_obj(result)
    assert isinstance(out, types.CallToolResult)
    assert out.content[0].text == "k=[REDACTED:simple]"  # type: ignore[union-attr]


def test_empty_scrubber_is_identity() -> None:
    s = Scrubber()
    obj = {"a": ["b"]}
    assert not s
    assert s.scrub_obj(obj) is obj
    assert s.scrub_text("x") == "x"
    assert s.found_in(obj) == set()


def test_short_values_are_skipped_not_scrubbed() -> None:
    s = Scrubber([("pin", "1" * (MIN_SECRET_LENGTH - 1)), ("ok", "abcd")])
    assert s.skipped == ("pin",)
    assert s.names == frozenset({"ok"})
    assert s.scrub_text("111 abcd") == "111 [REDACTED:ok]"


def test_longest_match_wins_when_one_secret_prefixes_another() -> None:
    s = Scrubber([("short", "abcdef"), ("long", "abcdefghij")])
    assert s.scrub_text("abcdefghij abcdef") == f"{marker('long')} {marker('short')}"


def test_trie_regex_matches_exactly_the_literals() -> None:
    words = ["ab", "abc", "abd", "b", "xyz", "a.b", "a*"]
    compiled = compile_literals(words)
    assert compiled is not None
    text_re, bytes_re = compiled
    for w in words:
        assert text_re.fullmatch(w)
        assert bytes_re.fullmatch(w.encode())
    for w in ["a", "ac", "xy", "aXb", "abcd"]:
        assert not text_re.fullmatch(w)
    assert [m.group(0) for m in text_re.finditer("abcabd a.b a*")] == ["abc", "abd", "a.b", "a*"]
    assert compile_literals([]) is None


def test_many_secrets_scale() -> None:
    s = Scrubber([(f"s{i}", f"secret-value-{i:04d}-xyzzy") for i in range(300)])
    text = "lorem ipsum " * 1000 + "secret-value-0299-xyzzy"
    assert s.scrub_text(text).endswith("[REDACTED:s299]")
