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

Every run is what its name says (issue 25, docs/GRIDS.md):

* the grid is checked against the notebook's ``parameters`` cell before anything runs
  (:mod:`distilvpr_lib.grid_checks`: unknown or wrong-typed parameters, duplicate keys, ``seed``/``out``
  in a variation, names that leave ``--out``);
* a completed run whose recorded ``parameters.yaml`` differs from what the grid now asks is **stale**: it is
  reported with the differing keys and neither skipped nor reused; ``rerun_stale`` moves it aside to
  ``<batch>/.stale/`` and runs it again. An unfinished run with other parameters is moved aside the same
  way before it runs, so a run folder never mixes two sets of parameters;
* papermill's warnings (``Passed unknown parameter``) are kept in ``status.json`` and make the run fail;
* SIGINT / SIGTERM stop the batch (:mod:`distilvpr_lib.stopping`): no new run starts, the running ones are
  ended with their children and recorded ``interrupted``; re-running the batch resumes them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distilvpr_lib.batch_records import (EXECUTED_NOTEBOOK, METRICS_FILE, OUT_PARAMETER, PARAMETERS_FILE, STALE_DIR,
                                         STATUS_FILE, format_changes, last_error_line, move_aside, notebook_error,
                                         papermill_warnings, parameter_changes, run_is_complete)
