"""Parameterised notebook batches executed by papermill.

A *grid file* (YAML) names a notebook, base parameters, variations and seeds::

    name: ablations-cpu
    notebook: notebooks/03_distillation.ipynb
    base: {dataset: data/cpu, teacher: teacher_weights/cpu, epochs: 12}
    seeds: [0, 1, 2]
    variations:                      # a list of named parameter sets ...
      - {name: nokd, method: nokd}
      - {name: distilvpr, method: distilvpr}
    product:                         # ... and/or a cartesian product (names built from the values)
      curvature: [0.01, 0.1, 1.0]

Every run (variation x seed) is executed into ``<out>/<batch name>/<run name>/`` holding
``notebook.ipynb`` (the executed copy), ``parameters.yaml``, ``status.json`` and the
``metrics.json`` the notebook writes into its ``out`` folder. Re-running a grid skips runs whose
metrics exist with status ``ok`` and re-runs unfinished or failed ones. A failing run is recorded
(status, error, executed notebook kept) and the others continue.

Where the runs execute is an executor's business (:mod:`distilvpr_lib.executors`: a local thread pool, a Dask
cluster, one run per job-array task with ``index``). Each run is claimed through its folder before it starts, so
any number of launchers share one grid folder (a run claimed elsewhere is reported ``elsewhere``, never failed),
and ``<out>/<batch name>/batch.json`` is rebuilt from the runs' ``status.json`` (:func:`batch_state`).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distilvpr_lib.data.files import atomic_write, write_json
from distilvpr_lib.errors import MissingDataError
from distilvpr_lib.executors.backends import Executor, Progress
from distilvpr_lib.executors.claims import (ELSEWHERE, ERROR, EXECUTED, SKIPPED, RunTask, TaskResult, die_with_parent,
                                            is_claimed)
from distilvpr_lib.paths import project_path

#: Name of the notebook parameter that receives the run folder.
OUT_PARAMETER = "out"
METRICS_FILE = "metrics.json"
STATUS_FILE = "status.json"
PARAMETERS_FILE = "parameters.yaml"
EXECUTED_NOTEBOOK = "notebook.ipynb"


class GridError(ValueError):
    """A grid file is malformed (the message names the file and the problem)."""


@dataclass
class RunSpec:
    """One notebook execution of a batch."""

    name: str
    parameters: dict[str, Any]


@dataclass
class Grid:
    """A parsed grid file."""

    name: str
    notebook: Path
    base: dict[str, Any] = field(default_factory=dict)
    variations: list[dict[str, Any]] = field(default_factory=list)
    product: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    source: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Grid":
        """Read a grid YAML file.

        Paths inside a grid file (the notebook, and path parameters such as ``dataset``) are relative to
        the project root (:func:`distilvpr_lib.paths.project_path`), as the notebooks resolve them, so a
        grid runs the same from any working folder.
        """
        path = Path(path)
        if not path.is_file():
            raise GridError(f"{path}: grid file does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GridError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise GridError(f"{path}: expected a mapping at the top level")
        known = {"name", "notebook", "base", "variations", "product", "seeds"}
        unknown = set(raw) - known
        if unknown:
            raise GridError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if "notebook" not in raw:
            raise GridError(f"{path}: missing key 'notebook'")
        variations = raw.get("variations") or []
        for i, v in enumerate(variations):
            if not isinstance(v, dict) or "name" not in v:
                raise GridError(f"{path}: variation #{i} must be a mapping with a 'name'")
        names = [v["name"] for v in variations]
        if len(set(names)) != len(names):
            raise GridError(f"{path}: duplicate variation names {names}")
        return cls(
            name=str(raw.get("name") or path.stem),
            notebook=project_path(raw["notebook"]),
            base=dict(raw.get("base") or {}),
            variations=[dict(v) for v in variations],
            product={k: list(v) for k, v in (raw.get("product") or {}).items()},
            seeds=[int(s) for s in (raw.get("seeds") or [0])],
            source=path,
        )

    def runs(self) -> list[RunSpec]:
        """Expand variations x product x seeds into named runs (names are folder-safe)."""
        sets: list[tuple[str, dict[str, Any]]] = []
        for v in self.variations:
            params = {k: val for k, val in v.items() if k != "name"}
            sets.append((str(v["name"]), params))
        if self.product:
            keys = sorted(self.product)
            for values in itertools.product(*(self.product[k] for k in keys)):
                params = dict(zip(keys, values))
                sets.append(("__".join(f"{k}-{_slug(v)}" for k, v in params.items()), params))
        if not sets:
            sets = [("base", {})]
        runs = []
        for set_name, params in sets:
            for seed in self.seeds:
                merged = {**self.base, **params, "seed": seed}
                runs.append(RunSpec(name=f"{set_name}__seed{seed}", parameters=merged))
        return runs


@dataclass
class RunOutcome:
    name: str
    status: str  # "ok" | "failed" | "skipped" | "elsewhere" (claimed by another launcher: running elsewhere)
    run_dir: Path
    error: str | None = None
    seconds: float = 0.0


@dataclass
class BatchSummary:
    batch_dir: Path
    outcomes: list[RunOutcome]

    @property
    def n_ok(self) -> int:
        return sum(o.status == "ok" for o in self.outcomes)

    @property
    def n_skipped(self) -> int:
        return sum(o.status == "skipped" for o in self.outcomes)

    @property
    def n_failed(self) -> int:
        return sum(o.status == "failed" for o in self.outcomes)

    @property
    def n_elsewhere(self) -> int:
        """Runs claimed by another launcher or worker (running elsewhere; never failed)."""
        return sum(o.status == ELSEWHERE for o in self.outcomes)

    def __str__(self) -> str:
        lines = [f"batch {self.batch_dir}: {self.n_ok} succeeded, {self.n_skipped} skipped (already done), "
                 f"{self.n_failed} failed" + (f", {self.n_elsewhere} running elsewhere" if self.n_elsewhere else "")]
        for o in self.outcomes:
            if o.status == "failed":
                lines.append(f"  FAILED {o.name}: {o.error}  (notebook: {o.run_dir / EXECUTED_NOTEBOOK})")
        return "\n".join(lines)


def _slug(value: Any) -> str:
    return str(value).replace("/", "-").replace(" ", "")


def run_is_complete(run_dir: Path) -> bool:
    """True when the run folder holds metrics and an ``ok`` status."""
    status = run_dir / STATUS_FILE
    if not (run_dir / METRICS_FILE).is_file() or not status.is_file():
        return False
    try:
        return json.loads(status.read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, sort_keys=True, default=str)


def execute_notebook(notebook: Path, run_dir: Path, parameters: dict[str, Any], threads: int | None = None,
                     timeout_s: float | None = None, extra_env: dict[str, str] | None = None) -> RunOutcome:
    """Execute ``notebook`` with papermill into ``run_dir`` (in a subprocess with its own thread budget).

    The notebook receives ``parameters`` plus ``out=<run_dir>`` (absolute); its executed copy is kept even on
    failure. The kernel starts in the notebook's own folder, as in JupyterLab, so a notebook that runs here
    runs there. ``extra_env`` is added to the subprocess's environment (an executor slot's
    ``CUDA_VISIBLE_DEVICES``); the subprocess dies with this process (:func:`~distilvpr_lib.executors.claims.die_with_parent`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {**parameters, OUT_PARAMETER: str(run_dir.resolve())}
    with atomic_write(run_dir / PARAMETERS_FILE, mode="w") as fh:
        yaml.safe_dump(params, fh, sort_keys=True)
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DISTILVPR_NUM_THREADS"):
            env[var] = str(threads)
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(run_dir / EXECUTED_NOTEBOOK),
           "-f", str(run_dir / PARAMETERS_FILE), "--cwd", str(Path(notebook).resolve().parent), "--no-progress-bar", "--log-level", "WARNING"]
    if timeout_s:
        cmd += ["--execution-timeout", str(int(timeout_s))]
    start = time.time()
    _write_json(run_dir / STATUS_FILE, {"status": "running", "started": start})
    cmd = die_with_parent(cmd)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.time() - start
    if proc.returncode == 0 and (run_dir / METRICS_FILE).is_file():
        _write_json(run_dir / STATUS_FILE, {"status": "ok", "started": start, "seconds": seconds})
        return RunOutcome(run_dir.name, "ok", run_dir, seconds=seconds)
    if proc.returncode == 0:
        error = f"notebook finished but wrote no {METRICS_FILE} into its '{OUT_PARAMETER}' folder"
    else:
        error = _last_error_line(proc.stderr) or f"papermill exited with status {proc.returncode}"
    _write_json(run_dir / STATUS_FILE, {"status": "failed", "started": start, "seconds": seconds, "error": error,
                                        "stderr_tail": proc.stderr[-4000:]})
    return RunOutcome(run_dir.name, "failed", run_dir, error=error, seconds=seconds)


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[:500]
    return lines[-1][:500] if lines else ""


