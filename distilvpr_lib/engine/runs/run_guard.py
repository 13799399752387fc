"""Run-folder hygiene: one writer per folder, no stale temporary files, failures recorded.

:func:`guarded_run` wraps a training pipeline (``train_teacher``, ``distill_student``):

* it takes an exclusive lock on ``<out>/.distilvpr.lock`` (``fcntl.flock``: released by the OS when the
  process ends, even by ``kill -9``; the file is removed on a normal exit), so a second process writing the
  same ``--out`` gets a one-line :class:`~distilvpr_lib.errors.RunFolderLockedError` naming the holder instead
  of interleaved checkpoints;
* holding it, it removes the temporary files an interrupted atomic write left behind
  (:func:`distilvpr_lib.data.files.remove_stale_temp_files`);
* when the pipeline raises, ``metrics.json`` records ``status: failed`` and the one-line error
  (:func:`distilvpr_lib.errors.format_error`), then the error propagates; Ctrl-C or SIGTERM records
  ``status: interrupted`` (the run resumes when re-run).

Only the main process (rank 0 under ``torchrun``) locks and writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distilvpr_lib.data.files import remove_stale_temp_files
from distilvpr_lib.errors import RunFolderLockedError, format_error

try:  # POSIX; elsewhere the folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import ExperimentConfig

PathLike = str | os.PathLike

#: Lock file inside a run folder (holds "pid host time" of the writer).
LOCK_FILE: str = ".distilvpr.lock"


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = lock_path.read_text().strip()
        if text:
            pid, _, rest = text.partition(" ")
            return f"process {pid} ({rest})" if rest else f"process {pid}"
    return "another process"


class RunFolderLock:
    """An exclusive, non-blocking lock on a run folder (``with RunFolderLock(dir): ...``).

    ``lock_file`` names the lock inside the folder (default :data:`LOCK_FILE`, the training pipeline's; a batch
    launcher claims a run with its own, :data:`distilvpr_lib.executors.claims.CLAIM_FILE`).
    """

    def __init__(self, folder: PathLike, lock_file: str = LOCK_FILE) -> None:
        self.folder = Path(folder)
        self.path = self.folder / lock_file
        self._fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        """Create the folder if needed and lock it.

        Raises:
            RunFolderLockedError: another process holds the lock (named in the message).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderLockedError(f"is being written by {_holder(self.path)}", path=self.folder,
                                           hint="wait for it to finish, stop it, or choose another --out") from None
            # the holder removes the file when it releases: a lock on a removed file is no lock, take the new one
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and unlock (a process killed with -9 leaves the file, unlocked, for the next)."""
        if self._fd is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # still holding the lock: a waiting opener re-checks the file (acquire)
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self if self._fd is not None else self.acquire()  # an acquired lock is held for the ``with`` body

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_not_locked(folder: PathLike, lock_file: str = LOCK_FILE) -> None:
    """Raise :class:`RunFolderLockedError` when another process holds ``folder``'s lock (creates nothing)."""
    lock_path = Path(folder) / lock_file
    if fcntl is None or not lock_path.is_file():
        return
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderLockedError(f"is being written by {_holder(lock_path)}", path=folder,
                                   hint="wait for it to finish, stop it, or choose another --out") from None
    finally:
        os.close(fd)


def record_failure(out_dir: PathLike, kind: str, exc: BaseException) -> None:
    """Mark the run failed in ``metrics.json``: ``status: failed``, ``error`` (one line), ``failed_at``.

    A ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM as :class:`~distilvpr_lib.errors.RunInterrupted`) records
    ``status: interrupted`` instead: the run stopped when told and resumes when re-run.

    An existing ``metrics.json`` keeps its other fields; writing never raises (the original error matters).
    """
    from distilvpr_lib.data.files import write_json
    from distilvpr_lib.engine.runs.run_folder import METRICS_FILE

    path = Path(out_dir) / METRICS_FILE
    metrics: dict = {}
    with contextlib.suppress(OSError, ValueError):
        if path.is_file():
            loaded = json.loads(path.read_text())
            metrics = loaded if isinstance(loaded, dict) else {}
    metrics.setdefault("kind", kind)
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or SIGTERM (errors.RunInterrupted): resumable, not failed
        metrics.update(status="interrupted", error=f"interrupted by {exc}" if str(exc) else "interrupted",
                       failed_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    else:
        metrics.update(status="failed", error=format_error(exc), failed_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    with contextlib.suppress(Exception):
        write_json(path, metrics)


@contextlib.contextmanager
def guarded_run(out_dir: PathLike, kind: str, enabled: bool = True) -> Iterator[Path]:
    """Lock ``out_dir``, clear stale temporary files, record a failure (see the module docstring).

    Args:
        out_dir: the run folder (created).
        kind: ``"teacher"`` or ``"student"`` (written with a failure).
        enabled: ``False`` on non-main ranks: nothing is locked or written.
    """
    out_dir = Path(out_dir)
    if not enabled:
        yield out_dir
        return
    with RunFolderLock(out_dir):
        remove_stale_temp_files(out_dir)
        try:
            yield out_dir
        except BaseException as exc:
            record_failure(out_dir, kind, exc)
            raise


def run_unless_complete(kind: str, cfg: "ExperimentConfig", out_dir: PathLike, resume: bool, weights_file: str,
                        pipeline: Callable[[], dict[str, Any]], progress: bool = True) -> dict[str, Any]:
    """The entry both training pipelines share, after their preflight: done already, or run guarded and logged.

    A complete run of this configuration in ``out_dir``
    (:func:`~distilvpr_lib.engine.runs.run_folder.completed_run`, checked before anything is written) is only
    tidied (:func:`~distilvpr_lib.engine.runs.run_folder.tidy_completed_run`) and its ``metrics.json`` returned;
    otherwise ``pipeline()`` runs (it resumes from ``checkpoints/last.pt`` itself). Either way inside
    :func:`guarded_run` (lock, stale temporary files, a failure or an interruption recorded) and
    :func:`~distilvpr_lib.engine.train.console.run_log` (``run.log``), on the main process only.

    Args:
        kind: ``"teacher"`` or ``"student"`` (the failure record and the console line).
        cfg: the run's resolved configuration.
        out_dir: the run folder.
        resume: ``False`` starts over: a complete run is not reused.
        weights_file: the selected weights a complete run holds (``teacher.pt`` / ``student.pt``).
        pipeline: trains, selects, tests and writes the run; returns its metrics dict.
        progress: print the "already holds this run" line.

    Returns:
        The metrics dict of the complete run, or the one ``pipeline`` returned.

    Raises:
        RunConfigMismatchError: ``out_dir`` holds a complete run of another configuration that cannot resume.
        RunFolderLockedError: another process writes ``out_dir``.
    """
    from distilvpr_lib.engine.runs.run_folder import completed_run, tidy_completed_run
    from distilvpr_lib.engine.train.console import run_log, say
    from distilvpr_lib.engine.train.distributed import is_main_process

    main = is_main_process()
    done = completed_run(cfg, out_dir, resume, weights_file)  # refuses another complete run, before any write
    with guarded_run(out_dir, kind, enabled=main), run_log(out_dir, enabled=main):
        if done is not None:  # a complete run of this configuration: nothing to train (it kept no last.pt)
            tidy_completed_run(out_dir, weights_file, cfg.train.keep_checkpoints)
            say(f"{kind}: {out_dir} already holds this run, complete (see its metrics.json and summary.json)",
                progress and main)
            return done
        return pipeline()


__all__ = ["LOCK_FILE", "RunFolderLock", "check_not_locked", "guarded_run", "record_failure", "run_unless_complete"]
