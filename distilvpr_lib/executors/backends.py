"""The executors of ``distilvpr batch``: a local thread pool, a Dask cluster (see the package docstring,
:mod:`distilvpr_lib.executors`)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from distilvpr_lib.errors import OptionError, format_error
from distilvpr_lib.executors.claims import (CANCELLED, ELSEWHERE, ERROR, SLOT_BASE_ENV, THREADS_ENV, RunTask, SlotPool,
                                            TaskResult, run_claimed, usable_cores)

#: The Dask worker resource a run needs one unit of (``dask worker --resources run=K``).
RUN_RESOURCE: str = "run"
#: Executor names of ``distilvpr batch --executor``.
EXECUTORS: tuple[str, ...] = ("local", "dask", "dask-local")


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
    """Runs :class:`RunTask` s; :meth:`run` yields each task's :class:`TaskResult` as it completes.

    ``stopped`` (a launcher's stop signal: the signal number once it came, :attr:`StopSignals.signum
    <distilvpr_lib.stopping.StopSignals.signum>`) is polled by executors whose tasks run elsewhere: once it is set
    they stop their runs and yield what is left ``cancelled``. The local executor's tasks check
    :attr:`RunTask.cancelled` themselves.
    """

    #: the ``--executor`` name
    kind: str = ""

    def run(self, tasks: list[RunTask], on_progress: ProgressCallback | None = None,
            stopped: Callable[[], int | None] | None = None) -> Iterator[TaskResult]:
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

    def run(self, tasks: list[RunTask], on_progress: ProgressCallback | None = None,
            stopped: Callable[[], int | None] | None = None) -> Iterator[TaskResult]:
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


#: Seconds a stopped launcher waits for its executing Dask tasks to stop their runs and report them.
STOP_WAIT_S: float = 30.0


def dask_task(task: RunTask, stop_name: str | None = None) -> TaskResult:
    """The Dask task of one run (executes on a worker): :func:`run_claimed` in the worker's slot pool.

    With ``stop_name`` and ``task.stop_factory``, the run listens to its launcher: a thread polls the Dask ``Event``
    ``stop_name`` (set by the launcher when it is stopped, after the ``Variable`` of the same name holds the signal
    number) and then stops the task's ``stop`` object, which ends the run's process tree; a task that starts after
    the signal starts nothing. (Polling ``is_set`` keeps nothing waiting on the scheduler.)
    """
    if stop_name is None or task.stop_factory is None:
        return run_claimed(task, _worker_pool())
    import dataclasses

    from distributed import Event, Variable, get_client

    client = get_client()  # the worker's client, named here: the listener thread is outside the task's context
    stop, event, finished = task.stop_factory(), Event(stop_name, client=client), threading.Event()

    def listen() -> None:
        while not finished.is_set():
            try:
                if event.is_set():
                    stop.stop(int(Variable(stop_name, client=client).get(timeout=5)))
                    return
            except Exception:  # noqa: BLE001 - the scheduler is gone: nobody is left to stop the run
                return
            finished.wait(0.5)

    listener = threading.Thread(target=listen, daemon=True, name=f"stop-listener-{task.name}")
    listener.start()
    listener.join(timeout=0.2)  # a signal set before this task started is seen before anything starts
    task = dataclasses.replace(task, kwargs={**task.kwargs, "stop": stop}, cancelled=lambda: bool(stop.stopped))
    try:
        return run_claimed(task, _worker_pool())
    finally:
        finished.set()


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

    def run(self, tasks: list[RunTask], on_progress: ProgressCallback | None = None,
            stopped: Callable[[], int | None] | None = None) -> Iterator[TaskResult]:
        """Submit every task, yield each result as it completes; once ``stopped()`` gives a signal number, stop
        (:meth:`_stop`): queued runs are cancelled, executing ones stopped on their workers."""
        if tasks and self.slots() == 0:
            print(f"warning: no Dask worker declares the '{RUN_RESOURCE}' resource yet; the runs wait for one "
                  f"(start workers with --resources {RUN_RESOURCE}=K)", file=sys.stderr)
        tag = uuid.uuid4().hex[:8]
        stop_name = f"distilvpr-stop-{tag}"
        futures = {self.client.submit(dask_task, task, stop_name, key=f"distilvpr-run-{task.name}-{tag}", pure=False,
                                      resources={RUN_RESOURCE: 1}): task for task in tasks}
        progress = Progress(total=len(tasks))
        pending = set(futures)
        last_poll = 0.0
        while pending:
            done = {f for f in pending if f.done()}
            pending -= done
            for fut in done:
                task = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 - a lost task (KilledWorker) or an infrastructure error
                    result = TaskResult(task.name, ERROR, error=format_error(exc))
                self._count(progress, result)
                yield result
            if pending and stopped is not None and stopped():
                yield from self._stop(futures, pending, stop_name, stopped())
                return
            if not done:
                time.sleep(0.2)
            if on_progress is not None and (done or time.monotonic() - last_poll > 2.0):
                last_poll = time.monotonic()
                progress.running = self._running({f.key for f in pending})
                on_progress(progress)

    def _stop(self, futures: dict[Any, RunTask], pending: set[Any], stop_name: str,
              signum: int) -> Iterator[TaskResult]:
        """The launcher was stopped by ``signum``: tell the executing tasks (they stop their runs and report them,
        for up to :data:`STOP_WAIT_S` s), then cancel the rest and yield them ``cancelled``."""
        import distributed

        queued = {f for f in pending if f.status == "pending" and f.key not in self._processing_keys()}
        with contextlib.suppress(Exception):  # a scheduler already gone cancels nothing more
            self.client.cancel(list(queued), force=True)
        with contextlib.suppress(Exception):
            distributed.Variable(stop_name, client=self.client).set(int(signum))
            distributed.Event(stop_name, client=self.client).set()
        pending = set(pending) - queued
        deadline = time.monotonic() + STOP_WAIT_S
        while pending and time.monotonic() < deadline:
            for fut in [f for f in pending if f.done()]:
                pending.discard(fut)
                with contextlib.suppress(Exception):  # cancelled or lost: its folder says what became of it
                    yield fut.result()
                    continue
                yield TaskResult(futures[fut].name, CANCELLED)
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            self.client.cancel(list(pending), force=True)
        for fut in [*queued, *pending]:
            yield TaskResult(futures[fut].name, CANCELLED)
        with contextlib.suppress(Exception):
            distributed.Variable(stop_name, client=self.client).delete()
            distributed.Event(stop_name, client=self.client).clear()

    def _processing_keys(self) -> set[Any]:
        with contextlib.suppress(Exception):
            return {k for ks in self.client.processing().values() for k in ks}
        return set()

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


__all__ = ["EXECUTORS", "RUN_RESOURCE", "STOP_WAIT_S", "DaskExecutor", "Executor", "LocalExecutor", "Progress", "dask_task",
           "make_executor"]
