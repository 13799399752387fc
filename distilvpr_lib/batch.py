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

A variation (or product cell) goes over ``base`` deeply: a nested mapping such as ``overrides`` or ``terms`` is
merged key by key (:func:`~distilvpr_lib.grid_checks.merge_parameters`), so a variation names only what it changes.
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

Where the runs execute is an executor's business (:mod:`distilvpr_lib.executors`: a local thread pool, a Dask
cluster, one run per job-array task with ``index``). Each run is claimed through its folder before it starts, so
any number of launchers share one grid folder (a run claimed elsewhere is reported ``elsewhere``, never failed),
and ``<out>/<batch name>/batch.json`` is rebuilt from the runs' ``status.json`` (:func:`batch_state`).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distilvpr_lib.batch_ledger import settle_cancelled, write_batch_record
from distilvpr_lib.batch_records import (EXECUTED_NOTEBOOK, KERNEL_START_ATTEMPTS,
                                         METRICS_FILE, OUT_PARAMETER, PARAMETERS_FILE, STALE_DIR, STATUS_FILE,
                                         RunOutcome, format_changes, kernel_never_started, last_error_line,
                                         move_aside, notebook_error, papermill_warnings, parameter_changes,
                                         record_interrupted, run_is_complete)
from distilvpr_lib.data.files import atomic_write, write_json
from distilvpr_lib.errors import GridError, MissingDataError
from distilvpr_lib.executors.backends import Executor, Progress
from distilvpr_lib.executors.claims import (CANCELLED, ELSEWHERE, ERROR, EXECUTED, NOT_STARTED, SKIPPED, RunTask,
                                            TaskResult, die_with_parent)
