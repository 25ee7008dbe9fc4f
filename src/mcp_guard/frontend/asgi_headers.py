"""One request header read off an ASGI scope, without building Starlette's ``Headers`` for it.

Why a helper: the front reads single headers before (or instead of) making a ``Request`` — the authenticator its
``Authorization`` on every request, the ops routes ``Host``, the 2026-07-28 direct path its routing headers — and
each had its own copy of this loop.
"""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["first_header"]


def first_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as ASGI gives names) in ``scope``, decoded as latin-1 (as
    HTTP header bytes are); None when the request has none."""
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
