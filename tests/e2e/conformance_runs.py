"""The three runs of the official MCP conformance suite the e2e tests check, started together.

scripts/conformance.py runs the suite against one target: the first-party fixture directly (``fixture-direct``),
or mcp-guard fronting the fixture spawned over stdio (``proxy-stdio``) or reached over streamable HTTP
(``proxy-http``). A run spends most of its wall time waiting on the scenarios' own pauses (the direct one ~27 s
for ~3 s of CPU: the unscored tasks scenarios wait on ``slow_compute``), so the three are started at once, each a
separate process with its own free ports, temporary directory, audit database and JSON summary, and each target's
summary is then checked on its own (tests/e2e/test_conformance.py, tests/e2e/test_conformance_proxy.py): a target
that cannot run fails only its own tests. Under pytest-xdist (``make test``) the two modules may land on different
workers; the runs still happen once (``run_once_per_session``).

The proxy runs' configuration: an allow-all policy bundle, no auth, and one upstream, the fixture, with
``namespace = false`` so the suite's exact names reach it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "conformance.py"
FIXTURE = REPO / "tests" / "conformance" / "conformance_fixture.py"
BASELINE = REPO / "tests" / "conformance" / "expected-failures.json"
TARGETS = ("fixture-direct", "proxy-stdio", "proxy-http")
SUITE_TIMEOUT_S = 900  # npm ci on a cold machine (~20 s here) plus two runs of a few seconds each
STOP_TIMEOUT_S = 15  # a run still going at its deadline is terminated, then killed
LOCK_WAIT_S = SUITE_TIMEOUT_S + 120  # another pytest-xdist worker runs the suite meanwhile (see run_once_per_session)
LOCK_POLL_S = 0.2
URL_MARK = "@FIXTURE_URL@"  # replaced by the fixture's URL when the proxy starts (HTTP upstream)

ALLOW_ALL = """package mcp_guard

import rego.v1

decision := {"allow": true, "reasons": ["conformance: allow all"], "obligations": {}}
"""


def _load(path: Path, name: str) -> ModuleType:
    """A stand-alone script or the fixture, loaded by path (neither is a package module)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _task_tools() -> str:
    """``task_tools`` as the fixture's own (handshake-era) definitions declare them: mcp-guard speaks 2026-07-28
    to the fixture, whose tools then carry no ``execution.taskSupport``, so the operator's config says it."""
    table: dict[str, str] = _load(FIXTURE, "conformance_fixture_e2e").TASK_SUPPORT
    assert table, "the fixture declares no task-supporting tool"
    return "task_tools = { " + ", ".join(f"{name} = {_toml(mode)}" for name, mode in sorted(table.items())) + " }\n"


def _upstream(transport: str) -> str:
    common = f"namespace = false\nforward_roots = true\n{_task_tools()}"
    if transport == "stdio":
        return (
            f"[upstreams.conf]\ncommand = {_toml(sys.executable)}\n"
            f'args = [{_toml(str(FIXTURE))}, "--transport", "stdio"]\n{common}'
        )
    return f'[upstreams.conf]\ntransport = "http"\nurl = "{URL_MARK}"\n{common}'


def _proxy_command(transport: str, config: Path) -> tuple[str, ...]:
    """scripts/conformance.py arguments that start mcp-guard (and, for an HTTP upstream, the fixture first)."""
    run = shlex.join([sys.executable, "-m", "mcp_guard", "run", "--transport", "http", "--config", str(config)])
    if transport == "stdio":
        return ("--command", run + " --port {port}")
    live = config.with_name("proxy-live.toml")
    fill = f"sed 's#{URL_MARK}#{{fixture_url}}#' {shlex.quote(str(config))} > {shlex.quote(str(live))}"
    run = shlex.join([sys.executable, "-m", "mcp_guard", "run", "--transport", "http", "--config", str(live)])
    return ("--with-fixture", "--command", shlex.join(["sh", "-c", f"{fill} && exec {run} --port {{port}}"]))


