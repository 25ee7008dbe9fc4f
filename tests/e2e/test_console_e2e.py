"""The operator console in a real Chromium (Debian ``chromium`` + ``chromium-driver``, driven by Selenium), in front of
a real ``mcp-guard run --transport http`` with the recorder upstream and real MCP clients.

What must hold: a denied call appears in the live view (and its row opens the full event, arguments scrubbed); a
viewer sees an approval but cannot act on it (buttons disabled, and the API answers 403 even to a hand-made request
with the session's CSRF token); an operator's click in the console releases the parked call, which runs; a pin
approved in the console un-hides the changed tool; "who can see what" lists a principal's tools and tries a call
against the policy without running it; the health page shows an upstream's last stderr lines with the secret it
printed redacted, and charts drawn from the replica's sampled /metrics numbers; a console login is an audit row
in the live view; no page ever holds a key or a secret value; every answer carries the strict CSP. Screenshots of
each page are taken on every run; with ``CONSOLE_SCREENSHOTS=1`` they are written to docs/console/ (the README's
pictures), else to the test's temporary directory, so a plain test run leaves the tracked files alone.

Why Selenium rather than Playwright: the test is a pytest test that also drives MCP clients and the proxy process;
Selenium drives the system browser from the same Python process through the system chromedriver, with no Node
bridge and no browser download.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from e2e_support import API_KEY, REPO, http_guard, recorder, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BOB_KEY = "e2e-console-bob-operator-key-5d1"
VERA_KEY = "e2e-console-vera-viewer-key-9c3"
SECRET = "ghp_" + "Q7x" * 12  # a GitHub-token-shaped argument: the audit copy masks it, no page may show it
LEAK_TOKEN = "tk_live_" + "e2e0f1" * 6  # injected into the leaky upstream, which prints it on stderr
SHOTS = REPO / "docs" / "console"
DEADLINE_S = 10.0
BUNDLE_REGO = """package mcp_guard

import rego.v1

default decision := {"allow": true, "reasons": ["e2e: allowed"]}

decision := {"allow": false, "reasons": ["e2e: deny-me is refused"]} if {
	input.action == "tools/call"
	input.tool == "echo"
	startswith(input.arguments.text, "deny-me")
}

decision := {
	"allow": true,
	"reasons": ["e2e: needs a look"],
	"obligations": {"approval": {"reason": "approve-me needs a look", "approvers": ["role:operator"], "ttl_s": 120}},
} if {
	input.action == "tools/call"
	input.tool == "echo"
	startswith(input.arguments.text, "approve-me")
}
"""


def _config(tmp: Path) -> Path:
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "policy.rego").write_text(BUNDLE_REGO)
    (bundle / "data.json").write_text("{}")
    extra = f"""
[principals.bob]
roles = ["operator"]
api_key_sha256 = "{hashlib.sha256(BOB_KEY.encode()).hexdigest()}"

[principals.vera]
roles = ["viewer"]
api_key_sha256 = "{hashlib.sha256(VERA_KEY.encode()).hexdigest()}"

