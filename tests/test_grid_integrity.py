"""Every run of a batch is what its name says (issue 25), through the real ``distilvpr`` process.

* a grid is checked against its notebook's ``parameters`` cell before anything runs: unknown names, duplicate
  keys, ``seed`` in a variation, names that leave ``--out``, wrong types, bad seeds -> exit 2, one line;
* a completed run whose recorded parameters differ from the grid's is **stale**: reported, not reused,
  re-run only with ``--rerun-stale`` (the old folder moved aside, never mixed);
* papermill's warnings make a run fail and are kept in its ``status.json``; a failed run's one-line error is
  kept whole;
* SIGINT / SIGTERM stop a batch within seconds (no new run, running ones and their children ended, recorded
  ``interrupted``), and SIGTERM stops a training run as Ctrl-C does (``status: interrupted``, resumable);
* the workbook's errors show in a failing notebook cell as one line (the traceback with ``DISTILVPR_DEBUG=1``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from grid_helpers import write_grid, write_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_03 = REPO / "notebooks" / "03_distillation.ipynb"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("DISTILVPR_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p])
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distilvpr_lib.cli", *args]


def distilvpr(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``distilvpr ARGS`` as a user would (a separate process)."""
    return subprocess.run(_command(*args), capture_output=True, text=True, env=_env(), timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def _toy_notebook(path: Path) -> Path:
    """A fast notebook taking the parameters the tests vary; ``y``'s line has a comment papermill cannot parse."""
    return write_notebook(
        path,
        "x = 1\nepochs = 2\nfail = ''\nsleep = 0\nseed = 0\nout = 'unused'\n"
        "y = 0  # y=0 means no y (papermill reads two '=' on this line and gives up on it)",
        "import json, pathlib, subprocess, sys, time\n"
        "from distilvpr_lib.errors import DataFormatError, show_errors_in_one_line\n"
        "show_errors_in_one_line()\n"
        "if sleep:  # a run with a child process of its own, as a training run's DataLoader workers\n"
        "    # whose metrics.json is written before a later cell (as notebook 03's after its training)\n"
        "    pathlib.Path(out, 'metrics.json').write_text(json.dumps({'x': x, 'status': 'complete'}))\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "    pathlib.Path(out, 'child.pid').write_text(str(child.pid))\n"
        "    time.sleep(sleep)\n"
        "if fail:\n"
        "    raise DataFormatError(fail, path=pathlib.Path(out) / 'input.csv')\n"
        "pathlib.Path(out, 'metrics.json').write_text(json.dumps({'x': x, 'epochs': epochs, 'seed': seed}))\n"
        "with pathlib.Path(out, 'ran.txt').open('a') as fh:\n"
        "    fh.write('ran\\n')")


# ---------------------------------------------------------------------------
# 1. Grids that mean what they say (no notebook runs: refused before anything is written)
# ---------------------------------------------------------------------------
#: (case, base, variations, seeds, what the one line must name)
REFUSED_GRIDS = [
    ("unknown-name", "{profile: smoke, epochs: 1}", "  - {name: nokd, methd: nokd}\n", "[0]",
     ["variation 'nokd'", "unknown parameter 'methd'", "did you mean 'method'"]),
    ("unknown-name-in-base", "{profile: smoke, epoch: 1}", "  - {name: nokd, method: nokd}\n", "[0]",
     ["base", "unknown parameter 'epoch'", "did you mean 'epochs'"]),
    ("duplicate-key", "{profile: smoke, epochs: 1}", "  - {name: nokd, method: nokd, method: rkd}\n", "[0]",
     ["line 6", "duplicate key 'method'"]),
    ("variation-seed", "{profile: smoke, epochs: 1}", "  - {name: nokd, method: nokd, seed: 3}\n", "[0]",
     ["variation 'nokd'", "parameter 'seed'", "'seeds'"]),
    ("name-leaves-out", "{profile: smoke, epochs: 1}", "  - {name: ../../x, method: nokd}\n", "[0]",
     ["'../../x'", "not a plain folder name"]),
    ("absolute-name", "{profile: smoke, epochs: 1}", "  - {name: /tmp/x, method: nokd}\n", "[0]",
     ["'/tmp/x'", "not a plain folder name"]),
    ("wrong-type", "{profile: smoke}", "  - {name: nokd, method: nokd, epochs: ten}\n", "[0]",
     ["variation 'nokd'", "parameter 'epochs'", "'ten'", "an integer", "train.epochs"]),
    ("wrong-type-override", "{profile: smoke, epochs: 1}",
     "  - {name: nokd, method: nokd, overrides: {train.task_normalize: 3}}\n", "[0]",
     ["variation 'nokd'", "'overrides'", "train.task_normalize", "a boolean"]),
    ("unknown-override", "{profile: smoke, epochs: 1}",
     "  - {name: nokd, method: nokd, overrides: {train.no_such_field: 1}}\n", "[0]",
     ["variation 'nokd'", "'overrides'", "no_such_field"]),
    ("unknown-profile", "{profile: nosuch, epochs: 1}", "  - {name: nokd, method: nokd}\n", "[0]",
     ["parameter 'profile'", "unknown profile 'nosuch'; known profiles: cpu,"]),
    ("bad-seeds", "{profile: smoke, epochs: 1}", "  - {name: nokd, method: nokd}\n", "[zero]",
     ["seeds", "'zero'", "not an integer"]),
]


@pytest.mark.parametrize("case, base, variations, seeds, names", REFUSED_GRIDS, ids=[c[0] for c in REFUSED_GRIDS])
def test_a_grid_is_checked_against_the_notebook_before_anything_runs(tmp_path: Path, case: str, base: str,
                                                                     variations: str, seeds: str,
                                                                     names: list[str]) -> None:
    grid = write_grid(tmp_path / "grid.yaml", NOTEBOOK_03, variations, base=base, seeds=seeds)
    out = tmp_path / "runs"
    line = _one_error_line(distilvpr("batch", str(grid), "--out", str(out)), code=2)
    assert str(grid) in line, line
    for name in names:
        assert name in line, (name, line)
    assert not out.exists(), "nothing is written before the grid is checked"


def test_a_grid_name_that_leaves_out_is_refused(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "grid.yaml", NOTEBOOK_03, "  - {name: nokd, method: nokd}\n", name="../up",
                      base="{profile: smoke}")
    line = _one_error_line(distilvpr("batch", str(grid), "--out", str(tmp_path / "runs" / "in")), code=2)
    assert "grid name '../up'" in line and str(grid) in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "runs" / "up").exists()


