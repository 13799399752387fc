"""Shared pytest fixtures: the real-data fixture folder and a smoke dataset made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-data",
        default=os.environ.get("DISTILVPR_REAL_DATA", str(DEFAULT_REAL_DATA)),
        help="folder holding the real fixtures (oxford_dh3d/, boreas_poses/); env DISTILVPR_REAL_DATA",
    )


@pytest.fixture(scope="session")
def real_data_dir(request: pytest.FixtureRequest) -> Path:
    """The real fixtures folder; skips the test cleanly when it is absent."""
    path = Path(request.config.getoption("--real-data"))
    if not path.is_dir():
        pytest.skip(f"real data fixtures not found at {path} (set DISTILVPR_REAL_DATA)")
    return path


@pytest.fixture(scope="session")
def oxford_real_dir(real_data_dir: Path) -> Path:
    path = real_data_dir / "oxford_dh3d"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path
