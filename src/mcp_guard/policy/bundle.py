"""A policy bundle on disk: the ``.rego`` files and ``data.json`` documents under one directory.

Layout follows ``opa run``/``opa test`` conventions so the same directory works with both engines:

* every ``*.rego`` file below the directory is a policy, except ``*_test.rego`` files, which hold
  unit tests (``test_*`` rules) and are loaded only to run tests;
* every ``data.json`` is mounted at the path of its directory relative to the bundle root
  (``<root>/data.json`` at ``data``, ``<root>/a/b/data.json`` at ``data.a.b``);
* hidden files and directories (``.git``, editor swap files…) are ignored;
* ``data.schema.json`` at the root, when present, is the JSON Schema the data must satisfy
  (:mod:`mcp_guard.policy.schema`), checked after the site's ``[policy] data_overlay`` files are merged
  over the data (:mod:`mcp_guard.policy.overlay`).

The bundle's *revision* is a sha256 over the relative path and bytes of every file it loaded (tests,
schema and overlays included), so any edit changes it and every decision can name the exact policy and
data that made it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mcp_guard.errors import PolicyError
from mcp_guard.policy.overlay import deep_merge, read_overlay
from mcp_guard.policy.schema import SCHEMA_FILE, DataSchemaError, validate_data

__all__ = ["Bundle", "BundleFile", "TestRule", "load_bundle", "rule_ref"]

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$", re.M)
# A test rule head at the start of a line: ``test_x if {``, ``test_x := …``, ``test_x {`` (v0).
_TEST_HEAD = re.compile(r"^(test_[A-Za-z0-9_]*)\b(?=\s*(?:if\b|:=|=|\{|contains\b|$))", re.M)
_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One file of a bundle: its path relative to the bundle root (``/``-separated) and its text."""

    rel: str
    path: Path
    text: str


@dataclass(frozen=True, slots=True)
class TestRule:
    """A ``test_*`` rule: ``data.<package>.<name>``, defined in ``file``."""

    package: str
    name: str
    file: str

    @property
    def ref(self) -> str:
        return f"data.{self.package}.{self.name}"


@dataclass(frozen=True, slots=True)
class Bundle:
    root: Path
    policies: tuple[BundleFile, ...]
    tests: tuple[BundleFile, ...]
    data_files: tuple[BundleFile, ...]
    data: Mapping[str, Any] = field(default_factory=dict)
    revision: str = ""
    overlays: tuple[BundleFile, ...] = ()  # [policy] data_overlay files, in merge order (path: absolute)
    base_data: Mapping[str, Any] | None = None  # the data before the overlays (None: there are none)
    schema: BundleFile | None = None  # data.schema.json, already checked against ``data``

    @property
    def files(self) -> tuple[BundleFile, ...]:
        return self.policies + self.tests + self.data_files

    def without_overlays(self) -> Bundle:
        """The bundle with its own data only: what its tests run on (site values must not fail them)."""
        if self.base_data is None:
            return self
        return replace(self, data=self.base_data, overlays=(), base_data=None)

    def test_rules(self) -> list[TestRule]:
        """Every ``test_*`` rule of the test files, in file order (names are de-duplicated)."""
        seen: set[tuple[str, str]] = set()
        rules: list[TestRule] = []
        for f in self.tests:
            m = _PACKAGE.search(f.text)
            if m is None:
                raise PolicyError(f"{f.path}: no package declaration")
            pkg = m.group(1)
            for name in _TEST_HEAD.findall(f.text):
                if (pkg, name) not in seen:
                    seen.add((pkg, name))
                    rules.append(TestRule(pkg, name, f.rel))
        return rules


def rule_ref(decision_path: str) -> str:
    """``"mcp_guard/decision"`` (the ``[policy] decision`` setting) → ``"data.mcp_guard.decision"``."""
    parts = [p for p in decision_path.replace(".", "/").split("/") if p]
    if parts and parts[0] == "data":
        parts = parts[1:]
    if not parts or not all(_SEGMENT.match(p) for p in parts):
        raise PolicyError(f"policy.decision: {decision_path!r} is not a rule path like 'mcp_guard/decision'")
    return "data." + ".".join(parts)


def _visible(rel_parts: tuple[str, ...]) -> bool:
    return not any(p.startswith(".") for p in rel_parts)


def _read(path: Path, root: Path) -> BundleFile:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot read: {e.strerror}") from None
    return BundleFile(rel=path.relative_to(root).as_posix(), path=path, text=text)