def preflight_grid(grid: "Grid | str | Path", out_root: str | Path = "runs") -> "Grid":
    """What a batch reads, checked before ``OUT/<batch>/`` is created: the grid, its notebook, every distinct
    ``dataset`` parameter (training set, test split, images; :mod:`distilvpr_lib.engine.runs.preflight`) and every
    ``teacher`` folder that exists. Per-run settings (a bad method) are left to the runs, which fail alone.

    Raises:
        GridError: bad grid or missing notebook (exit 2). DataFormatError / CheckpointError / RunFolderError:
            a dataset, teacher or the output folder is unusable (exit 1).
    """
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.engine.runs.preflight import preflight_dataset, preflight_out_dir, preflight_teacher_folder
    from distilvpr_lib.paths import project_path

    if not isinstance(grid, Grid):
        grid = Grid.load(grid)
    if not grid.notebook.is_file():
        raise GridError(f"{grid.source}: notebook {grid.notebook} does not exist")
    preflight_out_dir(Path(out_root) / grid.name)
    datasets: set[Path] = set()
    teachers: set[tuple[Path, str]] = set()
    for spec in grid.runs():
        params = spec.parameters
        if params.get("dataset"):
            datasets.add(project_path(params["dataset"]))
        teacher = project_path(params.get("teacher")) if params.get("teacher") else None
        if teacher is not None and teacher.exists():
            teachers.add((teacher, str(params.get("profile") or "cpu")))
    for dataset in sorted(datasets):
        preflight_dataset(dataset, training=True, splits=("test",))
    for teacher, profile in sorted(teachers):
        try:
            cfg = profile_config(profile)
        except KeyError:
            continue  # a bad profile fails its own run, isolated by the batch
        preflight_teacher_folder(teacher, cfg)
    return grid


