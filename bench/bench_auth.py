"""Authentication benchmark: what checking a request's credentials costs the HTTP front (mcp_guard.frontend.auth).

    python bench/bench_auth.py             # the full run (a few seconds)
    python bench/bench_auth.py --n 200     # a smoke run

Scenarios, each awaited from the event loop as the front does, with the issuer's keys already cached (the
common case: no network on the request path):

* ``jwt RS256`` / ``jwt PS256`` / ``jwt ES256`` / ``jwt EdDSA``: the first check of a valid access token
  (header, key lookup, signature, claims, principal);
* ``jwt remembered``: ``JwtVerifier.verify`` of a token it verified before (every later request of a session);
* ``jwt refused (expired)``: a token refused after its signature verified (the costliest refusal);
* ``jwt refused (alg none)``: refused before any key is looked at;
* ``BearerAuth RS256``: the whole ``authenticate`` of an ``Authorization`` header with a remembered token —
  API-key digest comparison first (10 configured keys), then the JWT form check and ``verify``;
* ``API key``: ``authenticate`` of an API key (sha256 and 10 constant-time comparisons).

Prints µs per call (median and p99) and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import hashlib
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mcp_guard.frontend.auth import BearerAuth
from mcp_guard.frontend.oauth import ResourceServer
from mcp_guard.types import Principal
from oauth_harness import Clock, FakeIdP, auth_settings, ec_key, ed_key, public_jwk, unsigned

RESULTS = Path(__file__).resolve().parent / "results"


async def _time(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    for _ in range(min(50, n)):  # warm: keys fetched, PyJWK objects built
        await fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


async def run(n: int) -> dict[str, list[float]]:
    idp = FakeIdP()
    idp.keys.append(public_jwk(ed_key(), "ed-1"))
    rs = ResourceServer(auth_settings(), transport=idp.transport, clock=Clock())
    v = rs.verifier
    tokens = {
        "jwt RS256": idp.token(),
        "jwt PS256": idp.token(alg="PS256"),
        "jwt ES256": idp.token(key=ec_key(), alg="ES256", kid="ec-1"),
        "jwt EdDSA": idp.token(key=ed_key(), alg="EdDSA", kid="ed-1"),
    }
    results: dict[str, list[float]] = {}
    for name, token in tokens.items():
        assert isinstance(await v.verify(token), Principal), name
        # A token seen for the first time: the whole check (the verifier's memory of verified tokens bypassed).
        results[name] = await _time(lambda t=token: v._verify(t), n)  # type: ignore[misc]
    token = tokens["jwt RS256"]
    results["jwt remembered"] = await _time(lambda: v.verify(token), n)  # the same token again (a session)
    expired = idp.token(exp=1)
    results["jwt refused (expired)"] = await _time(lambda: v.verify(expired), n)
    none = unsigned({"alg": "none"}, {"sub": "x"})
    results["jwt refused (alg none)"] = await _time(lambda: v.verify(none), n)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    keys = {f"p{i}": hashlib.sha256(f"key-{i}".encode()).hexdigest() for i in range(10)}
    guard = BearerAuth(app, keys, on_reject=lambda r, c: None, oauth=rs)
    header = "Bearer " + tokens["jwt RS256"]
    assert isinstance(await guard.authenticate(header), Principal)
    results["BearerAuth RS256"] = await _time(lambda: guard.authenticate(header), n)
    results["API key"] = await _time(lambda: guard.authenticate("Bearer key-7"), n)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    results = anyio.run(run, args.n)
    print(f"{'scenario':28} {'median µs':>10} {'p99 µs':>10}")
    summary = {}
    for name, xs in results.items():
        xs.sort()
        med, p99 = statistics.median(xs), xs[int(len(xs) * 0.99) - 1]
        summary[name] = {"median_us": round(med, 1), "p99_us": round(p99, 1), "n": len(xs)}
        print(f"{name:28} {med:10.1f} {p99:10.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"auth-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"python": platform.python_version(), "results": summary}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