def proxy_args(transport: str, tmp: Path) -> tuple[str, ...]:
    """Write mcp-guard's config for fronting the fixture over ``transport`` in ``tmp``; the script's arguments."""
    (tmp / "policy").mkdir()
    (tmp / "policy" / "allow.rego").write_text(ALLOW_ALL, encoding="utf-8")
    config = tmp / "proxy.toml"
    config.write_text(
        '[server]\ntransport = "http"\nrequire_auth = false\n\n'
        f"[policy]\nbundle = {_toml(str(tmp / 'policy'))}\n\n"
        f"[audit]\npath = {_toml(str(tmp / 'audit.db'))}\n\n" + _upstream(transport),
        encoding="utf-8",
    )
    return _proxy_command(transport, config)


@dataclass
class SuiteRun:
    """One scripts/conformance.py process, its output files, and (once it ended) its summary or why none."""

    target: str
    summary_path: Path
    stdout_path: Path
    stderr_path: Path
    proc: subprocess.Popen[bytes]
    summary: dict[str, Any] | None = None
    failure: str | None = None

    def finish(self, deadline: float) -> None:
        """Wait (until ``deadline``, monotonic) for the run; keep its summary, or why there is none."""
        try:
            code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            self.failure = f"conformance.py ({self.target}) did not finish within {SUITE_TIMEOUT_S}s"
            return
        print(self.stdout_path.read_text(encoding="utf-8"))  # the full report (shown with -s)
        stderr = self.stderr_path.read_text(encoding="utf-8")
        if code not in (0, 1):
            self.failure = f"conformance.py ({self.target}) could not run (exit {code}):\n{stderr}"
        elif not self.summary_path.exists():
            self.failure = f"conformance.py ({self.target}) wrote no summary:\n{stderr}"
        else:
            self.summary = json.loads(self.summary_path.read_text(encoding="utf-8"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(target: str, tmp: Path) -> SuiteRun:
    """Start scripts/conformance.py against ``target`` (both spec versions), checked by its expected failures."""
    tmp.mkdir(parents=True)
    extra = proxy_args(target.removeprefix("proxy-"), tmp) if target.startswith("proxy-") else ()
    summary, stdout, stderr = tmp / f"{target}.json", tmp / "stdout.txt", tmp / "stderr.txt"
    argv = [sys.executable, str(SCRIPT), "--label", target, "--output", str(summary)]
    argv += ["--expected-failures", str(BASELINE), "--target", target, *extra]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return SuiteRun(target, summary, stdout, stderr, proc)


@dataclass
class Outcome:
    """What a run left: its summary, or why there is none."""

    summary: dict[str, Any] | None
    failure: str | None


def run_all(tmp: Path) -> dict[str, Outcome]:
    """Every target's run, started together and waited for; any still going at the end is stopped."""
    _load(SCRIPT, "conformance_script_e2e").ensure_suite()  # npm ci once, here, not by three runs at a time
    runs: dict[str, SuiteRun] = {}
    try:
        for target in TARGETS:
            runs[target] = _start(target, tmp / target)
        deadline = time.monotonic() + SUITE_TIMEOUT_S
        for run in runs.values():
            run.finish(deadline)
    finally:
        for run in runs.values():
            run.stop()
    return {target: Outcome(run.summary, run.failure) for target, run in runs.items()}


def _lock(lock: IO[str], deadline: float) -> None:
    """An exclusive lock on ``lock`` before ``deadline`` (monotonic), or TimeoutError."""
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{lock.name}: still locked after {LOCK_WAIT_S}s") from None
            time.sleep(LOCK_POLL_S)


def run_once_per_session(shared: Path) -> dict[str, Outcome]:
    """Under pytest-xdist, whose workers each have their own session: the first worker that asks runs the
    suite and writes the outcomes to ``shared`` (a directory every worker sees); the others wait for the
    lock, then read them. The lock is a file lock, so a worker that dies releases it."""
    done = shared / "conformance-outcomes.json"
    with (shared / "conformance.lock").open("w") as lock:
        _lock(lock, time.monotonic() + LOCK_WAIT_S)
        if not done.exists():
            outcomes = run_all(shared / "conformance")
            done.write_text(json.dumps({t: asdict(o) for t, o in outcomes.items()}), encoding="utf-8")
        return {t: Outcome(**o) for t, o in json.loads(done.read_text(encoding="utf-8")).items()}


def summary_of(outcomes: dict[str, Outcome], target: str) -> dict[str, Any]:
    """``target``'s summary; the test fails with why if that run produced none."""
    outcome = outcomes[target]
    assert outcome.summary is not None, outcome.failure
    return outcome.summary