def run_batch(grid: Grid | str | Path, out_root: str | Path = "runs", workers: int = 1, force: bool = False,
              only: list[str] | None = None, progress: bool = True, timeout_s: float | None = None,
              executor: "str | Executor" = "local", scheduler: str | None = None,
              index: int | None = None) -> BatchSummary:
    """Run every run of a grid (resumable, failure-isolated), ``workers`` at a time.

    Args:
        executor: where the runs execute (:mod:`distilvpr_lib.executors`): ``"local"`` (``workers`` threads
            here; each run gets ``max(1, cores // workers)`` threads so the cores are not oversubscribed),
            ``"dask-local"`` (a LocalCluster of ``workers`` processes), ``"dask"`` (the running scheduler at
            ``scheduler``), or an :class:`~distilvpr_lib.executors.backends.Executor` (left open).
        index: run only the ``index``-th (0-based) of the selected runs (a job-array task:
            ``$SLURM_ARRAY_TASK_ID``); see :func:`select_runs`.

    Every run is claimed through its folder before it starts; a run claimed by another launcher is
    reported ``elsewhere`` (running elsewhere), not failed. ``batch.json`` is then rewritten from every run's
    ``status.json`` (:func:`batch_state`), so several launchers, and a re-run after a crash, agree.

    Raises:
        GridError: bad grid, notebook, or ``index`` (exit 2); OptionError: bad executor options (exit 2).
    """
    from tqdm.auto import tqdm

    from distilvpr_lib.executors.backends import make_executor

    grid = preflight_grid(grid, out_root)  # before anything is created
    batch_dir = Path(out_root) / grid.name
    runs = select_runs(grid, only=only, index=index)
    # --- dispatch through an executor (distilvpr_lib.executors) -----------------------------------------
    owned = not isinstance(executor, Executor)
    pool = make_executor(str(executor), workers, scheduler) if owned else executor  # option errors: nothing written
    try:
        batch_dir.mkdir(parents=True, exist_ok=True)
        outcomes: list[RunOutcome] = []
        tasks: list[RunTask] = []
        for spec in runs:
            run_dir = batch_dir / spec.name
            if not force and run_is_complete(run_dir):
                outcomes.append(RunOutcome(spec.name, "skipped", run_dir))
            else:
                absolute = run_dir.resolve()  # workers elsewhere see the same path on the shared filesystem
                tasks.append(RunTask(spec.name, absolute, execute_notebook,
                                     (grid.notebook.resolve(), absolute, spec.parameters), {"timeout_s": timeout_s},
                                     done=None if force else run_is_complete))
        initial = len(outcomes)
        bar = tqdm(total=len(runs), initial=initial, desc=f"batch {grid.name}", disable=not progress)

        def show(p: Progress) -> None:
            bar.n = initial + p.done
            bar.set_postfix(running=p.running, failed=p.failed, elsewhere=p.elsewhere)

        for result in pool.run(tasks, show):
            outcomes.append(_task_outcome(result, batch_dir / result.name))
        bar.close()
    finally:
        if owned:
            pool.close()
    order = {spec.name: i for i, spec in enumerate(runs)}
    outcomes.sort(key=lambda o: order.get(o.name, 0))
    summary = BatchSummary(batch_dir, outcomes)
    write_batch_record(grid, batch_dir)
    return summary


