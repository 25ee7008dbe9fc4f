"""Fixtures shared by e2e modules: the conformance suite's runs (tests/e2e/conformance_runs.py), started once
for the session so the direct and the proxied targets run at the same time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conformance_runs import SuiteRun, all_runs


@pytest.fixture(scope="session")
def conformance_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SuiteRun]]:
    with all_runs(tmp_path_factory.mktemp("conformance")) as runs:
        yield runs
