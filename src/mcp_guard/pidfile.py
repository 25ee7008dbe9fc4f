"""``[server] pid_file``: how ``mcp-guard reload`` finds the running proxy (docs/architecture.md §10).

``mcp-guard run`` writes its process id there for as long as it serves (:func:`pid_file_held`) and
removes it on exit; a file that names another *live* process is a start-up error (two proxies on one
config would share its audit log and state, and a reload could signal the wrong one). A file left by a
process that died without removing it (SIGKILL) is taken over. :func:`signal_running` is the other side:
read the id, check the process is alive, send it SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from mcp_guard.errors import ConfigError, MCPGuardError

__all__ = ["NotRunning", "alive", "pid_file_held", "read_pid", "signal_running"]

_KEY = "server.pid_file"


class NotRunning(MCPGuardError):
    """No live mcp-guard holds the pid file (exit 1: the check ``is it running`` failed)."""


def alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts: it exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path) -> int | None:
    """The process id written in ``path``; None if the file is missing or holds no number."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def pid_file_held(path: Path, *, source: str | None = None) -> Iterator[None]:
    """Hold ``path`` for the block: created with this process's id (exclusively), removed on exit if it
    still names this process. Raises :class:`ConfigError` naming the key if a live process holds it or
    it cannot be written."""
    _claim(path, source)
    try:
        yield
    finally:
        if read_pid(path) == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()


def _claim(path: Path, source: str | None) -> None:
    for _ in range(2):  # a stale file is removed once, then the exclusive create is tried again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_pid(path)
            if holder is not None and holder != os.getpid() and alive(holder):
                raise ConfigError(
                    f"{path} names process {holder}, which is running (another mcp-guard on this config?)",
                    file=source,
                    key=_KEY,
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by a process that is gone
            continue
        except OSError as e:
            raise ConfigError(f"cannot create {path}: {e.strerror}", file=source, key=_KEY) from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise ConfigError(f"cannot claim {path}: another process keeps re-creating it", file=source, key=_KEY)


def signal_running(path: Path, sig: int = signal.SIGHUP) -> int:
    """Send ``sig`` to the process ``path`` names and return its id. Raises :class:`NotRunning` when the
    file is missing, holds no process id, or names a process that is gone."""
    pid = read_pid(path)
    if pid is None:
        what = "does not exist" if not path.exists() else "holds no process id"
        raise NotRunning(f"{path} {what}: is mcp-guard running with this config?")
    if not alive(pid):
        raise NotRunning(f"{path} names process {pid}, which is not running")
    os.kill(pid, sig)
    return pid
