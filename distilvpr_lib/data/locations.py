"""Per-run location CSVs of the benchmark (header ``timestamp,northing,easting``), read and written safely."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distilvpr_lib.data.files import PathLike, atomic_write, require_file
from distilvpr_lib.errors import DataFormatError

#: Column names of a per-run location CSV.
LOCATION_COLUMNS: tuple[str, str, str] = ("timestamp", "northing", "easting")


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
    require_file(path, "location CSV")
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
