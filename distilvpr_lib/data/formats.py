"""On-disk formats of the benchmark (docs/METHOD.md §2.1, §2.2), read and written safely.

* ``.bin`` point clouds: raw little-endian float64, 4096 x 3, C order (PointNetVLAD / Oxford).
* ``.npy`` point clouds: a (4096, 3) numpy array (Boreas), loaded with ``allow_pickle=False``.
* per-run location CSVs: header ``timestamp,northing,easting``.
* pickles: the MinkLoc training tuples, the PointNetVLAD evaluation sets and the LiDAR-to-image
  index. They are read with a **safe unpickler**: only an allow-list of globals (the
  :class:`TrainingTuple` class under its reference module paths, numpy arrays / scalars / dtypes
  of numpy 1.x and 2.x, plain builtin containers) can be referenced; anything else is refused
  before it is called, so nothing in a pickle is executed.

Every writer goes through :func:`atomic_write`: the data lands in a temporary file in the same
folder which replaces the target only once it is complete, so a failure never leaves a partly
written file behind. Every reading error is a :class:`DataFormatError` whose message names the
file and the problem.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from distilvpr_lib.config import POINTS_PER_CLOUD
from distilvpr_lib.errors import DataFormatError, MissingDataError  # noqa: F401 - defined there, re-exported here

PathLike = str | os.PathLike

#: Byte count of a valid ``.bin`` cloud (4096 x 3 float64).
BIN_CLOUD_BYTES: int = POINTS_PER_CLOUD * 3 * 8
#: Column names of a per-run location CSV.
LOCATION_COLUMNS: tuple[str, str, str] = ("timestamp", "northing", "easting")
#: Largest absolute coordinate accepted in a ``.bin`` cloud before it is reported as a wrong dtype.
_MAX_PLAUSIBLE_COORDINATE = 1.0e7
#: Smallest non-zero absolute coordinate accepted (float32 pairs read as float64 give tiny values).
_MIN_PLAUSIBLE_COORDINATE = 1.0e-30




# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------
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


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
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
    """
    if mode not in {"wb", "w"}:
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        _give_umask_mode(fd)
        if mode == "w":
            handle: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            handle = os.fdopen(fd, "wb")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise MissingDataError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataFormatError(f"{path}: {what} is not a regular file")


# ---------------------------------------------------------------------------
# Point clouds
# ---------------------------------------------------------------------------
def read_bin(path: PathLike, check_values: bool = True) -> np.ndarray:
    """Read an Oxford/PointNetVLAD ``.bin`` cloud.

    Args:
        path: file of exactly 4096 * 3 little-endian float64 values (98,304 bytes).
        check_values: also reject non-finite values and magnitudes that only a wrong dtype gives.

    Returns:
        ``(4096, 3)`` float64 array.

    Raises:
        DataFormatError: wrong byte count (the message gives expected and actual counts, and says
            when the size matches float32 data), or implausible values.
    """
    path = Path(path)
    _require_file(path, "point cloud")
    size = path.stat().st_size
    if size != BIN_CLOUD_BYTES:
        raise DataFormatError(f"{path}: {describe_bad_bin_size(size, path)}")
    points = np.fromfile(path, dtype="<f8").reshape(POINTS_PER_CLOUD, 3)
    if check_values:
        _check_cloud_values(points, path)
    return points.astype(np.float64, copy=False)


def _plausible_coordinates(values: np.ndarray) -> bool:
    """Whether numbers look like LiDAR coordinates: finite, not huge, no denormal-sized non-zeros."""
    if not np.isfinite(values).all():
        return False
    magnitude = np.abs(values.astype(np.float64))
    nonzero = magnitude[magnitude > 0]
    return bool(magnitude.max(initial=0.0) <= _MAX_PLAUSIBLE_COORDINATE
                and (not nonzero.size or nonzero.min() >= _MIN_PLAUSIBLE_COORDINATE))


