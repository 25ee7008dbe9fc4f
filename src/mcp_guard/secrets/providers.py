"""Where secret values come from: the ``env``, ``file`` and ``command`` providers of ``[secrets.*]``.

A provider is built once per configured secret and holds that secret's source (a variable name, a
path, an argv). :meth:`SecretProvider.resolve` returns the current value as a
:class:`pydantic.SecretStr` (so it never shows up in a ``repr`` or a log line by accident) and raises
:class:`~mcp_guard.errors.SecretError` naming the secret and, when known, the upstream that needs it.

* ``env``: a variable of mcp-guard's own environment, read on every resolve.
* ``file``: a file (e.g. a mounted Kubernetes/Docker secret). The value is cached and the file is
  read again only when its inode, device, size or mtime changes (a Kubernetes secret update swaps a
  symlink, which changes the inode). Trailing newlines are removed.
* ``command``: an argv whose standard output is the secret (``pass show x``, ``op read op://…``,
  ``vault kv get -field=token …``). It runs in mcp-guard's environment with stdin closed, in its own
  process group, bounded by ``timeout_s``; on timeout the whole group is killed. Trailing newlines
  of stdout are removed. A non-zero exit or a timeout is an error whose message carries an excerpt
  of the command's stderr, scrubbed (of the command's own stdout and of every secret known so far).

Empty values are errors for every provider: an empty credential is always a configuration mistake.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
from pydantic import SecretStr

from mcp_guard.errors import SecretError
from mcp_guard.settings import SecretSettings

__all__ = [
    "MAX_SECRET_BYTES",
    "CommandProvider",
    "EnvProvider",
    "FileProvider",
    "SecretProvider",
    "SecretRef",
    "build_provider",
]

MAX_SECRET_BYTES = 1024 * 1024  # a secret (file or command output) larger than this is refused
_STDERR_EXCERPT = 400


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Which secret is being resolved, and for whom (used in error messages)."""

    name: str
    upstream: str | None = None

    def describe(self) -> str:
        who = f" (needed by upstream {self.upstream!r})" if self.upstream else ""
        return f"secret {self.name!r}{who}"

    def error(self, problem: str) -> SecretError:
        return SecretError(f"{self.describe()}: {problem}", secret=self.name, upstream=self.upstream)


class SecretProvider(Protocol):
    """The source of one secret's value."""

    async def resolve(self, ref: SecretRef) -> SecretStr: ...


def _strip_newlines(value: str) -> str:
    return value.rstrip("\r\n")


class EnvProvider:
    """A variable of mcp-guard's own environment."""

    def __init__(self, variable: str) -> None:
        self.variable = variable

    def __repr__(self) -> str:
        return f"EnvProvider({self.variable!r})"

    async def resolve(self, ref: SecretRef) -> SecretStr:
        value = os.environ.get(self.variable)
        if value is None:
            raise ref.error(f"environment variable {self.variable} is not set")
        if not value:
            raise ref.error(f"environment variable {self.variable} is empty")
        return SecretStr(value)


