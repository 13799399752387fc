"""Slots (threads, GPU) and claims of one run, and the body of a task wherever it executes (see the package
docstring, :mod:`distilvpr_lib.executors`)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilvpr_lib.engine.runs.run_guard import RunFolderLock, check_not_locked
from distilvpr_lib.errors import RunFolderLockedError

#: The claim lock inside a run folder (the training pipeline's own lock is ``.distilvpr.lock``).
CLAIM_FILE: str = ".distilvpr-batch.lock"
#: Threads per run (overrides usable cores / slots).
THREADS_ENV: str = "DISTILVPR_RUN_THREADS"
#: Devices to share out among the slots (comma-separated CUDA ids).
GPUS_ENV: str = "DISTILVPR_GPUS"
#: First global slot index of this worker process (which device its first slot gets).
SLOT_BASE_ENV: str = "DISTILVPR_SLOT_BASE"
#: Seconds a fresh claim waits for a previous writer's lock on the run folder to be released.
WRITER_WAIT_S: float = float(os.environ.get("DISTILVPR_WRITER_WAIT_S", "60"))
#: Thread-count variables set for every run.
THREAD_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "DISTILVPR_NUM_THREADS")

# Task states reported by run_claimed.
EXECUTED, SKIPPED, ELSEWHERE, ERROR = "executed", "skipped", "elsewhere", "error"
#: A task its launcher cancelled before it was claimed (a stop signal came first): nothing was created.
NOT_STARTED = "not started"
#: A task its launcher cancelled on a remote executor (a stop signal came while it was queued or executing): its run
#: folder says whether it had started (:func:`distilvpr_lib.batch_records.running_since`).
CANCELLED = "cancelled"


# ---------------------------------------------------------------------------
# Slots: threads and devices of one run
# ---------------------------------------------------------------------------
def usable_cores() -> int:
    """Cores this process may use (its CPU affinity: SLURM and cgroup limits included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """CUDA device ids to share out: :data:`GPUS_ENV`, else ``CUDA_VISIBLE_DEVICES``, else ``/dev/nvidiaN``.

    Nothing is imported (no CUDA context); an empty list on a machine without GPUs.
    """
    for var in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(var)
        if value is not None:
            return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]
    count = sum(1 for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))
    return [str(i) for i in range(count)]


@dataclass(frozen=True)
class Slot:
    """One place a run executes: its global index, thread budget and device (``None``: no GPU)."""

    index: int
    threads: int
    device: str | None = None

    def environment(self) -> dict[str, str]:
        """The variables a run's process gets: thread counts and, on a GPU node, ``CUDA_VISIBLE_DEVICES``."""
        env = {var: str(self.threads) for var in THREAD_VARIABLES}
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device
        return env


class SlotPool:
    """``size`` slots of one process (a launcher's thread pool, or a Dask worker's ``run`` resource).

    Slot ``i`` of this pool is global slot ``base + i``; it gets device ``gpus[(base + i) % len(gpus)]``
    (one device per run while there are as many devices as slots) and ``threads`` threads (default
    :data:`THREADS_ENV`, else ``usable_cores() // size``, at least 1).
    """

    def __init__(self, size: int, base: int = 0, threads: int | None = None, gpus: list[str] | None = None) -> None:
        if size < 1:
            raise ValueError(f"a slot pool needs at least one slot, got {size}")
        self.size, self.base = int(size), int(base)
        if threads is None:
            env = os.environ.get(THREADS_ENV)
            threads = int(env) if env else usable_cores() // self.size
        self.threads = max(1, int(threads))
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self._free = list(range(self.size))
        self._cond = threading.Condition()

    def slot(self, i: int) -> Slot:
        """Slot ``i`` of this pool (0-based)."""
        g = self.base + i
        return Slot(g, self.threads, self.gpus[g % len(self.gpus)] if self.gpus else None)

    @contextlib.contextmanager
    def take(self) -> Iterator[Slot]:
        """Wait for a free slot, hold it for the ``with`` body."""
        with self._cond:
            while not self._free:
                self._cond.wait()
            i = self._free.pop(0)
        try:
            yield self.slot(i)
        finally:
            with self._cond:
                self._free.append(i)
                self._free.sort()
                self._cond.notify()


# ---------------------------------------------------------------------------
# One run, wherever it executes
# ---------------------------------------------------------------------------
@dataclass
class RunTask:
    """One run to execute.

    ``call(*args, **kwargs, threads=int, extra_env={str: str})`` executes it and returns an object with a
    ``status`` attribute (``"ok"`` | ``"failed"``); ``done(run_dir)`` (checked under the claim) says that the
    run is already complete, so it is skipped. ``call`` and ``done`` must be importable module-level
    functions (they travel to Dask workers by reference); ``run_dir`` must be absolute on a shared
    filesystem for a remote executor.
    """

    name: str
    run_dir: Path
    call: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    done: Callable[[Path], bool] | None = None
    #: Checked before the run is claimed: ``True`` = do not start it (``not started``; nothing is created). Local
    #: executors only (a launcher's stop signal); it does not travel to remote workers.
    cancelled: Callable[[], bool] | None = None
    #: Remote executors: makes, where the task executes, the object ``call`` gets as ``stop=`` (an importable class
    #: such as :class:`distilvpr_lib.stopping.StopSignals`: ``stop(signum)``, ``stopped``), which the executor
    #: stops when the launcher is stopped (:func:`distilvpr_lib.executors.backends.dask_task`).
    stop_factory: Callable[[], Any] | None = None


