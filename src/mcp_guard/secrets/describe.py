"""mcp-guard's own words for what was wrong with input it could not parse — never the input itself.

Parsers quote what they reject: pydantic's errors carry ``input_value=…`` (the head and the tail of the
offending text, where an injected token sits as often as not), ``json`` errors carry the document. An
upstream's invalid answer must not reach the agent, the audit trail or stderr through such a text, so
:func:`describe_invalid` says *what kind* of problem there was and *where* (error types, schema
locations), bounded in length, and drops every value.
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

__all__ = ["MAX_DESCRIPTION", "describe_invalid", "is_parse_error"]

MAX_DESCRIPTION = 300
_MAX_ERRORS = 3
# A location part we repeat: a list index or a name shaped like a schema's field or model name (letters,
# no digits, short). A dict key the input chose may be anything at all, a token included: anything else
# is shown as "…". (Whatever is shown still passes the secrets scrubber on its way out.)
_SAFE_PART = re.compile(r"[A-Za-z_][A-Za-z_-]{0,31}")


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) if isinstance(p, int) or _SAFE_PART.fullmatch(p) else "…" for p in loc]
    return ".".join(parts) or "(root)"


def is_parse_error(error: BaseException) -> bool:
    """Whether ``error`` is a parser's complaint about input (and so may quote it)."""
    return isinstance(error, ValidationError | json.JSONDecodeError | UnicodeDecodeError)


def describe_invalid(error: BaseException) -> str:
    """A bounded description of a parse or validation ``error`` that quotes nothing of the input."""
    if isinstance(error, ValidationError):
        errors = error.errors(include_url=False, include_input=False, include_context=False)
        shown = "; ".join(f"{_location(e['loc'])}: {e['type']}" for e in errors[:_MAX_ERRORS])
        more = f" (and {len(errors) - _MAX_ERRORS} more)" if len(errors) > _MAX_ERRORS else ""
        text = f"{len(errors)} validation error(s): {shown}{more}"
    elif isinstance(error, json.JSONDecodeError):
        text = f"invalid JSON at line {error.lineno} column {error.colno}"
    elif isinstance(error, UnicodeDecodeError):
        text = f"invalid {error.encoding} at byte {error.start}"
    else:
        text = f"{type(error).__name__} (details withheld: they may quote the input)"
    return text[:MAX_DESCRIPTION]