# ---------------------------------------------------------------------------
# Run selection (job arrays), outcomes of executor tasks, and the batch record derived from the runs
# ---------------------------------------------------------------------------
def select_runs(grid: Grid, only: list[str] | None = None, index: int | None = None) -> list[RunSpec]:
    """The runs of ``grid`` a launcher executes: those whose name starts with one of ``only`` (all if empty),
    then, when ``index`` is given, only the ``index``-th (0-based) of those — ``distilvpr batch GRID --list``
    prints them in this order, one per line, and ``sbatch --array=0-(N-1)`` passes ``$SLURM_ARRAY_TASK_ID``.

    Raises:
        GridError: ``index`` outside ``0 .. N-1`` (names the grid and N).
    """
    runs = grid.runs()
    if only:
        runs = [r for r in runs if any(r.name.startswith(o) for o in only)]
    if index is None:
        return runs
    if not 0 <= int(index) < len(runs):
        raise GridError(f"{grid.source or grid.name}: --index {index} is outside the {len(runs)} selected runs "
                        f"(0 to {len(runs) - 1}; distilvpr batch GRID --list prints them)")
    return [runs[int(index)]]


def _task_outcome(result: TaskResult, run_dir: Path) -> RunOutcome:
    if result.state == EXECUTED:
        return result.value
    if result.state == SKIPPED:
        return RunOutcome(result.name, "skipped", run_dir)
    if result.state == ELSEWHERE:
        return RunOutcome(result.name, ELSEWHERE, run_dir, error=result.error)
    assert result.state == ERROR, result.state
    return RunOutcome(result.name, "failed", run_dir, error=result.error)


#: Run states in ``batch.json`` (see :func:`batch_state`).
RUN_STATES: tuple[str, ...] = ("ok", "failed", "running", "interrupted", "pending")


