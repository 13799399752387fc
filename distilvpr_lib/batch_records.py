"""What a batch run folder records, and what a re-run makes of it (``distilvpr batch``, issue 25).

A run of a batch is the folder ``<out>/<batch>/<run>/`` holding ``parameters.yaml`` (the parameters it ran
with, ``out`` included), ``status.json`` (``running`` / ``ok`` / ``failed`` / ``interrupted``, seconds,
papermill's warnings, the error in one line), ``notebook.ipynb`` (the executed copy) and the notebook's
``metrics.json``. A run the batch stopped (SIGINT / SIGTERM) is ``interrupted`` in both records: its
``metrics.json``, when the notebook wrote one before it was stopped, is marked so too
(:func:`mark_metrics_interrupted`), never left looking like a complete run. A completed run whose record
differs from the parameters the grid now asks is *stale* (:func:`parameter_changes`); a run folder about to be
re-run with other parameters is moved aside to ``<batch>/.stale/`` (:func:`move_aside`) so that no folder
mixes two sets of parameters.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distilvpr_lib.data.files import write_json
from distilvpr_lib.errors import DistilVPRError

#: Name of the notebook parameter that receives the run folder.
OUT_PARAMETER = "out"
METRICS_FILE = "metrics.json"
STATUS_FILE = "status.json"
PARAMETERS_FILE = "parameters.yaml"
EXECUTED_NOTEBOOK = "notebook.ipynb"
#: Folder of a batch where runs replaced because their parameters changed are kept (``<run>.<time>/``).
STALE_DIR = ".stale"
#: Lines papermill logs when a run may not be what its parameters say (kept in status.json; the run fails).
#: ("Unable to parse line N" alone is not kept: it matters only for a parameter passed, which papermill then
#: reports as unknown.)
PAPERMILL_WARNINGS: tuple[str, ...] = ("Passed unknown parameter", "does not contain a cell with tag 'parameters'",
                                       "does not support parameter introspection")


def run_is_complete(run_dir: Path) -> bool:
    """True when the run folder holds metrics and an ``ok`` status."""
    status = run_dir / STATUS_FILE
    if not (run_dir / METRICS_FILE).is_file() or not status.is_file():
        return False
    try:
        return json.loads(status.read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False


# ---------------------------------------------------------------------------
# Stale runs: a run folder records the parameters it ran with
# ---------------------------------------------------------------------------
class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


#: A parameter one side of a comparison does not give.
UNSET = _Unset()


def parameter_changes(run_dir: Path, parameters: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """How the parameters recorded in ``run_dir/parameters.yaml`` differ from ``parameters``.

    Returns ``{name: (recorded, asked)}`` for every parameter that differs (:data:`UNSET` where one side
    lacks it); ``out`` (the run folder) is not compared. A folder without a readable record differs in
    every parameter; a folder that does not exist differs in none.
    """
    if not run_dir.exists():
        return {}
    try:
        recorded = yaml.safe_load((run_dir / PARAMETERS_FILE).read_text())
    except (OSError, yaml.YAMLError):
        recorded = None
    recorded = recorded if isinstance(recorded, dict) else {}
    asked = yaml.safe_load(yaml.safe_dump(parameters))  # as the record holds them
    changes = {}
    for key in sorted(set(recorded) | set(asked), key=str):
        if key == OUT_PARAMETER:
            continue
        old, new = recorded.get(key, UNSET), asked.get(key, UNSET)
        if old != new or type(old) is not type(new):
            changes[key] = (old, new)
    return changes


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``"epochs: 3 -> 1, method: 'rkd' -> 'pkt'"``."""
    return ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def move_aside(run_dir: Path) -> Path:
    """Move a run folder to ``<batch>/.stale/<run>.<time>/`` (kept, out of the batch's tables); returns it.

    Raises:
        RunFolderLockedError: another process is writing the run folder.
    """
    from distilvpr_lib.engine.runs.run_guard import check_not_locked

    check_not_locked(run_dir)
    aside = run_dir.parent / STALE_DIR
    aside.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target, n = aside / f"{run_dir.name}.{stamp}", 1
    while target.exists():
        target, n = aside / f"{run_dir.name}.{stamp}-{n}", n + 1
    os.replace(run_dir, target)
    return target