from distilvpr_lib.grid_checks import check_folder_name, check_grid, check_seeds, load_grid_yaml, merge_parameters
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
        """Expand variations x product x seeds into named runs (names are folder-safe); each variation (or product
        cell) goes over ``base`` deeply (:func:`~distilvpr_lib.grid_checks.merge_parameters`)."""
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
                merged = {**merge_parameters(self.base, params), "seed": seed}
                runs.append(RunSpec(name=f"{set_name}__seed{seed}", parameters=merged))
        return runs


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

    @property
    def n_elsewhere(self) -> int:
        """Runs claimed by another launcher or worker (running elsewhere; never failed)."""
        return sum(o.status == ELSEWHERE for o in self.outcomes)

    def __str__(self) -> str:
        from distilvpr_lib.errors import signal_name

        head = (f"batch {self.batch_dir}: {self.n_ok} succeeded, {self.n_skipped} skipped (already done), "
                f"{self.n_failed} failed")
        if self.n_elsewhere:
            head += f", {self.n_elsewhere} running elsewhere"
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
                     timeout_s: float | None = None, stop: StopSignals | None = None,
                     extra_env: dict[str, str] | None = None) -> RunOutcome:
    """Execute ``notebook`` with papermill into ``run_dir`` (in a subprocess with its own thread budget).

    The notebook receives ``parameters`` plus ``out=<run_dir>`` (absolute); its executed copy is kept even on
    failure. The kernel starts in the notebook's own folder, as in JupyterLab, so a notebook that runs here
    runs there. Papermill runs in a session of its own: ``stop`` (a batch's :class:`StopSignals`) ends it and
    its children; without one, an exception here (Ctrl-C) ends them before it propagates. A stopped run is
    ``interrupted`` in ``status.json`` and in the ``metrics.json`` it may have written
    (:func:`~distilvpr_lib.batch_records.mark_metrics_interrupted`). A run that
    papermill warns about (an unknown parameter) is ``failed``, its warnings kept in ``status.json``.
    ``extra_env`` is added to the subprocess's environment (an executor slot's ``CUDA_VISIBLE_DEVICES``); the
    subprocess dies with this process (:func:`~distilvpr_lib.executors.claims.die_with_parent`).
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
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(run_dir / EXECUTED_NOTEBOOK),
           "-f", str(run_dir / PARAMETERS_FILE), "--cwd", str(Path(notebook).resolve().parent), "--no-progress-bar", "--log-level", "WARNING"]
    if timeout_s:
        cmd += ["--execution-timeout", str(int(timeout_s))]
    start = time.time()
    _write_json(run_dir / STATUS_FILE, {"status": "running", "started": start})
    cmd = die_with_parent(cmd)
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        if stop is not None:
            stop.register(proc)
        try:
            _, stderr = proc.communicate()
        except BaseException:  # Ctrl-C in a caller without StopSignals: the run's processes do not outlive it
            terminate_process_tree(proc)
            record_interrupted(run_dir, "interrupted", started=start, seconds=time.time() - start)
            raise
        finally:
            if stop is not None:
                stop.unregister(proc)
        if (proc.returncode == 0 or (stop is not None and stop.stopped) or attempt == KERNEL_START_ATTEMPTS
                or not kernel_never_started(stderr)):
            break
        time.sleep(random.uniform(0.5, 2.0))  # another kernel took its port: start it again, no cell has run
    seconds = time.time() - start
    warnings = papermill_warnings(stderr)
    record = {"started": start, "seconds": seconds, "warnings": warnings, "attempts": attempt}
    if proc.returncode == 0 and (run_dir / METRICS_FILE).is_file() and not warnings:
        _write_json(run_dir / STATUS_FILE, {"status": "ok", **record})
        return RunOutcome(run_dir.name, "ok", run_dir, seconds=seconds)
    if proc.returncode != 0 and stop is not None and stop.stopped:
        error = f"interrupted by {stop.signal_name} (re-run the batch to resume)"
        record_interrupted(run_dir, error, **record, signal=stop.signal_name)  # metrics.json too: not complete
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
    datasets: dict[Path, str] = {}
    teachers: set[tuple[Path, str]] = set()
    for spec in grid.runs():
        params = spec.parameters
        if params.get("dataset"):
            datasets.setdefault(project_path(params["dataset"]), str(params["dataset"]))
        teacher = project_path(params.get("teacher")) if params.get("teacher") else None
        if teacher is not None and teacher.exists():
            teachers.add((teacher, str(params.get("profile") or "cpu")))
    for dataset in sorted(datasets):
        try:
            preflight_dataset(dataset, training=True, splits=("test",))
        except MissingDataError as exc:
            if Path(datasets[dataset]).is_absolute() or exc.hint:
                raise
            # one rule for paths (docs/GRIDS.md): say where a relative grid path was looked for
            raise type(exc)(exc.problem, path=exc.path,
                            hint=f"the grid's dataset {datasets[dataset]!r} is taken from the project root "
                                 f"{project_path('.')}, not from the grid's folder") from exc
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
              rerun_stale: bool = False, executor: "str | Executor" = "local", scheduler: str | None = None,
              index: int | None = None) -> BatchSummary:
    """Run every run of a grid (resumable, failure-isolated), ``workers`` at a time.

    Args:
        rerun_stale: re-run stale runs (completed with other parameters than the grid's now), moving the old
            folder aside (:func:`plan_runs`); without it they are reported and left alone.
        executor: where the runs execute (:mod:`distilvpr_lib.executors`): ``"local"`` (``workers`` threads
            here; each run gets ``max(1, cores // workers)`` threads so the cores are not oversubscribed),
            ``"dask-local"`` (a LocalCluster of ``workers`` processes), ``"dask"`` (the running scheduler at
            ``scheduler``), or an :class:`~distilvpr_lib.executors.backends.Executor` (left open).
        index: run only the ``index``-th (0-based) of the selected runs (a job-array task:
            ``$SLURM_ARRAY_TASK_ID``); see :func:`select_runs`.

    Every run is claimed through its folder before it starts; a run claimed by another launcher is
    reported ``elsewhere`` (running elsewhere), not failed. ``batch.json`` is then rewritten from every run's
    folder (:func:`batch_state`), so several launchers, and a re-run after a crash, agree.
    SIGINT or SIGTERM stops the batch (:class:`~distilvpr_lib.stopping.StopSignals`): no new run starts, the
    running ones are ended with their children and recorded ``interrupted`` (a Dask executor tells its workers,
    which do the same, then cancels the rest; runs that did not report back and that nobody claims any more are
    recorded so by :func:`~distilvpr_lib.batch_ledger.settle_cancelled`); :attr:`BatchSummary.signum` says which
    signal came.

    Raises:
        GridError: bad grid, notebook, or ``index`` (exit 2); OptionError: bad executor options (exit 2).
    """
    from distilvpr_lib.executors.backends import make_executor
    from distilvpr_lib.progress import progress_bar

    grid = preflight_grid(grid, out_root)  # before anything is created
    batch_dir = Path(out_root) / grid.name
    runs = select_runs(grid, only=only, index=index)
    owned = not isinstance(executor, Executor)
    pool = make_executor(str(executor), workers, scheduler) if owned else executor  # option errors: nothing written
    local = getattr(pool, "kind", None) == "local"
    signum = None
    try:
        with StopSignals() as stop:
            batch_dir.mkdir(parents=True, exist_ok=True)
            outcomes, todo = plan_runs(runs, batch_dir, force=force, rerun_stale=rerun_stale)
            replaced = {spec.name: r for spec, _, r in todo if r is not None}
            tasks: list[RunTask] = []
            for spec, run_dir, _ in todo:
                absolute = run_dir.resolve()  # workers elsewhere see the same path on the shared filesystem
                kwargs: dict[str, Any] = {"timeout_s": timeout_s}
                if local:  # the stop signals live in this process: a remote worker cannot hold them
                    kwargs["stop"] = stop
                tasks.append(RunTask(spec.name, absolute, execute_notebook,
                                     (grid.notebook.resolve(), absolute, spec.parameters), kwargs,
                                     done=None if force else run_is_complete,
                                     cancelled=(lambda: stop.stopped) if local else None,
                                     stop_factory=None if local else StopSignals))  # a remote run's own stop
            initial = len(outcomes)
            bar = progress_bar(total=len(runs), initial=initial, desc=f"batch {grid.name}", disable=not progress)

            def show(p: Progress) -> None:
                bar.n = initial + p.done
                bar.set_postfix(running=p.running, failed=p.failed, elsewhere=p.elsewhere)

            for result in pool.run(tasks, show, stopped=lambda: stop.signum):  # a remote pool stops its runs too
                outcome = _task_outcome(result, batch_dir / result.name)
                if result.name in replaced:
                    outcome.changes, outcome.replaced = replaced[result.name].changes, replaced[result.name].replaced
                outcomes.append(outcome)
            bar.close()
            signum = stop.signum
    finally:
        if owned:
            pool.close()  # a LocalCluster's workers end, and the runs they executed with them
    settle_cancelled(outcomes, signum)
    order = {spec.name: i for i, spec in enumerate(runs)}
    outcomes.sort(key=lambda o: order.get(o.name, 0))
    summary = BatchSummary(batch_dir, outcomes, signum=signum)
    write_batch_record(grid, batch_dir, outcomes=outcomes, signum=signum)
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
    if result.state == NOT_STARTED:
        return RunOutcome(result.name, "not started", run_dir)
    if result.state == CANCELLED:
        return RunOutcome(result.name, CANCELLED, run_dir)  # settled once the executor is closed
    assert result.state == ERROR, result.state
    return RunOutcome(result.name, "failed", run_dir, error=result.error)