# ---------------------------------------------------------------------------
# 2. Stale runs
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.notebooks
def test_an_edited_grid_reports_stale_runs_and_reruns_them_only_when_asked(tmp_path: Path) -> None:
    notebook = _toy_notebook(tmp_path / "toy.ipynb")
    grid = tmp_path / "grid.yaml"
    out = tmp_path / "runs"
    write_grid(grid, notebook, "  - {name: a, x: 2}\n  - {name: b, x: 5}\n", base="{x: 1}")
    first = distilvpr("batch", str(grid), "--out", str(out), "--only", "a")
    assert first.returncode == 0, first.stdout + first.stderr
    run_a = out / "toy" / "a__seed0"
    assert json.loads((run_a / "metrics.json").read_text())["x"] == 2

    # the grid is edited: a's x and epochs change; b has never run
    write_grid(grid, notebook, "  - {name: a, x: 3, epochs: 1}\n  - {name: b, x: 5}\n", base="{x: 1}")
    second = distilvpr("batch", str(grid), "--out", str(out))
    assert second.returncode == 1, second.stdout + second.stderr
    assert "1 succeeded, 0 skipped (already done), 0 failed, 1 stale" in second.stdout, second.stdout
    stale_line = next(line for line in second.stdout.splitlines() if line.strip().startswith("STALE a__seed0"))
    assert "x: 2 -> 3" in stale_line and "epochs: (unset) -> 1" in stale_line, stale_line
    assert "--rerun-stale" in second.stdout
    assert json.loads((out / "toy" / "b__seed0" / "metrics.json").read_text())["x"] == 5, "the other runs ran"
    assert (run_a / "ran.txt").read_text().count("ran") == 1, "a stale run is not re-run without the flag"
    assert json.loads((run_a / "metrics.json").read_text())["x"] == 2
    batch = json.loads((out / "toy" / "batch.json").read_text())
    assert {r["name"]: r["status"] for r in batch["runs"]} == {"a__seed0": "stale", "b__seed0": "ok"}

    third = distilvpr("batch", str(grid), "--out", str(out), "--rerun-stale")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 succeeded, 1 skipped (already done), 0 failed" in third.stdout, third.stdout
    assert json.loads((run_a / "metrics.json").read_text()) == {"x": 3, "epochs": 1, "seed": 0}
    assert (run_a / "ran.txt").read_text().count("ran") == 1, "the new run starts in a clean folder"
    (aside,) = (out / "toy" / ".stale").iterdir()
    assert aside.name.startswith("a__seed0.") and json.loads((aside / "metrics.json").read_text())["x"] == 2
    assert str(aside) in third.stdout

    from distilvpr_lib.batch_ledger import collect_batch

    table = collect_batch(out / "toy").set_index("run")
    assert sorted(table.index) == ["a__seed0", "b__seed0"], "the run moved aside is not in the batch's tables"
    assert table.loc["a__seed0", "param.x"] == 3 and table.loc["a__seed0", "x"] == 3


