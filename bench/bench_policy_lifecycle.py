"""What the policy life cycle costs: keeping the policy input on decision rows, shadow evaluation, signature
checks, replay throughput.

    python bench/bench_policy_lifecycle.py            # about 20 s
    python bench/bench_policy_lifecycle.py --n 500    # a smoke run

In-process, no I/O, the shipped default bundle (``policies/rego``) and a realistic input (principal with
scopes and auth, tool_info, usage, a flow with history). Rows:

* ``decision row``: building a ``call.decision`` row and its stored JSON (``details`` as the writer stores it),
  without and with ``details.policy`` (:func:`mcp_guard.audit.events.policy_record`) — the per-decision price
  of replayability, paid on the hot path;
* ``shadow``: one candidate evaluation of the default bundle (what :class:`ShadowPolicy` adds to a call);
* ``signature``: loading the default bundle, and loading + verifying an RS256 ``.signatures.json`` over it
  (what ``[policy.signing]`` adds to a start or a reload);
* ``replay``: decisions re-decided per second by ``policy replay`` (default bundle).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcp_guard.audit import events
from mcp_guard.audit.chain import json_text
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.replay import replay_rows
from mcp_guard.policy.signing import canonical_json_hash, load_verifier
from mcp_guard.settings import parse_settings
from mcp_guard.types import AuthInfo, Decision, PolicyInput, Principal, SessionInfo, ToolInfo

BUNDLE = Path(__file__).resolve().parents[1] / "policies" / "rego"


def sample_input() -> PolicyInput:
    history = [
        {"server": "fs", "tool": "read_file", "action": "tools/call", "decision": "allow", "labels": ["private"],
         "decision_id": "d" * 32, "time": "2026-11-25T10:00:00.000000Z"}
        for _ in range(8)
    ]  # fmt: skip
    return PolicyInput(
        action="tools/call",
        principal=Principal(
            "local-agent",
            ("developer",),
            scopes=("tickets:read",),
            auth=AuthInfo(method="jwt", issuer="https://idp.example", client_id="claude"),
        ),
        session=SessionInfo("s" * 32, "http", client_name="claude-ai", client_version="1.0"),
        server="everything",
        tool="echo",
        arguments={"message": "hello world " * 4},
        tool_info=ToolInfo(annotations={"readOnlyHint": True}, definition_sha256="a" * 64, pinned=True),
        usage={"tool_calls|local-agent|everything|echo": 4},
        flow={"id": "f" * 32, "labels": ["private"], "history": history},
    )


def per_call_us(fn: Callable[[], Any], n: int, blocks: int = 5) -> float:
    """Median over ``blocks`` of the mean µs per call of ``fn``."""
    results = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(results)


def signed_copy(tmp: Path, key: rsa.RSAPrivateKey) -> Path:
    root = tmp / "bundle"
    shutil.copytree(BUNDLE, root)
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            raw, rel = path.read_bytes(), path.relative_to(root).as_posix()
            h = canonical_json_hash(raw, "SHA-256") if rel.endswith(".json") else hashlib.sha256(raw).hexdigest()
            files.append({"name": rel, "hash": h, "algorithm": "SHA-256"})
    token = jwt.encode({"files": files, "keyid": "bench"}, key, algorithm="RS256")
    (root / ".signatures.json").write_text(json.dumps({"signatures": [token]}))
    (tmp / "pub.pem").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="calls per block (default 5000)")
    args = parser.parse_args()
    n = args.n
    inp = sample_input()
    decision = Decision(allow=True, reasons=("role developer",))
    columns: dict[str, Any] = {"session_id": "s", "principal": "p", "action": "tools/call", "server": "e", "tool": "t"}

    def row(with_input: bool) -> None:
        policy = events.policy_record(inp.to_dict(), decision, 64 * 1024) if with_input else None
        ev = events.call_decision(
            decision, arguments=inp.arguments, max_arguments_bytes=64 * 1024, policy=policy, **columns
        )
        json_text(ev.details)
        json_text(ev.arguments)

    engine = EmbeddedEngine(load_bundle(BUNDLE), timeout_ms=10_000)
    doc = inp.to_dict()
    stored = events.policy_record(doc, decision, None)
    rows = [
        {"seq": i, "ts": "t", "decision_id": str(i), "details": {"policy": stored}, "arguments": doc["arguments"]}
        for i in range(max(n // 5, 100))
    ]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out: dict[str, float] = {}
    out["decision row, no input (µs)"] = per_call_us(lambda: row(False), n)
    out["decision row, with input (µs)"] = per_call_us(lambda: row(True), n)
    out["input size (bytes of details.policy)"] = float(len(json_text(stored) or ""))
    out["shadow evaluation, default bundle (µs)"] = per_call_us(lambda: engine.evaluate_sync(doc), max(n // 5, 100))
    with tempfile.TemporaryDirectory() as tmp:
        root = signed_copy(Path(tmp), key)
        settings = parse_settings(
            {"policy": {"signing": {"keys": {"bench": str(Path(tmp) / "pub.pem")}}}, "upstreams": {}}, source="<b>"
        )
        verifier = load_verifier(settings)
        assert verifier is not None
        out["load bundle (ms)"] = per_call_us(lambda: load_bundle(root), 20) / 1000
        out["load + verify signature (ms)"] = per_call_us(lambda: verifier.verify(load_bundle(root)), 20) / 1000
    start = time.perf_counter()
    report = replay_rows(rows, engine)
    out["replay (decisions/s)"] = report.replayed / (time.perf_counter() - start)
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