def mark_metrics_interrupted(run_dir: Path, error: str) -> dict[str, Any] | None:
    """Make a stopped run's ``metrics.json`` agree with its ``status.json``: ``status: interrupted``.

    A notebook stopped by the batch may already have written ``metrics.json`` (notebook 03's training finished,
    its figures not; notebook 02's copy of the teacher's metrics, its head table not), which then looked like a
    complete run. Its fields are kept; ``status`` becomes ``interrupted``, ``error`` says why,
    ``interrupted_at`` when, and ``status_when_interrupted`` keeps the status it had (``complete``: the training
    itself had finished; re-running the batch runs the notebook again). Written atomically.

    Args:
        run_dir: the run folder (the notebook's ``out``).
        error: the one-line reason, as ``status.json`` records it.

    Returns:
        The record written, or ``None`` when there was no ``metrics.json`` (or none readable as a JSON
        object: such a file does not look complete either, and is left for the re-run to replace), or when
        it could not be written (never raises: the signal's own handling goes on).
    """
    path = run_dir / METRICS_FILE
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict):
        return None
    previous = metrics.get("status")
    if previous is not None and previous != "interrupted":
        metrics["status_when_interrupted"] = previous
    metrics.update(status="interrupted", error=error, interrupted_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        write_json(path, metrics, default=str)
    except (OSError, DistilVPRError):  # never hides why the run stopped (status.json says it); disk full
        return None
    return metrics


def papermill_warnings(stderr: str) -> list[str]:
    """Papermill's warnings in a run's stderr that mean the run may not be what its parameters say."""
    return [line.strip() for line in stderr.splitlines() if any(w in line for w in PAPERMILL_WARNINGS)]


def notebook_error(executed: Path) -> str | None:
    """The error a failed executed notebook shows, in one line (``"<Type>: <message>"``), or ``None``."""
    try:
        nb = json.loads(executed.read_text())
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []) if isinstance(nb, dict) else []:
        for output in cell.get("outputs") or []:
            if isinstance(output, dict) and output.get("output_type") == "error":
                text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
                return " ".join(text.split())
    return None


def last_error_line(stderr: str) -> str:
    """The last line of ``stderr`` that names an error (whole, however long), else its last line."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln
    return lines[-1] if lines else ""


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



def record_interrupted(run_dir: Path, error: str, **record: Any) -> None:
    """Record a stopped run: ``status.json`` says ``interrupted`` (with ``error`` and ``record``: ``started``,
    ``seconds``, ``signal``, ...) and its ``metrics.json``, when it wrote one, agrees (:func:`mark_metrics_interrupted`).
    Re-running the batch runs it again (it is not complete)."""
    write_json(run_dir / STATUS_FILE, {"status": "interrupted", **record, "error": error}, sort_keys=True, default=str)
    mark_metrics_interrupted(run_dir, error)


def running_since(run_dir: Path) -> float | None:
    """When the run in ``run_dir`` started, if its ``status.json`` says it is ``running``, else ``None``."""
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    started = status.get("started") if isinstance(status, dict) and status.get("status") == "running" else None
    return float(started) if isinstance(started, (int, float)) else None


#: What papermill prints when the notebook's kernel never started (no cell ran): kernels launched side by side
#: race for the ports jupyter_client picked for them (papermill issue #239), and the loser exits at once.
KERNEL_START_FAILURES: tuple[str, ...] = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")
#: How many times a run is started when its kernel never started (the run's status records the attempts).
KERNEL_START_ATTEMPTS = 3


def kernel_never_started(stderr: str) -> bool:
    """Whether papermill's ``stderr`` says the kernel died or hung before its first reply (so nothing ran)."""
    return any(marker in stderr for marker in KERNEL_START_FAILURES)


__all__ = ["EXECUTED_NOTEBOOK", "KERNEL_START_ATTEMPTS", "KERNEL_START_FAILURES", "METRICS_FILE", "OUT_PARAMETER",
           "PAPERMILL_WARNINGS", "PARAMETERS_FILE", "STALE_DIR", "STATUS_FILE", "UNSET", "format_changes",
           "kernel_never_started", "last_error_line", "mark_metrics_interrupted", "move_aside", "notebook_error",
           "papermill_warnings", "parameter_changes", "record_interrupted", "run_is_complete", "running_since",
           "RunOutcome"]
