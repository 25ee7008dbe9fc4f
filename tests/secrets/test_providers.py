"""env, file and command providers: values, re-reads, failures that name secret and upstream."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from mcp_guard.errors import SecretError
from mcp_guard.secrets.providers import CommandProvider, EnvProvider, FileProvider, SecretRef

pytestmark = pytest.mark.anyio

POLL_S = 0.05  # interval of condition polls (always under a deadline)

REF = SecretRef("tickets_token", "tickets")
PY = sys.executable


# --------------------------------------------------------------------------- env
async def test_env_provider_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_TEST_TOKEN", "env-value-123")
    value = await EnvProvider("MG_TEST_TOKEN").resolve(REF)
    assert value.get_secret_value() == "env-value-123"
    assert "env-value-123" not in repr(value)
    monkeypatch.setenv("MG_TEST_TOKEN", "rotated")
    assert (await EnvProvider("MG_TEST_TOKEN").resolve(REF)).get_secret_value() == "rotated"


@pytest.mark.parametrize("present", [False, True])
async def test_env_provider_missing_or_empty(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    if present:
        monkeypatch.setenv("MG_TEST_TOKEN", "")
    else:
        monkeypatch.delenv("MG_TEST_TOKEN", raising=False)
    with pytest.raises(SecretError) as info:
        await EnvProvider("MG_TEST_TOKEN").resolve(REF)
    msg = str(info.value)
    assert "'tickets_token'" in msg and "upstream 'tickets'" in msg and "MG_TEST_TOKEN" in msg
    assert ("empty" if present else "not set") in msg
    assert info.value.secret == "tickets_token" and info.value.upstream == "tickets"


# --------------------------------------------------------------------------- file
async def test_file_provider_strips_newline_and_caches(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("file-secret-1\n")
    p = FileProvider(f)
    assert (await p.resolve(REF)).get_secret_value() == "file-secret-1"
    assert (await p.resolve(REF)).get_secret_value() == "file-secret-1"
    assert p.reads == 1


async def test_file_provider_rereads_when_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("first-value")
    p = FileProvider(f)
    assert (await p.resolve(REF)).get_secret_value() == "first-value"
    # Same size, content changed: force a different mtime so the change is visible whatever the
    # filesystem's timestamp granularity.
    f.write_text("other-value")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert (await p.resolve(REF)).get_secret_value() == "other-value"
    assert p.reads == 2


async def test_file_provider_follows_a_symlink_swap(tmp_path: Path) -> None:
    """How Kubernetes updates a mounted secret: a new file, then the symlink is swapped."""
    (tmp_path / "v1").write_text("value-one")
    (tmp_path / "v2").write_text("value-two")
    link = tmp_path / "token"
    link.symlink_to(tmp_path / "v1")
    p = FileProvider(link)
    assert (await p.resolve(REF)).get_secret_value() == "value-one"
    tmp = tmp_path / "token.tmp"
    tmp.symlink_to(tmp_path / "v2")
    tmp.replace(link)
    assert (await p.resolve(REF)).get_secret_value() == "value-two"


async def test_file_provider_errors(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"secret 'tickets_token' \(needed by upstream 'tickets'\).*does not exist"):
        await FileProvider(tmp_path / "nope").resolve(REF)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        await FileProvider(tmp_path / "empty").resolve(REF)
    with pytest.raises(SecretError, match="directory"):
        await FileProvider(tmp_path).resolve(REF)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SecretError, match="UTF-8"):
        await FileProvider(tmp_path / "bin").resolve(REF)


# --------------------------------------------------------------------------- command
async def test_command_provider_returns_stdout_without_trailing_newline() -> None:
    p = CommandProvider([PY, "-c", "print('cmd-secret-42')"], timeout_s=20)
    assert (await p.resolve(REF)).get_secret_value() == "cmd-secret-42"


async def test_command_provider_keeps_inner_whitespace() -> None:
    p = CommandProvider([PY, "-c", "import sys; sys.stdout.write(' a b \\n')"], timeout_s=20)
    assert (await p.resolve(REF)).get_secret_value() == " a b "


async def test_command_failure_reports_scrubbed_stderr() -> None:
    script = (
        "import sys; print('partial-secret-output'); "
        "print('vault: permission denied for partial-secret-output and known-other-secret', file=sys.stderr); "
        "sys.exit(3)"
    )
    p = CommandProvider([PY, "-c", script], timeout_s=20, scrub=lambda s: s.replace("known-other-secret", "[X]"))
    with pytest.raises(SecretError) as info:
        await p.resolve(REF)
    msg = str(info.value)
    assert "exited with code 3" in msg
    assert "secret 'tickets_token'" in msg and "upstream 'tickets'" in msg
    assert "permission denied" in msg
    assert "partial-secret-output" not in msg and "known-other-secret" not in msg


async def test_command_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child-pid"
    # The command starts a grandchild that holds stdout open and would outlive a plain kill.
    script = (
        "import signal, subprocess, sys; "
        f"c = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()']); "
        f"open({str(marker)!r}, 'w').write(str(c.pid)); "
        "print('starting', file=sys.stderr, flush=True); signal.pause()"
    )
    p = CommandProvider([PY, "-c", script], timeout_s=3)
    with anyio.fail_after(30), pytest.raises(SecretError) as info:
        await p.resolve(REF)
    msg = str(info.value)
    assert "did not finish within 3s" in msg and "starting" in msg
    child = int(marker.read_text())
    with anyio.fail_after(10):
        while _alive(child):  # noqa: ASYNC110 - another process's death has no event to wait on
            await anyio.sleep(POLL_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its dead parent's reaper) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_command_not_found_and_empty_output() -> None:
    with pytest.raises(SecretError, match="command not found: no-such-binary-mcp-guard"):
        await CommandProvider(["no-such-binary-mcp-guard"]).resolve(REF)
    with pytest.raises(SecretError, match="printed nothing"):
        await CommandProvider([PY, "-c", "print()"], timeout_s=20).resolve(REF)
