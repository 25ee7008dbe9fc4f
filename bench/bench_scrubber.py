"""Micro-benchmark of the secrets scrubber alone: what one call's worth of scrubbing costs.

    python bench/bench_scrubber.py                     # fragments on (the default) vs off, µs per operation
    git show main:src/mcp_guard/secrets/redact.py > /tmp/base_redact.py
    python bench/bench_scrubber.py --baseline /tmp/base_redact.py   # and a redact.py of another commit
    python bench/bench_scrubber.py --json

Not part of ``python -m bench``: it runs in a few seconds and is meant for before/after comparisons of a
change to :mod:`mcp_guard.secrets` (the variants run interleaved, best of several rounds, so machine
noise hits every column alike; still, run it twice on a quiet machine).

The common path is text that holds no secret while secrets are configured: a typical tool result, prose,
JSON and base64 texts, a log event. "hit" rows put a full secret, or a 12-character fragment of one, into
the text.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import random
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mcp_guard.secrets.redact import Scrubber

SECRETS = [
    ("tickets_token", "tk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("github", "ghp_Zq4Xk9Lm2Np8Rt6Vw3Yb7Cd1Fg5Hj0Ks"),
    ("db_password", "correct-horse-battery-staple-42"),
]

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "the",
    "ticket",
    "4711",
    "stays",
    "open",
    "for",
    "review",
]


def _prose(n_chars: int) -> str:
    out: list[str] = []
    size = 0
    i = 0
    while size < n_chars:
        w = _WORDS[i % len(_WORDS)] + (str(i) if i % 7 == 0 else "")
        out.append(w)
        size += len(w) + 1
        i += 1
    return " ".join(out)[:n_chars]


def _result(text: str) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": text}, {"type": "text", "text": "second block " + text[:200]}],
        "structuredContent": {"id": 4711, "title": text[:80], "tags": ["a", "b"], "open": True},
        "isError": False,
    }


def cases() -> dict[str, tuple[str, Any]]:
    leak = SECRETS[0][1]
    rng = random.Random(3)
    rows = [
        {"id": i, "title": f"ticket {i} about printers", "status": "open", "owner": f"u{i}@example.com"}
        for i in range(900)
    ]
    return {
        "text 1 KiB, no secret": ("text", _prose(1024)),
        "text 64 KiB, no secret": ("text", _prose(64 * 1024)),
        "JSON 64 KiB, no secret": ("text", json.dumps(rows)[: 64 * 1024]),
        "base64 64 KiB, no secret": ("text", base64.b64encode(rng.randbytes(48 * 1024)).decode()),
        "tool result ~1 KiB, no secret": ("obj", _result(_prose(1024))),
        "log event dict, no secret": (
            "obj",
            {"event": "upstream.stderr", "upstream": "tickets", "line": _prose(200), "level": "info"},
        ),
        "text 1 KiB, one full secret": ("text", _prose(500) + leak + _prose(500)),
        "text 1 KiB, one 12-char fragment": ("text", _prose(500) + leak[-12:] + _prose(500)),
    }


def _load(path: str) -> Any:
    """The ``Scrubber`` class of a redact.py from another commit (it must import from ``mcp_guard.secrets``)."""
    spec = importlib.util.spec_from_file_location("baseline_redact", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Scrubber


def run(baseline: str | None = None, rounds: int = 6) -> dict[str, dict[str, float]]:
    """``{case: {variant: µs}}``, best over ``rounds`` interleaved rounds."""
    variants: dict[str, Any] = {"fragments on": Scrubber(SECRETS), "fragments off": Scrubber(SECRETS, min_fragment=0)}
    if baseline:
        variants = {"baseline": _load(baseline)(SECRETS), **variants}
    table = cases()
    best: dict[str, dict[str, float]] = {label: {} for label in table}
    for _ in range(rounds):
        for label, (kind, value) in table.items():
            for name, scrubber in variants.items():
                fn: Callable[[Any], Any] = scrubber.scrub_text if kind == "text" else scrubber.scrub_obj
                number = max(1, 20_000 // max(1, len(str(value)) // 100))
                us = min(timeit.repeat(partial(fn, value), number=number, repeat=3)) / number * 1e6
                best[label][name] = min(best[label].get(name, us), us)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a redact.py to compare with (e.g. from main)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.baseline, args.rounds)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    names = list(next(iter(results.values())))
    width = max(map(len, results))
    print(f"{'µs per operation':<{width}}  " + "  ".join(f"{n:>14}" for n in names))
    for label, row in results.items():
        print(f"{label:<{width}}  " + "  ".join(f"{row[n]:14.2f}" for n in names))


if __name__ == "__main__":
    main()
