"""``[server] pid_file``: held while serving, refused when another live process holds it, signalled by reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_guard.errors import ConfigError
from mcp_guard.pidfile import NotRunning, pid_file_held, read_pid, signal_running


def test_written_while_held_and_removed_after(tmp_path: Path) -> None:
    path = tmp_path / "guard.pid"
    with pid_file_held(path):
        assert read_pid(path) == os.getpid()
    assert not path.exists()


def test_refused_while_another_live_process_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "guard.pid"
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        path.write_text(f"{other.pid}\n")
        refused = pytest.raises(ConfigError, match=rf"server\.pid_file: .*process {other.pid}, which is running")
        with refused, pid_file_held(path, source="g.toml"):
            pass
        assert read_pid(path) == other.pid  # left alone
    finally:
        other.communicate(b"")
    # The holder is gone: its stale file is taken over.
    with pid_file_held(path):
        assert read_pid(path) == os.getpid()


def test_signal_running_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "guard.pid"
    with pytest.raises(NotRunning, match="does not exist"):
        signal_running(path)
    path.write_text("garbage")
    with pytest.raises(NotRunning, match="holds no process id"):
        signal_running(path)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(done.stdout)
    with pytest.raises(NotRunning, match="which is not running"):
        signal_running(path)


_WAIT_FOR_USR1 = (
    "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); print('ready', flush=True); "
    "signal.sigwait({signal.SIGUSR1})"
)


def test_signal_running_delivers_the_signal(tmp_path: Path) -> None:
    path = tmp_path / "guard.pid"
    child = subprocess.Popen(
        [sys.executable, "-c", _WAIT_FOR_USR1],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    path.write_text(f"{child.pid}\n")
    assert signal_running(path, signal.SIGUSR1) == child.pid
    assert child.wait(timeout=20) == 0
