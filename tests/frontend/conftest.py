"""``http_parser``: run a test once per request parser the HTTP front can be served on (httptools, h11).

``direct_runs``: run a test once with a 2025-11-25 session's ``tools/call`` run in its POST's own task
(frontend/direct_call.py) and once through the SDK's dispatcher (``sdk``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from http_harness import counted_direct_runs, sdk_dispatch_only
from mcp_guard.frontend import http
from mcp_guard.frontend.httptools_protocol import guarded_httptools
from mcp_guard.frontend.slowloris import HeadLimits, guarded_h11

PARSERS: dict[str, Callable[[HeadLimits], type[asyncio.Protocol]]] = {
    "httptools": lambda limits: guarded_httptools(limits, http.MAX_HEAD_BYTES),
    "h11": guarded_h11,
}


@pytest.fixture(params=sorted(PARSERS))
def http_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The front's parser for this test (the one place it is chosen, ``http.http_protocol``, answers it)."""
    name: str = request.param
    built: list[type[asyncio.Protocol]] = []

    def chosen(limits: HeadLimits) -> type[asyncio.Protocol]:
        built.append(PARSERS[name](limits))
        return built[-1]

    monkeypatch.setattr(http, "http_protocol", chosen)
    yield name
    assert built, "the front was not served through http.http_protocol"


@pytest.fixture(params=["direct", "sdk"])
def direct_runs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[str] | None:
    """The methods run directly in this test (None: the direct path is off for it)."""
    if request.param == "sdk":
        sdk_dispatch_only(monkeypatch)
        return None
    return counted_direct_runs(monkeypatch)
