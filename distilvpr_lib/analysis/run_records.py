"""The study's per-run CSV: written from a batch, read back as batch rows.

Run folders are not committed; ``docs/study/**/study_runs.csv`` is. :func:`study_runs_table` writes it from
:func:`distilvpr_lib.batch_ledger.collect_batch` rows, :func:`read_recorded_runs` reads it back in that shape, and
:func:`with_recorded_runs` merges the two so that a report over a partially re-made batch keeps every seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from distilvpr_lib.errors import DataFormatError, MissingDataError

def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "ok"] if "status" in runs else runs


#: Columns of the per-run study CSV (``study_runs_table``), in order; diagnostics follow when present.
STUDY_CSV_COLUMNS: tuple[str, ...] = ("variation", "seed", "best_epoch", "val_AR@1", "test_AR@1", "test_AR@5",
                                      "test_AR@1%")


def study_runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run, the columns anyone needs to recompute the study's figures.

    Columns :data:`STUDY_CSV_COLUMNS`, then ``epochs``, ``wall_time_s``, the final student / teacher embedding
    norms (``student_norm``, ``teacher_norm``) and every loss weight (``w.<term>``) when present.

    Args:
        runs: :func:`distilvpr_lib.batch_ledger.collect_batch` output.
    """
    ok = _finished(runs)
    rename = _CSV_NAMES
    present = [new for old, new in rename.items() if old in ok]
    table = ok.drop(columns=[c for c in present if c in ok]).rename(columns=rename)  # param.seed wins over seed
    extra = ["wall_time_s", "student_norm", "teacher_norm", *sorted(c for c in ok.columns if c.startswith("loss_weights."))]
    cols = [c for c in (*STUDY_CSV_COLUMNS, *extra) if c in table]
    table = table[cols].rename(columns=lambda c: c.replace("loss_weights.", "w."))
    return table.sort_values(["variation", "seed"]).reset_index(drop=True)


#: collect_batch column -> per-run CSV column (the inverse is how a recorded CSV is read back).
_CSV_NAMES: dict[str, str] = {"param.seed": "seed", "validation.AR@1": "val_AR@1", "test.AR@1": "test_AR@1",
                              "test.AR@5": "test_AR@5", "test.AR@1%": "test_AR@1%",
                              "embedding_norms.student.mean": "student_norm",
                              "embedding_norms.teacher.mean": "teacher_norm"}


def read_recorded_runs(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-run study CSV (:func:`study_runs_table`'s output) back as batch rows.

    The run folders are not committed, the per-run CSV is: this turns its rows into the shape of
    :func:`distilvpr_lib.batch_ledger.collect_batch` (``variation``, ``run``, ``status`` = ``"ok"``, ``param.seed``,
    ``validation.AR@1``, ``test.<metric>``, ``loss_weights.<term>`` …) with ``source`` = the CSV's path, so
    that every table of :mod:`distilvpr_lib.analysis.report` can use them.

    Raises:
        MissingDataError: the file does not exist.
        DataFormatError: it is not a per-run CSV (a required column is missing), naming the file and columns.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise MissingDataError("recorded per-run CSV not found", path=path,
                               hint="pass a study_runs.csv written by notebook 04 (e.g. docs/study/long/study_runs.csv)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"not a CSV file ({type(exc).__name__})", path=path) from None
    missing = [c for c in STUDY_CSV_COLUMNS if c not in table]
    if missing:
        raise DataFormatError(f"not a per-run study CSV: missing column(s) {', '.join(missing)}", path=path,
                              hint=f"expected the columns {', '.join(STUDY_CSV_COLUMNS)} (notebook 04's study_runs.csv)")
    inverse = {new: old for old, new in _CSV_NAMES.items()}
    table = table.rename(columns=lambda c: inverse.get(c, "loss_weights." + c[2:] if c.startswith("w.") else c))
    table["param.seed"] = table["param.seed"].astype(int)
    table.insert(0, "run", [f"{v}__seed{s}" for v, s in zip(table["variation"], table["param.seed"])])
    table["status"] = "ok"
    table["source"] = str(path)
    return table


def with_recorded_runs(runs: pd.DataFrame, recorded: pd.DataFrame) -> pd.DataFrame:
    """The batch's runs plus the recorded runs it does not hold (same variation and seed = same run).

    A run re-made in the batch folder wins over its recorded row; a recorded run missing from the folder
    (made on another machine or in an earlier session, its folder gone) is kept, so that a report over a
    partially re-run batch still pairs every seed. Rows from the folder get ``source`` = ``"batch"``.

    Args:
        runs: :func:`distilvpr_lib.batch_ledger.collect_batch` output (may be empty).
        recorded: :func:`read_recorded_runs` output.

    Raises:
        DataFormatError: the recorded runs were made with another teacher than the batch's (their teacher
            embedding norms, a fingerprint of the teacher, differ), so their seeds cannot be paired.
    """
    here = runs.assign(source="batch") if "source" not in runs else runs
    ok = _finished(here)
    _check_same_teacher(ok, recorded)
    have = set(zip(ok["variation"], ok["param.seed"].astype(int))) if len(ok) and "param.seed" in ok else set()
    keep = [(v, int(s)) not in have for v, s in zip(recorded["variation"], recorded["param.seed"])]
    return pd.concat([here, recorded[keep]], ignore_index=True, sort=False)


_TEACHER_NORM = "embedding_norms.teacher.mean"


def _check_same_teacher(runs: pd.DataFrame, recorded: pd.DataFrame, rtol: float = 1e-5) -> None:
    """Refuse to merge rows made with another teacher.

    The teacher's mean embedding norm is identical in every run of one setup *for one teacher descriptor*; a
    variation that distils from another head (``distill.teacher_head``, e.g. the cloud head) records that
    head's norm. A variation's name fixes its head, so the norms are compared variation by variation; when the
    two sides share no variation, they must share at least one norm.
    """
    if _TEACHER_NORM not in runs or _TEACHER_NORM not in recorded:
        return
    ours = runs.dropna(subset=[_TEACHER_NORM]).groupby("variation")[_TEACHER_NORM].first()
    theirs = recorded.dropna(subset=[_TEACHER_NORM])
    if not len(ours) or not len(theirs):
        return
    values = theirs[_TEACHER_NORM].to_numpy(float)
    common = theirs["variation"].isin(ours.index).to_numpy()
    if common.any():
        reference = ours.loc[theirs["variation"][common]].to_numpy(float)
        off = np.flatnonzero(np.abs(values[common] - reference) > rtol * np.abs(reference))
        if not len(off):
            return
        found, expected = values[common][off[0]], reference[off[0]]
        where = f" for {theirs['variation'][common].iloc[off[0]]}"
    else:
        close = np.abs(values[:, None] - ours.to_numpy(float)[None, :]) <= rtol * np.abs(values[:, None])
        if close.any():
            return
        found, expected, where = values[0], float(ours.iloc[0]), ""
    source = recorded["source"].iloc[0] if "source" in recorded else "the recorded runs"
    raise DataFormatError(
        f"recorded with another teacher (teacher_norm {found:.6g}{where}; the batch's runs have {expected:.6g}): "
        "runs of different setups cannot be paired by seed", path=source,
        hint="report this batch on its own (no recorded_runs), or re-make the recorded runs with this teacher")