def describe_bad_bin_size(size: int, path: Path | None = None) -> str:
    """Why a ``.bin`` of ``size`` bytes is not a cloud: empty, truncated (how far), oversized, float32, ..."""
    expected = f"expected {BIN_CLOUD_BYTES} bytes ({POINTS_PER_CLOUD} x 3 float64), got {size} bytes"
    if size == 0:
        return expected + " (empty file)"
    if size == POINTS_PER_CLOUD * 3 * 4:
        as_f32 = as_f64 = None
        if path is not None:
            data = path.read_bytes()
            as_f32 = _plausible_coordinates(np.frombuffer(data, dtype="<f4"))
            as_f64 = _plausible_coordinates(np.frombuffer(data, dtype="<f8"))
        if as_f64 and not as_f32:
            return expected + f" (truncated: the file holds {size // 24} of {POINTS_PER_CLOUD} float64 points)"
        if as_f32 and as_f64:
            return expected + " (truncated to half, or float32 data: write clouds as float64)"
        if as_f32 is False and as_f64 is False:
            return expected + " (truncated or corrupt: its values are not coordinates in float32 or float64)"
        return expected + " (looks like float32 data: write clouds as float64)"
    if size % 24 == 0:
        state = "truncated" if size < BIN_CLOUD_BYTES else "oversized"
        return expected + f" ({state}: {size // 24} float64 points instead of {POINTS_PER_CLOUD})"
    if size % 8 == 0:
        state = "truncated, or" if size < BIN_CLOUD_BYTES else "oversized and"
        return expected + f" ({state} {size // 8} float64 values, not a whole number of xyz points)"
    state = "truncated" if size < BIN_CLOUD_BYTES else "oversized"
    return expected + f" ({state}; not a whole number of float64 values)"


def _check_cloud_values(points: np.ndarray, path: Path) -> None:
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise DataFormatError(f"{path}: {bad} points hold NaN or infinite values (wrong dtype or corrupt file?)")
    magnitude = np.abs(points)
    if magnitude.max(initial=0.0) > _MAX_PLAUSIBLE_COORDINATE:
        raise DataFormatError(
            f"{path}: coordinates up to {magnitude.max():.3g} are implausible; "
            "the file is probably not float64 (wrong dtype?)"
        )
    nonzero = magnitude[magnitude > 0]
    if nonzero.size and nonzero.min() < _MIN_PLAUSIBLE_COORDINATE:
        raise DataFormatError(
            f"{path}: coordinates as small as {nonzero.min():.3g} are implausible; "
            "the file is probably not float64 (wrong dtype?)"
        )


def _as_cloud_array(points: Any, path: Path) -> np.ndarray:
    array = np.asarray(points)
    if array.shape != (POINTS_PER_CLOUD, 3):
        raise DataFormatError(f"{path}: refusing to write a cloud of shape {array.shape}; expected ({POINTS_PER_CLOUD}, 3)")
    if not np.issubdtype(array.dtype, np.number):
        raise DataFormatError(f"{path}: refusing to write a cloud of dtype {array.dtype}; expected numbers")
    if not np.isfinite(array).all():
        raise DataFormatError(f"{path}: refusing to write a cloud with NaN or infinite values")
    return array


def write_bin(path: PathLike, points: Any) -> None:
    """Write a ``(4096, 3)`` cloud as raw little-endian float64, C order (atomically).

    ``read_bin(path)`` then returns exactly ``np.asarray(points, dtype=float64)``.
    """
    path = Path(path)
    array = np.ascontiguousarray(_as_cloud_array(points, path), dtype="<f8")
    with atomic_write(path, "wb") as f:
        f.write(array.tobytes(order="C"))


