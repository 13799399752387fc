"""Point-cloud files of the benchmark (docs/METHOD.md §2.1, §2.2), read and written safely.

* ``.bin`` point clouds: raw little-endian float64, 4096 x 3, C order (PointNetVLAD / Oxford); a file of
  the wrong size is reported with how it is wrong (empty, truncated, oversized, float32).
* ``.npy`` point clouds: a (4096, 3) numpy array (Boreas), loaded with ``allow_pickle=False``.
* cloud file names: the LiDAR timestamp (file stem) and the run (grand-parent folder).

Writers go through :func:`distilvpr_lib.data.files.atomic_write`. Every reading error is a
:class:`~distilvpr_lib.errors.DataFormatError` whose message names the file and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import POINTS_PER_CLOUD
from distilvpr_lib.data.files import PathLike, atomic_write, require_file
from distilvpr_lib.errors import DataFormatError

#: Byte count of a valid ``.bin`` cloud (4096 x 3 float64).
BIN_CLOUD_BYTES: int = POINTS_PER_CLOUD * 3 * 8
#: Largest absolute coordinate accepted in a ``.bin`` cloud before it is reported as a wrong dtype.
_MAX_PLAUSIBLE_COORDINATE = 1.0e7
#: Smallest non-zero absolute coordinate accepted (float32 pairs read as float64 give tiny values).
_MIN_PLAUSIBLE_COORDINATE = 1.0e-30


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
    require_file(path, "point cloud")
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
    require_file(path, "point cloud")
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
