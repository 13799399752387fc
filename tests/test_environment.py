"""The pinned dependency set is expressed twice (pyproject.toml and environment.yml); they must agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
USER_PACKAGES = {"jupyterlab", "torch", "torchvision", "pytorch-metric-learning", "matplotlib", "seaborn",
                 "scikit-learn", "ipywidgets", "papermill"}


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*", req)
        assert m, f"requirement {req!r} is not pinned with =="
        pins[m.group(1).lower()] = m.group(2)
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return _pins(reqs)


def _environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps, "environment.yml must pin python 3.11"
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return _pins([r for r in pip_section if not r.startswith("-e")])


def test_pyproject_and_environment_agree() -> None:
    assert _pyproject_pins() == _environment_pins()


def test_user_named_packages_are_pinned() -> None:
    pins = _pyproject_pins()
    missing = USER_PACKAGES - set(pins)
    assert not missing, f"packages the user named are missing from the pins: {missing}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_installed_versions_match_pins() -> None:
    from importlib.metadata import PackageNotFoundError, version

    mismatched = {}
    for name, pinned in _pyproject_pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            mismatched[name] = (pinned, None)
            continue
        if installed.split("+")[0] != pinned:
            mismatched[name] = (pinned, installed)
    assert not mismatched, f"installed versions differ from the pins (pinned, installed): {mismatched}"
