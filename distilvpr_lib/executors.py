"""Where the runs of a grid execute: a local thread pool, a Dask cluster, or one run per job-array task.

:func:`distilvpr_lib.batch.run_batch` turns every run of a grid into a :class:`RunTask` and hands the list
to an :class:`Executor`:

* :class:`LocalExecutor` (``--executor local``, the default): ``workers`` threads in this process, each
  starting one papermill subprocess at a time;
* :class:`DaskExecutor` (``--executor dask --scheduler tcp://HOST:PORT``: any running ``dask.distributed``
  scheduler, e.g. a dask-jobqueue ``SLURMCluster``; ``--executor dask-local --workers N``: a ``LocalCluster``
  of N worker processes with one thread each). Every run is one task that needs one unit of the worker
  resource :data:`RUN_RESOURCE` (``dask worker --resources run=K`` runs at most K runs at once), so a
  worker never runs more runs than it has slots, whatever its thread count. A worker lost mid-run (killed,
  out of memory, pre-empted) makes the scheduler resubmit the task elsewhere; the run then resumes from its
  last checkpoint (the training pipelines resume by default).

Wherever a task executes, :func:`run_claimed` runs it:

1. **claim** the run folder: an exclusive ``flock`` on ``<run>/.distilvpr-batch.lock``
   (:class:`~distilvpr_lib.engine.runs.run_guard.RunFolderLock`, released by the OS when the process dies,
   even by ``kill -9``). A run claimed by another launcher or worker is *running elsewhere*: it is skipped
   and never reported as failed. (The training pipeline inside the notebook takes its own lock,
   ``<run>/.distilvpr.lock``; the claim waits up to :data:`WRITER_WAIT_S` for a previous writer — the
   orphaned kernel of a lost worker — to let go of it.)
2. under the claim, skip a run that another launcher completed meanwhile (``task.done``);
3. take a **slot**: a thread budget (``OMP_NUM_THREADS`` ...) and, on a GPU node, one device
   (``CUDA_VISIBLE_DEVICES``), see :class:`SlotPool`;
4. run ``task.call(*task.args, **task.kwargs, threads=..., extra_env=...)``.

Environment variables read where the runs execute: :data:`THREADS_ENV` (threads per run; default the
usable cores divided by the slots), :data:`GPUS_ENV` (comma-separated device ids to share out; default
``CUDA_VISIBLE_DEVICES`` or every ``/dev/nvidiaN``) and :data:`SLOT_BASE_ENV` (the first global slot index of
this worker; default ``int(worker name) * slots`` for workers named by an integer, as a ``LocalCluster``
names them, else 0).

This module knows nothing about notebooks: :mod:`distilvpr_lib.batch` supplies the call. Importing it has no
side effects and does not import ``distributed`` (only :class:`DaskExecutor` does).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilvpr_lib.engine.runs.run_guard import RunFolderLock, check_not_locked
from distilvpr_lib.errors import OptionError, RunFolderLockedError, format_error

#: The Dask worker resource a run needs one unit of (``dask worker --resources run=K``).
RUN_RESOURCE: str = "run"
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
#: Executor names of ``distilvpr batch --executor``.
EXECUTORS: tuple[str, ...] = ("local", "dask", "dask-local")

# Task states reported by run_claimed.
EXECUTED, SKIPPED, ELSEWHERE, ERROR = "executed", "skipped", "elsewhere", "error"


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


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------
@dataclass
class Progress:
    """Counts of a batch in flight: tasks ``done`` (of ``total``), ``running`` now, ``failed``, and ``elsewhere``."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    elsewhere: int = 0


ProgressCallback = Callable[[Progress], None]