def _mount(data: dict[str, Any], prefix: tuple[str, ...], doc: Any, file: Path) -> None:
    """Merge ``doc`` into ``data`` at ``prefix``; the same key from two files is an error."""
    if not prefix:
        if not isinstance(doc, dict):
            raise PolicyError(f"{file}: a data.json at the bundle root must hold a JSON object")
        for k, v in doc.items():
            _mount(data, (k,), v, file)
        return
    node = data
    for part in prefix[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PolicyError(f"{file}: data path {'.'.join(prefix)} conflicts with another data.json")
        node = child
    last = prefix[-1]
    if last in node:
        if isinstance(node[last], dict) and isinstance(doc, dict):
            for k, v in doc.items():
                _mount(data, (*prefix, k), v, file)
            return
        raise PolicyError(f"{file}: data key {'.'.join(prefix)} is also defined by another data.json")
    node[last] = doc


def load_bundle(root: str | Path, *, overlays: Sequence[str | Path] = ()) -> Bundle:
    """Read a bundle directory, merge ``overlays`` (``[policy] data_overlay``, resolved paths) over its
    data and validate the result against its ``data.schema.json``. Raises :class:`PolicyError` naming
    the file (and key) for unreadable or invalid files (a ``data.json`` that is not JSON, a bundle
    without policies, data the schema rejects). Rego syntax is checked by the engine that compiles it."""
    base = Path(root)
    if not base.is_dir():
        raise PolicyError(f"{base}: policy bundle directory not found")
    policies: list[BundleFile] = []
    tests: list[BundleFile] = []
    data_files: list[BundleFile] = []
    data: dict[str, Any] = {}
    for path in sorted(base.rglob("*")):
        rel_parts = path.relative_to(base).parts
        if not _visible(rel_parts) or not path.is_file():
            continue
        if path.suffix == ".rego":
            f = _read(path, base)
            (tests if path.name.endswith("_test.rego") else policies).append(f)
        elif path.name == "data.json":
            f = _read(path, base)
            try:
                doc = json.loads(f.text)
            except json.JSONDecodeError as e:
                raise PolicyError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
            _mount(data, rel_parts[:-1], doc, path)
            data_files.append(f)
    if not policies:
        raise PolicyError(f"{base}: no .rego policy files in the bundle")
    layers: list[tuple[str, Mapping[str, Any]]] = [(_data_name(base, data_files), data)]
    merged: dict[str, Any] = data
    over_files: list[BundleFile] = []
    for p in overlays:
        path = Path(p)
        text, doc = read_overlay(path)
        over_files.append(BundleFile(rel=f"overlay:{len(over_files)}:{path.name}", path=path, text=text))
        layers.append((str(path), doc))
        merged = deep_merge(merged, doc)
    schema = _schema_file(base)
    h = hashlib.sha256()
    signed = sorted(policies + tests + data_files + ([schema] if schema else []), key=lambda f: f.rel)
    for f in signed + over_files:
        raw = f.text.encode("utf-8")
        h.update(f"{f.rel}\0{len(raw)}\0".encode())
        h.update(raw)
    if schema is not None:  # the paths too: an error message names the files
        where = "\0".join([str(base), *(str(f.path) for f in over_files)])
        _check_data(f"{h.hexdigest()}\0{where}", schema, merged, layers)
    return Bundle(
        root=base,
        policies=tuple(policies),
        tests=tuple(tests),
        data_files=tuple(data_files),
        data=merged,
        revision=h.hexdigest(),
        overlays=tuple(over_files),
        base_data=data if over_files else None,
        schema=schema,
    )


_VERDICTS: OrderedDict[str, str | None] = OrderedDict()  # revision + paths -> schema error (None: valid)
_VERDICTS_SIZE = 16


def _check_data(
    key: str, schema: BundleFile, data: Mapping[str, Any], layers: list[tuple[str, Mapping[str, Any]]]
) -> None:
    """Validate once per revision (which covers schema, data and overlays) and place: the watcher
    re-reads an unchanged — or unchanged and still invalid — bundle every second."""
    if key not in _VERDICTS:
        try:
            validate_data(schema.text, schema.path, data, layers)
            _VERDICTS[key] = None
        except DataSchemaError as e:
            _VERDICTS[key] = str(e)
        if len(_VERDICTS) > _VERDICTS_SIZE:
            _VERDICTS.popitem(last=False)
    else:
        _VERDICTS.move_to_end(key)
    error = _VERDICTS[key]
    if error is not None:
        raise DataSchemaError(error)


def _data_name(base: Path, data_files: list[BundleFile]) -> str:
    """How a schema error names the bundle's own data: its data.json, or the bundle when there are several."""
    return str(data_files[0].path) if len(data_files) == 1 else f"{base} (data.json)"


def _schema_file(base: Path) -> BundleFile | None:
    path = base / SCHEMA_FILE
    return _read(path, base) if path.is_file() else None
