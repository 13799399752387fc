"""Grids on a cluster at the smoke profile (issue 28): the SLURM job-array script, and a lost Dask worker.

The script ``docs/slurm_array.sh`` is executed as it is: ``submit`` with a stand-in ``sbatch`` that records what
it is asked to submit, then the array tasks' mode ``run`` with ``SLURM_ARRAY_TASK_ID`` given by hand, then the
analysis (notebook 04).

A lost Dask worker costs nothing: SIGKILL of the worker process running a smoke distillation run
(after its first epoch's checkpoint) makes the scheduler resubmit the task; the run resumes from
``checkpoints/last.pt`` and its ``student.pt`` is byte-identical to the same run left alone.

Two runs with identical parameters (``reference`` and ``victim``) go to a LocalCluster of 2 workers (one run
slot, one thread budget each); the worker running ``victim`` is killed with ``kill -9``. The papermill child of
the killed worker dies with it (:func:`distilvpr_lib.executors.claims.die_with_parent`) and the kernel follows, so the
resubmitted task finds the run folder free.

Ctrl-C on a Dask batch's launcher (its own ``dask-local`` cluster, or one it does not own) stops the executing
run on its worker, records it ``interrupted`` as the local executor does, and a re-run completes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from grid_helpers import run_launchers_at_once, smoke_base, write_grid, write_notebook

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_teacher_folder(smoke_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.engine.runs.teacher_run import train_teacher

    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(smoke_dataset), "train.epochs": 1})
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    train_teacher(cfg, folder, progress=False)
    return folder


def test_slurm_array_script_runs_the_grid_by_index_then_notebook_04(smoke_dataset: Path, smoke_teacher_folder: Path,
                                                                     tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "grid.yaml",
                      variations=[{"name": "nokd", "method": "nokd"}, {"name": "distilvpr", "method": "distilvpr"}],
                      base=smoke_base(smoke_dataset, smoke_teacher_folder), name="array")
    out = tmp_path / "runs"
    bin_dir = tmp_path / "bin"  # `distilvpr` of this checkout, and a stand-in sbatch that records its arguments
    bin_dir.mkdir()
    (bin_dir / "distilvpr").write_text(f"#!/bin/sh\nexec {sys.executable} -m distilvpr_lib.cli \"$@\"\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'sbatch.log'}\n"
                                    "n=$(wc -l < " + str(tmp_path / "sbatch.log") + ")\necho \"$((4240 + n));cluster\"\n")
    for tool in ("distilvpr", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("SLURM_ARRAY_TASK_ID", None)
    script = REPO / "docs" / "slurm_array.sh"

    def sh(*args: str, **extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", str(script), *args], cwd=REPO, env={**env, **extra}, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-4000:])
        return proc

    submitted = sh("submit", str(grid), str(out))
    assert "submitted 2 runs as array job 4241; notebook 04 as job 4242 after it" in submitted.stdout
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert calls[0].startswith("--parsable --array=0-1%50 ") and calls[0].endswith(f"{script} run {grid} {out}")
    assert "--dependency=afterany:4241" in calls[1] and calls[1].endswith(f"{script} analyse {grid} {out}")
    assert not out.exists(), "submit runs nothing itself"

    for index in ("1", "0"):  # what sbatch --array would pass, in any order
        ran = sh("run", str(grid), str(out), SLURM_ARRAY_TASK_ID=index, SLURM_CPUS_PER_TASK="1")
        assert "1 succeeded, 0 skipped (already done), 0 failed" in ran.stdout
    batch = out / "array"
    record = json.loads((batch / "batch.json").read_text())
    assert [(r["name"], r["status"]) for r in record["runs"]] == [("nokd__seed0", "ok"), ("distilvpr__seed0", "ok")]
    assert json.loads((batch / "nokd__seed0" / "metrics.json").read_text())["method"] == "nokd"
    assert json.loads((batch / "distilvpr__seed0" / "metrics.json").read_text())["method"] == "distilvpr"

    analysed = sh("analyse", str(grid), str(out))
    assert "analysis:" in analysed.stdout
    assert (batch / "analysis" / "metrics.json").is_file() and (batch / "analysis" / "ablation_bars.png").is_file()


def test_two_launchers_share_a_smoke_grid_folder(smoke_dataset: Path, smoke_teacher_folder: Path,
                                                 tmp_path: Path) -> None:
    """Two ``distilvpr batch`` on one grid folder at once: each run executed once, both exit 0, batch.json agrees."""
    from distilvpr_lib.batch import Grid
    from distilvpr_lib.batch_ledger import batch_state

    grid = write_grid(tmp_path / "grid.yaml",
                      variations=[{"name": "nokd", "method": "nokd"}, {"name": "distilvpr", "method": "distilvpr"}],
                      base=smoke_base(smoke_dataset, smoke_teacher_folder), name="shared")
    out = tmp_path / "runs"
    # a launcher counts as succeeded only the runs it executed: 2 in all means each run executed once
    assert sum(run_launchers_at_once(grid, out, timeout=900)) == 2
    record = json.loads((out / "shared" / "batch.json").read_text())
    assert record["runs"] == batch_state(Grid.load(grid), out / "shared")
    assert [(r["name"], r["status"]) for r in record["runs"]] == [("nokd__seed0", "ok"), ("distilvpr__seed0", "ok")]
    for name in ("nokd__seed0", "distilvpr__seed0"):
        printed = _stdout(out / "shared" / name / "notebook.ipynb")
        assert len(re.findall(r"^epoch +1 ", printed, re.M)) == 1, printed


def _stdout(notebook: Path) -> str:
    nb = nbformat.read(notebook, as_version=4)
    return "".join("".join(o.get("text", "")) for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


_KILL_EPOCHS = 4  # room for the kill to land mid-run; the assertions hold wherever it lands


def test_killing_a_worker_mid_run_resumes_the_run_to_identical_weights(smoke_dataset: Path, smoke_teacher_folder: Path,
                                                                       tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from distilvpr_lib.batch import run_batch
    from distilvpr_lib.executors.backends import DaskExecutor

    grid = write_grid(tmp_path / "grid.yaml", variations=[{"name": "reference", "method": "nokd"},
                                                          {"name": "victim", "method": "nokd"}],  # same run twice
                      base=smoke_base(smoke_dataset, smoke_teacher_folder, epochs=_KILL_EPOCHS), name="loss")
    out = tmp_path / "runs"
    victim = out / "loss" / "victim__seed0"
    executor = DaskExecutor.local(workers=2)
    try:
        outcome: dict = {}
        launcher = threading.Thread(target=lambda: outcome.update(
            summary=run_batch(grid, out_root=out, executor=executor, progress=False)))
        launcher.start()
        deadline = time.time() + 600
        while not (victim / "checkpoints" / "last.pt").is_file():  # the end of epoch 1
            assert launcher.is_alive() and time.time() < deadline, "the victim never reached its first checkpoint"
            time.sleep(0.2)
        processing = executor.client.processing()
        address = next(a for a, keys in processing.items() if any("victim__seed0" in str(k) for k in keys))
        pid = executor.client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        launcher.join(timeout=900)
        assert not launcher.is_alive()
    finally:
        executor.close()
    summary = outcome["summary"]
    assert [(o.name, o.status) for o in summary.outcomes] == [("reference__seed0", "ok"), ("victim__seed0", "ok")], \
        [o.error for o in summary.outcomes]
    # resumed, not restarted: the re-executed notebook started from a checkpoint after epoch k >= 1 (the kill lands
    # wherever the victim is when it is seen: any epoch from 1 to the last) and trained epochs k+1.. only
    printed = _stdout(victim / "notebook.ipynb")
    resumed = re.search(r"resumed from .*last\.pt after epoch (\d+)", printed)
    assert resumed, printed
    k = int(resumed.group(1))
    assert 1 <= k <= _KILL_EPOCHS and not re.search(r"^epoch +1 ", printed, re.M), printed
    assert all(re.search(rf"^epoch +{e} ", printed, re.M) for e in range(k + 1, _KILL_EPOCHS + 1)), printed
    reference = out / "loss" / "reference__seed0"
    assert (victim / "student.pt").read_bytes() == (reference / "student.pt").read_bytes()
    from distilvpr_lib.data.files import is_temp_file

    assert not [p for p in victim.rglob("*") if is_temp_file(p)], "no temporary file left by the killed write"


@pytest.mark.parametrize("cluster", ["dask-local", "a scheduler elsewhere"])
def test_ctrl_c_on_a_dask_batch_records_the_running_run_interrupted_and_a_rerun_resumes_it(tmp_path: Path,
                                                                                           cluster: str) -> None:
    """SIGINT to the launcher of a Dask batch: the run a worker was executing is stopped there and ``interrupted``
    with the signal in ``status.json`` and ``metrics.json`` (as the local executor records it), the queued one is
    cancelled and ``not started`` (nothing created), and the next batch runs both. Whether the launcher owns the
    cluster (``dask-local``, closed with the batch) or not (a scheduler elsewhere: its workers live on)."""
    distributed = pytest.importorskip("distributed")
    from distilvpr_lib.batch import run_batch
    from distilvpr_lib.executors.backends import DaskExecutor
    from distilvpr_lib.stopping import is_alive

    hold = tmp_path / "hold"  # the notebook waits while this file exists, after writing metrics.json
    hold.write_text("")
    notebook = write_notebook(
        tmp_path / "hold.ipynb", "x = 1\nseed = 0\nout = 'unused'",
        "import json, os, pathlib, time\n"
        "pathlib.Path(out, 'ran.txt').open('a').write(f'{os.getpid()}\\n')\n"
        "pathlib.Path(out, 'metrics.json').write_text(json.dumps({'status': 'complete', 'x': x}))\n"
        f"while pathlib.Path({str(hold)!r}).exists():\n"
        "    time.sleep(0.1)\n")
    grid = write_grid(tmp_path / "grid.yaml", notebook, [{"name": "a", "x": 1}, {"name": "b", "x": 2}], name="toy")
    out = tmp_path / "runs"

    returned = threading.Event()

    def interrupt_once_a_run_waits() -> None:
        deadline = time.monotonic() + 60
        while not list((out / "toy").glob("*/ran.txt")) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers to the launcher
        if not returned.wait(40):  # a launcher that does not stop: let the runs end, so that the test fails, not hangs
            hold.unlink(missing_ok=True)

    threading.Thread(target=interrupt_once_a_run_waits, daemon=True).start()
    start = time.monotonic()
    if cluster == "dask-local":
        summary = run_batch(grid, out_root=out, workers=1, executor="dask-local", progress=False)  # one run slot
    else:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, resources={"run": 1},
                                      dashboard_address=None) as elsewhere, DaskExecutor(
                client=distributed.Client(elsewhere, set_as_default=False)) as executor:
            summary = run_batch(grid, out_root=out, executor=executor, progress=False)
            assert len(executor.client.scheduler_info()["workers"]) == 1  # the worker outlived the batch
    returned.set()
    assert hold.exists(), "the launcher did not stop on SIGINT (the runs ended only when released)"
    assert time.monotonic() - start < 40 and summary.signum == signal.SIGINT
    (started,) = [p.parent for p in (out / "toy").glob("*/ran.txt")]
    other = ({"a__seed0", "b__seed0"} - {started.name}).pop()
    assert {o.name: o.status for o in summary.outcomes} == {started.name: "interrupted", other: "not started"}
    status = json.loads((started / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGINT", status
    assert status["error"] == "interrupted by SIGINT (re-run the batch to resume)" and status["seconds"] > 0
    metrics = json.loads((started / "metrics.json").read_text())
    assert (metrics["status"], metrics["status_when_interrupted"], metrics["error"]) == (
        "interrupted", "complete", status["error"])
    assert not (out / "toy" / other).exists(), "the queued run was cancelled before it started"
    kernel = int((started / "ran.txt").read_text().split()[0])
    deadline = time.monotonic() + 10
    while is_alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_alive(kernel), "the interrupted run's kernel outlived the closed cluster"
    runs = {r["name"]: r["status"] for r in json.loads((out / "toy" / "batch.json").read_text())["runs"]}
    assert runs == {started.name: "interrupted", other: "not started"}

    hold.unlink()  # the re-run: both run to the end, the interrupted one again from its start
    again = run_batch(grid, out_root=out, workers=1, progress=False)
    assert sorted(o.status for o in again.outcomes) == ["ok", "ok"]
    assert len((started / "ran.txt").read_text().split()) == 2
    assert json.loads((started / "status.json").read_text())["status"] == "ok"