[secrets.leak]
provider = "env"
name = "MG_CONSOLE_E2E_LEAK"
"""
    rec = {**recorder(tmp / "rec.log"), "pinning": "enforce"}
    leaky = {
        "command": sys.executable,
        "args": [str(REPO / "tests" / "fixtures" / "leaky.py")],
        "env": {"LEAKY_STDERR": "1"},
        "inject_env": {"LEAK_TOKEN": "leak"},
    }
    return write_config(tmp, {"rec": rec, "leaky": leaky}, bundle=bundle, extra=extra)


# ------------------------------------------------------------------------------------------- MCP clients


def _mcp(url: str, work: Callable[[Client], Any]) -> Any:
    async def run() -> Any:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=httpx2.Timeout(120.0))
        client = Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=120.0)
        async with client:
            return await work(client)

    return anyio.run(run)


def _call(url: str, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
    result: types.CallToolResult = _mcp(url, lambda c: c.call_tool(tool, arguments))
    return result


@contextmanager
def _in_background(url: str, text: str) -> Iterator[list[types.CallToolResult]]:
    """``rec__echo(text)`` in a thread (it parks on an approval); the list holds its result once it returns."""
    results: list[types.CallToolResult] = []
    thread = threading.Thread(target=lambda: results.append(_call(url, "rec__echo", {"text": text})), daemon=True)
    thread.start()
    try:
        yield results
    finally:
        thread.join(timeout=60)
    assert results, "the parked call did not return"


@contextmanager
def _traffic(url: str) -> Iterator[None]:
    """Calls (allowed and denied, one after another) from a thread while the block runs."""
    stop = threading.Event()

    def run() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            _call(url, "rec__echo", {"text": f"deny-me {n}" if n % 3 == 0 else f"hello {n}"})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def _tool_names(url: str) -> list[str]:
    async def names(c: Client) -> list[str]:
        return [t.name for t in (await c.list_tools()).tools]

    listed: list[str] = _mcp(url, names)
    return listed


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


# ------------------------------------------------------------------------------------------- the browser


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Chromium is missing: apt-get install chromium chromium-driver (see .ci/run)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """One browser on the console; remembers every page's HTML so the test can check none held a secret."""

    def __init__(self, driver: WebDriver, base: str, shots: Path) -> None:
        self.d = driver
        self.base = base
        self.shots = shots
        self.seen: list[str] = []

    def wait(self, condition: Callable[[WebDriver], Any], what: str) -> Any:
        # The pages redraw what they poll: an element found a moment ago may be gone (stale), so look again.
        wait = WebDriverWait(
            self.d, DEADLINE_S, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
        )
        return wait.until(condition, f"timed out waiting for {what}")

    def login(self, key: str) -> None:
        self.d.get(f"{self.base}/console/login")
        self.d.find_element(By.ID, "key").send_keys(key)
        self.d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        self.wait(lambda d: d.find_elements(By.ID, "who") and d.find_element(By.ID, "who").text, "the console")
        self.keep()

    def logout(self) -> None:
        self.d.find_element(By.ID, "logout").click()
        self.wait(lambda d: d.current_url.endswith("/console/login"), "the login page")

    def page(self, name: str) -> None:
        self.d.find_element(By.ID, f"nav-{name}").click()
        self.wait(lambda d: d.find_element(By.ID, f"page-{name}").is_displayed(), f"the {name} page")

    def keep(self) -> None:
        self.seen.append(self.d.page_source)

    def shot(self, name: str) -> None:
        self.keep()
        self.shots.mkdir(parents=True, exist_ok=True)
        assert self.d.save_screenshot(str(self.shots / f"{name}.png")), f"no screenshot of {name}"

    def fetch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A POST made by the page's own origin, with the session's CSRF token: what a viewer could hand-craft."""
        script = """
