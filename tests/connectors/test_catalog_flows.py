"""The catalogue labels its tools for the information-flow rules, and the default bundle ships those labels.

Each catalogue entry says in its Policy notes how its tools count for flows (flows.rego): a
``"flows": {...}`` snippet (labels, egress sinks) or a sentence saying why none is needed. Every snippet
rule is in the default bundle's data.json, and names only tools the entry documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from connector_harness import REPO

CATALOG = REPO / "connectors" / "catalog"
FILES = sorted(CATALOG.glob("*.toml"))
DATA = json.loads((REPO / "policies" / "rego" / "data.json").read_text())["mcp_guard_config"]["flows"]


def flows_snippet(path: Path) -> dict[str, Any] | None:
    """The ``"flows": {...}`` snippet in the entry's comments, parsed; None when it has none."""
    comments = [line.lstrip()[1:].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    start = next((i for i, c in enumerate(comments) if c.startswith('"flows":')), None)
    if start is None:
        return None
    body: list[str] = []
    for c in comments[start:]:
        if not c or c.startswith("- "):
            break
        body.append(c)
    doc: dict[str, Any] = json.loads("{" + " ".join(body) + "}")["flows"]
    return doc


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_entry_says_how_its_tools_count_for_flows(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^#   - flows \(flows\.rego\): ", text, re.M), "a '- flows (flows.rego): …' Policy note"


SNIPPETS = [p for p in FILES if flows_snippet(p) is not None]  # the rest say why they have none (test above)


def test_most_entries_carry_a_snippet() -> None:
    assert len(SNIPPETS) >= len(FILES) - 2, [p.stem for p in FILES if p not in SNIPPETS]


@pytest.mark.parametrize("path", SNIPPETS, ids=[p.stem for p in SNIPPETS])
def test_the_snippet_is_what_the_default_bundle_ships(path: Path) -> None:
    snippet = flows_snippet(path)
    assert snippet is not None
    assert set(snippet) <= {"labels", "egress"}
    text = path.read_text(encoding="utf-8").split("Policy (default bundle", 1)[0]
    for kind, rules in snippet.items():
        for rule in rules:
            assert rule in DATA[kind], f"{path.stem}: {rule} is not in data.json flows.{kind}"
            assert rule["server"] == path.stem
            for tool in rule.get("tools", []):
                pattern = re.escape(tool).replace(r"\*", r"[\w-]*")
                assert re.search(rf"(?<![\w-]){pattern}(?![\w-])", text), f"{tool!r} names no documented tool"


def test_the_first_party_connectors_are_labelled() -> None:
    """tickets and warehouse hold company data: both must label their reads private."""
    for name in ("tickets", "warehouse"):
        snippet = flows_snippet(CATALOG / f"{name}.toml")
        assert snippet is not None and any("private" in r["labels"] for r in snippet["labels"])
