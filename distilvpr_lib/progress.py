"""Progress bars that render where they are shown, or are off.

``tqdm.auto`` picks ipywidgets bars in any Jupyter kernel, including papermill's, whose executed copies then
hold bars frozen at 0 % (widget state is not saved). :func:`progress_bar` chooses instead:

* ``widget`` bars in a kernel started by a Jupyter server (JupyterLab, Notebook: ``$JPY_SESSION_NAME`` set)
  when ipywidgets is installed;
* ``off`` in any other kernel (papermill, nbclient, ``distilvpr batch``): the per-epoch lines still print;
* ``text`` bars (stderr) outside kernels (the command line).

``$DISTILVPR_PROGRESS`` (``widget`` | ``text`` | ``off``) overrides the choice.

This module imports nothing from the rest of the library (bottom layer, beside ``paths``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: Environment variable forcing the progress mode.
PROGRESS_ENV = "DISTILVPR_PROGRESS"
#: The modes, in the order of the docs.
PROGRESS_MODES: tuple[str, ...] = ("widget", "text", "off")


def _in_kernel() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_mode() -> str:
    """``"widget"``, ``"text"`` or ``"off"`` for this process (see the module docstring)."""
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in PROGRESS_MODES:
        return forced
    if not _in_kernel():
        return "text"
    if os.environ.get("JPY_SESSION_NAME"):
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return "text"
        return "widget"
    return "off"


def _bar_class() -> type:
    if progress_mode() == "widget":
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar of the mode :func:`progress_mode` chooses (``disable=True`` when it is ``off``).

    Takes tqdm's arguments (``total``, ``desc``, ``disable``, ``leave`` ...).
    """
    if progress_mode() == "off":
        kwargs["disable"] = True
    return _bar_class()(iterable, **kwargs)


def write(message: str) -> None:
    """Print a line without breaking an open bar (``tqdm.write``)."""
    _bar_class().write(message)


__all__ = ["PROGRESS_ENV", "PROGRESS_MODES", "progress_bar", "progress_mode", "write"]