from distilvpr_lib.data.files import atomic_write, write_json
from distilvpr_lib.errors import GridError, MissingDataError
from distilvpr_lib.grid_checks import check_folder_name, check_grid, check_seeds, load_grid_yaml
from distilvpr_lib.paths import project_path
from distilvpr_lib.stopping import StopSignals, terminate_process_tree


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
        raw = load_grid_yaml(path) or {}
        if not isinstance(raw, dict):
            raise GridError(f"{path}: expected a mapping at the top level")
        known = {"name", "notebook", "base", "variations", "product", "seeds"}
        unknown = set(raw) - known
        if unknown:
            raise GridError(f"{path}: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
        if "notebook" not in raw:
            raise GridError(f"{path}: missing key 'notebook'")
        for key, expected in (("base", dict), ("variations", list), ("product", dict)):
            if raw.get(key) is not None and not isinstance(raw[key], expected):
                raise GridError(f"{path}: {key}: expected a {'mapping' if expected is dict else 'list'}, "
                                f"got {raw[key]!r}")
        variations = raw.get("variations") or []
        for i, v in enumerate(variations):
            if not isinstance(v, dict) or "name" not in v:
                raise GridError(f"{path}: variation #{i} must be a mapping with a 'name'")
            check_folder_name(v["name"], "variation name", str(path))
        names = [str(v["name"]) for v in variations]
        if len(set(names)) != len(names):
            raise GridError(f"{path}: duplicate variation names {names}")
        for key, values in (raw.get("product") or {}).items():
            if not isinstance(values, list) or not values:
                raise GridError(f"{path}: product: {key!r} must be a non-empty list of values, got {values!r}")
        return cls(
            name=check_folder_name(raw.get("name") or path.stem, "grid name", str(path)),
            notebook=project_path(raw["notebook"]),
            base=dict(raw.get("base") or {}),
            variations=[dict(v) for v in variations],
            product={k: list(v) for k, v in (raw.get("product") or {}).items()},
            seeds=check_seeds(raw.get("seeds") if raw.get("seeds") is not None else [0], str(path)),
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
    """What became of one run of a batch.

    ``status`` is ``ok``, ``failed``, ``skipped`` (done before, same parameters), ``stale`` (done before with
    other parameters: ``changes`` says which, old and new), ``interrupted`` (stopped by a signal; re-running
    the batch resumes it) or ``not started`` (the batch was stopped first).
    """

    name: str
    status: str
    run_dir: Path
    error: str | None = None
    seconds: float = 0.0
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    replaced: Path | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class BatchSummary:
    batch_dir: Path
    outcomes: list[RunOutcome]
    #: The signal that stopped the batch (``None``: it ran to the end).
    signum: int | None = None

    def count(self, status: str) -> int:
        """How many runs ended with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def n_ok(self) -> int:
        return self.count("ok")

    @property
    def n_skipped(self) -> int:
        return self.count("skipped")

    @property
    def n_failed(self) -> int:
        return self.count("failed")

    @property
    def n_stale(self) -> int:
        return self.count("stale")

    @property
    def n_interrupted(self) -> int:
        return self.count("interrupted") + self.count("not started")

    def __str__(self) -> str:
        from distilvpr_lib.errors import signal_name

        head = (f"batch {self.batch_dir}: {self.n_ok} succeeded, {self.n_skipped} skipped (already done), "
                f"{self.n_failed} failed")
        for status in ("stale", "interrupted", "not started"):
            if self.count(status):
                head += f", {self.count(status)} {status}"
        lines = [head]
        for o in self.outcomes:
            if o.replaced is not None:
                lines.append(f"  REPLACED {o.name}: its folder held a run with other parameters "
                             f"({format_changes(o.changes)}); moved to {o.replaced}")
            if o.status == "failed":
                lines.append(f"  FAILED {o.name}: {o.error}  (notebook: {o.run_dir / EXECUTED_NOTEBOOK})")
            elif o.status == "stale":
                lines.append(f"  STALE {o.name}: completed with other parameters than the grid's now: "
                             f"{format_changes(o.changes)} (not re-run, results not current)")
            elif o.status == "interrupted":
                lines.append(f"  INTERRUPTED {o.name}  (notebook: {o.run_dir / EXECUTED_NOTEBOOK})")
        if self.n_stale:
            lines.append("  stale runs: re-run the batch with --rerun-stale to move them aside to "
                         f"{self.batch_dir / STALE_DIR}/ and run them with the grid's parameters")
        if self.signum is not None:
            lines.append(f"  stopped by {signal_name(self.signum)}: re-run the same command to resume "
                         "(completed runs are skipped, interrupted ones run again)")
        return "\n".join(lines)


def _slug(value: Any) -> str:
    return str(value).replace("/", "-").replace(" ", "")


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, sort_keys=True, default=str)


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------
def execute_notebook(notebook: Path, run_dir: Path, parameters: dict[str, Any], threads: int | None = None,
                     timeout_s: float | None = None, stop: StopSignals | None = None) -> RunOutcome:
    """Execute ``notebook`` with papermill into ``run_dir`` (in a subprocess with its own thread budget).

    The notebook receives ``parameters`` plus ``out=<run_dir>`` (absolute); its executed copy is kept even on
    failure. The kernel starts in the notebook's own folder, as in JupyterLab, so a notebook that runs here
    runs there. Papermill runs in a session of its own: ``stop`` (a batch's :class:`StopSignals`) ends it and
    its children; without one, an exception here (Ctrl-C) ends them before it propagates. A run that
    papermill warns about (an unknown parameter) is ``failed``, its warnings kept in ``status.json``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {**parameters, OUT_PARAMETER: str(run_dir.resolve())}
    with atomic_write(run_dir / PARAMETERS_FILE, mode="w") as fh:
        yaml.safe_dump(params, fh, sort_keys=True)
    env = dict(os.environ)
    env.pop("JPY_SESSION_NAME", None)  # a papermill kernel has no widget frontend (distilvpr_lib.progress)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DISTILVPR_NUM_THREADS"):
            env[var] = str(threads)
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(run_dir / EXECUTED_NOTEBOOK),
           "-f", str(run_dir / PARAMETERS_FILE), "--cwd", str(Path(notebook).resolve().parent), "--no-progress-bar", "--log-level", "WARNING"]
    if timeout_s:
        cmd += ["--execution-timeout", str(int(timeout_s))]
    start = time.time()
    _write_json(run_dir / STATUS_FILE, {"status": "running", "started": start})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if stop is not None:
        stop.register(proc)
    try:
        _, stderr = proc.communicate()
    except BaseException:  # Ctrl-C in a caller without StopSignals: the run's processes do not outlive it
        terminate_process_tree(proc)
        _write_json(run_dir / STATUS_FILE, {"status": "interrupted", "started": start,
                                            "seconds": time.time() - start, "error": "interrupted"})
        raise
    finally:
        if stop is not None:
            stop.unregister(proc)
    seconds = time.time() - start
    warnings = papermill_warnings(stderr)
    record = {"started": start, "seconds": seconds, "warnings": warnings}
    if proc.returncode == 0 and (run_dir / METRICS_FILE).is_file() and not warnings:
        _write_json(run_dir / STATUS_FILE, {"status": "ok", **record})
        return RunOutcome(run_dir.name, "ok", run_dir, seconds=seconds)
    if proc.returncode != 0 and stop is not None and stop.stopped:
        error = f"interrupted by {stop.signal_name} (re-run the batch to resume)"
        _write_json(run_dir / STATUS_FILE, {"status": "interrupted", **record, "error": error,
                                            "signal": stop.signal_name})
        return RunOutcome(run_dir.name, "interrupted", run_dir, error=error, seconds=seconds, warnings=warnings)
    if proc.returncode == 0 and warnings:
        error = (f"papermill warned: {'; '.join(warnings)} (the run may not be what its parameters say; "
                 "the notebook's parameters cell must assign each parameter on a line of its own)")
    elif proc.returncode == 0:
        error = f"notebook finished but wrote no {METRICS_FILE} into its '{OUT_PARAMETER}' folder"
    else:
        error = (notebook_error(run_dir / EXECUTED_NOTEBOOK) or last_error_line(stderr)
                 or f"papermill exited with status {proc.returncode}")
    _write_json(run_dir / STATUS_FILE, {"status": "failed", **record, "error": error, "stderr_tail": stderr[-4000:]})
    return RunOutcome(run_dir.name, "failed", run_dir, error=error, seconds=seconds, warnings=warnings)


# ---------------------------------------------------------------------------
# The batch
# ---------------------------------------------------------------------------
def preflight_grid(grid: "Grid | str | Path", out_root: str | Path = "runs") -> "Grid":
    """What a batch reads, checked before ``OUT/<batch>/`` is created: the grid against its notebook's
    parameters (:func:`distilvpr_lib.grid_checks.check_grid`), every distinct ``dataset`` parameter (training
    set, test split, images; :mod:`distilvpr_lib.engine.runs.preflight`) and every ``teacher`` folder that
    exists. Per-run settings of the right type but a wrong choice (a bad method) are left to the runs,
    which fail alone.

    Raises:
        GridError: bad grid or missing notebook (exit 2). DataFormatError / CheckpointError / RunFolderError:
            a dataset, teacher or the output folder is unusable (exit 1).
    """
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.engine.runs.preflight import preflight_dataset, preflight_out_dir, preflight_teacher_folder
    from distilvpr_lib.paths import project_path

    if not isinstance(grid, Grid):
        grid = Grid.load(grid)
    check_grid(grid)
    names = [spec.name for spec in grid.runs()]
    for name in names:
        check_folder_name(name, "run name", str(grid.source or grid.name))
    if len(set(names)) != len(names):
        raise GridError(f"{grid.source or grid.name}: two runs would share a folder: "
                        f"{sorted({n for n in names if names.count(n) > 1})}")
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


def plan_runs(runs: list[RunSpec], batch_dir: Path, force: bool = False,
              rerun_stale: bool = False) -> tuple[list[RunOutcome], list[tuple[RunSpec, Path, RunOutcome | None]]]:
    """Sort a batch's runs into those already decided and those to execute.

    A completed run with the grid's parameters is ``skipped`` (re-run with ``force``); one with other
    parameters is ``stale`` and left alone unless ``rerun_stale`` or ``force``. A run folder that will be
    executed but holds a run with other parameters (stale or unfinished) is first moved aside
    (:func:`move_aside`), so no folder ever mixes two sets of parameters.

    Returns:
        ``(decided, todo)``: outcomes of the runs not executed, and ``(spec, run_dir, replaced)`` for the
        others, ``replaced`` a :class:`RunOutcome` recording the folder moved aside (or ``None``).
    """
    decided: list[RunOutcome] = []
    todo: list[tuple[RunSpec, Path, RunOutcome | None]] = []
    for spec in runs:
        run_dir = batch_dir / spec.name
        changes = parameter_changes(run_dir, spec.parameters)
        complete = run_is_complete(run_dir)
        if complete and not changes and not force:
            decided.append(RunOutcome(spec.name, "skipped", run_dir))
            continue
        if complete and changes and not (rerun_stale or force):
            decided.append(RunOutcome(spec.name, "stale", run_dir, changes=changes,
                                      error=f"stale: {format_changes(changes)}"))
            continue
        replaced = None
        if changes:
            replaced = RunOutcome(spec.name, "replaced", run_dir, changes=changes, replaced=move_aside(run_dir))
        todo.append((spec, run_dir, replaced))
    return decided, todo


def run_batch(grid: Grid | str | Path, out_root: str | Path = "runs", workers: int = 1, force: bool = False,
              only: list[str] | None = None, progress: bool = True, timeout_s: float | None = None,
              rerun_stale: bool = False) -> BatchSummary:
    """Run every run of a grid (resumable, failure-isolated), ``workers`` at a time.

    Threads per worker are ``max(1, cpu_count // workers)`` so the cores are not oversubscribed. Stale runs
    (completed with other parameters) are reported, and re-run only with ``rerun_stale`` (:func:`plan_runs`).
    SIGINT or SIGTERM stops the batch (:class:`~distilvpr_lib.stopping.StopSignals`): no new run starts, the
    running ones are ended with their children and recorded ``interrupted``; :attr:`BatchSummary.signum`
    says which signal came.
    """
    from distilvpr_lib.progress import progress_bar

    grid = preflight_grid(grid, out_root)  # before anything is created
    batch_dir = Path(out_root) / grid.name
    batch_dir.mkdir(parents=True, exist_ok=True)
    runs = grid.runs()
    if only:
        runs = [r for r in runs if any(r.name.startswith(o) for o in only)]
    workers = max(1, int(workers))
    threads = max(1, (os.cpu_count() or 1) // workers)

    outcomes, todo = plan_runs(runs, batch_dir, force=force, rerun_stale=rerun_stale)
    bar = progress_bar(total=len(runs), initial=len(outcomes), desc=f"batch {grid.name}", disable=not progress)

    def run_one(spec: RunSpec, run_dir: Path, replaced: RunOutcome | None, stop: StopSignals) -> RunOutcome:
        if stop.stopped:
            outcome = RunOutcome(spec.name, "not started", run_dir)
        else:
            outcome = execute_notebook(grid.notebook, run_dir, spec.parameters, threads, timeout_s, stop=stop)
        if replaced is not None:
            outcome.changes, outcome.replaced = replaced.changes, replaced.replaced
        return outcome

    with StopSignals() as stop, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_one, spec, run_dir, replaced, stop) for spec, run_dir, replaced in todo]
        for fut in as_completed(futures):
            outcome = fut.result()
            outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes))
    bar.close()
    order = {spec.name: i for i, spec in enumerate(runs)}
    outcomes.sort(key=lambda o: order.get(o.name, 0))
    summary = BatchSummary(batch_dir, outcomes, signum=stop.signum)
    _write_json(batch_dir / "batch.json", {
        "grid": str(grid.source) if grid.source else None, "notebook": str(grid.notebook),
        "stopped_by": stop.signal_name,
        "runs": [{"name": o.name, "status": o.status, "error": o.error,
                  **({"changes": {k: [old, new] for k, (old, new) in o.changes.items()}} if o.changes else {}),
                  **({"replaced": str(o.replaced)} if o.replaced else {})} for o in outcomes]})
    return summary



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
