"""Console lines of the run pipelines (tqdm-safe: they do not break progress bars), also kept in the run's
``run.log`` while :func:`run_log` is open."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

#: Name of the per-run console log (in the teacher folder or student run).
RUN_LOG_FILE = "run.log"

_log_files: list[TextIO] = []


def say(message: str, enabled: bool = True) -> None:
    """Print ``message`` through :func:`distilvpr_lib.progress.write` when ``enabled`` (the pipelines pass
    ``progress``); append it, time-stamped, to the open run log either way."""
    for handle in _log_files:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write("".join(f"{stamp}  {line}\n" for line in message.splitlines() or [""]))
        handle.flush()
    if enabled:
        from distilvpr_lib.progress import write

        write(message)


@contextlib.contextmanager
def run_log(out_dir: str | Path, enabled: bool = True) -> Iterator[Path | None]:
    """Keep every :func:`say` line in ``<out_dir>/run.log`` (appended: a resumed run continues the log).

    Args:
        out_dir: the run folder (created when missing).
        enabled: ``False`` opens nothing (ranks other than 0 of a distributed run).
    """
    if not enabled:
        yield None
        return
    path = Path(out_dir) / RUN_LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        _log_files.append(handle)
        try:
            yield path
        finally:
            _log_files.remove(handle)


__all__ = ["RUN_LOG_FILE", "run_log", "say"]
