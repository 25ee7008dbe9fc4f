"""What token exchange costs mcp-guard per call (the IdP's own time excluded).

    python bench/bench_token_exchange.py            # the full run
    python bench/bench_token_exchange.py --n 2000   # a smoke run

In-process, one event loop; the IdP's token endpoint is an ``httpx2.MockTransport`` answering at once, so
the figures are mcp-guard's own work. Variants, each timed in blocks (the median block is reported):

* ``pass_through``: the ``ExchangeToken`` stage for an upstream without ``token_exchange`` (every other call).
* ``cached``: a call whose exchanged token is cached (the usual case: one exchange per user, scopes and
  token lifetime).
* ``exchange``: a cache miss — the form, Basic auth, one HTTP round trip through httpx2 to the in-memory
  IdP, parsing and checking the answer.

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.exchange import ExchangeToken
from mcp_guard.settings import TokenExchangeSettings
from mcp_guard.types import AuthInfo, Decision, Principal, SessionInfo, SubjectToken
from mcp_guard.upstream.token_exchange import TokenExchanger

RESULTS = Path(__file__).resolve().parent / "results"
BLOCKS = 7


class _Holder:
    def __init__(self, exchangers: dict[str, TokenExchanger]) -> None:
        self.exchangers = exchangers


async def _idp(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        200, json={"access_token": "x" * 900, "token_type": "Bearer", "expires_in": 300, "scope": "r:read"}
    )


def _exchanger(cache_size: int) -> TokenExchanger:
    async def secret() -> str:
        return "gateway-secret-value"

    settings = TokenExchangeSettings(
        token_url="https://idp.example/token",
        client_id="gw",
        client_secret="gw",
        audience="https://up",
        scopes=["r:read"],
    )
    return TokenExchanger(
        "rep", settings, issuer=None, client_secret=secret, transport=httpx2.MockTransport(_idp), cache_size=cache_size
    )


def _ctx(server: str, subject: str) -> CallContext:
    return CallContext(
        action="tools/call",
        principal=Principal("alice", auth=AuthInfo(method="jwt", subject_token=SubjectToken(subject))),
        session=SessionInfo("s", "memory"),
        server=server,
        target="read",
        exposed=f"{server}__read",
        arguments={},
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="read", arguments={})),
        decision=Decision(allow=True, revision="r"),
    )


async def _terminal(ctx: CallContext) -> Outcome:
    return Outcome(result={})


async def _time(n: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """Median over blocks of the mean µs per call."""
    blocks = []
    for b in range(BLOCKS):
        start = time.perf_counter()
        for i in range(n):
            await one(b * n + i)
        blocks.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(blocks)


async def run(n: int) -> dict[str, float]:
    cached_stage = ExchangeToken(_Holder({"rep": _exchanger(4096)}))
    miss_stage = ExchangeToken(_Holder({"rep": _exchanger(1)}))
    plain = _ctx("tickets", "eyJ.subject.token")
    same = _ctx("rep", "eyJ.subject.token")
    distinct = [_ctx("rep", f"eyJ.subject.{i}") for i in range(n * BLOCKS)]  # a new subject each call: a miss
    return {
        "pass_through_us": await _time(n, lambda i: cached_stage(plain, _terminal)),
        "cached_us": await _time(n, lambda i: cached_stage(same, _terminal)),
        "exchange_us": await _time(max(n // 10, 1), lambda i: miss_stage(distinct[i], _terminal)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    figures = anyio.run(run, args.n)
    for name, value in figures.items():
        print(f"{name:>18}  {value:9.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"token_exchange_{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"n": args.n, "python": platform.python_version(), **figures}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
