"""The project's error types: every problem a user can fix names the file, the problem and what to do.

All of them derive from :class:`DistilVPRError`, whose ``str()`` is one line::

    <file>: <problem> (<what to do>)

The command line (:mod:`distilvpr_lib.cli`) prints exactly that line after ``error: `` and exits with
the error's :attr:`~DistilVPRError.exit_code`: **1** for bad data, weights or run folders, **2** for bad
options. Notebooks see the same line as the exception's message (and :func:`format_error` gives it
for any exception); :func:`show_errors_in_one_line`, called in each notebook's first import cell, makes a
failing cell show just that line (the traceback with ``DISTILVPR_DEBUG=1``). Ctrl-C and SIGTERM stop a
command alike (:class:`RunInterrupted`). No message of the project ever suggests ``torch.load(weights_only=False)``:
:func:`describe_torch_load_error` rewrites torch's advice into what the file's problem is.

This module sits at the bottom of the layers (next to ``config``): ``data``, ``models``, ``engine``,
``batch`` and ``commands`` all raise these types (import them from here). ``engine.train.checkpoint.CheckpointError``
is the same class, re-exported where it was first defined.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike

#: Exit status for bad data, weights, checkpoints or run folders (and unexpected failures).
EXIT_BAD_INPUT: int = 1
#: Exit status for bad options (unknown names, conflicting or missing arguments).
EXIT_BAD_OPTIONS: int = 2
#: Environment variable that, set to ``1``, makes the CLI print tracebacks (same as ``--debug``).
DEBUG_ENV: str = "DISTILVPR_DEBUG"


class DistilVPRError(Exception):
    """A problem the user can fix; ``str(error)`` is ``"<file>: <problem> (<what to do>)"``.

    Two ways to build one:

    * structured: ``DataFormatError("is empty", path=p, hint="regenerate it")``;
    * a ready message that already starts with the file: ``DataFormatError(f"{p}: is empty")``.

    Attributes:
        problem: what is wrong (without the file and the hint).
        path: the offending file or folder, or ``None`` when the message already names it.
        hint: what to do about it, or ``None``.
        exit_code: the CLI's exit status for this error (class attribute; 1 or 2).
    """

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, problem: str = "", *, path: PathLike | None = None, hint: str | None = None) -> None:
        self.problem = str(problem)
        self.path = Path(path) if path is not None else None
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The one-line message: ``<file>: <problem> (<hint>)``."""
        text = f"{self.path}: {self.problem}" if self.path is not None else self.problem
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split("\n"))

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (DataLoader workers, papermill)
        return (_rebuild_error, (type(self), self.problem, self.path, self.hint))


def _rebuild_error(cls: type, problem: str, path: Path | None, hint: str | None) -> "DistilVPRError":
    return cls(problem, path=path, hint=hint)


class DataFormatError(DistilVPRError, ValueError):
    """A benchmark file is missing, malformed or unsafe; the message names the file (entry, field) and the problem."""


class MissingDataError(DataFormatError, FileNotFoundError):
    """A file or folder the benchmark needs does not exist (also a :class:`FileNotFoundError`)."""


class CheckpointError(DistilVPRError, RuntimeError):
    """A checkpoint or weights file is unreadable or does not fit the config; the message names the file."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint or weights file does not exist (also a :class:`FileNotFoundError`)."""


class RunFolderError(DistilVPRError, RuntimeError):
    """An output folder cannot be used: not writable, a file, held by another process, of another config."""


class DiskFullError(RunFolderError):
    """A write failed because the disk (or the quota) is full; the message names the file and the space needed."""


def disk_full_error(path: PathLike, needed: int | None = None, reason: str | None = None) -> DiskFullError:
    """``<path>: disk full: writing it needs N bytes, M free (<reason>) (what to do)`` for a failed write of ``path``.

    ``needed``: the bytes the write needed, when known; the free space is read from the disk holding ``path``.
    """
    import shutil

    path = Path(path)
    free: int | None = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))).free
    parts = []
    if needed is not None:
        parts.append(f"writing it needs {needed:,} bytes")
    if free is not None:
        parts.append(f"{free:,} bytes free")
    detail = ", ".join(parts)
    problem = "disk full" + (f": {detail}" if detail else "") + (f" ({reason})" if reason else "")
    return DiskFullError(problem, path=path, hint="free space on that disk, or write elsewhere; the previous "
                                                  "version of the file (if any) is unchanged, and a rerun resumes")


class RunFolderLockedError(RunFolderError):
    """Another process is writing the same run folder (its lock file names the process)."""


class OptionError(DistilVPRError, ValueError):
    """A bad command-line option or config value (exit status 2)."""

    exit_code = EXIT_BAD_OPTIONS


class UnknownNameError(OptionError, KeyError):
    """A name the workbench does not know where it expects one of its own: a config section or field, a
    distillation method or loss term (exit status 2; also a ``KeyError`` for callers that catch one).

    The message names the unknown name and lists the known ones; in a notebook it shows as that one line
    (:func:`show_errors_in_one_line`), not as a ``KeyError`` repr and a traceback.
    """


class UnknownProfileError(OptionError, KeyError):
    """A profile name that :data:`distilvpr_lib.config.PROFILES` does not hold (also a ``KeyError``)."""


