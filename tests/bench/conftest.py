"""What the bench tests share: importing a module of ``bench/``, a top-level package of the repository (not of the
wheel), so the repository's root is put on ``sys.path`` first."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bench_module() -> Callable[[str], ModuleType]:
    """``bench_module("bench_stages")``: the module ``bench.bench_stages``."""

    def load(name: str) -> ModuleType:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        return importlib.import_module(f"bench.{name}")

    return load
