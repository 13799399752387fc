"""A grid's variation goes over its ``base`` deeply (issue 29): a nested mapping (``overrides``, ``terms``) is merged
key by key, so a variation names only what it changes; and the committed grids expand to the runs they expanded to
before they were shortened."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from grid_helpers import write_grid

from distilvpr_lib.batch import Grid
from distilvpr_lib.errors import GridError
from distilvpr_lib.grid_checks import check_grid, merge_parameters

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_03 = REPO / "notebooks" / "03_distillation.ipynb"


def test_merge_parameters_merges_mappings_and_replaces_everything_else() -> None:
    base = {"epochs": 32, "overrides": {"train.milestones": [24], "train.task_normalize": False},
            "terms": {"rkdg": 10.0}, "nested": {"a": {"b": 1, "c": 2}}, "compare_with": ["x"]}
    merged = merge_parameters(base, {"overrides": {"train.task_normalize": True}, "nested": {"a": {"c": 3}},
                                     "compare_with": ["y"], "terms": None, "method": "rkd"})
    assert merged == {"epochs": 32, "overrides": {"train.milestones": [24], "train.task_normalize": True},
                      "terms": None, "nested": {"a": {"b": 1, "c": 3}}, "compare_with": ["y"], "method": "rkd"}
    # a mapping over a scalar (or a scalar over a mapping) replaces it
    assert merge_parameters({"terms": None}, {"terms": {"cc": 1.0}}) == {"terms": {"cc": 1.0}}
    assert merge_parameters({"overrides": {"a.b": 1}}, {"overrides": {}}) == {"overrides": {"a.b": 1}}
    # neither argument changes
    assert base["overrides"] == {"train.milestones": [24], "train.task_normalize": False}
    assert base["nested"] == {"a": {"b": 1, "c": 2}} and base["terms"] == {"rkdg": 10.0}


def _toy_grid(tmp_path: Path) -> Grid:
    return Grid.load(write_grid(
        tmp_path / "deep.yaml", variations=[
            {"name": "plain", "method": "nokd"},
            {"name": "norm", "method": "distilvpr", "overrides": {"train.task_normalize": True}},
            {"name": "step30", "method": "distilvpr", "overrides": {"train.milestones": [30]}},
            {"name": "weights", "method": "distilvpr", "terms": {"cross_euclidean_st2ss": 1.0}},
            {"name": "short", "method": "nokd", "epochs": 16, "terms": None}],
        base={"dataset": "data/study", "epochs": 32, "overrides": {"train.milestones": [24]}, "terms": {"rkdg": 10.0}},
        seeds=[0, 1], name="deep", product={"overrides": [{"distill.until_epoch": 12}]}))


def test_grid_runs_are_the_hand_written_deep_merges(tmp_path: Path) -> None:
    base = {"dataset": "data/study", "epochs": 32}
    milestones = {"train.milestones": [24]}
    expected = {
        "plain": {**base, "method": "nokd", "overrides": milestones, "terms": {"rkdg": 10.0}},
        "norm": {**base, "method": "distilvpr", "overrides": {"train.milestones": [24], "train.task_normalize": True},
                 "terms": {"rkdg": 10.0}},
        "step30": {**base, "method": "distilvpr", "overrides": {"train.milestones": [30]}, "terms": {"rkdg": 10.0}},
        "weights": {**base, "method": "distilvpr", "overrides": milestones,
                    "terms": {"rkdg": 10.0, "cross_euclidean_st2ss": 1.0}},
        "short": {"dataset": "data/study", "epochs": 16, "method": "nokd", "overrides": milestones, "terms": None},
        "overrides-{'distill.until_epoch':12}": {**base, "overrides": {"train.milestones": [24],
                                                                        "distill.until_epoch": 12},
                                                  "terms": {"rkdg": 10.0}},
    }
    grid = _toy_grid(tmp_path)
    runs = grid.runs()
    assert [r.name for r in runs] == [f"{name}__seed{s}" for name in expected for s in (0, 1)]
    for run in runs:
        name, _, seed = run.name.rpartition("__seed")
        assert run.parameters == {**expected[name], "seed": int(seed)}, run.name


def test_runs_share_no_mutable_parameters(tmp_path: Path) -> None:
    grid = _toy_grid(tmp_path)
    runs = grid.runs()
    runs[0].parameters["overrides"]["train.milestones"].append(99)
    runs[0].parameters["terms"]["cc"] = 1.0
    assert grid.base["overrides"] == {"train.milestones": [24]} and grid.base["terms"] == {"rkdg": 10.0}
    assert runs[1].parameters["overrides"] == {"train.milestones": [24]}
    assert grid.runs()[0].parameters["terms"] == {"rkdg": 10.0}


def _grid(tmp_path: Path, base: str, variation: str) -> Grid:
    return Grid.load(write_grid(tmp_path / "g.yaml", NOTEBOOK_03, f"  - {variation}\n", base=base, name="g"))


def test_check_grid_checks_the_merged_overrides(tmp_path: Path) -> None:
    ok = _grid(tmp_path, "{profile: smoke, overrides: {train.milestones: [1]}}",
               "{name: norm, overrides: {train.task_normalize: true}}")
    check_grid(ok)
    # the base's bad value reaches the variation's run: refused, naming the variation
    bad = _grid(tmp_path, "{profile: smoke, overrides: {train.task_normalize: 3}}",
                "{name: step, overrides: {train.milestones: [1]}}")
    with pytest.raises(GridError, match=r"g\.yaml: variation 'step': parameter 'overrides': train\.task_normalize: "
                                        r"expected a boolean"):
        check_grid(bad)
    # one field named two ways by base and variation: the run's value would depend on the order -> refused
    twice = _grid(tmp_path, "{profile: smoke, overrides: {train.task_normalize: true}}",
                  "{name: raw, overrides: {task_normalize: false}}")
    with pytest.raises(GridError, match=r"variation 'raw': parameter 'overrides': config field "
                                        r"train\.task_normalize is set twice, as 'train\.task_normalize' and "
                                        r"'task_normalize'"):
        check_grid(twice)


def expansion_digest(grid: Grid) -> str:
    """sha256 of the grid's name and its runs' names and parameters (canonical JSON; types kept: 1 != 1.0)."""
    runs = [[r.name, r.parameters] for r in grid.runs()]
    return hashlib.sha256(json.dumps({"name": grid.name, "runs": runs}, sort_keys=True).encode()).hexdigest()


#: The committed grids' expansions at commit d7ec94f (before the deep merge and the grids' shortening): run count
#: and :func:`expansion_digest`, computed there once with this same function.
EXPANSIONS_AT_D7EC94F = {
    "baselines.yaml": (36, "4a652e51f7327af00b8f513cbc75d45a84ca99f68fabf93c831f1dbd39b2962a"),
    "demo.yaml": (9, "f2ebc6548eecfe1f3b87d722a24c684e6959a015be81140a5071d65edd5c5be8"),
    "distilvpr.yaml": (42, "31dd0537f47015c6fd745e6b7e418bf8d065f2081612101e7cff3c3279990a34"),
    "smoke.yaml": (3, "84b8ddb359a63b0df28f529945833bbe22a7cbbac748d8317cdf8212d515e875"),
    "study.yaml": (150, "dc0c4d9456377e801afa1d246f2e660a48566589d96db8a8753fb76df1fb3f7b"),
    "study_long.yaml": (60, "6ce1569f57689ac1444962bf64f00dd84ae51e735d858927b5ab852628d3b363"),
    "study_short.yaml": (10, "ae27e2262e930bd0226dd38621da2e4e19c4dcdf8d8e164e036ff163cb48d428"),
}


def test_every_committed_grid_expands_as_before_its_simplification() -> None:
    grids = sorted(p.name for p in (REPO / "ablations").glob("*.yaml") if not p.name.startswith("benchmark"))
    assert grids == sorted(EXPANSIONS_AT_D7EC94F), "a grid was added or removed: record its expansion here"
    for name, (n_runs, digest) in EXPANSIONS_AT_D7EC94F.items():
        grid = Grid.load(REPO / "ablations" / name)
        assert len(grid.runs()) == n_runs, name
        assert expansion_digest(grid) == digest, (
            f"ablations/{name} no longer expands to the runs it did at d7ec94f: compare "
            f"`git show d7ec94f:ablations/{name}` with it (a run's parameters must not change under its name)")


def test_study_long_names_its_schedule_once() -> None:
    """The shortened grid: the LR step is the base's, and the variations carry only what they change."""
    grid = Grid.load(REPO / "ablations" / "study_long.yaml")
    assert grid.base["overrides"] == {"train.milestones": [24]}
    assert all("train.milestones" not in v.get("overrides", {}) for v in grid.variations)
    assert all(r.parameters["overrides"]["train.milestones"] == [24] for r in grid.runs())


@pytest.mark.parametrize("name", sorted(EXPANSIONS_AT_D7EC94F))
def test_every_committed_grid_passes_its_checks(name: str) -> None:
    check_grid(Grid.load(REPO / "ablations" / name))
