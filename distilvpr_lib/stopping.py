"""Stopping child processes when told: SIGINT (Ctrl-C) or SIGTERM to a batch stops its runs, children included.

A batch starts each run (papermill, which starts a Jupyter kernel, which may start DataLoader workers or
any other process) in a **session of its own**, so a terminal's Ctrl-C reaches the batch alone and the batch
decides: :class:`StopSignals` catches SIGINT and SIGTERM, starts no new run, and ends every running one with
:func:`terminate_process_tree` — SIGTERM to every process group of the run's process tree (the kernel
runs in its own session too), then SIGKILL to whatever is still alive a few seconds later. A second signal
kills at once.

The process tree is read from ``/proc`` (Linux); elsewhere only the run's own process group is signalled
(the kernel then exits by itself when it sees its parent gone).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from types import FrameType, TracebackType

from distilvpr_lib.errors import signal_name

#: Seconds a stopped process tree gets between SIGTERM and SIGKILL.
GRACE_SECONDS: float = 3.0
#: The signals a batch stops on.
STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


def descendant_pids(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (children, grandchildren, ...), read from ``/proc``; ``[]`` without it."""
    children: dict[int, list[int]] = defaultdict(list)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
        if len(fields) > 1:
            children[int(fields[1])].append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        return stat[stat.rfind(")") + 2:].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _send(groups: set[int], loose: list[int], signum: int) -> None:
    for group in groups:
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in loose:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def terminate_process_tree(proc: subprocess.Popen, grace_s: float = GRACE_SECONDS) -> None:
    """End ``proc`` and all its descendants: SIGTERM to their process groups, SIGKILL after ``grace_s`` seconds.

    The caller's own process group is never signalled as a group (its members of the tree are signalled one
    by one). Returns once ``proc`` has exited (it is reaped) and the descendants are gone or killed.
    """
    pids = [proc.pid] + descendant_pids(proc.pid)
    own_group = os.getpgrp()
    groups: set[int] = set()
    loose: list[int] = []
    for pid in pids:
        try:
            group = os.getpgid(pid)
        except (ProcessLookupError, PermissionError):
            continue
        if group == own_group:
            loose.append(pid)
        else:
            groups.add(group)
    _send(groups, loose, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace_s)
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(is_alive(pid) for pid in pids[1:]):
            return
        time.sleep(0.05)
    _send(groups, [pid for pid in loose if is_alive(pid)], signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
        pass


class StopSignals:
    """While active (``with StopSignals() as stop:``), SIGINT and SIGTERM stop the registered processes.

    The first signal sets :attr:`signum` (so callers start nothing new) and ends every registered process
    tree (:func:`terminate_process_tree`, in background threads); a second one kills them at once.
    Handlers are installed only in the main thread and the previous ones are restored on exit.

    Attributes:
        signum: the signal that stopped the batch, ``None`` while none came.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, grace_s: float = GRACE_SECONDS) -> None:
        self.signum: int | None = None
        self.grace_s = grace_s
        self._signals = signals
        self._previous: dict[int, object] = {}
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.RLock()
        self._stoppers: list[threading.Thread] = []

    @property
    def stopped(self) -> bool:
        """Whether a stop signal came (start no new run)."""
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        """``"SIGINT"`` / ``"SIGTERM"``, or ``None``."""
        return signal_name(self.signum) if self.signum is not None else None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        for thread in list(self._stoppers):
            thread.join(timeout=self.grace_s + 15)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signum)

    def stop(self, signum: int) -> None:
        """Stop as if ``signum`` came: no new run; the running ones are terminated (a second stop kills)."""
        with self._lock:
            again = self.signum is not None
            if not again:
                self.signum = signum
            procs = list(self._procs)
        for proc in procs:
            self._terminate(proc, 0.0 if again else self.grace_s)

    def _terminate(self, proc: subprocess.Popen, grace_s: float) -> None:
        thread = threading.Thread(target=terminate_process_tree, args=(proc, grace_s), daemon=True,
                                  name=f"stop-{proc.pid}")
        thread.start()
        with self._lock:
            self._stoppers.append(thread)

    def register(self, proc: subprocess.Popen) -> None:
        """Track a started process; one started after the stop signal is terminated at once."""
        with self._lock:
            self._procs.add(proc)
            stopped = self.stopped
        if stopped:
            self._terminate(proc, self.grace_s)

    def unregister(self, proc: subprocess.Popen) -> None:
        """Forget a process that has exited."""
        with self._lock:
            self._procs.discard(proc)


__all__ = ["GRACE_SECONDS", "STOP_SIGNALS", "StopSignals", "descendant_pids", "is_alive", "terminate_process_tree"]
