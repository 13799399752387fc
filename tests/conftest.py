"""Shared pytest fixtures: the real-data fixture folder and a smoke dataset made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from distilvpr_lib.paths import real_data_dir as default_real_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-data",
        default=str(default_real_data_dir()),
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


#: Seed of the session's smoke dataset (``distilvpr synth --profile smoke --seed 0``).
SMOKE_DATASET_SEED = 0


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's smoke-profile dataset (Oxford layout, with images), made once per test session.

    Equivalent to ``distilvpr synth --profile smoke --seed 0 --out DIR``. Shared by every test of the
    session: treat it as read-only; a test that breaks or edits files copies it first
    (``shutil.copytree(smoke_dataset, tmp_path / "data")``).
    """
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.data.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("smoke_dataset") / "smoke"
    generate_dataset(out, profile_config("smoke").synth, seed=SMOKE_DATASET_SEED, progress=False)
    return out