# ---------------------------------------------------------------------------
# 3 + 5. Papermill warnings fail a run; a failed run's message is kept whole
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.notebooks
def test_papermill_warnings_fail_the_run_and_errors_are_kept_whole(tmp_path: Path) -> None:
    notebook = _toy_notebook(tmp_path / "toy.ipynb")
    message = "the file lists " + " ".join(f"column{i}" for i in range(90)) + " and ends here"
    assert len(message) > 700
    grid = write_grid(tmp_path / "grid.yaml", notebook,
                      f"  - {{name: warned, y: 1}}\n  - {{name: long, fail: '{message}'}}\n", base="{x: 1}")
    out = tmp_path / "runs"
    proc = distilvpr("batch", str(grid), "--out", str(out), "--workers", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 succeeded, 0 skipped (already done), 2 failed" in proc.stdout, proc.stdout

    warned = json.loads((out / "toy" / "warned__seed0" / "status.json").read_text())
    assert warned["status"] == "failed" and warned["warnings"] == ["Passed unknown parameter: y"], warned
    assert "Passed unknown parameter: y" in warned["error"]

    long_dir = out / "toy" / "long__seed0"
    expected = f"DataFormatError: {long_dir.resolve() / 'input.csv'}: {message}"
    assert json.loads((long_dir / "status.json").read_text())["error"] == expected
    assert f"FAILED long__seed0: {expected}  (notebook:" in proc.stdout
    # the failing cell of the executed notebook shows that one line, not a traceback
    executed = nbformat.read(long_dir / "notebook.ipynb", as_version=4)
    (error,) = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.output_type == "error"]
    assert error.traceback == [expected]


