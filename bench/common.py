"""Shared pieces of the benchmark suite: statistics, machine info, configs, child processes.

Everything here is plain Python (no pytest), so the benches run from ``python -m bench`` on a fresh
checkout and the smoke test can import them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
RECORDER = REPO / "tests" / "fixtures" / "recorder.py"
DEFAULT_BUNDLE = REPO / "policies" / "rego"
API_KEY = "bench-agent-key-7d41e0"
PRINCIPAL = "local-agent"  # the default bundle gives it the "developer" role
UPSTREAM = "everything"  # the default bundle lets "developer" call every tool of a server by this name
ALLOW_ALL_REGO = """package mcp_guard

import rego.v1

decision := {"allow": true, "reasons": ["bench: allow all"], "obligations": {}}
"""


# ---------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99, mean and count of latencies given in seconds, reported in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": percentile(ms, 0.5),
        "p90_ms": percentile(ms, 0.9),
        "p99_ms": percentile(ms, 0.99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
    }


# ---------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the ppid follows the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def cpu_seconds(pid: int) -> float:
    """User+system CPU time a process has used so far (seconds)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(stat[11]) + int(stat[12])) / ticks


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------- configs
def toml_value(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def recorder_upstream(**extra: Any) -> dict[str, Any]:
    """A stdio upstream running tests/fixtures/recorder.py (echo, add, …), nothing logged."""
    return {"command": sys.executable, "args": [str(RECORDER)], "timeout_s": 30, **extra}


def write_bundle(directory: Path, policy: str) -> Path:
    """The bundle the bench runs with: ``default`` (policies/rego, its per-tool rate limit raised so a long run
    is not cut off — calls are still counted, so its cost is measured) or ``allow-all``."""
    bundle = directory / f"bundle-{policy}"
    if bundle.exists():
        shutil.rmtree(bundle)
    if policy == "allow-all":
        bundle.mkdir(parents=True)
        (bundle / "allow.rego").write_text(ALLOW_ALL_REGO)
        (bundle / "data.json").write_text("{}\n")
        return bundle
    if policy != "default":
        raise ValueError(f"unknown policy {policy!r} (default | allow-all)")
    shutil.copytree(DEFAULT_BUNDLE, bundle, ignore=shutil.ignore_patterns("*_test.rego"))
    data = json.loads((bundle / "data.json").read_text())
    for declaration in data.get("mcp_guard_config", {}).get("limits", {}).get("rate", []):
        declaration["limit"] = 10**9
    (bundle / "data.json").write_text(json.dumps(data, indent=1))
    return bundle


def write_config(
    directory: Path,
    upstreams: Mapping[str, Mapping[str, Any]],
    *,
    policy: str = "default",
    name: str = "mcp-guard",
    server_extra: Mapping[str, Any] | None = None,
) -> Path:
    """A config: the chosen bundle (hot reload off), an audit db in ``directory``, principal ``local-agent``
    with role developer and an HTTP key, and the given upstreams."""
    directory.mkdir(parents=True, exist_ok=True)
    bundle = write_bundle(directory, policy)
    lines = [
        "[server]",
        f"principal = {json.dumps(PRINCIPAL)}",
        *(f"{k} = {toml_value(v)}" for k, v in (server_extra or {}).items()),
        "",
        "[policy]",
        f"bundle = {json.dumps(str(bundle))}",
        "hot_reload = false",
        "",
        "[audit]",
        f"path = {json.dumps(str(directory / f'{name}-audit.db'))}",
        "",
        f"[principals.{PRINCIPAL}]",
        'roles = ["developer"]',
        f'api_key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"',
        "",
    ]
    for up, table in upstreams.items():
        lines.append(f"[upstreams.{up}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    cfg = directory / f"{name}.toml"
    cfg.write_text("\n".join(lines))
    return cfg


def proxy_argv(cfg: Path, *more: str, log_level: str = "warning", ablate: str | None = None) -> list[str]:
    """``mcp-guard run`` (with ``ablate``, under bench/ablate.py with those switches: diagnostics only)."""
    launcher = (
        [sys.executable, "-m", "mcp_guard"]
        if ablate is None
        else [sys.executable, str(Path(__file__).resolve().parent / "ablate.py"), ablate, "--"]
    )
    return [*launcher, "run", "--config", str(cfg), "--log-level", log_level, *more]


# ---------------------------------------------------------------------- processes
def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PYTHONBREAKPOINT", None)
    return env


def wait_for_file(path: Path, within_s: float, what: str) -> None:
    """Until a process told by a signal has written ``path`` (it writes a temporary file and renames it, so the path
    appears whole); polled, bounded: RuntimeError naming ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy wrote no {what} within {within_s:.0f}s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the process we started (only that one)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def http_proxy(
    cfg: Path, log_file: Path, *, within: float = 60.0, ablate: str | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``mcp-guard run --transport http --port 0``; yields ``(process, url)`` once it is listening."""
    with log_file.open("w") as err:
        proc = subprocess.Popen(
            proxy_argv(cfg, "--transport", "http", "--port", "0", log_level="info", ablate=ablate),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            env=child_env(),
            preexec_fn=raise_fd_limit,
        )
        try:
            url = wait_for_log_url(proc, log_file, '"http.listening"', within)
            yield proc, url
        finally:
            stop_process(proc)


@contextmanager
def http_upstream(log_file: Path, *, within: float = 30.0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The recorder served over streamable HTTP (bench/http_upstream.py); yields ``(process, url)``."""
    with log_file.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "http_upstream.py"), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            env=child_env(),
            preexec_fn=raise_fd_limit,
        )
        try:
            url = wait_for_log_url(proc, log_file, '"upstream.listening"', within)
            yield proc, url
        finally:
            stop_process(proc)


def wait_for_log_url(proc: subprocess.Popen[bytes], log_file: Path, marker: str, within: float) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log_file.read_text()[-3000:]}")
        for line in log_file.read_text().splitlines():
            if marker in line:
                return str(json.loads(line)["url"])
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not start listening:\n{log_file.read_text()[-3000:]}")


def save(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return out
