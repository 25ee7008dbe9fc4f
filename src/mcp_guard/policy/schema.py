"""A bundle's ``data.schema.json``: the JSON Schema its (merged) data must satisfy, checked at every load.

Rego reads data by key and a misspelt key is simply undefined: ``allowed_root`` instead of
``allowed_roots`` does not fail, it switches path confinement off. A schema with
``additionalProperties: false`` turns that into a load error. The schema sits at the bundle root,
validates the whole data document (after ``[policy] data_overlay``), and is checked at start, at hot
reload (a violation is a rejected reload: the running bundle stays) and by ``policy check``.

Validation uses the ``jsonschema`` package (draft 2020-12, or the schema's own ``$schema``): it is
already installed as a dependency of the MCP SDK, it is the reference implementation, and writing a
second validator for a security check would be code to get wrong. An error names the file that set
the offending key and the key's path in ``data`` (``data.mcp_guard_config.paths.allowed_root``).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from mcp_guard.errors import PolicyError
from mcp_guard.policy.overlay import provenance

__all__ = ["SCHEMA_FILE", "DataSchemaError", "load_schema", "validate_data"]

SCHEMA_FILE = "data.schema.json"


class DataSchemaError(PolicyError):
    """The bundle's data (with the overlays) violates its ``data.schema.json``, or the schema is invalid."""


_VALIDATORS: OrderedDict[str, Any] = OrderedDict()  # sha256 of a schema's text -> its checked validator
_CACHE_SIZE = 8


def validator_for(path: Path, text: str) -> Any:
    """A validator for the schema ``text``, checked against its meta-schema once per distinct text: the
    meta-schema check costs ~0.1 s of CPU, and the bundle watcher re-reads the bundle every second."""
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()
    cached = _VALIDATORS.get(key)
    if cached is not None:
        _VALIDATORS.move_to_end(key)
        return cached
    schema = load_schema(path, text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema)
    _VALIDATORS[key] = validator
    if len(_VALIDATORS) > _CACHE_SIZE:
        _VALIDATORS.popitem(last=False)
    return validator


def load_schema(path: Path, text: str) -> dict[str, Any]:
    """The parsed, well-formed schema; a :class:`PolicyError` naming the file (and where) otherwise."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataSchemaError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(schema, dict):
        raise DataSchemaError(f"{path}: a JSON Schema must be an object")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise DataSchemaError(f"{path}: not a valid JSON Schema at {where}: {e.message}") from None
    return schema


def _key(path: Sequence[str | int]) -> str:
    out = "data"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error: jsonschema.exceptions.ValidationError) -> tuple[list[str | int], str]:
    """The offending key's path and a short message (an unknown key names the key itself)."""
    path: list[str | int] = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set((error.schema.get("properties") or {}) if isinstance(error.schema, Mapping) else ())
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            known = ", ".join(sorted(allowed)) or "none"
            return [*path, extra[0]], f"unknown key (the schema allows: {known})"
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [k for k in error.validator_value if isinstance(error.instance, Mapping) and k not in error.instance]
        if missing:
            return [*path, missing[0]], "required key missing"
    return path, error.message


def validate_data(
    schema_text: str,
    schema_file: Path,
    data: Mapping[str, Any],
    layers: Sequence[tuple[str, Mapping[str, Any]]],
) -> None:
    """Validate the merged ``data`` against the schema ``schema_text`` (the file ``schema_file``).
    ``layers`` are the documents it was merged from (name, document), the bundle's data first, to say
    which file set the offending key. Raises one line: ``FILE: data.a.b: problem (per SCHEMA)``, for the
    first error in document order."""
    validator = validator_for(schema_file, schema_text)
    errors = sorted(validator.iter_errors(dict(data)), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    path, message = _describe(errors[0])
    source = provenance(path, layers) or str(schema_file)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise DataSchemaError(f"{source}: {_key(path)}: {message} (per {schema_file}){more}")