@dataclass
class TaskResult:
    """What became of a task: ``state`` is ``executed`` (``value`` is the call's result), ``skipped`` (complete
    already), ``elsewhere`` (claimed by another launcher or worker) or ``error`` (the call raised, or the task
    was lost; ``error`` is one line)."""

    name: str
    state: str
    value: Any = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """The run failed (an error, or a call result whose status is ``failed``)."""
        return self.state == ERROR or (self.state == EXECUTED and getattr(self.value, "status", None) == "failed")


def claim_run(run_dir: Path, attempts: int = 5) -> RunFolderLock:
    """Claim ``run_dir`` (exclusive lock on :data:`CLAIM_FILE`; the folder is created).

    A few quick retries ride out a momentary shared lock taken by another launcher reading the run's state.

    Raises:
        RunFolderLockedError: another process holds the claim (named in the message).
    """
    for attempt in range(attempts):
        try:
            return RunFolderLock(run_dir, lock_file=CLAIM_FILE).acquire()
        except RunFolderLockedError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def is_claimed(run_dir: Path) -> bool:
    """Whether a process holds the claim on ``run_dir`` now (a momentary shared lock; creates nothing)."""
    try:
        check_not_locked(run_dir, lock_file=CLAIM_FILE)
    except RunFolderLockedError:
        return True
    return False


def _wait_for_writer(run_dir: Path, timeout_s: float) -> str | None:
    """Wait until no process holds the training pipeline's lock on ``run_dir``; the holder's message if one still does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check_not_locked(run_dir)
            return None
        except RunFolderLockedError as exc:
            if time.monotonic() >= deadline:
                return str(exc)
        time.sleep(0.5)


def run_claimed(task: RunTask, slots: SlotPool, on_start: Callable[[], None] | None = None,
                writer_wait_s: float | None = None) -> TaskResult:
    """Claim the run, skip it when complete, run it in a slot (see the module docstring).

    Exceptions of ``task.call`` propagate (the executor turns them into ``error`` results).
    """
    if task.cancelled is not None and task.cancelled():
        return TaskResult(task.name, NOT_STARTED)
    try:
        claim = claim_run(task.run_dir)
    except RunFolderLockedError as exc:
        return TaskResult(task.name, ELSEWHERE, error=str(exc))
    try:
        holder = _wait_for_writer(task.run_dir, WRITER_WAIT_S if writer_wait_s is None else writer_wait_s)
        if holder is not None:
            return TaskResult(task.name, ELSEWHERE, error=holder)
        if task.done is not None and task.done(task.run_dir):
            return TaskResult(task.name, SKIPPED)
        with slots.take() as slot:
            if on_start is not None:
                on_start()
            value = task.call(*task.args, **task.kwargs, threads=slot.threads, extra_env=slot.environment())
        return TaskResult(task.name, EXECUTED, value)
    finally:
        claim.release()


# ---------------------------------------------------------------------------
# A child process that dies with its parent
# ---------------------------------------------------------------------------
_DIE_WITH_PARENT = (
    "import ctypes, os, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(137)  # the parent died before the signal was armed\n"
    "sys.argv = [sys.argv[2]] + sys.argv[3:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def die_with_parent(cmd: list[str]) -> list[str]:
    """``[python, "-m", module, *args]`` rewritten so that the child is killed when this process dies.

    On Linux the child arms ``PR_SET_PDEATHSIG`` (SIGKILL) before running the module: a launcher or Dask worker
    killed with ``kill -9`` takes its papermill child with it, and the notebook kernel (whose parent poller
    watches papermill) exits within a second, releasing the run folder. Other commands, and other
    systems, run unchanged.
    """
    if len(cmd) >= 3 and cmd[1] == "-m" and sys.platform.startswith("linux"):
        return [cmd[0], "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd[2:]]
    return list(cmd)


__all__ = ["CANCELLED", "CLAIM_FILE", "ELSEWHERE", "ERROR", "EXECUTED", "GPUS_ENV", "NOT_STARTED", "SKIPPED",
           "SLOT_BASE_ENV", "THREADS_ENV", "claim_run", "die_with_parent", "is_claimed", "run_claimed", "RunTask",
           "Slot", "SlotPool", "TaskResult", "usable_cores", "visible_gpus"]