class GridError(OptionError):
    """A grid file (``distilvpr batch``) is malformed or asks for something its notebook does not take.

    The message names the grid file, the variation and the parameter (exit status 2).
    """


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal: SIGINT (Ctrl-C) or SIGTERM (what a cluster scheduler sends).

    A ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` (the CLI's one line, the run folder's
    ``status: interrupted`` record) treats SIGTERM as it treats Ctrl-C.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(signal_name(self.signum))


def signal_name(signum: int) -> str:
    """``"SIGINT"`` / ``"SIGTERM"`` / ... for a signal number (``"signal N"`` when unknown)."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ---------------------------------------------------------------------------
# Messages for errors that are not ours
# ---------------------------------------------------------------------------
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_WEIGHTS_ONLY_ADVICE = re.compile(r"weights_only", re.IGNORECASE)


def describe_torch_load_error(exc: BaseException) -> str:
    """What went wrong in a failed ``torch.load(weights_only=True)``, without torch's advice.

    torch's message for a refused global recommends re-running with ``weights_only=False``, which
    would execute whatever the file holds; this project never gives that advice. The result names
    the refused global (``refusing to load global 'builtins.exec' ...``), says a file is not a torch
    file / is truncated, or else keeps torch's first line when it holds no such advice.
    """
    text = str(exc)
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        return (f"refusing to load global {found.group(1)!r}: the file holds objects other than tensors and "
                "plain containers, and loading them could run code")
    lowered = text.lower()
    if "failed finding central directory" in lowered or "not a zip file" in lowered or "invalid load key" in lowered:
        return "not a torch file, or truncated (its archive is incomplete)"
    if "unsupported operand" in lowered or "ran out of input" in lowered:
        return "not a torch file (its bytes are neither a torch archive nor a pickle), or truncated"
    if "unpickling" in lowered and _WEIGHTS_ONLY_ADVICE.search(text):
        return "its contents cannot be read as tensors and plain containers (corrupt, or not a weights file)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    if _WEIGHTS_ONLY_ADVICE.search(first):
        return "its contents cannot be read as tensors and plain containers (corrupt, or not a weights file)"
    if isinstance(exc, EOFError) or "ran out of input" in lowered:
        return "truncated or empty file"
    return f"unreadable ({type(exc).__name__}: {first})"


def describe_os_error(exc: OSError) -> DistilVPRError:
    """A one-line project error for an ``OSError`` (permission denied, disk full, not a folder, ...)."""
    where = exc.filename if exc.filename is not None else None
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT) and where is not None:
        return disk_full_error(where, reason=exc.strerror)
    if code == errno.ELOOP:
        return DataFormatError("symlink loop (a symbolic link that points, through others, back to itself)",
                               path=where, hint="remove or fix the link")
    hints = {
        errno.EACCES: "check the permissions, or choose another folder",
        errno.EPERM: "check the permissions, or choose another folder",
        errno.ENOSPC: "the disk is full: free space or write elsewhere",
        errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.ENOTDIR: "a file stands where a folder is expected",
        errno.EISDIR: "a folder stands where a file is expected",
        errno.ENOENT: "check the path",
    }
    problem = exc.strerror or str(exc)
    return RunFolderError(problem, path=where, hint=hints.get(code or -1))


def format_error(exc: BaseException) -> str:
    """The one line the CLI prints for ``exc`` (without the ``error: `` prefix); usable in notebooks.

    Project errors give their message; ``OSError`` its file and reason; anything else
    ``unexpected <type>: <message>`` and a pointer to ``--debug``.
    """
    if isinstance(exc, DistilVPRError):
        return exc.message
    if isinstance(exc, OSError):
        return describe_os_error(exc).message
    text = " ".join(str(exc).split("\n")) or type(exc).__name__
    if _WEIGHTS_ONLY_ADVICE.search(text):
        text = describe_torch_load_error(exc)
    return (f"unexpected {type(exc).__name__}: {text} (a bug or an unchecked input: rerun with --debug "
            f"or {DEBUG_ENV}=1 for the traceback)")


def exit_code_for(exc: BaseException) -> int:
    """The CLI's exit status for ``exc``: a project error's own code (1 or 2), else 1."""
    if isinstance(exc, DistilVPRError):
        return exc.exit_code
    return EXIT_BAD_INPUT


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether tracebacks are wanted: ``--debug`` in ``argv`` or ``DISTILVPR_DEBUG=1`` in the environment."""
    if argv is not None and "--debug" in argv:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------
# Notebooks: the workbook's errors as one line
# ---------------------------------------------------------------------------
def one_line_traceback(exc: BaseException) -> list[str]:
    """What a notebook cell shows for a workbook error: ``["<ErrorType>: <file>: <problem> (<hint>)"]``."""
    return [f"{type(exc).__name__}: {format_error(exc)}"]


def show_errors_in_one_line() -> bool:
    """In a notebook, show the workbook's own errors (:class:`DistilVPRError`) as their one-line message.

    Registers an IPython custom exception handler (``get_ipython().set_custom_exc``): a failing cell then
    shows ``DataFormatError: <file>: <problem> (<hint>)`` instead of a 15-40-line traceback, and papermill
    (``distilvpr batch``) records that line. With ``DISTILVPR_DEBUG=1`` the full traceback is shown as
    before. Other exceptions keep IPython's traceback (they are bugs, or inputs this project does not check).

    Call it from a notebook's first code cell; outside IPython it does nothing.

    Returns:
        True when the handler was registered (running under IPython), else False.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - notebooks always have IPython
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
        if debug_requested():
            lines = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
        else:
            lines = one_line_traceback(value)
        # IPython's hook for showing a traceback (ipykernel sends it as the cell's error output)
        shell._showtraceback(etype, value, lines)

    shell.set_custom_exc((DistilVPRError,), handler)
    return True