const [path, body, done] = arguments;
fetch('/console/session').then(r => r.json()).then(s =>
  fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json', [s.csrf_header]: s.csrf_token},
               body: JSON.stringify(body)})
).then(async r => done({status: r.status, body: await r.json()}), e => done({status: 0, body: String(e)}));
"""
        answer: dict[str, Any] = self.d.execute_async_script(script, path, body)
        return answer


def _pending_card(c: Console) -> Any:
    return c.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#approvals-list article.approval"), "a pending approval")[
        0
    ]


# ------------------------------------------------------------------------------------------- the test


def test_console_live_view_approvals_pins_and_roles_in_chromium(
    tmp_path: Path, browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_CONSOLE_E2E_LEAK", LEAK_TOKEN)  # the proxy process inherits it
    cfg = _config(tmp_path)
    with http_guard(cfg, tmp_path / "guard.log") as url:
        base = url.removesuffix("/mcp")
        headers = httpx2.get(f"{base}/console/login").headers
        assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
        c = Console(browser, base, SHOTS if os.environ.get("CONSOLE_SCREENSHOTS") == "1" else tmp_path / "shots")

        # --- a viewer: sees the live view and the approval, cannot act
        c.login(VERA_KEY)
        cookie = next(k for k in browser.get_cookies() if k["name"] == "mcp_guard_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        denied = _call(url, "rec__echo", {"text": f"deny-me {SECRET}"})
        assert denied.is_error
        row = c.wait(
            lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#events tbody tr") if "DENY" in r.text],
            "the denied call in the live view",
        )[0]
        assert "rec/echo" in row.text and "deny-me is refused" in row.text
        row.send_keys(Keys.ENTER)  # keyboard: a focused row opens with Enter
        args = c.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail pre.arguments"), "the event detail")[0]
        assert "deny-me" in args.text and SECRET not in args.text, "the arguments are the audit copy"
        c.wait(lambda d: "Chain verified" in d.find_element(By.ID, "chain").text, "the chain status")
        c.shot("live")

        with _in_background(url, "approve-me please") as results:
            c.page("approvals")
            card = _pending_card(c)
            assert "approve-me please" in card.text and "approve-me needs a look" in card.text
            assert all(not b.is_enabled() for b in card.find_elements(By.TAG_NAME, "button")), "a viewer cannot click"
            approval_id = card.get_attribute("data-id")
            refused = c.fetch(f"/admin/api/approvals/{approval_id}/approve", {"comment": "viewer tries"})
            assert refused["status"] == 403, refused
            c.shot("approvals-viewer")
            c.logout()

            # --- an operator approves in the console: the parked call runs
            c.login(BOB_KEY)
            login = c.wait(
                lambda d: [
                    r for r in d.find_elements(By.CSS_SELECTOR, "#events tbody tr") if "console.login" in r.text
                ],
                "the console login in the live view",
            )[0]
            assert "bob" in login.text
            c.page("approvals")
            card = _pending_card(c)
            c.shot("approvals")
            card.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys("checked in the console")
            card.find_element(By.CSS_SELECTOR, "button.approve").click()
            c.wait(lambda d: results, "the approved call to return")
        [ran] = results
        assert not ran.is_error and "approve-me please" in _text(ran)
        calls = [json.loads(line) for line in (tmp_path / "rec.log").read_text().splitlines() if line.strip()]
        assert [e["arguments"]["text"] for e in calls if e.get("name") == "echo"] == ["approve-me please"]
        c.wait(lambda d: "checked in the console" in d.find_element(By.ID, "approvals-done").text, "the decided row")

        # --- a changed tool definition is hidden until approved in the console
        _call(url, "rec__mutate", {"description": "echo, now with a twist"})
        c.wait(lambda d: "rec__echo" not in _tool_names(url), "the changed tool to be hidden")
        c.page("pins")
        pin = c.wait(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#pins-pending article[data-tool="rec/echo"]'), "a pin"
        )[0]
        assert "now with a twist" in pin.find_element(By.CSS_SELECTOR, ".diff").text
        c.shot("pins")
        pin.find_element(By.CSS_SELECTOR, "button.approve").click()
        c.wait(lambda d: "rec__echo" in _tool_names(url), "the approved tool to be listed again")

        # --- who can see what: agent's tools, and a call tried against the policy (nothing runs)
        c.page("access")
        c.d.find_element(By.CSS_SELECTOR, "#access-form input[name=principal]").send_keys("agent")
        c.d.find_element(By.CSS_SELECTOR, "#access-form button").click()
        c.wait(lambda d: "rec__echo" in d.find_element(By.ID, "access-tools").text, "agent's tools")
        c.d.find_element(By.CSS_SELECTOR, "#try-form input[name=tool]").send_keys("rec__echo")
        area = c.d.find_element(By.CSS_SELECTOR, "#try-form textarea")
        area.clear()
        area.send_keys('{"text": "deny-me, just asking"}')
        c.d.find_element(By.CSS_SELECTOR, "#try-form button").click()
        c.wait(lambda d: "DENY" in d.find_element(By.ID, "try-result").text, "the tried decision")
        assert "deny-me is refused" in c.d.find_element(By.ID, "try-result").text
        c.shot("access")
        echoed = [json.loads(line) for line in (tmp_path / "rec.log").read_text().splitlines() if line.strip()]
        assert not any("just asking" in json.dumps(e) for e in echoed), "a tried call never reaches the upstream"

        c.page("health")
        c.wait(
            lambda d: "rec" in d.find_element(By.ID, "health").text and "▲ up" in d.find_element(By.ID, "health").text,
            "health",
        )
        stderr = c.wait(lambda d: d.find_elements(By.CSS_SELECTOR, 'details.stderr[data-upstream="leaky"]'), "stderr")[
            0
        ]
        stderr.find_element(By.TAG_NAME, "summary").send_keys(Keys.ENTER)  # keyboard: the disclosure opens
        lines = c.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, 'details.stderr[data-upstream="leaky"] pre').text, "stderr lines"
        )
        assert "LEAK_TOKEN=[REDACTED:leak]" in lines and LEAK_TOKEN not in lines
        with _traffic(url):  # something for the charts to draw
            c.wait(
                lambda d: (
                    float(d.find_element(By.ID, "chart-calls").get_attribute("data-max") or 0) > 0
                    and d.find_elements(By.CSS_SELECTOR, "#chart-calls polyline.s-allow")
                    # a line needs two samples: the chart may have drawn only the first one yet
                    and int(d.find_element(By.ID, "chart-calls").get_attribute("data-points") or 0) >= 2
                ),
                "the calls chart with a rate above zero, drawn from two samples or more",
            )
        for chart in ("chart-calls", "chart-latency", "chart-approvals", "chart-queue"):
            figure = c.d.find_element(By.ID, chart).find_element(By.XPATH, "..")
            assert figure.get_attribute("tabindex") == "0" and "now:" in figure.text, "focusable, with words"
        c.shot("health")

    for html in c.seen:
        for secret in (BOB_KEY, VERA_KEY, API_KEY, SECRET, LEAK_TOKEN):
            assert secret not in html, "a page held a key or a secret value"