class FileProvider:
    """A file holding the secret; re-read when its inode, size or mtime changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int, int] | None = None
        self._value: SecretStr | None = None
        self.reads = 0  # how many times the file was actually read (for tests and diagnostics)

    def __repr__(self) -> str:
        return f"FileProvider({str(self.path)!r})"

    async def resolve(self, ref: SecretRef) -> SecretStr:
        apath = anyio.Path(self.path)
        try:
            st = await apath.stat()
        except FileNotFoundError:
            raise ref.error(f"file {self.path} does not exist") from None
        except OSError as e:
            raise ref.error(f"cannot access file {self.path}: {e.strerror or e}") from None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._value is not None and stamp == self._stamp:
            return self._value
        if st.st_size > MAX_SECRET_BYTES:
            raise ref.error(f"file {self.path} is larger than {MAX_SECRET_BYTES} bytes")
        try:
            raw = await apath.read_bytes()
        except IsADirectoryError:
            raise ref.error(f"{self.path} is a directory, not a file") from None
        except OSError as e:
            raise ref.error(f"cannot read file {self.path}: {e.strerror or e}") from None
        self.reads += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ref.error(f"file {self.path} is not valid UTF-8") from None
        value = _strip_newlines(text)
        if not value:
            raise ref.error(f"file {self.path} is empty")
        # Keep the stamp taken before the read: if the file changed while we read it, the next
        # resolve sees a different stamp and reads it again.
        self._stamp, self._value = stamp, SecretStr(value)
        return self._value


class CommandProvider:
    """An argv whose standard output is the secret."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 10.0,
        cwd: str | Path | None = None,
        scrub: Callable[[str], str] = lambda s: s,
    ) -> None:
        if not argv:
            raise ValueError("command provider needs a non-empty argv")
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.cwd = str(cwd) if cwd is not None else None
        self._scrub = scrub

    def __repr__(self) -> str:
        return f"CommandProvider({self.argv[0]!r}, …)"

    async def resolve(self, ref: SecretRef) -> SecretStr:
        cmd = self.argv[0]
        try:
            process = await anyio.open_process(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ref.error(f"command not found: {cmd}") from None
        except OSError as e:
            raise ref.error(f"cannot run {cmd}: {e.strerror or e}") from None

        out = bytearray()
        err = bytearray()
        too_big = False

        async def drain(stream: anyio.abc.ByteReceiveStream, buf: bytearray) -> None:
            nonlocal too_big
            async for chunk in stream:
                if len(buf) + len(chunk) > MAX_SECRET_BYTES:
                    too_big = True
                    _kill_group(process)
                    return
                buf.extend(chunk)

        timed_out = False
        try:
            with anyio.move_on_after(self.timeout_s) as scope:
                async with anyio.create_task_group() as tg:
                    assert process.stdout is not None and process.stderr is not None
                    tg.start_soon(drain, process.stdout, out)
                    tg.start_soon(drain, process.stderr, err)
                    await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            if process.returncode is None or timed_out:
                _kill_group(process)
            with anyio.CancelScope(shield=True):
                await process.aclose()

        stdout = out.decode("utf-8", errors="replace")
        value = _strip_newlines(stdout)

        def excerpt() -> str:
            text = err.decode("utf-8", errors="replace")
            if len(value) >= 4:
                text = text.replace(value, "[REDACTED]")
            text = " ".join(self._scrub(text).split())
            if len(text) > _STDERR_EXCERPT:
                text = text[:_STDERR_EXCERPT] + "…"
            return f"; stderr: {text}" if text else "; no stderr output"

        if timed_out:
            raise ref.error(f"command {cmd} did not finish within {self.timeout_s:g}s (killed){excerpt()}")
        if too_big:
            raise ref.error(f"command {cmd} wrote more than {MAX_SECRET_BYTES} bytes")
        if process.returncode != 0:
            raise ref.error(f"command {cmd} exited with code {process.returncode}{excerpt()}")
        try:
            out.decode("utf-8")
        except UnicodeDecodeError:
            raise ref.error(f"command {cmd} wrote output that is not valid UTF-8") from None
        if not value:
            raise ref.error(f"command {cmd} printed nothing")
        return SecretStr(value)


def _kill_group(process: anyio.abc.Process) -> None:
    """Kill the command and anything it started (it runs in its own session / process group)."""
    with suppress(ProcessLookupError, PermissionError, OSError):
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
            return
    with suppress(ProcessLookupError, OSError):
        process.kill()


def build_provider(
    settings: SecretSettings,
    *,
    resolve_path: Callable[[str], Path] = Path,
    cwd: str | Path | None = None,
    scrub: Callable[[str], str] = lambda s: s,
) -> SecretProvider:
    """The provider for one ``[secrets.<name>]`` table."""
    if settings.provider == "env":
        assert isinstance(settings.name, str)
        return EnvProvider(settings.name)
    if settings.provider == "file":
        assert isinstance(settings.name, str)
        return FileProvider(resolve_path(settings.name))
    return CommandProvider(settings.argv, timeout_s=settings.timeout_s, cwd=cwd, scrub=scrub)
