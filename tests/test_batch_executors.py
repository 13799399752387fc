"""Grids beyond one process (issue 28): executors, runs claimed through their folder, batch.json derived from
the runs, ``--list`` / ``--index`` for job arrays, several launchers on one grid folder, a Dask scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from grid_helpers import batch_command, run_launchers_at_once, write_grid, write_notebook

from distilvpr_lib.batch import Grid, GridError, run_batch, select_runs
from distilvpr_lib.batch_ledger import batch_state, write_batch_record
from distilvpr_lib.cli import main
from distilvpr_lib.executors.backends import LocalExecutor, make_executor
from distilvpr_lib.executors.claims import (CLAIM_FILE, ELSEWHERE, EXECUTED, SKIPPED, THREADS_ENV, RunTask, SlotPool,
                                            claim_run, die_with_parent, is_claimed, run_claimed)
from distilvpr_lib.errors import OptionError

REPO = Path(__file__).resolve().parents[1]


def toy_notebook(path: Path) -> Path:
    """A notebook that sleeps ``pause`` s, appends to ``ran.txt`` (one line per execution) and records in
    ``metrics.json`` its parameters and the slot environment it was given."""
    return write_notebook(
        path, "x = 1\npause = 0.0\nseed = 0\nout = 'unused'",
        "import json, os, pathlib, time\n"
        "time.sleep(pause)\n"
        "pathlib.Path(out, 'ran.txt').open('a').write(f'{os.getpid()}\\n')\n"
        "env = {k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'CUDA_VISIBLE_DEVICES')}\n"
        "pathlib.Path(out, 'metrics.json').write_text(json.dumps({'test': {'ar1': x * 10 + seed}, 'env': env}))\n")


def toy_grid(tmp_path: Path, pause: float = 0.0, seeds: tuple[int, ...] = (0, 1)) -> Path:
    return write_grid(tmp_path / "grid.yaml", toy_notebook(tmp_path / "toy.ipynb"),
                      [{"name": "a", "x": 2}, {"name": "b", "x": 3}], base={"x": 1, "pause": pause}, seeds=seeds)


def _ok_call(run_dir: Path, threads: int, extra_env: dict) -> dict:
    """A RunTask call for the unit tests: records what it was given."""
    (run_dir / "called.json").write_text(json.dumps({"threads": threads, "env": extra_env}))
    return {"status": "ok"}


# ---------------------------------------------------------------------------
# Slots, claims, derived state (no subprocess)
# ---------------------------------------------------------------------------
def test_slots_share_out_threads_and_one_device_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    pool = SlotPool(2, threads=3, gpus=["5", "7"])
    with pool.take() as first, pool.take() as second:  # two runs at once: two devices
        assert (first.index, first.device, second.index, second.device) == (0, "5", 1, "7")
        assert first.environment() == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3",
                                       "DISTILVPR_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "5"}
    # the second worker process of a LocalCluster (name 1, one slot): global slot 1, the second device
    assert SlotPool(1, base=1, threads=1, gpus=["5", "7"]).slot(0).device == "7"
    assert SlotPool(1, base=2, threads=1, gpus=["5", "7"]).slot(0).device == "5"  # more slots than devices: wrap
    assert "CUDA_VISIBLE_DEVICES" not in SlotPool(1, threads=1, gpus=[]).slot(0).environment()  # CPU node
    monkeypatch.setenv(THREADS_ENV, "4")
    assert SlotPool(3, gpus=[]).threads == 4  # the environment's budget wins
    monkeypatch.delenv(THREADS_ENV)
    assert SlotPool(10**6, gpus=[]).threads == 1  # never 0


def test_a_claimed_run_is_running_elsewhere_and_a_complete_one_is_skipped(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    pool = SlotPool(1, threads=2, gpus=["3"])
    task = RunTask("r", run_dir, _ok_call, (run_dir,))
    with claim_run(run_dir):  # another launcher holds it (flock: a second open file conflicts, even in-process)
        assert is_claimed(run_dir)
        result = run_claimed(task, pool, writer_wait_s=0)
        assert result.state == ELSEWHERE and not result.failed and "is being written by" in result.error
        assert not (run_dir / "called.json").exists()
    assert not is_claimed(run_dir)
    result = run_claimed(task, pool, writer_wait_s=0)
    assert result.state == EXECUTED and result.value == {"status": "ok"}
    assert json.loads((run_dir / "called.json").read_text())["env"]["CUDA_VISIBLE_DEVICES"] == "3"
    done = RunTask("r", run_dir, _ok_call, (run_dir,), done=lambda d: True)
    assert run_claimed(done, pool, writer_wait_s=0).state == SKIPPED
    assert not (run_dir / CLAIM_FILE).exists() and not is_claimed(run_dir)  # released (no lock left) after each task


def test_a_previous_writer_still_holding_the_run_folder_makes_it_running_elsewhere(tmp_path: Path) -> None:
    from distilvpr_lib.engine.runs.run_guard import RunFolderLock

    run_dir = tmp_path / "r"
    with RunFolderLock(run_dir):  # the training pipeline's lock (an orphaned kernel of a lost worker)
        result = run_claimed(RunTask("r", run_dir, _ok_call, (run_dir,)), SlotPool(1, threads=1, gpus=[]),
                             writer_wait_s=0.2)
    assert result.state == ELSEWHERE and not (run_dir / "called.json").exists()


def test_local_executor_reports_every_task_and_counts_progress(tmp_path: Path) -> None:
    tasks = [RunTask(f"r{i}", tmp_path / f"r{i}", _ok_call, (tmp_path / f"r{i}",)) for i in range(3)]
    seen = []
    with claim_run(tmp_path / "r1"):
        results = {r.name: r.state for r in LocalExecutor(2).run(tasks, lambda p: seen.append((p.done, p.running)))}
    assert results == {"r0": EXECUTED, "r1": ELSEWHERE, "r2": EXECUTED}
    assert seen[-1] == (3, 0) and max(r for _, r in seen) >= 1


def test_batch_state_is_derived_from_the_run_folders(tmp_path: Path) -> None:
    grid = Grid.load(toy_grid(tmp_path))
    batch = tmp_path / "runs" / "toy"
    names = [r.name for r in grid.runs()]
    assert names == ["a__seed0", "a__seed1", "b__seed0", "b__seed1"]
    for name, status in zip(names, ["ok", "failed", "running", "running"]):
        (batch / name).mkdir(parents=True)
        (batch / name / "status.json").write_text(json.dumps({"status": status, "error": "boom"}))
    (batch / "a__seed0" / "metrics.json").write_text("{}")
    # a complete run is "ok" only with the grid's parameters on record (else it is stale)
    (batch / "a__seed0" / "parameters.yaml").write_text(yaml.safe_dump(grid.runs()[0].parameters))
    with claim_run(batch / "b__seed0"):  # b__seed0 is being run; b__seed1's launcher died (no claim)
        record = write_batch_record(grid, batch)
    assert [r["status"] for r in record["runs"]] == ["ok", "failed", "running", "interrupted"]
    assert record["runs"][1]["error"] == "boom" and record["runs"][0]["error"] is None
    assert record["counts"] == {"ok": 1, "stale": 0, "failed": 1, "running": 1, "interrupted": 1, "not started": 0,
                                "pending": 0}
    assert json.loads((batch / "batch.json").read_text())["runs"] == record["runs"]
    (batch / "b__seed1" / "status.json").unlink()
    assert batch_state(grid, batch)[3]["status"] == "pending"


def test_runs_a_stopped_dask_batch_cancelled_are_settled_from_their_folders(tmp_path: Path) -> None:
    import signal

    from distilvpr_lib.batch_ledger import settle_cancelled
    from distilvpr_lib.batch_records import RunOutcome
    from distilvpr_lib.executors.claims import CANCELLED

    batch = tmp_path / "toy"
    states = {"gone": "running", "held": "running", "done": "ok", "queued": None, "ran": "ok"}
    for name, status in states.items():
        if status is not None:
            (batch / name).mkdir(parents=True)
            (batch / name / "status.json").write_text(json.dumps({"status": status, "started": 100.0}))
    (batch / "gone" / "metrics.json").write_text(json.dumps({"status": "complete", "x": 1}))
    (batch / "done" / "metrics.json").write_text("{}")
    outcomes = [RunOutcome(name, CANCELLED if name != "ran" else "ok", batch / name) for name in states]
    with claim_run(batch / "held"):  # still executing on a worker that outlives the launcher
        settle_cancelled(outcomes, signal.SIGTERM)
    assert {o.name: o.status for o in outcomes} == {"gone": "interrupted", "held": ELSEWHERE, "done": "ok",
                                                    "queued": "not started", "ran": "ok"}
    error = "interrupted by SIGTERM (re-run the batch to resume)"
    status = json.loads((batch / "gone" / "status.json").read_text())
    assert (status["status"], status["signal"], status["error"], status["started"]) == (
        "interrupted", "SIGTERM", error, 100.0) and status["seconds"] > 0
    metrics = json.loads((batch / "gone" / "metrics.json").read_text())
    assert (metrics["status"], metrics["status_when_interrupted"], metrics["x"]) == ("interrupted", "complete", 1)
    assert json.loads((batch / "held" / "status.json").read_text())["status"] == "running"  # not ours to rewrite
    assert not (batch / "queued").exists()


def test_select_runs_and_index_errors(tmp_path: Path) -> None:
    grid = Grid.load(toy_grid(tmp_path))
    assert [r.name for r in select_runs(grid, index=2)] == ["b__seed0"]
    assert [r.name for r in select_runs(grid, only=["b"], index=1)] == ["b__seed1"]
    with pytest.raises(GridError, match=r"--index 4 is outside the 4 selected runs \(0 to 3"):
        select_runs(grid, index=4)
    with pytest.raises(GridError, match="--index -1"):
        select_runs(grid, index=-1)


def test_executor_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="--scheduler is for --executor dask"):
        make_executor("local", scheduler="tcp://x:1")
    with pytest.raises(OptionError, match="needs --scheduler"):
        make_executor("dask")
    with pytest.raises(OptionError, match="unknown executor"):
        make_executor("slurm")


def test_die_with_parent_wraps_module_commands_only() -> None:
    cmd = die_with_parent([sys.executable, "-m", "papermill", "a.ipynb"])
    if sys.platform.startswith("linux"):
        assert cmd[:2] == [sys.executable, "-c"] and cmd[3:] == [str(os.getpid()), "papermill", "a.ipynb"]
    assert die_with_parent(["ls", "-l"]) == ["ls", "-l"]
    # the wrapped child runs the module with its arguments, as `python -m` would
    out = subprocess.run(die_with_parent([sys.executable, "-m", "json.tool", "--compact"]), input='{"a": [1, 2]}',
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == '{"a":[1,2]}'


def test_die_with_parent_kills_the_child_of_a_killed_process(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    pid_file = tmp_path / "child.pid"
    # a parent that starts a wrapped `python -m http.server`-like sleeper and is then killed with SIGKILL
    parent = (f"import subprocess, sys, time\n"
              f"from distilvpr_lib.executors.claims import die_with_parent\n"
              f"p = subprocess.Popen(die_with_parent([sys.executable, '-m', 'timeit', '-n', '1', 'import time; time.sleep(60)']))\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              f"time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], env=dict(os.environ, PYTHONPATH=str(REPO)))
    import time

    deadline = time.time() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as fh:  # a zombie awaiting its (new) parent's wait counts as gone
            if fh.read().split(")")[-1].split()[0] == "Z":
                break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the child outlived its killed parent")


# ---------------------------------------------------------------------------
# Through papermill (the toy notebook: fast)
# ---------------------------------------------------------------------------
@pytest.mark.notebooks
def test_list_and_index_run_one_run_of_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid = toy_grid(tmp_path)
    out = tmp_path / "runs"
    assert main(["batch", str(grid), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["a__seed0", "a__seed1", "b__seed0", "b__seed1"]
    assert main(["batch", str(grid), "--list", "--only", "b"]) == 0
    assert capsys.readouterr().out.split() == ["b__seed0", "b__seed1"]
    assert not out.exists()
    assert main(["batch", str(grid), "--out", str(out), "--index", "7"]) == 2
    assert "--index 7 is outside the 4 selected runs" in capsys.readouterr().err and not out.exists()
    assert main(["batch", str(grid), "--out", str(out), "--index", "1", "--executor", "dask-local"]) == 2
    assert main(["batch", str(grid), "--out", str(out), "--index", "2"]) == 0
    assert "1 succeeded, 0 skipped (already done), 0 failed" in capsys.readouterr().out
    runs = sorted(p.name for p in (out / "toy").iterdir() if p.is_dir())
    assert runs == ["b__seed0"]
    assert json.loads((out / "toy" / "b__seed0" / "metrics.json").read_text())["test"]["ar1"] == 30
    record = json.loads((out / "toy" / "batch.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["pending", "pending", "ok", "pending"]


@pytest.mark.slow
@pytest.mark.notebooks
def test_two_launchers_on_one_grid_folder_run_every_run_once(tmp_path: Path) -> None:
    grid = toy_grid(tmp_path, pause=3.0, seeds=(0, 1))
    out = tmp_path / "runs"
    succeeded = run_launchers_at_once(grid, out, timeout=600)
    names = [r.name for r in Grid.load(grid).runs()]
    for name in names:  # every run executed exactly once, by one of the launchers
        assert len((out / "toy" / name / "ran.txt").read_text().split()) == 1, name
    assert sum(succeeded) == len(names), succeeded
    record = json.loads((out / "toy" / "batch.json").read_text())
    assert record["runs"] == batch_state(Grid.load(grid), out / "toy")  # consistent with the runs
    assert [r["status"] for r in record["runs"]] == ["ok"] * len(names)
    # a third launcher afterwards agrees: everything skipped, nothing re-executed
    command, env = batch_command(grid, out)
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "0 succeeded, 4 skipped" in again.stdout


@pytest.mark.slow
@pytest.mark.notebooks
def test_dask_executors_give_the_local_executors_results(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("DISTILVPR_GPUS", "5,7")  # two devices to share out (nothing uses them here)
    grid = toy_grid(tmp_path, seeds=(0,))
    local = run_batch(grid, out_root=tmp_path / "local", workers=2, progress=False)
    assert [o.status for o in local.outcomes] == ["ok", "ok"]

    def metrics(root: Path) -> dict:
        return {p.parent.name: json.loads(p.read_text()) for p in sorted((root / "toy").glob("*/metrics.json"))}

    # a scheduler started here, as a user would point at a running one (2 worker processes, one run slot each)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"run": 1},
                                  dashboard_address=None) as cluster:
        code = main(["batch", str(grid), "--out", str(tmp_path / "dask"), "--executor", "dask",
                     "--scheduler", cluster.scheduler_address])
    assert code == 0, capsys.readouterr().err
    assert main(["batch", str(grid), "--out", str(tmp_path / "dask-local"), "--executor", "dask-local",
                 "--workers", "2"]) == 0
    expected = metrics(tmp_path / "local")
    for root in ("dask", "dask-local"):
        got = metrics(tmp_path / root)
        assert {k: v["test"] for k, v in got.items()} == {k: v["test"] for k, v in expected.items()}, root
        assert {v["env"]["CUDA_VISIBLE_DEVICES"] for v in got.values()} <= {"5", "7"}, root
    assert {v["env"]["CUDA_VISIBLE_DEVICES"] for v in metrics(tmp_path / "local").values()} <= {"5", "7"}
    # dask-local gives each of its 2 runs cores // 2 threads, as the local executor with 2 workers does
    threads = {v["env"]["OMP_NUM_THREADS"] for v in metrics(tmp_path / "dask-local").values()}
    assert threads == {v["env"]["OMP_NUM_THREADS"] for v in expected.values()}
    record = json.loads((tmp_path / "dask" / "toy" / "batch.json").read_text())
    assert record["counts"]["ok"] == 2


def test_dask_scheduler_that_does_not_answer_is_an_option_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("distributed")
    from distilvpr_lib.executors.backends import DaskExecutor

    with pytest.raises(OptionError, match="cannot connect to a Dask scheduler"):
        DaskExecutor(scheduler="tcp://127.0.0.1:9", connect_timeout_s=1)