class Executor:
    """Runs :class:`RunTask` s; :meth:`run` yields each task's :class:`TaskResult` as it completes."""

    #: the ``--executor`` name
    kind: str = ""

    def run(self, tasks: list[RunTask], on_progress: ProgressCallback | None = None) -> Iterator[TaskResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (a LocalCluster, a client)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _count(progress: Progress, result: TaskResult) -> None:
        progress.done += 1
        progress.failed += result.failed
        progress.elsewhere += result.state == ELSEWHERE


class LocalExecutor(Executor):
    """``workers`` runs at a time in this process's threads (each run is a subprocess)."""

    kind = "local"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        self.workers = max(1, int(workers))
        self.threads = threads

    def run(self, tasks: list[RunTask], on_progress: ProgressCallback | None = None) -> Iterator[TaskResult]:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        pool = SlotPool(self.workers, threads=self.threads)
        progress = Progress(total=len(tasks))
        lock = threading.Lock()
        started: set[str] = set()

        def start(name: str) -> None:
            with lock:
                started.add(name)
                progress.running = len(started)
            if on_progress is not None:
                on_progress(progress)

        def one(task: RunTask) -> TaskResult:
            try:
                return run_claimed(task, pool, on_start=lambda: start(task.name))
            except Exception as exc:  # noqa: BLE001 - one run's infrastructure error does not stop the others
                return TaskResult(task.name, ERROR, error=format_error(exc))

        with ThreadPoolExecutor(max_workers=self.workers) as threads:
            futures = [threads.submit(one, task) for task in tasks]
            for fut in as_completed(futures):
                result = fut.result()
                with lock:
                    started.discard(result.name)
                    progress.running = len(started)
                    self._count(progress, result)
                if on_progress is not None:
                    on_progress(progress)
                yield result


def _worker_pool() -> SlotPool:
    """This Dask worker's slot pool (made once per worker process from its ``run`` resource)."""
    global _WORKER_POOL
    with _WORKER_POOL_LOCK:
        if _WORKER_POOL is None:
            from distributed import get_worker

            worker = get_worker()
            size = max(1, int(worker.state.total_resources.get(RUN_RESOURCE, 1)))
            base = os.environ.get(SLOT_BASE_ENV)
            if base is None:
                name = str(worker.name)
                base = str(int(name) * size) if name.isdigit() else "0"
            _WORKER_POOL = SlotPool(size, base=int(base))
        return _WORKER_POOL


_WORKER_POOL: SlotPool | None = None
_WORKER_POOL_LOCK = threading.Lock()


def dask_task(task: RunTask) -> TaskResult:
    """The Dask task of one run (executes on a worker): :func:`run_claimed` in the worker's slot pool."""
    return run_claimed(task, _worker_pool())


def _require_distributed(what: str) -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise OptionError(f"--executor {what} needs the 'distributed' package, which is not importable ({exc})",
                          hint="pip install -e '.[cluster]'") from None
    return distributed


class DaskExecutor(Executor):
    """Runs as tasks on a ``dask.distributed`` cluster: one task per run, needing one ``run`` resource.

    ``DaskExecutor(scheduler="tcp://host:8786")`` connects to a running scheduler;
    ``DaskExecutor.local(workers=N)`` starts (and :meth:`close` stops) a ``LocalCluster`` of N worker processes,
    one thread and one ``run`` slot each, each run given ``usable_cores() // N`` threads.
    """

    kind = "dask"

    def __init__(self, scheduler: str | None = None, client: Any = None, cluster: Any = None,
                 connect_timeout_s: float = 30.0) -> None:
        distributed = _require_distributed("dask")
        self.cluster = cluster
        if client is None:
            if not scheduler:
                raise OptionError("--executor dask needs --scheduler tcp://HOST:PORT (or use --executor dask-local)")
            try:
                client = distributed.Client(scheduler, timeout=connect_timeout_s, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise OptionError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler ({exc})",
                                  hint="start one (dask scheduler; dask worker ADDRESS --resources run=1) "
                                       "or check the address") from None
        self.client = client

    @classmethod
    def local(cls, workers: int) -> "DaskExecutor":
        """A ``LocalCluster`` of ``workers`` processes (1 thread, 1 ``run`` slot each) and its client."""
        import logging

        distributed = _require_distributed("dask-local")
        workers = max(1, int(workers))
        threads = os.environ.get(THREADS_ENV) or str(max(1, usable_cores() // workers))
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           resources={RUN_RESOURCE: 1}, dashboard_address=None,
                                           silence_logs=logging.ERROR, env={THREADS_ENV: threads})
        executor = cls(client=distributed.Client(cluster, set_as_default=False), cluster=cluster)
        executor.kind = "dask-local"
        return executor

    def slots(self) -> int:
        """``run`` slots of the workers connected now."""
        import inspect

        kwargs = {"n_workers": -1} if "n_workers" in inspect.signature(self.client.scheduler_info).parameters else {}
        workers = self.client.scheduler_info(**kwargs).get("workers", {})
        return int(sum(w.get("resources", {}).get(RUN_RESOURCE, 0) for w in workers.values()))

    def run(self, tasks: list[RunTask], on_progress: ProgressCallback | None = None) -> Iterator[TaskResult]:
        if tasks and self.slots() == 0:
            print(f"warning: no Dask worker declares the '{RUN_RESOURCE}' resource yet; the runs wait for one "
                  f"(start workers with --resources {RUN_RESOURCE}=K)", file=sys.stderr)
        tag = uuid.uuid4().hex[:8]
        futures = {self.client.submit(dask_task, task, key=f"distilvpr-run-{task.name}-{tag}", pure=False,
                                      resources={RUN_RESOURCE: 1}): task for task in tasks}
        progress = Progress(total=len(tasks))
        pending = set(futures)
        last_poll = 0.0
        while pending:
            done = {f for f in pending if f.done()}
            pending -= done
            if not done:
                time.sleep(0.2)
            for fut in done:
                task = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 - a lost task (KilledWorker) or an infrastructure error
                    result = TaskResult(task.name, ERROR, error=format_error(exc))
                self._count(progress, result)
                yield result
            if on_progress is not None and (done or time.monotonic() - last_poll > 2.0):
                last_poll = time.monotonic()
                progress.running = self._running({f.key for f in pending})
                on_progress(progress)

    def _running(self, keys: set[str]) -> int:
        with contextlib.suppress(Exception):
            return sum(1 for ks in self.client.processing().values() for k in ks if k in keys)
        return 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()


def make_executor(kind: str = "local", workers: int = 1, scheduler: str | None = None) -> Executor:
    """The executor named by ``distilvpr batch --executor`` (see the module docstring).

    Raises:
        OptionError: an unknown kind, ``--scheduler`` with another executor than ``dask``, ``dask`` without it,
            or ``distributed`` missing (exit 2).
    """
    if kind not in EXECUTORS:
        raise OptionError(f"--executor {kind}: unknown executor; known: {', '.join(EXECUTORS)}")
    if scheduler and kind != "dask":
        raise OptionError(f"--scheduler is for --executor dask (got --executor {kind})")
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "dask":
        return DaskExecutor(scheduler=scheduler)
    return DaskExecutor.local(workers)


__all__ = ["CLAIM_FILE", "ELSEWHERE", "ERROR", "EXECUTED", "EXECUTORS", "GPUS_ENV", "RUN_RESOURCE", "SKIPPED",
           "SLOT_BASE_ENV", "THREADS_ENV", "DaskExecutor", "Executor", "LocalExecutor", "Progress", "RunTask",
           "Slot", "SlotPool", "TaskResult", "claim_run", "dask_task", "die_with_parent", "is_claimed",
           "make_executor", "run_claimed", "usable_cores", "visible_gpus"]