def read_npy_cloud(path: PathLike) -> np.ndarray:
    """Read a Boreas ``.npy`` cloud (``allow_pickle=False``).

    Returns:
        ``(4096, 3)`` array in the stored float dtype.
    """
    path = Path(path)
    _require_file(path, "point cloud")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays, bad header
        raise DataFormatError(f"{path}: not a plain numpy array file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"{path}: unreadable .npy file ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise DataFormatError(f"{path}: expected one array, got {type(array).__name__}")
    if array.shape != (POINTS_PER_CLOUD, 3):
        raise DataFormatError(f"{path}: expected a ({POINTS_PER_CLOUD}, 3) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataFormatError(f"{path}: expected a float array, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise DataFormatError(f"{path}: cloud holds NaN or infinite values")
    return array


def write_npy_cloud(path: PathLike, points: Any, dtype: Any = np.float32) -> None:
    """Write a ``(4096, 3)`` Boreas cloud as ``.npy`` (atomically; default float32)."""
    path = Path(path)
    array = np.ascontiguousarray(_as_cloud_array(points, path), dtype=dtype)
    with atomic_write(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def read_cloud_file(path: PathLike) -> np.ndarray:
    """Read a cloud by suffix (``.bin`` or ``.npy``); returns ``(4096, 3)`` float32."""
    path = Path(path)
    if path.suffix == ".bin":
        return read_bin(path).astype(np.float32)
    if path.suffix == ".npy":
        return read_npy_cloud(path).astype(np.float32)
    raise DataFormatError(f"{path}: unknown point cloud format {path.suffix!r}; expected .bin or .npy")


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------
def check_image_file(path: PathLike, decode: bool = False) -> tuple[int, int]:
    """Check that an image file is readable: its header always, every pixel with ``decode``.

    The header check (``PIL.Image.open``: format and size, a few hundred bytes) catches empty,
    garbage and non-image files; ``decode=True`` decodes the whole image, which also catches
    truncated or corrupt pixel data (``distilvpr check-data --deep``).

    Returns:
        ``(width, height)``.

    Raises:
        MissingDataError: no such file. DataFormatError: empty, not an image, or (``decode``)
            truncated / corrupt (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _require_file(path, "image")
    if path.stat().st_size == 0:
        raise DataFormatError("empty image file (0 bytes)", path=path, hint="re-copy or regenerate it")
    try:
        with Image.open(path) as image:
            size = image.size
            if decode:
                image.load()
    except UnidentifiedImageError as exc:
        raise DataFormatError("not an image (its header is not a known image format)", path=path,
                              hint="re-copy or regenerate it") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt data (PIL raises all three)
        raise DataFormatError(f"corrupt image ({exc})", path=path, hint="re-copy or regenerate it") from exc
    if size[0] <= 0 or size[1] <= 0:
        raise DataFormatError(f"image of size {size}", path=path, hint="re-copy or regenerate it")
    return size


# ---------------------------------------------------------------------------
# Location CSVs
# ---------------------------------------------------------------------------
def read_locations_csv(path: PathLike) -> "pandas.DataFrame":  # noqa: F821
    """Read a per-run location CSV.

    Returns:
        DataFrame with columns ``timestamp`` (int64), ``northing``, ``easting`` (float64), in file
        order (extra columns are dropped).

    Raises:
        DataFormatError: missing file, missing columns (named), non-numeric or missing values,
            duplicate timestamps.
    """
    import pandas as pd

    path = Path(path)
    _require_file(path, "location CSV")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError(f"{path}: empty CSV; expected header {','.join(LOCATION_COLUMNS)}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: unreadable CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in LOCATION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)}, "
            f"expected {list(LOCATION_COLUMNS)}"
        )
    frame = frame[list(LOCATION_COLUMNS)].copy()
    for column in LOCATION_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2  # 1-based, after the header
            raise DataFormatError(f"{path}: column {column!r} has a missing or non-numeric value at line {row}")
        finite = np.isfinite(values.to_numpy(dtype=np.float64))
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0]) + 2
            raise DataFormatError(f"{path}: column {column!r} has a non-finite value at line {row}")
        frame[column] = values
    timestamps = frame["timestamp"].to_numpy()
    if not np.all(np.equal(np.mod(timestamps, 1), 0)):
        raise DataFormatError(f"{path}: column 'timestamp' must hold integers")
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    frame["northing"] = frame["northing"].astype(np.float64)
    frame["easting"] = frame["easting"].astype(np.float64)
    duplicated = frame["timestamp"].duplicated()
    if duplicated.any():
        raise DataFormatError(f"{path}: duplicate timestamp {int(frame['timestamp'][duplicated].iloc[0])}")
    return frame.reset_index(drop=True)


def write_locations_csv(path: PathLike, timestamps: Sequence[int], northing: Sequence[float], easting: Sequence[float]) -> None:
    """Write a per-run location CSV (header ``timestamp,northing,easting``) atomically.

    Floats are written with ``repr`` precision, so :func:`read_locations_csv` gives them back exactly.
    """
    path = Path(path)
    ts = np.asarray(timestamps, dtype=np.int64)
    north = np.asarray(northing, dtype=np.float64)
    east = np.asarray(easting, dtype=np.float64)
    if not (ts.ndim == north.ndim == east.ndim == 1 and len(ts) == len(north) == len(east)):
        raise DataFormatError(f"{path}: timestamps, northing and easting must be 1-D of equal length")
    buffer = io.StringIO()
    buffer.write(",".join(LOCATION_COLUMNS) + "\n")
    for t, n, e in zip(ts.tolist(), north.tolist(), east.tolist()):
        buffer.write(f"{t},{n!r},{e!r}\n")
    with atomic_write(path, "w") as f:
        f.write(buffer.getvalue())


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
    "distilvpr_lib.data.formats",
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
    _require_file(path, "pickle")
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


def timestamp_from_path(path: PathLike) -> int:
    """LiDAR timestamp of a cloud file: ``int(stem)``.

    Raises:
        DataFormatError: the file name is not an integer timestamp.
    """
    stem = Path(path).stem
    try:
        return int(stem)
    except ValueError as exc:
        raise DataFormatError(f"{path}: file name {stem!r} is not an integer timestamp") from exc


def run_from_path(path: PathLike) -> str:
    """Run (traversal) name of a cloud file: the name of its grand-parent folder."""
    parents = Path(path).parents
    if len(parents) < 2 or not parents[1].name:
        raise DataFormatError(f"{path}: cannot take the run name (grand-parent folder) of this path")
    return parents[1].name
