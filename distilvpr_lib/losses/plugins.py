"""Bring your own loss: distillation losses defined in a user's own files, registered without editing the package.

A plugin is a Python file that registers one or more losses and presets::

    # my_loss.py
    import torch
    from distilvpr_lib.losses.base import DistillLoss, check_pair
    from distilvpr_lib.losses.distiller import register_preset
    from distilvpr_lib.losses.registry import register_loss

    @register_loss("mean_gap")
    class MeanGapLoss(DistillLoss):
        '''|mean(s) − mean(t)|² per descriptor dimension (a toy).'''
        def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
            check_pair(student, teacher, "mean_gap")
            return {"mean_gap": (student.mean(0) - teacher.detach().mean(0)).pow(2).sum()}

    register_preset("mean_gap", {"mean_gap": 1.0})

Name the files in the environment variable :data:`ENV_VAR` (``os.pathsep``-separated), and every command,
notebook and grid run finds the preset by name — with the method-name modifiers (``mean_gap_x10_norm``):
``DISTILVPR_LOSS_PLUGINS=my_loss.py distilvpr distill --method mean_gap_norm ...``. The files are imported when a
distillation objective is first resolved (never at package import), once per file.
"""

from __future__ import annotations

import importlib.util
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from distilvpr_lib.errors import OptionError

#: Environment variable naming the plugin files (``os.pathsep``-separated paths).
ENV_VAR: str = "DISTILVPR_LOSS_PLUGINS"

#: Resolved path -> imported module (each file is imported once per process).
_LOADED: dict[Path, ModuleType] = {}


def plugin_paths(value: str | None = None) -> list[Path]:
    """The plugin files named by ``value`` (default: the :data:`ENV_VAR` environment variable), resolved."""
    value = os.environ.get(ENV_VAR, "") if value is None else value
    return [Path(part).expanduser().resolve() for part in value.split(os.pathsep) if part.strip()]


def load_loss_plugins(paths: Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """Import every plugin file not imported yet; their ``register_loss`` / ``register_preset`` calls register them.

    Args:
        paths: the files; ``None`` = those named by :data:`ENV_VAR`.

    Returns:
        The resolved paths of all plugin files loaded in this process so far.

    Raises:
        OptionError: a file is missing or not a ``.py`` file, or importing it raised (the message names the file
            and the environment variable).
    """
    files = plugin_paths() if paths is None else [Path(p).expanduser().resolve() for p in paths]
    for path in files:
        if path in _LOADED:
            continue
        if not path.is_file() or path.suffix != ".py":
            raise OptionError(f"{path}: loss plugin not found or not a .py file (named by {ENV_VAR})")
        name = "distilvpr_loss_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise OptionError(f"{path}: cannot import this loss plugin (named by {ENV_VAR})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _LOADED[path] = module  # before running it: the plugin's own register_preset resolves names (re-entry)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: report it as one line naming the file
            sys.modules.pop(name, None)
            _LOADED.pop(path, None)
            raise OptionError(f"{path}: loss plugin failed to import: {type(exc).__name__}: {exc}") from exc
    return list(_LOADED)
