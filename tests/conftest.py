"""Shared test fixtures."""

import os
import subprocess
from pathlib import Path

import pytest

_DEFAULT_SHARED_FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """The folder of real SGLang output (``PDBENCH_FIXTURES`` overrides the default)."""
    override = os.environ.get("PDBENCH_FIXTURES")
    path = Path(override) if override else _DEFAULT_SHARED_FIXTURES
    if not path.is_dir():
        pytest.skip(f"shared fixtures not found at {path.resolve()}")
    return path.resolve()


@pytest.fixture
def live_pid():
    """The pid of a process that stays alive for the test (a stand-in server or run)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc.pid
    proc.kill()
    proc.wait()
