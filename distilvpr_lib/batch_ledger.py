"""What a batch folder holds, read from its runs' folders alone (never from a launcher's memory):
``<batch>/batch.json`` (:func:`write_batch_record`), so any number of launchers (a job array, several machines)
and a re-run after a crash agree (docs/GRIDS.md, docs/SCALING.md); and every run as one table
(:func:`collect_batch`, what notebook 04 reads); and what became of the runs a stopped Dask batch cancelled
(:func:`settle_cancelled`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from distilvpr_lib.batch_records import METRICS_FILE, PARAMETERS_FILE, STATUS_FILE
from distilvpr_lib.batch_records import RunOutcome as LauncherOutcome
from distilvpr_lib.batch_records import parameter_changes, record_interrupted, run_is_complete, running_since
from distilvpr_lib.data.files import write_json
from distilvpr_lib.errors import MissingDataError, signal_name
from distilvpr_lib.executors.claims import CANCELLED, ELSEWHERE, is_claimed



class _RunSpec(Protocol):
    name: str
    parameters: dict[str, Any]


class Grid(Protocol):
    """What the record needs of a :class:`distilvpr_lib.batch.Grid`."""

    source: Path | None
    notebook: Path

    def runs(self) -> list[_RunSpec]:
        """The grid's runs, in order."""
        ...


class RunOutcome(Protocol):
    """What the record needs of a launcher's :class:`distilvpr_lib.batch.RunOutcome`."""

    name: str
    status: str
    replaced: Path | None


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, sort_keys=True, default=str)


#: Run states in ``batch.json`` (see :func:`batch_state`).
RUN_STATES: tuple[str, ...] = ("ok", "stale", "failed", "running", "interrupted", "not started", "pending")


def batch_state(grid: Grid, batch_dir: str | Path) -> list[dict[str, Any]]:
    """Every run of ``grid`` with its state, derived from its folder alone (never from a launcher's memory).

    States: ``ok`` (complete with the grid's parameters), ``stale`` (complete with other parameters: ``changes``
    says which), ``running`` (a launcher or worker holds the run's claim now), ``failed`` (``status.json`` says
    failed), ``interrupted`` (stopped by a signal, or ``status.json`` says running but nobody holds the claim:
    its launcher died; a re-run resumes it), ``pending`` (not started).

    Returns:
        ``[{"name", "status", "error"[, "changes"]}]`` in grid order.
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
        changes: dict[str, tuple[Any, Any]] = {}
        if run_is_complete(run_dir):
            changes = parameter_changes(run_dir, spec.parameters)
            state = "stale" if changes else "ok"
        elif is_claimed(run_dir):
            state = "running"
        elif written == "failed":
            state = "failed"
        elif written in ("running", "ok", "interrupted"):  # "ok" without metrics.json: the folder lost its metrics
            state = "interrupted"
        else:
            state = "pending"
        entry: dict[str, Any] = {"name": spec.name, "status": state,
                                 "error": record.get("error") if state == "failed" else None}
        if changes:
            entry["changes"] = {k: [old, new] for k, (old, new) in changes.items()}
        states.append(entry)
    return states


def write_batch_record(grid: Grid, batch_dir: str | Path, outcomes: Sequence[RunOutcome] = (),
                       signum: int | None = None) -> dict[str, Any]:
    """Rewrite ``<batch>/batch.json`` from the runs' folders (:func:`batch_state`); returns what it wrote.

    ``outcomes`` of this launcher add what a folder cannot say: runs a stop signal kept from starting
    (``not started``) and folders moved aside to ``.stale/`` (``replaced``); ``signum`` is the stopping signal.
    """
    import datetime

    batch_dir = Path(batch_dir)
    runs = batch_state(grid, batch_dir)
    mine = {o.name: o for o in outcomes}
    for run in runs:
        outcome = mine.get(run["name"])
        if outcome is None:
            continue
        if outcome.status == "not started" and run["status"] == "pending":
            run["status"] = "not started"
        if outcome.replaced is not None:
            run["replaced"] = str(outcome.replaced)
    record = {
        "grid": str(grid.source) if grid.source else None, "notebook": str(grid.notebook),
        "derived_from": f"<run>/{STATUS_FILE} of every run of the grid",
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "stopped_by": signal_name(signum) if signum is not None else None,
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


def settle_cancelled(outcomes: list[LauncherOutcome], signum: int | None) -> None:
    """What became of the runs a remote executor cancelled when the batch was stopped (in place), once it is closed:
    those queued, and those whose worker did not report them stopped in time.

    A run whose ``status.json`` still says ``running`` and that nobody claims any more (its Dask worker, or the
    papermill child that dies with it, is gone) gets the record a stopped local run gets: ``interrupted`` with the
    signal, in ``status.json`` and ``metrics.json`` (:func:`~distilvpr_lib.batch_records.record_interrupted`); the
    next batch runs it again. One still claimed executes on a worker that did not answer and outlives the launcher:
    it is reported running elsewhere; one that completed meanwhile is ``ok``; the others never started
    (``not started``; nothing was created).
    """
    name = signal_name(signum) if signum is not None else "a stop"
    error = f"interrupted by {name} (re-run the batch to resume)"
    for outcome in outcomes:
        if outcome.status != CANCELLED:
            continue
        started = running_since(outcome.run_dir)
        if started is not None and not is_claimed(outcome.run_dir):
            record_interrupted(outcome.run_dir, error, started=started, seconds=time.time() - started,
                               signal=signal_name(signum) if signum is not None else None)
            outcome.status, outcome.error = "interrupted", error
        elif started is not None:
            outcome.status = ELSEWHERE
            outcome.error = "still executing on a Dask worker that did not answer the stop"
        else:
            outcome.status = "ok" if run_is_complete(outcome.run_dir) else "not started"


__all__ = ["RUN_STATES", "batch_state", "collect_batch", "settle_cancelled", "write_batch_record"]
