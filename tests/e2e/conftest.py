"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiled bytecode for the service processes of the live rehearsals (``LiveRehearsal(pycache=...)``), shared
    by the tests of a session: each process then imports ccxt and the rest from bytecode, as an installed
    deployment does, instead of compiling them at every (re)start."""
    return tmp_path_factory.mktemp("service-pycache")
