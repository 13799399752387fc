"""Benchmark pickles (docs/METHOD.md §2.1, §2.2): read with a safe unpickler, validated field by field.

The MinkLoc training tuples, the PointNetVLAD evaluation sets and the LiDAR-to-image index are read
with a **safe unpickler**: only an allow-list of globals (the :class:`TrainingTuple` class under its
reference module paths, numpy arrays / scalars / dtypes of numpy 1.x and 2.x, plain builtin
containers) can be referenced; anything else is refused before it is called, so nothing in a pickle
is executed. The validated loaders then check every entry's typed fields; every error is a
:class:`~distilvpr_lib.errors.DataFormatError` naming the file, the entry and the field.
Pickles are written atomically (:func:`distilvpr_lib.data.files.atomic_write`).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from distilvpr_lib.data.files import PathLike, atomic_write, require_file
from distilvpr_lib.errors import DataFormatError


# ---------------------------------------------------------------------------
# Training tuples
# ---------------------------------------------------------------------------
class TrainingTuple:
    """One training sub-map (MinkLoc format, docs/METHOD.md §2.1).

    Attributes:
        id: index 0..N-1 (the key in the training dict).
        timestamp: LiDAR timestamp (file stem).
        rel_scan_filepath: cloud path relative to the dataset folder.
        positives: sorted int64 array of ids within the positive radius, self excluded.
        non_negatives: sorted int64 array of ids within the non-negative radius, self included.
        position: ``(2,)`` float64 array ``[northing, easting]``.
    """

    def __init__(
        self,
        id: int,
        timestamp: int,
        rel_scan_filepath: str,
        positives: np.ndarray,
        non_negatives: np.ndarray,
        position: np.ndarray,
    ) -> None:
        self.id = id
        self.timestamp = timestamp
        self.rel_scan_filepath = rel_scan_filepath
        self.positives = positives
        self.non_negatives = non_negatives
        self.position = position

    def __repr__(self) -> str:
        return (
            f"TrainingTuple(id={self.id}, timestamp={self.timestamp}, rel_scan_filepath={self.rel_scan_filepath!r}, "
            f"positives={len(self.positives)} ids, non_negatives={len(self.non_negatives)} ids, "
            f"position={np.asarray(self.position).tolist()})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrainingTuple):
            return NotImplemented
        return (
            self.id == other.id
            and self.timestamp == other.timestamp
            and self.rel_scan_filepath == other.rel_scan_filepath
            and np.array_equal(self.positives, other.positives)
            and np.array_equal(self.non_negatives, other.non_negatives)
            and np.array_equal(self.position, other.position)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


_TRAINING_TUPLE_ATTRIBUTES = ("id", "timestamp", "rel_scan_filepath", "positives", "non_negatives", "position")


# ---------------------------------------------------------------------------
# Safe pickles
# ---------------------------------------------------------------------------
#: Modules under which the reference scripts pickled ``TrainingTuple`` (all map to ours).
TRAINING_TUPLE_MODULES: tuple[str, ...] = (
    "datasets.oxford",
    "datasets.base_datasets",
    "__main__",
    "distilvpr_lib.data.formats",  # pickles this project wrote before formats.py was split
    "distilvpr_lib.data.pickles",
)


def _numpy_core_attr(submodule: str, name: str) -> Any:
    """Resolve ``numpy(._)core.<submodule>.<name>`` against the installed numpy without importing shims."""
    import importlib

    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, name)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {(module, "TrainingTuple"): TrainingTuple for module in TRAINING_TUPLE_MODULES}
    for core in ("numpy.core", "numpy._core"):
        for sub in ("multiarray", "_multiarray_umath"):
            allowed[(f"{core}.{sub}", "_reconstruct")] = ("multiarray", "_reconstruct")
            allowed[(f"{core}.{sub}", "scalar")] = ("multiarray", "scalar")
        allowed[(f"{core}.numeric", "_frombuffer")] = ("numeric", "_frombuffer")
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("int64", "int32", "float64", "float32", "bool_", "uint8", "int16", "uint16", "uint32", "uint64"):
        allowed[("numpy", name)] = getattr(np, name)
    for builtins_module in ("builtins", "__builtin__"):
        for name, value in (("set", set), ("frozenset", frozenset), ("list", list), ("dict", dict),
                            ("tuple", tuple), ("int", int), ("float", float), ("str", str),
                            ("bytes", bytes), ("bytearray", bytearray), ("complex", complex),
                            ("object", object), ("bool", bool)):
            allowed[(builtins_module, name)] = value
    import codecs
    import copyreg
    import collections

    allowed[("_codecs", "encode")] = codecs.encode  # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    # Protocol 0/1 objects: copyreg._reconstructor(cls, object, None); cls itself goes through this allow-list.
    allowed[("copyreg", "_reconstructor")] = copyreg._reconstructor
    allowed[("copy_reg", "_reconstructor")] = copyreg._reconstructor
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals; everything else raises DataFormatError."""

    def __init__(self, file: IO[bytes], source: Path) -> None:
        super().__init__(file, fix_imports=True, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        target = self._allowed.get((module, name))
        if target is None:
            raise DataFormatError(
                f"{self._source}: refusing to load global '{module}.{name}' from the pickle "
                "(not in the allow-list of benchmark types: TrainingTuple, numpy arrays/scalars/dtypes, "
                "builtin containers)"
            )
        if isinstance(target, tuple):
            target = _numpy_core_attr(*target)
        return target

    def persistent_load(self, pid: Any) -> Any:  # pragma: no cover - defensive
        raise DataFormatError(f"{self._source}: refusing persistent id {pid!r} in the pickle")


def load_pickle(path: PathLike) -> Any:
    """Load a benchmark pickle with the safe unpickler.

    ``TrainingTuple`` referenced as ``datasets.oxford.TrainingTuple``,
    ``datasets.base_datasets.TrainingTuple`` or ``__main__.TrainingTuple`` is mapped to
    :class:`TrainingTuple`; numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) arrays and scalars
    load under either numpy. Any other global is refused before it is called.

    Raises:
        DataFormatError: missing file, truncated/corrupt pickle, or a refused global (the message
            names the file and the global).
    """
    path = Path(path)
    require_file(path, "pickle")
    with open(path, "rb") as f:
        try:
            return _SafeUnpickler(f, path).load()
        except DataFormatError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                ImportError, MemoryError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{path}: corrupt or unsupported pickle ({type(exc).__name__}: {exc})") from exc


def save_pickle(path: PathLike, obj: Any, protocol: int = 4) -> None:
    """Pickle ``obj`` to ``path`` atomically (protocol 4 by default, readable by Python ≥ 3.4)."""
    data = pickle.dumps(obj, protocol=protocol)
    with atomic_write(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------
# Validated benchmark pickles
# ---------------------------------------------------------------------------
def _integer(value: Any, path: Path, what: str) -> int:
    """``value`` as an int (ints, integral numpy scalars; not strings, floats with a fraction, bools)."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise DataFormatError(f"{path}: {what} is {value!r} ({type(value).__name__}); expected an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(float(value)) and float(value).is_integer():
        return int(value)
    raise DataFormatError(f"{path}: {what} is {value!r} ({type(value).__name__}); expected an integer")


def _float_array(value: Any, path: Path, what: str) -> np.ndarray:
    """``value`` as a flat finite float64 array (numbers only: strings are refused)."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DataFormatError(f"{path}: {what} is {value!r} (dtype {array.dtype}); expected numbers")
    array = array.astype(np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise DataFormatError(f"{path}: {what} is {array.tolist()}: not finite")
    return array


def _sorted_int_array(value: Any, path: Path, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as exc:  # pragma: no cover - defensive
        raise DataFormatError(f"{path}: {what} is not an array ({exc})") from exc
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise DataFormatError(f"{path}: {what} must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size > 1 and np.any(np.diff(array) < 0):
        array = np.sort(array)
    return array


def validate_training_tuples(tuples: Any, path: PathLike) -> dict[int, TrainingTuple]:
    """Check a loaded training pickle and normalise it (int ids, sorted int64 id arrays).

    Raises:
        DataFormatError: not a dict of TrainingTuple, missing attributes, ids that do not match the
            keys, or positive / non-negative ids out of range.
    """
    path = Path(path)
    if not isinstance(tuples, Mapping):
        hint = ""
        if isinstance(tuples, Mapping) is False and isinstance(tuples, list):
            hint = " (a list; evaluation set pickle?)"
        raise DataFormatError(f"{path}: expected a dict of TrainingTuple, got {type(tuples).__name__}{hint}")
    n = len(tuples)
    out: dict[int, TrainingTuple] = {}
    for key, item in tuples.items():
        if isinstance(item, Mapping) and "query" in item:
            raise DataFormatError(
                f"{path}: entry {key!r} is a PointNetVLAD dict ({sorted(map(str, item))}); "
                "expected MinkLoc TrainingTuple objects"
            )
        missing = [a for a in _TRAINING_TUPLE_ATTRIBUTES if not hasattr(item, a)]
        if missing:
            raise DataFormatError(f"{path}: training entry {key!r} lacks attribute(s) {missing}")
        ndx = _integer(key, path, f"training key {key!r}")
        item_id = _integer(item.id, path, f"training entry {key!r} field 'id'")
        if item_id != ndx:
            raise DataFormatError(f"{path}: training entry {key!r} has id {item.id!r}; expected {ndx} (its key)")
        timestamp = _integer(item.timestamp, path, f"training entry {key!r} field 'timestamp'")
        positives = _sorted_int_array(item.positives, path, f"training entry {key!r} field 'positives'")
        non_negatives = _sorted_int_array(item.non_negatives, path, f"training entry {key!r} field 'non_negatives'")
        for what, ids in (("positives", positives), ("non_negatives", non_negatives)):
            if ids.size and (ids[0] < 0 or ids[-1] >= n):
                raise DataFormatError(f"{path}: {what} of entry {key} reference ids outside 0..{n - 1}")
        position = _float_array(item.position, path, f"training entry {key!r} field 'position'")
        if position.shape != (2,):
            raise DataFormatError(f"{path}: position of entry {key} has shape {position.shape}; expected (2,)")
        if not isinstance(item.rel_scan_filepath, str) or not item.rel_scan_filepath:
            raise DataFormatError(f"{path}: training entry {key!r} field 'rel_scan_filepath' is "
                                  f"{item.rel_scan_filepath!r}; expected a relative file path string")
        out[ndx] = TrainingTuple(ndx, timestamp, item.rel_scan_filepath, positives, non_negatives, position)
    if sorted(out) != list(range(n)):
        raise DataFormatError(f"{path}: training ids are not consecutive 0..{n - 1}")
    return dict(sorted(out.items()))


def load_training_tuples(path: PathLike) -> dict[int, TrainingTuple]:
    """Load and validate a training pickle (``dict[int, TrainingTuple]``)."""
    return validate_training_tuples(load_pickle(path), path)


def validate_evaluation_sets(sets: Any, path: PathLike, kind: str) -> list[dict[int, dict[Any, Any]]]:
    """Check evaluation sets and normalise them.

    Database sets: ``list`` (one per run) of ``{k: {'query': rel_path, 'northing': float, 'easting': float}}``.
    Query sets additionally hold, per entry, a key ``i`` for every other run ``i`` mapping to a list
    of database indices. Keys become ``int``, coordinates ``float``, neighbour lists ``list[int]``.

    Args:
        kind: ``"database"`` or ``"query"``.

    Raises:
        DataFormatError: wrong container type or missing keys (the message names the file, run,
            entry and key).
    """
    path = Path(path)
    if kind not in {"database", "query"}:
        raise ValueError(f"kind must be 'database' or 'query', got {kind!r}")
    if not isinstance(sets, (list, tuple)):
        raise DataFormatError(f"{path}: expected a list of per-run dicts, got {type(sets).__name__}")
    n_runs = len(sets)
    out: list[dict[int, dict[Any, Any]]] = []
    for run_index, run_set in enumerate(sets):
        if not isinstance(run_set, Mapping):
            raise DataFormatError(f"{path}: run {run_index} is a {type(run_set).__name__}, expected a dict")
        clean: dict[int, dict[Any, Any]] = {}
        for key, entry in run_set.items():
            where = f"{path}: run {run_index} entry {key!r}"
            if not isinstance(entry, Mapping):
                raise DataFormatError(f"{where} is a {type(entry).__name__}, expected a dict")
            for required in ("query", "northing", "easting"):
                if required not in entry:
                    raise DataFormatError(f"{where} lacks key {required!r}")
            if not isinstance(entry["query"], str):
                raise DataFormatError(f"{where}: 'query' must be a relative file path string")
            item: dict[Any, Any] = {"query": entry["query"]}
            for coordinate in ("northing", "easting"):
                raw = entry[coordinate]
                if isinstance(raw, (str, bytes, bool, np.bool_)) or not isinstance(raw, (int, float, np.number)):
                    raise DataFormatError(f"{where}: field {coordinate!r} is {raw!r} ({type(raw).__name__}); "
                                          "expected a number")
                value = float(raw)
                if not math.isfinite(value):
                    raise DataFormatError(f"{where}: field {coordinate!r} is {value}: not finite")
                item[coordinate] = value
            if kind == "query":
                for other in range(n_runs):
                    if other == run_index:
                        continue
                    if other not in entry:
                        raise DataFormatError(f"{where} lacks the neighbour list for database run {other}")
                    try:
                        neighbours = [_integer(x, path, "x") for x in entry[other]]
                    except (TypeError, DataFormatError) as exc:
                        raise DataFormatError(f"{where}: field {other} (true neighbours in database run {other}) is "
                                              f"{entry[other]!r}; expected a list of integers") from exc
                    item[other] = neighbours
            clean[_integer(key, path, f"run {run_index} key {key!r}")] = item
        if sorted(clean) != list(range(len(clean))):
            raise DataFormatError(f"{path}: run {run_index} keys are not consecutive 0..{len(clean) - 1}")
        out.append(dict(sorted(clean.items())))
    return out


def check_query_against_database(database: Sequence[Mapping[int, Any]], query: Sequence[Mapping[Any, Any]],
                                 path: PathLike) -> None:
    """Check that query sets align with database sets: same run count, neighbour indices in range.

    Raises:
        DataFormatError: naming the query pickle ``path``, the run and the entry.
    """
    if len(database) != len(query):
        raise DataFormatError(f"{path}: {len(query)} query sets but {len(database)} database sets")
    for j, run_set in enumerate(query):
        for key, entry in run_set.items():
            for i in range(len(database)):
                if i == j:
                    continue
                limit = len(database[i])
                bad = [x for x in entry[i] if x < 0 or x >= limit]
                if bad:
                    raise DataFormatError(
                        f"{path}: run {j} entry {key}: neighbour indices {bad[:5]} outside database run {i} (0..{limit - 1})")


def load_evaluation_sets(path: PathLike, kind: str) -> list[dict[int, dict[Any, Any]]]:
    """Load and validate an evaluation database (``kind="database"``) or query pickle (``"query"``)."""
    return validate_evaluation_sets(load_pickle(path), path, kind)


def validate_lidar2image_ndx(ndx: Any, path: PathLike) -> dict[int, list[int]]:
    """Check a ``{lidar_ts: [image_ts, ...]}`` index (nearest first) and normalise to ``dict[int, list[int]]``."""
    path = Path(path)
    if not isinstance(ndx, Mapping):
        raise DataFormatError(f"{path}: expected a dict lidar_ts -> [image_ts, ...], got {type(ndx).__name__}")
    out: dict[int, list[int]] = {}
    for key, value in ndx.items():
        lidar_ts = _integer(key, path, f"key {key!r} (a LiDAR timestamp)")
        try:
            images = [_integer(v, path, "x") for v in np.asarray(value, dtype=object).reshape(-1).tolist()]
        except (TypeError, ValueError, DataFormatError) as exc:
            raise DataFormatError(f"{path}: entry {key!r} (LiDAR timestamp) is {value!r}; expected a list of "
                                  "integer image timestamps") from exc
        if not images:
            raise DataFormatError(f"{path}: LiDAR timestamp {key} has no image")
        out[lidar_ts] = images
    return out


def load_lidar2image_ndx(path: PathLike) -> dict[int, list[int]]:
    """Load and validate a LiDAR-to-image index pickle."""
    return validate_lidar2image_ndx(load_pickle(path), path)
