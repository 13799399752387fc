"""Generic file helpers used by every writer of the project: atomic writes, strict JSON, SHA-256.

Every writer goes through :func:`atomic_write`: the data lands in a temporary file in the same
folder which replaces the target only once it is complete, so a failure never leaves a partly
written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from distilvpr_lib.errors import DataFormatError, DiskFullError, MissingDataError, disk_full_error

PathLike = str | os.PathLike


#: Suffix of every temporary file :func:`atomic_write` / :func:`atomic_output_path` create (``.<name>.<random>.tmp``).
TEMP_SUFFIX: str = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def current_umask() -> int:
    """The process's file-creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def _give_umask_mode(fd: int) -> None:
    """Give a ``mkstemp`` file (created 0600) the mode an ordinary ``open()`` would: 0666 minus the umask."""
    with contextlib.suppress(OSError):  # file systems without modes
        os.fchmod(fd, 0o666 & ~current_umask())


def is_temp_file(path: PathLike) -> bool:
    """Whether ``path``'s name is one of :func:`atomic_write`'s temporary files (``.last.pt.k3j_x9a2.tmp``)."""
    return bool(_TEMP_NAME.match(Path(path).name))


def remove_stale_temp_files(folder: PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder`` (a kill -9 mid-write).

    Only call it while no other process writes the folder (the run-folder lock). Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    removed = []
    for path in candidates:
        if path.is_file() and not path.is_symlink() and is_temp_file(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


#: ``errno`` values of a full disk or quota.
DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})


def _disk_full_for(exc: BaseException, path: Path, needed: int | None) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` when ``exc`` is a failed write on a full disk, else ``None``.

    An ``OSError`` ENOSPC / EDQUOT is one; so is the ``RuntimeError`` torch's zip writer raises for a failed
    write ("file write failed") when the disk holding ``path`` has less free space than the write needed.
    """
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return disk_full_error(path, needed=needed, reason=exc.strerror)
    if isinstance(exc, RuntimeError) and "write failed" in str(exc):
        import shutil

        with contextlib.suppress(OSError):
            free = shutil.disk_usage(path.parent).free
            if free < max(needed or 0, 1 << 20):
                return disk_full_error(path, needed=needed)
    return None


@contextlib.contextmanager
def _replace_when_done(tmp: Path, path: Path, size_hint: int | None) -> Iterator[None]:
    """Move the temporary file ``tmp`` onto ``path`` when the block ends without error; otherwise remove ``tmp``
    and re-raise (a full disk as :class:`DiskFullError` naming ``path``; ``size_hint``: the bytes needed)."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        full = _disk_full_for(exc, path, size_hint)
        if full is not None:
            raise full from exc
        raise


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None,
                 size_hint: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` atomically.

    Use for every file the project writes (data, results, checkpoints)::

        with atomic_write(out / "metrics.json", "w") as f:
            json.dump(metrics, f)

    If the block raises, the temporary file is removed and ``path`` is untouched (an existing
    file keeps its old content; a new file never appears). Parent folders are created. The file
    gets the mode an ordinary ``open()`` gives (0666 minus the umask, typically 0644), not
    ``mkstemp``'s 0600. A process killed mid-write leaves its temporary file
    (:func:`is_temp_file`); :func:`remove_stale_temp_files` clears them on the next run.

    Args:
        path: final file path.
        mode: ``"wb"`` (default) or ``"w"`` (text; ``encoding`` defaults to UTF-8).
        encoding: text encoding for ``mode="w"``.
        size_hint: the bytes the write will need, when known (for the disk-full message).

    Raises:
        DiskFullError: the disk or quota filled up (``ENOSPC`` / ``EDQUOT``), naming ``path`` and the space
            needed; ``path`` is untouched.
    """
    if mode not in {"wb", "w"}:
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    with _replace_when_done(Path(tmp_name), path, size_hint):
        _give_umask_mode(fd)
        if mode == "w":
            handle: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            handle = os.fdopen(fd, "wb")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_output_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for writers that need a file name, not a handle.

    The temporary file is moved onto ``path`` when the block ends without error, and removed
    otherwise. The yielded path keeps ``path``'s suffix (so e.g. ``np.save`` does not add one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TEMP_SUFFIX}{path.suffix}", dir=path.parent)
    _give_umask_mode(fd)
    os.close(fd)
    tmp = Path(tmp_name)
    with _replace_when_done(tmp, path, None):
        yield tmp


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (identifies a teacher's weights in its cache metadata, an imported file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def json_safe(obj: Any) -> Any:
    """``obj`` as strict-JSON values: mappings (keys as strings), lists (from lists / tuples / numpy arrays),
    paths as strings, numpy scalars and one-element tensors as numbers, non-finite floats as ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):  # numpy / torch scalars
        try:
            return json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return obj


def write_json(path: PathLike, obj: Any, sort_keys: bool = False, default: Any = None) -> Path:
    """Write ``obj`` as strict JSON (:func:`json_safe`: NaN/inf become null), indented, atomically; returns the path.

    Args:
        sort_keys: sort every mapping's keys (the notebooks' ``metrics.json``, batch status files).
        default: ``json.dumps``'s fallback for other objects (``None``: they are an error).
    """
    path = Path(path)
    text = json.dumps(json_safe(obj), indent=2, sort_keys=sort_keys, allow_nan=False, default=default)
    with atomic_write(path, "w") as handle:
        handle.write(text)
        handle.write("\n")
    return path


def symlink_problem(path: PathLike) -> str:
    """What is wrong with a symbolic link that leads nowhere: a loop, or a dangling link (target named)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (a symbolic link that points, through others, back to itself)"
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"dangling symbolic link (its target {target} does not exist)"


def safe_resolve(path: Path) -> Path:
    """``path.resolve()``, raising :class:`DataFormatError` naming ``path`` for a symlink loop (Python raises
    ``RuntimeError`` or ``OSError`` ELOOP there, depending on its version)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise
        raise DataFormatError(symlink_problem(path), path=path, hint="remove or fix the link") from exc


def require_file(path: Path, what: str) -> None:
    """Check that ``path`` is an existing regular file before a reader opens it.

    Args:
        path: the file to read.
        what: what the file holds, for the message (``"point cloud"``, ``"pickle"``, ...).

    Raises:
        MissingDataError: ``<path>: <what> not found``. DataFormatError: ``<path>: <what> is not a regular file``.
    """
    if not path.exists():
        if path.is_symlink():
            raise DataFormatError(symlink_problem(path), path=path, hint="remove or fix the link")
        raise MissingDataError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataFormatError(f"{path}: {what} is not a regular file")
