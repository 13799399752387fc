"""The papermill batch runner: expansion, resumability, failure isolation, collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from grid_helpers import write_grid, write_notebook

from distilvpr_lib.batch import Grid, GridError, run_batch
from distilvpr_lib.batch_ledger import collect_batch
from distilvpr_lib.batch_records import UNSET
from distilvpr_lib.cli import main


def _toy_notebook(path: Path) -> Path:
    return write_notebook(
        path, "x = 1\nfail = False\nseed = 0\nout = 'unused'",
        "import json, pathlib\n"
        "if fail:\n    raise RuntimeError('deliberate failure for the test')\n"
        "pathlib.Path(out, 'metrics.json').write_text(json.dumps({'test': {'ar1': x * 10 + seed}, 'status': 'complete'}))\n"
        "pathlib.Path(out, 'ran.txt').open('a').write('ran\\n')")


def _grid(tmp_path: Path, **extra) -> Path:
    return write_grid(tmp_path / "grid.yaml", _toy_notebook(tmp_path / "toy.ipynb"),
                      [{"name": "a", "x": 2}, {"name": "broken", "fail": True}], base={"x": 1}, seeds=[0, 1], **extra)


def test_grid_expansion_variations_product_and_seeds(tmp_path: Path) -> None:
    grid = Grid.load(_grid(tmp_path, product={"y": [1, 2]}))
    names = [r.name for r in grid.runs()]
    assert names == ["a__seed0", "a__seed1", "broken__seed0", "broken__seed1", "y-1__seed0", "y-1__seed1",
                     "y-2__seed0", "y-2__seed1"]
    a0 = grid.runs()[0].parameters
    assert a0 == {"x": 2, "seed": 0}


def test_bad_grid_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("notebook: x.ipynb\nvariations: [{x: 1}]\n")
    with pytest.raises(GridError, match="bad.yaml.*name"):
        Grid.load(bad)
    bad.write_text("notebok: x.ipynb\n")
    with pytest.raises(GridError, match="unknown keys"):
        Grid.load(bad)
    with pytest.raises(GridError, match="does not exist"):
        Grid.load(tmp_path / "missing.yaml")


@pytest.mark.notebooks
def test_batch_isolates_failures_resumes_and_collects(tmp_path: Path) -> None:
    grid_path = _grid(tmp_path)
    out = tmp_path / "runs"
    summary = run_batch(grid_path, out_root=out, workers=2, progress=False)
    assert (summary.n_ok, summary.n_failed, summary.n_skipped) == (2, 2, 0)
    failed = out / "toy" / "broken__seed0"
    status = json.loads((failed / "status.json").read_text())
    assert status["status"] == "failed" and "deliberate failure" in status["error"]
    assert (failed / "notebook.ipynb").is_file(), "the failed run's executed notebook is kept"

    # Re-run: completed runs are skipped (their notebook does not run again), failed ones re-run.
    summary2 = run_batch(grid_path, out_root=out, workers=1, progress=False)
    assert (summary2.n_ok, summary2.n_failed, summary2.n_skipped) == (0, 2, 2)
    assert (out / "toy" / "a__seed0" / "ran.txt").read_text().count("ran") == 1

    df = collect_batch(out / "toy")
    assert len(df) == 4
    ok = df[df.status == "ok"].set_index("run")
    assert ok.loc["a__seed1", "test.ar1"] == 21 and ok.loc["a__seed1", "param.x"] == 2
    assert set(df[df.status == "failed"].variation) == {"broken"}
    assert set(ok["metrics.status"]) == {"complete"}  # a metric named like a batch column does not shadow it


@pytest.mark.notebooks
def test_batch_cli_exit_status_reports_failures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["batch", str(_grid(tmp_path)), "--out", str(tmp_path / "runs"), "--only", "broken__seed0"])
    assert code == 1
    assert "0 succeeded, 0 skipped (already done), 1 failed" in capsys.readouterr().out


def _finished_run(run_dir: Path, parameters: dict, status: str = "ok") -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "parameters.yaml").write_text(yaml.safe_dump({**parameters, "out": str(run_dir)}))
    (run_dir / "status.json").write_text(json.dumps({"status": status}))
    (run_dir / "metrics.json").write_text("{}")


def test_plan_skips_same_parameters_reports_stale_and_moves_changed_runs_aside(tmp_path: Path) -> None:
    """A finished run is skipped only with the grid's parameters; otherwise stale (left alone) unless re-run
    is asked, and a folder about to be re-run with other parameters is moved aside first (never mixed)."""
    from distilvpr_lib.batch import RunSpec, plan_runs

    batch = tmp_path / "toy"
    _finished_run(batch / "same__seed0", {"x": 2, "seed": 0})
    _finished_run(batch / "edited__seed0", {"x": 2, "epochs": 3, "seed": 0})
    _finished_run(batch / "failed__seed0", {"x": 1, "seed": 0}, status="failed")
    runs = [RunSpec("same__seed0", {"x": 2, "seed": 0}), RunSpec("edited__seed0", {"x": 3, "seed": 0}),
            RunSpec("failed__seed0", {"x": 5, "seed": 0}), RunSpec("new__seed0", {"x": 1, "seed": 0})]

    decided, todo = plan_runs(runs, batch)
    assert [(o.name, o.status) for o in decided] == [("same__seed0", "skipped"), ("edited__seed0", "stale")]
    assert decided[1].changes == {"epochs": (3, UNSET),
                                  "x": (2, 3)}
    assert [spec.name for spec, _, _ in todo] == ["failed__seed0", "new__seed0"]
    (_, failed_dir, replaced), (_, _, none) = todo
    assert none is None and replaced is not None and replaced.changes == {"x": (1, 5)}
    assert not failed_dir.exists() and replaced.replaced.parent == batch / ".stale"
    assert (replaced.replaced / "parameters.yaml").is_file()
    assert (batch / "edited__seed0" / "metrics.json").is_file(), "a stale run is left as it is without the flag"

    decided, todo = plan_runs(runs[:2], batch, rerun_stale=True)
    assert [(o.name, o.status) for o in decided] == [("same__seed0", "skipped")]
    ((spec, run_dir, replaced),) = todo
    assert spec.name == "edited__seed0" and not run_dir.exists()
    assert sorted(p.name.split(".")[0] for p in (batch / ".stale").iterdir()) == ["edited__seed0", "failed__seed0"]
