"""What a grid file may say, checked before a batch runs anything (``distilvpr batch``, issue 25).

A grid run is recorded under its name: the checks here make sure its parameters are the ones the notebook
runs with. Each refusal is a :class:`~distilvpr_lib.errors.GridError` (exit status 2) whose one line names
the grid file, the variation and the parameter:

* **duplicate keys** in the YAML (a mapping would silently keep the last value): :func:`load_grid_yaml`;
* **unknown parameters**: every name must be a parameter of the notebook's ``parameters`` cell
  (:func:`read_notebook_parameters`), with the closest known name suggested (``methd`` -> ``method``);
* **parameters the batch owns**: ``seed`` (the grid's ``seeds`` set it) and ``out`` (the run folder);
* **names that leave the output folder**: the grid's and every variation's ``name`` is one plain folder
  name (no ``/``, ``\\``, ``..``, no leading ``.``): :func:`check_folder_name`;
* **wrong-typed values** (``null`` is always accepted: "none" / "the profile's"), checked against the type of the notebook parameter's default, or, for a default
  of ``None``, of the config field the notebook passes it to (``notebook_config(profile, {'train.epochs':
  epochs}, overrides)`` in the notebook's code, :func:`read_notebook_config_call`); the ``overrides`` mapping
  is checked field by field against the run's profile (as the run gets it: the base's and the variation's merged,
  :func:`merge_parameters`), and the profile must exist;
* **one config field named twice** in a run's ``overrides`` (``train.task_normalize`` and ``task_normalize``);
* **seeds** that are not a list of distinct integers.

Values of the right type but a wrong choice (``method: no_such_method``) are left to the run, which fails
alone and is recorded (the batch isolates failures).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from distilvpr_lib.batch_records import OUT_PARAMETER
from distilvpr_lib.errors import GridError

#: The notebook parameter set from the grid's ``seeds`` (every batch notebook takes it, and ``out``).
SEED_PARAMETER = "seed"
#: A notebook parameter whose default is not a Python literal (its type is not checked).
NOT_A_LITERAL = object()


# ---------------------------------------------------------------------------
# YAML without silent duplicates
# ---------------------------------------------------------------------------
class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class UniqueKeyLoader(yaml.SafeLoader):
    """A ``yaml.SafeLoader`` that refuses a mapping holding the same key twice (YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_lines:
                    raise _DuplicateKeyError(key, key_node.start_mark.line + 1, first_lines[key])
                first_lines[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def load_grid_yaml(path: Path) -> Any:
    """Parse a grid file, refusing duplicate keys.

    Raises:
        GridError: not valid YAML, or a key given twice in one mapping (the message names both lines).
    """
    try:
        return yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise GridError(f"{path}: line {exc.line}: duplicate key {exc.key!r} (first given on line "
                        f"{exc.first_line}); YAML would keep only the last value: give each key once") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(f"{path}: cannot be read ({exc})") from None


# ---------------------------------------------------------------------------
# How a variation goes over the base
# ---------------------------------------------------------------------------
def merge_parameters(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``, deeply: what a grid's run receives (``base`` + a variation or product cell).

    A key whose value is a mapping on both sides (``overrides``, ``terms``) is merged key by key, recursively, so
    a variation's ``overrides: {train.task_normalize: true}`` over a base's ``overrides: {train.milestones: [24]}``
    gives both; any other value (a scalar, a list, ``null``) replaces the base's whole. A variation cannot remove
    a key of a base mapping: it sets it to another value. Neither argument is changed, and the result shares no
    mutable value with them (one run's parameters cannot leak into another's).

    >>> merge_parameters({"epochs": 32, "overrides": {"train.milestones": [24]}},
    ...                  {"overrides": {"train.task_normalize": True}})
    {'epochs': 32, 'overrides': {'train.milestones': [24], 'train.task_normalize': True}}
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = merge_parameters(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ---------------------------------------------------------------------------
# What a notebook takes
# ---------------------------------------------------------------------------
def _cell_source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _notebook_cells(notebook: Path) -> list[Mapping[str, Any]]:
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise GridError(f"{notebook}: not a readable notebook ({exc})") from None
    return [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]


def read_notebook_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters of a notebook: ``{name: default}`` from its cell tagged ``parameters``.

    A default that is not a Python literal is :data:`NOT_A_LITERAL`.

    Raises:
        GridError: the notebook has no ``parameters`` cell, or the cell is not valid Python.
    """
    cells = [c for c in _notebook_cells(notebook) if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    if not cells:
        raise GridError(f"{notebook}: no cell tagged 'parameters' (papermill would inject a grid's parameters "
                        "unchecked): tag the cell that assigns the notebook's parameters")
    params: dict[str, Any] = {}
    for cell in cells:
        try:
            tree = ast.parse(_cell_source(cell))
        except SyntaxError as exc:
            raise GridError(f"{notebook}: the 'parameters' cell is not valid Python (line {exc.lineno}: "
                            f"{exc.msg})") from None
        for node in tree.body:
            targets: list[ast.expr] = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        params[target.id] = ast.literal_eval(node.value)  # type: ignore[union-attr]
                    except ValueError:
                        params[target.id] = NOT_A_LITERAL
    return params


@dataclass
class NotebookConfigCall:
    """How a notebook builds its config: ``notebook_config(<profile>, {<field>: <parameter>}, <overrides>)``.

    Attributes:
        profile: the parameter holding the profile name (``None``: not a parameter).
        fields: parameter name -> the ``section.field`` it sets.
        overrides: the parameter holding free ``section.field`` overrides (``None``: none).
    """

    profile: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    overrides: str | None = None


def read_notebook_config_call(notebook: Path) -> NotebookConfigCall:
    """Find the notebook's ``notebook_config(...)`` call in its code (IPython magics skipped).

    A notebook without one gives an empty :class:`NotebookConfigCall` (its parameters are then checked
    against their defaults only).
    """
    found = NotebookConfigCall()
    for cell in _notebook_cells(notebook):
        lines = [ln for ln in _cell_source(cell).splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name != "notebook_config":
                continue
            args = list(node.args) + [kw.value for kw in node.keywords if kw.arg in {"settings", "overrides"}]
            if args and isinstance(args[0], ast.Name):
                found.profile = args[0].id
            if len(args) > 1 and isinstance(args[1], ast.Dict):
                for key, value in zip(args[1].keys, args[1].values):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Name):
                        found.fields[value.id] = key.value
            if len(args) > 2 and isinstance(args[2], ast.Name):
                found.overrides = args[2].id
    return found


# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------
#: Kind of a value -> how messages name it.
_KIND_NAMES = {"boolean": "a boolean (true/false)", "integer": "an integer", "number": "a number",
               "string": "a string", "list": "a list", "sequence": "a list (or '_'-joined string)",
               "mapping": "a mapping"}
_ANNOTATION_KINDS = {"bool": "boolean", "int": "integer", "float": "number", "str": "string", "list": "list",
                     "tuple": "sequence", "dict": "mapping"}


def kind_of_default(default: Any) -> str | None:
    """The kind of value a parameter with this default takes (``None`` for no constraint)."""
    if default is None or default is NOT_A_LITERAL:
        return None
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, float):
        return "number"
    if isinstance(default, str):
        return "string"
    if isinstance(default, tuple):
        return "sequence"
    if isinstance(default, list):
        return "list"
    if isinstance(default, dict):
        return "mapping"
    return None


def config_field_kind(cfg: Any, dotted: str) -> str | None:
    """The kind of a ``section.field`` of an :class:`~distilvpr_lib.config.ExperimentConfig` (``None``: unknown)."""
    section_name, _, name = dotted.partition(".")
    section = getattr(cfg, section_name, None)
    if not dataclasses.is_dataclass(section):
        return None
    fields = {f.name: f for f in dataclasses.fields(section)}
    if name not in fields:
        return None
    kind = kind_of_default(getattr(section, name))
    if kind is not None:
        return kind
    annotation = str(fields[name].type)
    for part in annotation.split("|"):
        base = part.strip().split("[")[0]
        if base in _ANNOTATION_KINDS:
            return _ANNOTATION_KINDS[base]
    return None


def value_fits(value: Any, kind: str) -> bool:
    """Whether ``value`` (as YAML gives it) is of ``kind``."""
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, (str, os.PathLike))
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "sequence":
        return isinstance(value, (list, tuple, str))
    if kind == "mapping":
        return isinstance(value, dict)
    return True


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------
def check_folder_name(name: Any, what: str, where: str) -> str:
    """``name`` as one plain folder name inside the output folder, or :class:`GridError`.

    Refused: empty names, ``.``/``..``, path separators, absolute paths, a leading ``.`` (hidden folders,
    where the batch keeps replaced runs), NUL.
    """
    text = str(name) if isinstance(name, (str, int, float)) and not isinstance(name, bool) else None
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if (not text or text.startswith(".") or any(s in text for s in seps) or "\0" in text
            or os.path.isabs(text)):
        raise GridError(f"{where}: {what} {name!r} is not a plain folder name (runs are written to "
                        "OUT/<grid name>/<variation>__seed<N>/; no '/', '\\', '..' or leading '.')")
    return text


# ---------------------------------------------------------------------------
# The whole grid
# ---------------------------------------------------------------------------
class GridLike(Protocol):
    """What :func:`check_grid` reads of a :class:`distilvpr_lib.batch.Grid`."""

    name: str
    notebook: Path
    base: dict[str, Any]
    variations: list[dict[str, Any]]
    product: dict[str, list[Any]]
    seeds: list[int]
    source: Path | None


def check_seeds(seeds: Any, where: str) -> list[int]:
    """The grid's ``seeds``: a non-empty list of distinct integers (a single integer is a list of one)."""
    values = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(values, list) or not values:
        raise GridError(f"{where}: seeds: expected a list of integers, got {seeds!r}")
    for seed in values:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise GridError(f"{where}: seeds: {_describe(seed)} is not an integer (seeds: [0, 1, 2])")
    if len(set(values)) != len(values):
        raise GridError(f"{where}: seeds: {values} holds a seed twice")
    return list(values)


def _unknown_parameter(where: str, name: str, notebook: Path, known: Iterable[str]) -> GridError:
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return GridError(f"{where}: unknown parameter {name!r}{guess}: {notebook.name} takes {', '.join(known)}")


def _check_set(grid_file: str, label: str, params: Mapping[str, Any], notebook: Path,
               defaults: Mapping[str, Any], call: NotebookConfigCall, cfg: Any, values_are_lists: bool) -> None:
    where = f"{grid_file}: {label}"
    for name, value in params.items():
        if name == SEED_PARAMETER:
            raise GridError(f"{where}: parameter 'seed' is set by the grid's 'seeds' (every variation runs "
                            "every seed): remove it here and list the seeds in 'seeds'")
        if name == OUT_PARAMETER:
            raise GridError(f"{where}: parameter 'out' is set by the batch (the run's folder): remove it")
        if name not in defaults:
            raise _unknown_parameter(where, name, notebook, (p for p in defaults if p not in {OUT_PARAMETER,
                                                                                                SEED_PARAMETER}))
        kind, source = kind_of_default(defaults[name]), f"as the notebook's default {defaults[name]!r}"
        if kind is None and name in call.fields and cfg is not None:
            kind, source = config_field_kind(cfg, call.fields[name]), f"config field {call.fields[name]}"
        if values_are_lists and not isinstance(value, list):
            raise GridError(f"{where}: product values of {name!r} must be a list, got {_describe(value)}")
        for item in (value if values_are_lists else [value]):
            if item is None:  # YAML null: "none" / "the profile's", as the notebooks' None defaults
                continue
            if kind is not None and not value_fits(item, kind):
                raise GridError(f"{where}: parameter {name!r} is {_describe(item)}; it takes "
                                f"{_KIND_NAMES[kind]} ({source})")


def _dotted_field(cfg: Any, key: str) -> str:
    """The ``section.field`` an override key names (a bare ``field`` resolved to its one section)."""
    if "." in key:
        return key
    sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))
                and key in {g.name for g in dataclasses.fields(getattr(cfg, f.name))}]
    return f"{sections[0]}.{key}" if len(sections) == 1 else key


def _check_run_config(where: str, params: Mapping[str, Any], defaults: Mapping[str, Any],
                      call: NotebookConfigCall) -> None:
    """The run's profile exists and its ``overrides`` name config fields, each once, with values of their type."""
    from distilvpr_lib.config import apply_overrides, profile_config

    if call.profile is None:
        return
    profile = params.get(call.profile, defaults.get(call.profile))
    if not isinstance(profile, str):
        return
    try:
        cfg = profile_config(profile)
    except KeyError as exc:
        raise GridError(f"{where}: parameter {call.profile!r}: {exc.args[0]}") from None
    overrides = params.get(call.overrides) if call.overrides else None
    if not isinstance(overrides, dict):
        return
    named: dict[str, str] = {}
    for key, value in overrides.items():
        try:
            apply_overrides(cfg, {key: value})
        except (KeyError, ValueError, TypeError) as exc:
            raise GridError(f"{where}: parameter {call.overrides!r}: {exc.args[0] if exc.args else exc}") from None
        dotted = _dotted_field(cfg, str(key))
        if dotted in named:  # e.g. the base's train.task_normalize and a variation's bare task_normalize
            raise GridError(f"{where}: parameter {call.overrides!r}: config field {dotted} is set twice, as "
                            f"{named[dotted]!r} and {key!r} (which value the run gets would depend on their order): "
                            f"name it once, as {dotted!r}")
        named[dotted] = str(key)
        kind = config_field_kind(cfg, key) if "." in str(key) else None
        if kind is not None and value is not None and not value_fits(value, kind):
            raise GridError(f"{where}: parameter {call.overrides!r}: {key} is {_describe(value)}; it takes "
                            f"{_KIND_NAMES[kind]} (config field {key})")


def check_grid(grid: GridLike) -> None:
    """Check a grid against its notebook before anything runs (see the module docstring).

    Raises:
        GridError: the first problem, in one line naming the grid file, the variation and the parameter.
    """
    from distilvpr_lib.config import profile_config

    grid_file = str(grid.source) if grid.source is not None else f"grid {grid.name!r}"
    notebook = Path(grid.notebook)
    if not notebook.is_file():
        raise GridError(f"{grid_file}: notebook {notebook} does not exist")
    defaults = read_notebook_parameters(notebook)
    for owned in (OUT_PARAMETER, SEED_PARAMETER):
        if owned not in defaults:
            raise GridError(f"{grid_file}: notebook {notebook} has no {owned!r} parameter (the batch sets "
                            f"'{OUT_PARAMETER}' to the run folder and '{SEED_PARAMETER}' from 'seeds')")
    check_folder_name(grid.name, "grid name", grid_file)
    check_seeds(grid.seeds, grid_file)
    call = read_notebook_config_call(notebook)

    def profile_cfg(params: Mapping[str, Any]) -> Any:
        profile = params.get(call.profile, defaults.get(call.profile)) if call.profile else None
        try:
            return profile_config(profile) if isinstance(profile, str) else None
        except KeyError:
            return None  # reported by _check_run_config, naming the parameter

    sets: list[tuple[str, dict[str, Any]]] = []
    _check_set(grid_file, "base", grid.base, notebook, defaults, call, profile_cfg(grid.base), False)
    for variation in grid.variations:
        name = check_folder_name(variation.get("name"), "variation name", grid_file)
        label = f"variation {name!r}"
        params = {k: v for k, v in variation.items() if k != "name"}
        merged = merge_parameters(grid.base, params)
        _check_set(grid_file, label, params, notebook, defaults, call, profile_cfg(merged), False)
        sets.append((label, merged))
    if grid.product:
        _check_set(grid_file, "product", grid.product, notebook, defaults, call, profile_cfg(grid.base), True)
        keys = sorted(grid.product)
        for values in itertools.product(*(grid.product[k] for k in keys)):
            cell = dict(zip(keys, values))
            sets.append((f"product {cell}", merge_parameters(grid.base, cell)))
    if not sets:
        sets.append(("base", dict(grid.base)))
    for label, merged in sets:
        _check_run_config(f"{grid_file}: {label}", merged, defaults, call)


__all__ = ["GridError", "NOT_A_LITERAL", "NotebookConfigCall", "UniqueKeyLoader", "check_folder_name", "check_grid",
           "check_seeds", "config_field_kind", "kind_of_default", "load_grid_yaml", "merge_parameters",
           "read_notebook_config_call", "read_notebook_parameters", "value_fits"]
