"""``mcp-guard init DIR``: a working starting point — a config, the default policy bundle, the catalogue.

The defaults travel inside the wheel under ``mcp_guard/_data`` (``pyproject.toml`` force-includes the
repository's ``policies/rego``, ``config/mcp-guard.toml`` and ``connectors/catalog``); in a source checkout
they are read from the repository itself, so ``make demo`` and the tests keep using the one copy.
:func:`data_root` is the one place that knows which.

What :func:`scaffold` writes, under ``DIR``::

    mcp-guard.toml              a small config that passes `mcp-guard check` as written: the bundle, the
                                audit and state files, the pid file, the local principal, no upstream yet
    mcp-guard.reference.toml    every key with its default and what it does (for reading, not for running)
    policies/rego/              the default policy bundle (with its tests, data.json and schema)
    catalog/*.toml              ready-made [upstreams.*] tables to paste into mcp-guard.toml

It refuses a ``DIR`` that is not empty unless ``force`` (then it overwrites the files it writes and leaves
every other file alone), and writes nothing at all when it refuses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mcp_guard.errors import ConfigError

__all__ = ["CONFIG_NAME", "data_root", "scaffold"]

CONFIG_NAME = "mcp-guard.toml"
_PACKAGED = Path(__file__).resolve().parent / "_data"
_CHECKOUT = Path(__file__).resolve().parents[2]

CONFIG_TEMPLATE = """\
# mcp-guard configuration, written by `mcp-guard init`. Every key and its default: mcp-guard.reference.toml.
# Relative paths are resolved against this file's directory. Validate with `mcp-guard check -c {config}`.

[server]
name = "mcp-guard"
transport = "stdio"               # "http": streamable HTTP at http://host:port/mcp
host = "127.0.0.1"
port = 8765
principal = "local-agent"         # who a stdio client is
pid_file = "mcp-guard.pid"        # `mcp-guard reload -c {config}` signals the running proxy through it

[policy]
engine = "embedded"
bundle = "policies/rego"          # the default bundle; edit its data.json to grant roles

[audit]
path = "mcp-guard-audit.db"
state_path = "mcp-guard-state.db"

[principals.local-agent]
roles = ["developer"]
# api_key_sha256 = "…"            # HTTP clients: sha256 of their bearer key

# Upstreams: paste tables from catalog/*.toml, e.g. catalog/time.toml (`pip install mcp-server-time`):
# [upstreams.time]
# command = "python"
# args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"""


def data_root() -> Path:
    """Where the default bundle, configs and catalogue are: inside the installed package, else the
    source checkout this module runs from."""
    return _PACKAGED if (_PACKAGED / "policies").is_dir() else _CHECKOUT


def _sources() -> dict[str, Path]:
    root = data_root()
    packaged = root == _PACKAGED
    return {
        "policies/rego": root / "policies" / "rego",
        "catalog": root / "catalog" if packaged else root / "connectors" / "catalog",
        "mcp-guard.reference.toml": root / "config" / "mcp-guard.toml",
    }


def scaffold(directory: Path, *, force: bool = False) -> list[Path]:
    """Write the starting files into ``directory`` (created if missing); return what was written.

    Raises :class:`ConfigError` naming the directory when it is not empty (and ``force`` is not given),
    is not a directory, or a packaged default is missing (a broken install).
    """
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise ConfigError(f"{directory} is not empty (use --force to write into it anyway)")
    sources = _sources()
    missing = [str(p) for p in sources.values() if not p.exists()]
    if missing:
        raise ConfigError(f"the default files are missing from this installation: {', '.join(missing)}")
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, src in sources.items():
        dest = directory / name
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dest)
        written.append(dest)
    config = directory / CONFIG_NAME
    config.write_text(CONFIG_TEMPLATE.format(config=config), encoding="utf-8")
    written.insert(0, config)
    return written
