"""Scrubber: every encoding of an injected value, split across blocks, nested MCP shapes."""

from __future__ import annotations

import base64
import json
import random
import string
from typing import Any
from urllib.parse import quote, quote_plus

import mcp_types as types
import pytest
from pydantic import SecretStr
from secret_checks import assert_no_secret, secret_spellings

from mcp_guard.secrets.forms import base64_cores, encoded_forms
from mcp_guard.secrets.matcher import MISS_BUDGET, Finder, compile_literals
from mcp_guard.secrets.redact import (
    ANCHOR_LENGTH,
    DEFAULT_MIN_FRAGMENT,
    MIN_FRAGMENT_FLOOR,
    MIN_SECRET_LENGTH,
    Scrubber,
    anchor_offsets,
    marker,
)

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
    # 7 characters: shorter than a fragment worth scrubbing (DEFAULT_MIN_FRAGMENT), so only a join would match.
    result = _text_blocks("sk-live", "nothing")
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


# ---------------------------------------------------------------------------------------------------- fragments
def test_a_truncated_secret_is_scrubbed_from_either_end(scrubber: Scrubber) -> None:
    for piece in (SIMPLE[:DEFAULT_MIN_FRAGMENT], SIMPLE[-12:], SIMPLE[3 : 3 + DEFAULT_MIN_FRAGMENT], SIMPLE[:-1]):
        out = scrubber.scrub_text(f"error near {piece!r}, giving up")
        assert piece not in out and out == f"error near '{marker('simple')}', giving up", piece


def test_runs_shorter_than_the_fragment_length_stay() -> None:
    s = Scrubber([("simple", SIMPLE)])
    short = SIMPLE[5 : 5 + DEFAULT_MIN_FRAGMENT - 1]
    assert s.scrub_text(f"x {short} y") == f"x {short} y"


def test_the_sdk_parse_error_text_loses_the_secret_tail() -> None:
    """The SDK quotes invalid input through pydantic, which keeps the head and the tail of the line."""
    s = Scrubber([("token", "tk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0")])
    text = (
        "Failed to parse JSON response: 1 validation error for JSONRPCMessage\n  Invalid JSON: EOF "
        '[type=json_invalid, input_value=\'{"jsonrpc":"2.0","id":1,...7d6c5b4a39281706f5e4d3c2b1a0\', '
        "input_type=str]"
    )
    out = s.scrub_text(text)
    assert "39281706f5e4d3c2b1a0" not in out and marker("token") in out
    assert out.startswith("Failed to parse JSON response: 1 validation error")


def test_fragments_of_the_json_spelling_and_in_bytes_and_blobs() -> None:
    value = 'pa"ss\\word-0123456789'
    s = Scrubber([("pw", value)])
    escaped = json.dumps(value)[1:-1]
    assert s.scrub_text(f"<{escaped[2:14]}>") == f"<{marker('pw')}>"
    assert s.scrub_bytes(b"..." + value[4:].encode() + b"...") == b"..." + marker("pw").encode() + b"..."
    blob = base64.b64encode(b"header:" + value[6:].encode()).decode()
    out = s.scrub_obj({"data": blob})
    assert value[6:].encode() not in base64.b64decode(out["data"])


def test_a_fragment_split_across_blocks_is_caught(scrubber: Scrubber) -> None:
    tail = SIMPLE[-12:]
    out = scrubber.scrub_obj(_text_blocks("... " + tail[:5], tail[5:] + " ..."))
    assert [c["text"] for c in out["content"]] == [f"... {marker('simple')}", " ..."]


def test_fragments_can_be_turned_off_and_are_never_shorter_than_the_floor() -> None:
    s = Scrubber([("simple", SIMPLE)], min_fragment=0)
    assert s.scrub_text(SIMPLE[-12:]) == SIMPLE[-12:]
    assert s.scrub_text(SIMPLE) == marker("simple")
    with pytest.raises(ValueError, match="at least"):
        Scrubber([("simple", SIMPLE)], min_fragment=MIN_FRAGMENT_FLOOR - 1)


@pytest.mark.parametrize("min_fragment", [MIN_FRAGMENT_FLOOR, DEFAULT_MIN_FRAGMENT, 12])
def test_every_long_enough_run_of_random_secrets_is_found(min_fragment: int) -> None:
    """Property, over random values and texts (fixed seed): any run of ``min_fragment`` characters or more of
    a value, anywhere in a text, is gone; and the full value in any listed encoding still is."""
    rng = random.Random(20)
    alphabet = string.ascii_letters + string.digits + "-_.~+/="
    for _ in range(60):
        values = ["".join(rng.choices(alphabet, k=rng.randint(min_fragment + 1, 64))) for _ in range(3)]
        s = Scrubber([(f"s{i}", v) for i, v in enumerate(values)], min_fragment=min_fragment)
        value = rng.choice(values)
        length = rng.randint(min_fragment, len(value))
        start = rng.randint(0, len(value) - length)
        run = value[start : start + length]
        noise = "".join(rng.choices(string.printable, k=200))
        cut = rng.randint(0, len(noise))
        out = s.scrub_text(noise[:cut] + run + noise[cut:])
        assert run not in out, (values, run)
        assert "[REDACTED:s" in out


def test_anchors_cover_every_window() -> None:
    rng = random.Random(7)
    for _ in range(200):
        value = "".join(rng.choices(string.ascii_lowercase + "-", k=rng.randint(9, 50)))
        offsets = anchor_offsets(value, DEFAULT_MIN_FRAGMENT, set())
        for w in range(len(value) - DEFAULT_MIN_FRAGMENT + 1):
            assert any(w <= p <= w + DEFAULT_MIN_FRAGMENT - ANCHOR_LENGTH for p in offsets), (value, w)


def test_a_text_made_of_anchors_costs_bounded_python_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream that knows the value could flood a result with its short anchors; past a budget of misses
    only whole forms are looked for, and whole values in the rest of the text are still scrubbed."""
    s = Scrubber([("simple", SIMPLE)])
    anchors = {SIMPLE[p : p + ANCHOR_LENGTH] for p in anchor_offsets(SIMPLE, DEFAULT_MIN_FRAGMENT, set())}
    flood = " ".join(sorted(anchors)) + " "
    text = flood * 20_000 + SIMPLE + flood
    looked_at: list[int] = []
    real = Finder._candidates

    def counting(self: Finder[str], text: str, start: int, *rest: Any) -> None:
        looked_at.append(start)
        real(self, text, start, *rest)

    monkeypatch.setattr(Finder, "_candidates", counting)
    out = s.scrub_text(text)
    assert out.count(marker("simple")) == 1 and SIMPLE not in out
    assert len(set(looked_at)) < MISS_BUDGET + len(text) // 256 + 50
    assert len(text) // ANCHOR_LENGTH > 10 * (MISS_BUDGET + len(text) // 256), "the flood is far over budget"


def test_a_word_of_a_passphrase_is_not_a_fragment_until_it_is_long() -> None:
    s = Scrubber([("pass", "other-upstream-secret-77")])
    assert s.scrub_text("the upstream said no") == "the upstream said no"
    assert s.scrub_text("Upstream or UPSTREAM") == "Upstream or UPSTREAM"
    assert s.scrub_text("see other-upstream") == f"see {marker('pass')}"
    assert s.scrub_text("x stream-secret y") == f"x {marker('pass')} y"
    s = Scrubber([("pass", "correcthorsebatterystaple")])
    assert s.scrub_text("battery staple") == "battery staple"
    assert s.scrub_text("...horsebatterystap") == f"...{marker('pass')}", "16 letters and more are a fragment"
