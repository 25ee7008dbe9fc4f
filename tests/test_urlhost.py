"""urlhost reads hosts the way WHATWG URL parsers do: a corpus of hostile URLs, checked against Node as well."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.urlhost import MAX_URLS, UrlError, parse_url, url_table

CORPUS_PATH = Path(__file__).parent / "fixtures" / "whatwg_url_hosts.json"
CASES: list[dict[str, Any]] = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))["cases"]

NODE_SCRIPT = """
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(cases.map(input => {
  try {
    const u = new URL(input);
    const host = u.hostname === '' && !u.href.includes('//') ? null : u.hostname;
    return {valid: true, scheme: u.protocol.slice(0, -1), host, port: u.port === '' ? null : Number(u.port),
            userinfo: u.username !== '' || u.password !== ''};
  } catch (e) { return {valid: false}; }
})));
"""


def expected(case: dict[str, Any]) -> dict[str, Any]:
    return {k: case[k] for k in ("valid", "scheme", "host", "port", "userinfo") if k in case}


def test_corpus_is_large_and_hostile() -> None:
    assert len(CASES) >= 40
    assert any("\\" in c["input"] for c in CASES) and any("%" in c["input"] for c in CASES)
    assert any(c.get("host") == "169.254.169.254" for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["note"])
def test_parse_url_agrees_with_the_corpus(case: dict[str, Any]) -> None:
    if not case["valid"]:
        with pytest.raises(UrlError):
            parse_url(case["input"])
        return
    parsed = parse_url(case["input"])
    got = {"valid": True, **parsed.to_policy()}
    assert got == expected(case), case["note"]


def test_corpus_agrees_with_node() -> None:
    """The expectations are what Node's WHATWG parser says, not what this module says."""
    node = shutil.which("node")
    assert node is not None, "node (20+) is required for this test"
    inputs = [c["input"] for c in CASES]
    out = subprocess.run(
        [node, "-e", NODE_SCRIPT], input=json.dumps(inputs), capture_output=True, text=True, check=True, timeout=60
    )
    for case, got in zip(CASES, json.loads(out.stdout), strict=True):
        assert got == expected(case), case["note"]


def test_url_table_finds_nested_url_strings_only() -> None:
    table = url_table({"a": ["https://EXAMPLE.com/", {"b": "https:\\\\evil.net"}], "c": "plain text", "d": 3})
    assert table["https://EXAMPLE.com/"]["host"] == "example.com"
    assert table["https:\\\\evil.net"]["host"] == "evil.net"
    assert "plain text" not in table


def test_url_table_records_failures_with_no_host() -> None:
    entry = url_table({"url": "https://256.1.1.1/"})["https://256.1.1.1/"]
    assert entry["host"] is None and entry["error"]


def test_url_table_is_bounded() -> None:
    table = url_table({"u": [f"https://h{i}.example/" for i in range(MAX_URLS + 50)]})
    assert len(table) == MAX_URLS


def test_a_label_the_idna_tables_refuse_is_a_failure_never_another_host() -> None:
    """Node accepts https://xn--ls8h.la/ (an emoji label); the idna package refuses it: a deny, not a guess."""
    with pytest.raises(UrlError):
        parse_url("https://xn--ls8h.la/")
    assert url_table({"url": "https://xn--ls8h.la/"})["https://xn--ls8h.la/"]["host"] is None
