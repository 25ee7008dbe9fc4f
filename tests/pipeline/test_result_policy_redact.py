"""The ``redact`` obligation of a result decision: RFC 6901 pointers, the pattern rules that bound regex cost,
and what a redaction touches (text, embedded resources, structuredContent) and leaves alone."""

from __future__ import annotations

import pytest

from mcp_guard.pipeline.result_redact import (
    MARKER,
    MAX_PATTERNS,
    MAX_POINTERS,
    RedactSpec,
    parse_pointer,
    parse_redact,
    redact_result,
    risky_pattern,
)


def spec(**value: object) -> RedactSpec:
    parsed = parse_redact(dict(value))
    assert isinstance(parsed, RedactSpec), parsed
    return parsed


def test_pointers_follow_rfc_6901_below_structured_content() -> None:
    assert parse_pointer("/structuredContent/a~1b/m~0n/0") == ("a/b", "m~n", "0")
    assert "starts with '/'" in str(parse_pointer("structuredContent/a"))
    assert "~0 and ~1" in str(parse_pointer("/structuredContent/a~2"))
    assert "inside the result's structuredContent" in str(parse_pointer("/structuredContent"))
    assert "inside the result's structuredContent" in str(parse_pointer("/content/0/text"))


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+$", r"(\w*x)*", r"(a|b+)*", r"(?:x+y?)+", r"(a{2,})*", r"(.*a){3,}", r"(a)\1", r"(?P<x>a)(?P=x)"],
)
def test_patterns_that_can_backtrack_catastrophically_are_refused(pattern: str) -> None:
    assert risky_pattern(pattern) is not None


@pytest.mark.parametrize(
    "pattern",
    [
        r"[0-9]{13,19}",
        r"\b(?:[0-9][ -]?){12,18}[0-9]\b",
        r"[\w.+-]+@[\w-]+\.[\w.]+",
        r"(ab|cd)+",
        r"[(+]+x",
        r"\(a+\)+",
    ],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    assert risky_pattern(pattern) is None
    assert spec(patterns=[pattern]).patterns[0].pattern == pattern


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"patterns": ["a?"]}, "matches the empty string"),
        ({"patterns": ["["]}, "not a valid regular expression"),
        ({"patterns": [1]}, "list of strings"),
        ({"pointers": "/structuredContent/a"}, "list of strings"),
        ({"patterns": ["x"] * (MAX_PATTERNS + 1)}, f"at most {MAX_PATTERNS}"),
        ({"pointers": ["/structuredContent/a"] * (MAX_POINTERS + 1)}, f"at most {MAX_POINTERS}"),
    ],
)
def test_malformed_redact_values_say_what_is_wrong(value: dict[str, object], says: str) -> None:
    problem = parse_redact(value)
    assert isinstance(problem, str) and says in problem, problem


def test_an_empty_redact_is_valid_and_does_nothing() -> None:
    empty = spec()
    assert not empty
    result = {"content": [{"type": "text", "text": "4111111111111111"}]}
    assert redact_result(result, empty).result == result


def test_patterns_reach_text_embedded_resources_and_structured_strings_but_not_keys_or_binary() -> None:
    result = {
        "content": [
            {"type": "text", "text": "mail ann@example.com"},
            {"type": "resource", "resource": {"uri": "mailto:ann@example.com", "text": "ann@example.com"}},
            {"type": "image", "data": "ann@example.com", "mimeType": "image/png"},
        ],
        "structuredContent": {"ann@example.com": ["ann@example.com", 7]},
        "_meta": {"who": "ann@example.com"},
    }
    done = redact_result(result, spec(patterns=[r"[\w.+-]+@[\w-]+\.[\w.]+"]))
    out = done.result
    assert out["content"][0]["text"] == f"mail {MARKER}"
    assert out["content"][1]["resource"] == {"uri": "mailto:ann@example.com", "text": MARKER}
    assert out["content"][2]["data"] == "ann@example.com"
    assert out["structuredContent"] == {"ann@example.com": [MARKER, 7]}
    assert out["_meta"] == {"who": "ann@example.com"}
    assert done.patterns == 3
    assert result["content"][0]["text"] == "mail ann@example.com", "the original is not changed"


def test_short_pointer_values_are_not_mirrored_into_the_text() -> None:
    text = '{"pin": 42, "code": "A-77"}'
    result = {"content": [{"type": "text", "text": text}], "structuredContent": {"pin": 42, "code": "A-77"}}
    done = redact_result(result, spec(pointers=["/structuredContent/pin", "/structuredContent/code"]))
    assert done.result["structuredContent"] == {"pin": MARKER, "code": MARKER}
    assert done.result["content"][0]["text"] == f'{{"pin": 42, "code": "{MARKER}"}}'
    assert (done.pointers, done.mirrors) == (2, 1)


def test_a_pointer_to_a_container_mirrors_its_leaves_and_array_indexes_are_strict() -> None:
    result = {
        "content": [{"type": "text", "text": "Ann Example lives at 1 Main Street"}],
        "structuredContent": {"people": [{"name": "Ann Example", "address": "1 Main Street"}, {"name": "Bo"}]},
    }
    done = redact_result(result, spec(pointers=["/structuredContent/people/0", "/structuredContent/people/01"]))
    assert done.result["structuredContent"]["people"] == [MARKER, {"name": "Bo"}]
    assert done.result["content"][0]["text"] == f"{MARKER} lives at {MARKER}"
    assert done.pointers == 1