def batch_state(grid: Grid, batch_dir: str | Path) -> list[dict[str, Any]]:
    """Every run of ``grid`` with its state, derived from its folder alone (never from a launcher's memory).

    States: ``ok`` (``status.json`` says ok and ``metrics.json`` exists), ``running`` (a launcher or worker
    holds the run's claim now), ``failed`` (``status.json`` says failed), ``interrupted`` (``status.json`` says
    running but nobody holds the claim: its launcher died; a re-run resumes it), ``pending`` (not started).

    Returns:
        ``[{"name", "status", "error"}]`` in grid order.
    """
    batch_dir = Path(batch_dir)
    states = []
    for spec in grid.runs():
        run_dir = batch_dir / spec.name
        record: dict[str, Any] = {}
        try:
            loaded = json.loads((run_dir / STATUS_FILE).read_text())
            record = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
        written = record.get("status")
        if run_is_complete(run_dir):
            state = "ok"
        elif is_claimed(run_dir):
            state = "running"
        elif written == "failed":
            state = "failed"
        elif written in ("running", "ok"):  # "ok" without metrics.json: the folder lost its metrics
            state = "interrupted"
        else:
            state = "pending"
        states.append({"name": spec.name, "status": state, "error": record.get("error") if state == "failed" else None})
    return states


def write_batch_record(grid: Grid, batch_dir: str | Path) -> dict[str, Any]:
    """Rewrite ``<batch>/batch.json`` from the runs' folders (:func:`batch_state`); returns what it wrote."""
    import datetime

    batch_dir = Path(batch_dir)
    runs = batch_state(grid, batch_dir)
    record = {
        "grid": str(grid.source) if grid.source else None, "notebook": str(grid.notebook),
        "derived_from": f"<run>/{STATUS_FILE} of every run of the grid",
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "counts": {state: sum(r["status"] == state for r in runs) for state in RUN_STATES},
        "runs": runs,
    }
    _write_json(batch_dir / "batch.json", record)
    return record


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        out[prefix] = obj


def collect_batch(batch_dir: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """Load every run of a batch into one DataFrame: parameters + flattened metrics + status.

    Columns: ``run``, ``variation``, ``status``, ``error``, ``param.<name>`` for every parameter and
    ``<metric path>`` (dot-joined) for every scalar in ``metrics.json``.

    Raises:
        MissingDataError: (a FileNotFoundError) the folder does not exist or holds no run (one line, naming it).
    """
    import pandas as pd

    batch_dir = Path(batch_dir)
    if not batch_dir.is_dir():
        raise MissingDataError("batch folder does not exist", path=batch_dir,
                               hint="run the grid first: distilvpr batch GRID.yaml, or pass the folder it wrote")
    rows = []
    for run_dir in sorted(p for p in batch_dir.iterdir() if p.is_dir()):
        params_file = run_dir / PARAMETERS_FILE
        if not params_file.is_file():
            continue
        row: dict[str, Any] = {"run": run_dir.name, "variation": run_dir.name.rsplit("__seed", 1)[0]}
        status = json.loads((run_dir / STATUS_FILE).read_text()) if (run_dir / STATUS_FILE).is_file() else {}
        row["status"] = status.get("status", "unknown")
        row["error"] = status.get("error")
        row["seconds"] = status.get("seconds")
        for k, v in (yaml.safe_load(params_file.read_text()) or {}).items():
            row[f"param.{k}"] = v
        if (run_dir / METRICS_FILE).is_file():
            metrics: dict[str, Any] = {}
            _flatten("", json.loads((run_dir / METRICS_FILE).read_text()), metrics)
            for key, value in metrics.items():  # a metric never shadows the batch's own columns
                row[f"metrics.{key}" if key in row else key] = value
        rows.append(row)
    if not rows:
        raise MissingDataError(f"no batch runs in this folder (no <run>/{PARAMETERS_FILE})", path=batch_dir,
                               hint="run the grid first: distilvpr batch GRID.yaml, or pass the folder it wrote")
    return pd.DataFrame(rows)