# ---------------------------------------------------------------------------
# 4. Batches and runs that stop when told
# ---------------------------------------------------------------------------
def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _all_gone(pids: list[int], timeout: float = 10) -> list[int]:
    from distilvpr_lib.stopping import is_alive

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if is_alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-to-the-terminal-group", "sigterm-to-the-batch"])
def test_a_signal_stops_the_batch_its_runs_and_their_children(tmp_path: Path, signum: int, to_group: bool) -> None:
    from distilvpr_lib.stopping import descendant_pids

    notebook = _toy_notebook(tmp_path / "toy.ipynb")
    grid = write_grid(tmp_path / "grid.yaml", notebook, "  - {name: a, sleep: 600}\n  - {name: b}\n", base="{x: 1}")
    out = tmp_path / "runs"
    batch = subprocess.Popen(_command("batch", str(grid), "--out", str(out)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    try:
        _wait_for(out / "toy" / "a__seed0" / "child.pid", batch)
        child = int((out / "toy" / "a__seed0" / "child.pid").read_text())
        tree = descendant_pids(batch.pid)
        assert child in tree and len(tree) >= 3, tree  # papermill, its kernel, the kernel's child
        start = time.monotonic()
        if to_group:  # a terminal's Ctrl-C reaches the whole foreground process group
            os.killpg(batch.pid, signum)
        else:
            batch.send_signal(signum)
        stdout, stderr = batch.communicate(timeout=60)
        seconds = time.monotonic() - start
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    assert batch.returncode == 128 + signum, (batch.returncode, stdout, stderr)
    assert seconds < 20, f"the batch took {seconds:.0f} s to stop"
    assert not _all_gone(tree), "processes of the stopped run survived (papermill, kernel or its child)"
    status = json.loads((out / "toy" / "a__seed0" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == name, status
    # the metrics.json written before the signal agrees: not a complete run
    metrics = json.loads((out / "toy" / "a__seed0" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["error"] == status["error"], metrics
    assert metrics["status_when_interrupted"] == "complete" and metrics["x"] == 1, metrics
    assert not (out / "toy" / "b__seed0").exists(), "no run starts after the signal"
    runs = {r["name"]: r["status"] for r in json.loads((out / "toy" / "batch.json").read_text())["runs"]}
    assert runs == {"a__seed0": "interrupted", "b__seed0": "not started"}
    assert f"stopped by {name}: re-run the same command to resume" in stdout, stdout
    assert "Traceback" not in stderr and "ZMQError" not in stderr, stderr[-3000:]


def test_an_interrupted_runs_metrics_say_interrupted(tmp_path: Path) -> None:
    from distilvpr_lib.batch_records import mark_metrics_interrupted, run_is_complete

    run = tmp_path / "run"
    run.mkdir()
    assert mark_metrics_interrupted(run, "interrupted by SIGTERM") is None and not (run / "metrics.json").exists()
    (run / "metrics.json").write_text(json.dumps({"status": "complete", "test": {"AR@1": 50.0}}))
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    mark_metrics_interrupted(run, "interrupted by SIGTERM (re-run the batch to resume)")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["status"], metrics["status_when_interrupted"], metrics["test"]) == (
        "interrupted", "complete", {"AR@1": 50.0})
    assert metrics["error"] == "interrupted by SIGTERM (re-run the batch to resume)" and metrics["interrupted_at"]
    assert not run_is_complete(run)
    # already interrupted (the engine's own record): stays so, its previous status is not lost
    mark_metrics_interrupted(run, "interrupted by SIGINT")
    again = json.loads((run / "metrics.json").read_text())
    assert (again["status"], again["status_when_interrupted"]) == ("interrupted", "complete")
    (run / "metrics.json").write_text("[1, 2]")  # not a record: left as it is (it does not look complete)
    assert mark_metrics_interrupted(run, "x") is None and (run / "metrics.json").read_text() == "[1, 2]"


def test_terminate_process_tree_ends_children_in_other_sessions(tmp_path: Path) -> None:
    """A run's process (own session) whose child starts a session of its own, as papermill's kernel does:
    both are ended, the caller's process group is never signalled."""
    from distilvpr_lib.stopping import descendant_pids, is_alive, terminate_process_tree

    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time, pathlib\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(c.pid))\n"
            "time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        _wait_for(pid_file, proc, timeout=60)
        child = int(pid_file.read_text())
        assert descendant_pids(proc.pid) == [child] and os.getpgid(child) != os.getpgid(proc.pid)
        start = time.monotonic()
        terminate_process_tree(proc, grace_s=2.0)
        assert proc.returncode == -signal.SIGTERM and time.monotonic() - start < 5
        assert not _all_gone([child], timeout=5) and not is_alive(child)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigterm_stops_a_training_run_like_ctrl_c_and_it_resumes(smoke_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    args = ("train-teacher", "--dataset", str(smoke_dataset), "--out", str(out), "--profile", "smoke",
            "--epochs", "2", "--device", "cpu", "--quiet")
    run = subprocess.Popen(_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(out / "checkpoints" / "last.pt", run)  # epoch 1 is done
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    proc = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    assert _one_error_line(proc, code=143) == "error: interrupted by SIGTERM"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["error"] == "interrupted by SIGTERM", metrics
    resumed = distilvpr(*args[:-1])  # the same command (not quiet: it says where it resumed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert json.loads((out / "metrics.json").read_text())["status"] == "complete"


# ---------------------------------------------------------------------------
# 6. Notebook errors in one line
# ---------------------------------------------------------------------------
#: (case, papermill parameters of notebook 03, the start of the one line its failing cell shows)
NOTEBOOK_ERRORS = [
    ("unknown-profile", ["-p", "profile", "nosuch"],
     "UnknownProfileError: unknown profile 'nosuch'; known profiles: cpu, paper, smoke, study"),
    ("unknown-override", ["-p", "profile", "smoke", "-y", "overrides: {train.no_such_field: 1}"],
     "UnknownNameError: parameter 'overrides': unknown field 'no_such_field' in config section 'train'; known: ["),
    ("unknown-method", ["-p", "profile", "smoke", "-p", "method", "nosuch"],
     "UnknownNameError: distill.method: unknown distillation method 'nosuch'; known presets: ["),
]


@pytest.mark.notebooks
@pytest.mark.parametrize("case, parameters, line", NOTEBOOK_ERRORS, ids=[c[0] for c in NOTEBOOK_ERRORS])
def test_a_bad_parameter_fails_the_notebook_cell_in_one_line(tmp_path: Path, case: str, parameters: list[str],
                                                            line: str) -> None:
    executed = tmp_path / "executed.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOK_03), str(executed), *parameters,
                           "-p", "out", str(tmp_path / "out"), "--cwd", str(NOTEBOOK_03.parent),
                           "--no-progress-bar", "--log-level", "WARNING"],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode != 0
    nb = nbformat.read(executed, as_version=4)
    (error,) = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(error.traceback) == 1 and "\n" not in error.traceback[0], error.traceback
    assert error.traceback[0].startswith(line), error.traceback
    assert not (tmp_path / "out").exists(), "nothing written before the parameters are checked"


#: (cell run after ``from distilvpr_lib.config import notebook_config``, the one line it shows)
CONFIG_ERRORS = [
    ("epochs = 'ten'\ncfg = notebook_config('smoke', {'data.dataset_dir': None,\n    'train.epochs': epochs})",
     "ConfigValueError: parameter 'epochs': train.epochs: expected an integer, got 'ten' (str)"),
    ("method = 'rkd_x0'\nnotebook_config('smoke', {'distill.method': method})",
     "ConfigValueError: parameter 'method': method name 'rkd_x0': a scale must be > 0"),
    ("extra = {'train.epochs': 1, 'train.no_such_field': 1}\nnotebook_config('smoke', {}, extra)",
     "UnknownNameError: parameter 'extra': unknown field 'no_such_field' in config section 'train'; known: ["),
    ("overrides = {'nosuch': 1}\nnotebook_config(profile='smoke', overrides=overrides)",
     "UnknownNameError: parameter 'overrides': unknown config field 'nosuch'; use one of: ["),
    ("overrides = ['train.epochs', 1]\nnotebook_config('smoke', {}, overrides)",
     "ConfigValueError: parameter 'overrides': expected a mapping of config fields to values"),
    ("from distilvpr_lib.losses.distiller import Distiller\n"
     "Distiller(notebook_config('smoke', {'distill.method': 'nosuch'}).distill)",
     "UnknownNameError: distill.method: unknown distillation method 'nosuch'; known presets: ["),
    ("from distilvpr_lib.losses.distiller import Distiller\n"
     "Distiller(notebook_config('smoke', {'distill.terms': {'rkdgg': 1.0}}).distill)",
     "UnknownNameError: distill.terms: unknown loss term(s) ['rkdgg']; known: ["),
]


@pytest.mark.parametrize("cell, line", CONFIG_ERRORS, ids=["wrong-type", "bad-method-name", "unknown-field",
                                                           "keywords", "overrides-not-a-mapping", "unknown-method",
                                                           "unknown-term"])
def test_config_errors_show_one_line_naming_the_parameter(cell: str, line: str, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook's config errors (not only an unknown profile) are the workbook's own: one line naming the
    parameter that holds the bad value, read from the ``notebook_config(...)`` call in the cell."""
    from IPython.core.interactiveshell import InteractiveShell

    from distilvpr_lib.errors import show_errors_in_one_line

    monkeypatch.delenv("DISTILVPR_DEBUG", raising=False)
    shell = InteractiveShell.instance()
    try:
        assert show_errors_in_one_line()
        assert shell.run_cell("from distilvpr_lib.config import notebook_config").success
        capsys.readouterr()
        result = shell.run_cell(cell)
        shown = [text for text in capsys.readouterr().out.splitlines() if text.strip()]
        assert not result.success and len(shown) == 1 and shown[0].startswith(line), shown
    finally:
        InteractiveShell.clear_instance()


def test_config_errors_are_option_errors_that_callers_still_catch_as_before() -> None:
    """Exit status 2 in the CLI and a batch; still a KeyError / ValueError for code that catches one."""
    from distilvpr_lib.config import apply_overrides, notebook_config, parse_method_name, profile_config
    from distilvpr_lib.errors import EXIT_BAD_OPTIONS, UnknownNameError, exit_code_for, format_error

    with pytest.raises(KeyError) as info:
        apply_overrides(profile_config("smoke"), {"train.no_such_field": 1})
    assert isinstance(info.value, UnknownNameError) and exit_code_for(info.value) == EXIT_BAD_OPTIONS
    assert format_error(info.value).startswith("unknown field 'no_such_field' in config section 'train'")
    with pytest.raises(ValueError) as info:
        parse_method_name("rkd_x0")
    assert exit_code_for(info.value) == EXIT_BAD_OPTIONS
    with pytest.raises(KeyError) as info:  # outside a readable call site: the field, not a parameter
        exec("notebook_config('smoke', {'train.no_such_field': 1})", {"notebook_config": notebook_config})
    assert format_error(info.value).startswith("unknown field 'no_such_field'")


def test_workbook_errors_show_one_line_in_ipython_and_the_traceback_with_debug(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from distilvpr_lib.errors import show_errors_in_one_line

    shell = InteractiveShell.instance()
    try:
        assert show_errors_in_one_line()
        cell = ("from distilvpr_lib.errors import DataFormatError\n"
                "def read():\n    raise DataFormatError('is empty', path='data/x.csv', hint='regenerate it')\n"
                "read()")
        monkeypatch.delenv("DISTILVPR_DEBUG", raising=False)
        result = shell.run_cell(cell)
        shown = capsys.readouterr().out
        assert not result.success
        assert [line for line in shown.splitlines() if line.strip()] == [
            "DataFormatError: data/x.csv: is empty (regenerate it)"], shown
        monkeypatch.setenv("DISTILVPR_DEBUG", "1")
        shell.run_cell(cell)
        shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # without colours
        assert "Traceback" in shown and "raise DataFormatError" in shown, shown
        # other exceptions keep IPython's traceback
        monkeypatch.delenv("DISTILVPR_DEBUG")
        shell.run_cell("def f():\n    return 1 / 0\nf()")
        assert "Traceback" in capsys.readouterr().out
    finally:
        InteractiveShell.clear_instance()


def test_unknown_profile_is_one_line_option_error() -> None:
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.errors import EXIT_BAD_OPTIONS, exit_code_for, format_error

    with pytest.raises(KeyError) as info:  # still a KeyError for callers that catch one
        profile_config("nosuch")
    assert format_error(info.value) == "unknown profile 'nosuch'; known profiles: cpu, paper, smoke, study"
    assert exit_code_for(info.value) == EXIT_BAD_OPTIONS
