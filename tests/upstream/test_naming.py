"""Exposed names are injective: two (upstream, name) pairs never share one, and each reads back as itself.

Property-style, over random upstream names, separators and tool names (plain ``random``, fixed seed).
"""

from __future__ import annotations

import random
import string

import pytest

from mcp_guard.errors import ConfigError
from mcp_guard.settings import parse_settings
from mcp_guard.upstream.naming import Namer

NAME_CHARS = string.ascii_lowercase[:3] + string.digits[:2] + "_-"  # few characters: collisions are likely
SEPARATORS = ["__", "_", "-", "--", "_-", "-_", ".", "/", "a", "ab", "aba", "_a_", "__x"]


def _upstream_name(rng: random.Random) -> str:
    return rng.choice(string.ascii_lowercase[:3]) + "".join(rng.choices(NAME_CHARS, k=rng.randint(0, 5)))


def _tool_name(rng: random.Random, sep: str) -> str:
    return "".join(rng.choices(NAME_CHARS + sep, k=rng.randint(1, 6)))


@pytest.mark.parametrize("sep", SEPARATORS)
def test_accepted_upstream_names_expose_injectively(sep: str) -> None:
    rng = random.Random(f"naming-{sep}")
    namer = Namer(sep)
    accepted = sorted({u for u in (_upstream_name(rng) for _ in range(300)) if namer.ambiguity(u) is None})
    assert len(accepted) > 10
    seen: dict[str, tuple[str, str]] = {}
    for upstream in accepted:
        for _ in range(60):
            name = _tool_name(rng, sep)
            exposed = namer.expose(upstream, name)
            assert namer.split(exposed) == (upstream, name)
            assert seen.setdefault(exposed, (upstream, name)) == (upstream, name), f"{exposed!r} collides"


@pytest.mark.parametrize("sep", SEPARATORS)
def test_every_refused_upstream_name_really_is_ambiguous(sep: str) -> None:
    rng = random.Random(f"refused-{sep}")
    namer = Namer(sep)
    refused = {u for u in (_upstream_name(rng) for _ in range(300)) if namer.ambiguity(u) is not None}
    for upstream in refused:
        ambiguity = namer.ambiguity(upstream)
        assert ambiguity is not None
        exposed, other, name = ambiguity
        assert exposed == namer.expose(upstream, "echo") == namer.expose(other, name) and other != upstream


def test_the_shadowing_pair_from_the_issue_is_refused_naming_both_upstreams() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings({"upstreams": {"a": {"command": "x"}, "a_": {"command": "y"}}}, source="cfg.toml")
    message = str(raised.value)
    assert message.startswith("cfg.toml: upstreams.a_: with the tool separator '__'")
    assert "'a___echo', which reads as upstream 'a''s tool '_echo'; upstream 'a' is configured too" in message


@pytest.mark.parametrize(
    ("names", "sep", "ok"),
    [
        (["a", "a_"], "__", False),
        (["a__b"], "__", False),
        (["a_"], "__", False),  # refused on its own: the name alone reads as 'a'
        (["a-", "a"], "__", True),
        (["a_", "a"], "-", True),
        (["xa"], "ab", True),  # ends with the separator's start, which does not continue itself
        (["ba"], "aa", False),
    ],
)
def test_config_validation(names: list[str], sep: str, ok: bool) -> None:
    data = {"server": {"tool_separator": sep}, "upstreams": {n: {"command": "x"} for n in names}}
    if ok:
        parse_settings(data)
    else:
        with pytest.raises(ConfigError, match="ambiguous"):
            parse_settings(data)
