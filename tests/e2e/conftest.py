"""Fixtures shared by e2e modules: the conformance suite's runs (tests/e2e/conformance_runs.py), started once
for the session so the direct and the proxied targets run at the same time."""

from __future__ import annotations

import os

import pytest
from conformance_runs import Outcome, run_all, run_once_per_session


@pytest.fixture(scope="session")
def conformance_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    if "PYTEST_XDIST_WORKER" in os.environ:  # each worker's basetemp is in one directory every worker sees
        return run_once_per_session(tmp_path_factory.getbasetemp().parent)
    return run_all(tmp_path_factory.mktemp("conformance"))
