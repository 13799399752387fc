"""The benchmark's records and what is read from them (docs/benchmark/PROTOCOL.md §4, §5, §7, §8).

Pure functions over the committed CSVs (no training, no run folders needed):

* :func:`last_quarter_gain` — the convergence measure of §5 from a run's per-epoch validation AR@1;
* :func:`choose_configuration` — the tuning choice of §4, ties included;
* :func:`check_fingerprints` — the refusal of §8: a world whose rows differ in a fingerprint is not reported;
* :func:`row_table`, :func:`comparison_table` — mean ± sd per row, and the paired comparisons of families A and B
  with the Holm correction over the whole family (both worlds);
* :func:`answer_markdown` — the README's ten-line answer and main table, generated from the above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from distilvpr_lib.analysis.benchmark_stats import holm, paired_comparison, verdict
from distilvpr_lib.errors import DataFormatError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Fingerprint columns every benchmark row carries (PROTOCOL §8).
#: ``machine`` is the run's device, CPU capability and autocast (``metrics.json`` ``precision.machine``, §5).
FINGERPRINT_COLUMNS: tuple[str, ...] = ("dataset_fingerprint", "prior_sha256", "teacher_sha256", "code_commit",
                                        "cpu_threads", "torch_version", "machine")
#: Columns of ``docs/benchmark/<world>_runs.csv`` (one row per final run).
RUN_COLUMNS: tuple[str, ...] = ("world", "row", "config", "seed", "selected_epoch", "val_ar1", "test_ar1", "test_ar5",
                                "test_ar1pct", "last_quarter_gain", "flat", "wall_time_s", "weights_sha256",
                                *FINGERPRINT_COLUMNS)
#: Columns of ``docs/benchmark/tuning.csv`` (one row per tuning run).
TUNING_COLUMNS: tuple[str, ...] = ("world", "method", "config", "weight_scale", "lr_scale", "task", "seed",
                                   "selected_epoch", "val_ar1", "last_quarter_gain", "flat", "wall_time_s",
                                   "weights_sha256", "chosen", *FINGERPRINT_COLUMNS)
#: The text of the answer when no final row is committed yet.
NO_ROWS_ANSWER = (
    "**The benchmark has no rows yet.** Its protocol is pre-registered in\n"
    "[docs/benchmark/PROTOCOL.md](docs/benchmark/PROTOCOL.md) (two worlds, eight rows, equal tuning on validation,\n"
    "5 paired seeds, Holm-corrected paired t-tests); this block is generated from its CSVs by\n"
    "`distilvpr benchmark answer ablations/benchmark.yaml` once they exist.")


class FingerprintMismatchError(DataFormatError):
    """The rows of one world come from different setups (data, prior, teacher, code, threads, torch or machine)."""


# ---------------------------------------------------------------------------
# §5: convergence
# ---------------------------------------------------------------------------
def last_quarter_gain(validation_ar1: Sequence[float | None]) -> float:
    """Validation AR@1 gained over the last quarter of a run's epochs (PROTOCOL §5).

    Args:
        validation_ar1: (E,) the validation AR@1 of epochs 1..E (``None`` / NaN where an epoch was not validated).

    Returns:
        ``max(AR@1 of epochs 1..E) − max(AR@1 of epochs 1..E−q)`` with ``q = max(1, E // 4)`` (32 epochs: the best so
        far at epoch 32 minus that at epoch 24); NaN when either side has no validated epoch.
    """
    values = np.array([math.nan if v is None else float(v) for v in validation_ar1], dtype=float)
    if values.size < 2:
        return math.nan
    quarter = max(1, values.size // 4)
    head, everything = values[: values.size - quarter], values
    if not np.isfinite(head).any() or not np.isfinite(everything).any():
        return math.nan
    return float(np.nanmax(everything) - np.nanmax(head))


# ---------------------------------------------------------------------------
# §4: the tuning choice
# ---------------------------------------------------------------------------
def choose_configuration(candidates: Sequence[Mapping[str, Any]], tie: float = 0.01) -> str:
    """The configuration PROTOCOL §4 chooses among one method's tuning runs.

    Args:
        candidates: one mapping per configuration with ``config`` (its name), ``scale`` (α or β), ``task``
            (``"raw"`` / ``"norm"``) and ``val_ar1`` (validation AR@1 at the selected epoch; NaN = failed run).
        tie: two values within ``tie`` (inclusive) of the best are tied.

    Returns:
        The name of the configuration with the highest ``val_ar1``; among those within ``tie`` of it, the one with
        scale 1, then the raw task, then the higher value, then the first in the given order.

    Raises:
        ValueError: no candidate has a finite ``val_ar1``.
    """
    scored = [(i, c) for i, c in enumerate(candidates) if c.get("val_ar1") is not None
              and math.isfinite(float(c["val_ar1"]))]
    if not scored:
        raise ValueError("no tuning run with a validation AR@1 to choose from")
    best = max(float(c["val_ar1"]) for _, c in scored)
    tied = [(i, c) for i, c in scored if float(c["val_ar1"]) >= best - tie - 1e-9]
    tied.sort(key=lambda ic: (float(ic[1]["scale"]) != 1.0, str(ic[1]["task"]) != "raw", -float(ic[1]["val_ar1"]),
                              ic[0]))
    return str(tied[0][1]["config"])


def choose_from_table(frame: "pd.DataFrame", tie: float = 0.01) -> dict[str, str]:  # noqa: F821
    """Apply :func:`choose_configuration` per method to tuning rows (columns ``method, config, weight_scale,
    lr_scale, task, val_ar1``; the scale is ``lr_scale`` for ``nokd``, else ``weight_scale``), in the rows' order.

    Returns:
        ``{method: chosen configuration}`` in the order the methods first appear.
    """
    out = {}
    for method in dict.fromkeys(frame["method"]):
        part = frame[frame["method"] == method]
        scale_column = "lr_scale" if method == "nokd" else "weight_scale"
        candidates = [{"config": r["config"], "scale": float(r[scale_column]), "task": r["task"],
                       "val_ar1": float(r["val_ar1"])} for _, r in part.iterrows()]
        out[str(method)] = choose_configuration(candidates, tie)
    return out


# ---------------------------------------------------------------------------
# §8: fingerprints
# ---------------------------------------------------------------------------
def check_fingerprints(frame: "pd.DataFrame", source: str, tuning: "pd.DataFrame | None" = None) -> dict[str, Any]:  # noqa: F821
    """Refuse a world whose rows were not all made in the same setup (PROTOCOL §8).

    Args:
        frame: the world's final rows (:data:`RUN_COLUMNS`).
        source: the file the rows come from (named in the error).
        tuning: the tuning rows made on this world, if any: they must agree with the final rows in every
            fingerprint except ``code_commit`` (the tuning runs may precede a commit of the final runs).

    Returns:
        The world's fingerprints ``{column: value}``.

    Raises:
        FingerprintMismatchError: a fingerprint column is missing, empty, or takes more than one value.
    """
    missing = [c for c in FINGERPRINT_COLUMNS if c not in frame.columns]
    if missing:
        raise FingerprintMismatchError(f"rows lack the fingerprint columns {missing}", path=source,
                                       hint="re-collect it: distilvpr benchmark run SPEC --stage collect")
    out: dict[str, Any] = {}
    for column in FINGERPRINT_COLUMNS:
        values = sorted({str(v) for v in frame[column].tolist()})
        if tuning is not None and len(tuning) and column != "code_commit" and column in tuning.columns:
            values = sorted(set(values) | {str(v) for v in tuning[column].tolist()})
        if len(values) != 1 or values[0] in {"", "nan", "None", "unknown"}:
            raise FingerprintMismatchError(
                f"rows differ in {column} ({', '.join(values[:3])}{', ...' if len(values) > 3 else ''}): they come "
                "from different setups; refusing to report this world", path=source,
                hint="re-run the odd rows in the world's setup, or report them apart")
        out[column] = values[0]
    return out


# ---------------------------------------------------------------------------
# §7: tables and comparisons
# ---------------------------------------------------------------------------
def row_table(frame: "pd.DataFrame", rows: Sequence[str] | None = None) -> "pd.DataFrame":  # noqa: F821
    """Mean ± sample standard deviation per row of one world (PROTOCOL §7).

    Returns:
        One line per row (in ``rows`` order when given): ``row, config, n, seeds, test_ar1, test_ar1_sd, test_ar5,
        test_ar5_sd, test_ar1pct, test_ar1pct_sd, val_ar1, last_quarter_gain_max, not_flat``.
    """
    import pandas as pd

    order = list(rows) if rows is not None else list(dict.fromkeys(frame["row"]))
    out = []
    for row in order:
        part = frame[frame["row"] == row]
        if part.empty:
            continue
        line: dict[str, Any] = {"row": row, "config": ",".join(sorted({str(c) for c in part["config"]})),
                                "n": int(len(part)), "seeds": " ".join(str(int(s)) for s in sorted(part["seed"]))}
        for col in ("test_ar1", "test_ar5", "test_ar1pct"):
            values = part[col].astype(float)
            line[col] = float(values.mean())
            line[f"{col}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        line["val_ar1"] = float(part["val_ar1"].astype(float).mean())
        line["last_quarter_gain_max"] = float(part["last_quarter_gain"].astype(float).max())
        line["not_flat"] = int((~part["flat"].astype(str).str.lower().isin({"true", "1"})).sum())
        out.append(line)
    return pd.DataFrame(out)


#: The families of PROTOCOL §7 (Holm over them together) and the family of a spec's extra rows (Holm apart).
PROTOCOL_FAMILIES: tuple[str, ...] = ("A", "B")
EXTRA_FAMILY = "C"


def comparison_pairs(rows: Sequence[str], baseline: str, tuned: str, versus: Sequence[str],
                     extra: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """The comparisons of PROTOCOL §7 for one world, as ``(family, first, second)``: family A = every row other than
    ``baseline`` − ``baseline``; family B = ``tuned`` − each of ``versus``; then family C, one per row of ``extra``
    (a user's own losses): the row − ``baseline``, − ``tuned``, − each of ``versus``."""
    pairs = [("A", row, baseline) for row in rows if row != baseline]
    pairs += [("B", tuned, other) for other in versus]
    for row in extra:
        pairs += [(EXTRA_FAMILY, row, other) for other in dict.fromkeys((baseline, tuned, *versus))]
    return pairs


def comparison_table(frames: Mapping[str, "pd.DataFrame"], rows: Sequence[str], baseline: str, tuned: str,  # noqa: F821
                     versus: Sequence[str], alpha: float = 0.05, n_resamples: int = 10000,
                     seed: int = 0, extra: Sequence[str] = ()) -> "pd.DataFrame":  # noqa: F821
    """Every comparison of every world, paired by seed, Holm-corrected as one family (PROTOCOL §7).

    The comparisons of ``extra`` rows (family C) are Holm-corrected over their own family (both worlds), apart from
    families A and B: adding a row of one's own changes none of the protocol's p-values or verdicts.

    Args:
        frames: ``{world: final rows}``.
        rows, baseline, tuned, versus, extra: the spec's rows, statistics and extra rows (:func:`comparison_pairs`).

    Returns:
        One line per comparison: ``world, family, first, second, seeds`` (the paired seeds) and
        :func:`~distilvpr_lib.analysis.benchmark_stats.paired_comparison`'s keys, ``p_holm`` and ``verdict``.
        A comparison whose rows are not both present has ``n = 0`` and NaN statistics (it stays in the family
        with a NaN p, so it does not count in Holm's m).
    """
    import pandas as pd

    lines = []
    for world, frame in frames.items():
        for family, first, second in comparison_pairs(rows, baseline, tuned, versus, extra):
            a = {int(s): float(v) for s, v in zip(frame.loc[frame["row"] == first, "seed"],
                                                    frame.loc[frame["row"] == first, "test_ar1"])}
            b = {int(s): float(v) for s, v in zip(frame.loc[frame["row"] == second, "seed"],
                                                    frame.loc[frame["row"] == second, "test_ar1"])}
            seeds = sorted(set(a) & set(b))
            stats = paired_comparison([a[s] for s in seeds], [b[s] for s in seeds], n_resamples=n_resamples,
                                      seed=seed)
            lines.append({"world": world, "family": family, "first": first, "second": second,
                          "seeds": " ".join(map(str, seeds)), **stats})
    table = pd.DataFrame(lines)
    if table.empty:
        return table
    table["p_holm"] = math.nan
    for families in (list(PROTOCOL_FAMILIES), [EXTRA_FAMILY]):
        part = table["family"].isin(families)
        if part.any():
            table.loc[part, "p_holm"] = holm(table.loc[part, "p_t"].astype(float).to_numpy())
    table["verdict"] = [verdict(float(d), float(p), alpha) for d, p in zip(table["delta"], table["p_holm"])]
    return table


def validation_history_table(run_dirs: Mapping[tuple[str, str, int], Any]) -> "pd.DataFrame":  # noqa: F821
    """Per-epoch validation AR@1 of finished run folders (their ``metrics.json``), for the curves of the report.

    Args:
        run_dirs: ``{(world, row, seed): run folder}``; folders without a ``metrics.json`` are skipped.

    Returns:
        Columns ``world, row, seed, epoch, val_ar1`` (empty when no folder has metrics).
    """
    import json
    from pathlib import Path

    import pandas as pd

    lines = []
    for (world, row, seed), folder in run_dirs.items():
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            continue
        for entry in json.loads(path.read_text()).get("epochs", []):
            value = (entry.get("validation") or {}).get("AR@1")
            lines.append({"world": world, "row": row, "seed": int(seed), "epoch": int(entry["epoch"]),
                          "val_ar1": math.nan if value is None else float(value)})
    return pd.DataFrame(lines, columns=["world", "row", "seed", "epoch", "val_ar1"])


# ---------------------------------------------------------------------------
# The README answer
# ---------------------------------------------------------------------------
def _fmt(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):+.{digits}f}" if sign else f"{float(value):.{digits}f}"


def _p(value: float) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def main_table(tables: Mapping[str, "pd.DataFrame"], comparisons: "pd.DataFrame", baseline: str) -> str:  # noqa: F821
    """The main table: per world and row, test AR@1 mean ± sd (n) and Δ to ``baseline`` with its t interval,
    Holm-adjusted p and verdict (markdown)."""
    lines = []
    for world, table in tables.items():
        for _, r in table.iterrows():
            cmp = comparisons[(comparisons["world"] == world) & comparisons["family"].isin(["A", EXTRA_FAMILY])
                              & (comparisons["first"] == r["row"]) & (comparisons["second"] == baseline)
                              ] if not comparisons.empty else comparisons
            if r["row"] == baseline or cmp.empty:
                delta = interval = p = v = "—"
            else:
                c = cmp.iloc[0]
                delta = _fmt(c["delta"], sign=True)
                interval = f"[{_fmt(c['t_low'], sign=True)}, {_fmt(c['t_high'], sign=True)}]"
                p, v = _p(c["p_holm"]), str(c["verdict"])
            lines.append([world, f"`{r['row']}`", f"`{r['config']}`",
                          f"{_fmt(r['test_ar1'])} ± {_fmt(r['test_ar1_sd'])} ({int(r['n'])})", delta, interval, p, v])
    return markdown_table(["world", "row", "configuration", "test AR@1 mean ± sd (n)", f"Δ to {baseline}",
                           "95 % t interval", "p (Holm)", "verdict"], lines)


def answer_markdown(tables: Mapping[str, "pd.DataFrame"], comparisons: "pd.DataFrame", baseline: str,  # noqa: F821
                    tuned: str, versus: Sequence[str], paper_row: str = "distilvpr_paper",
                    protocol: str = "docs/benchmark/PROTOCOL.md", alpha: float = 0.05,
                    extra: Sequence[str] = ()) -> str:
    """The README's answer: ten lines for two worlds (the question; per world DistilVPR tuned and the paper's preset
    against no-KD, the tuned DistilVPR against the baselines, the runs not flat; the verdict rule) and the main
    table, all from the records.

    Each row of ``extra`` (a user's loss, family C) adds one line per world, before the verdict rule: the row
    against no-KD, DistilVPR tuned and each baseline (Holm over family C apart), and its line in the main table.

    With no rows, the one line :data:`NO_ROWS_ANSWER`.
    """
    if not tables or all(t.empty for t in tables.values()):
        return NO_ROWS_ANSWER
    protocol_rows = comparisons["family"].isin(PROTOCOL_FAMILIES) if not comparisons.empty else None
    n_cmp = int(comparisons.loc[protocol_rows, "p_t"].notna().sum()) if not comparisons.empty else 0
    lines = [f"**Does DistilVPR beat no-KD and each KD baseline?** Test AR@1 (%), paired by seed; paired t-test, "
             f"Holm over {n_cmp} testable comparisons ([protocol]({protocol}))."]

    def one(world: str, first: str, second: str) -> str:
        sel = comparisons[(comparisons["world"] == world) & (comparisons["first"] == first)
                          & (comparisons["second"] == second)]
        if sel.empty or int(sel.iloc[0]["n"]) == 0:
            return f"`{first}` vs `{second}`: no paired rows yet"
        c = sel.iloc[0]
        text = (f"`{first}` {c['verdict']} `{second}`" if c["verdict"] != "no detectable difference"
                else f"`{first}` vs `{second}`: no detectable difference")
        text += (f" (Δ {_fmt(c['delta'], sign=True)} [{_fmt(c['t_low'], sign=True)}, {_fmt(c['t_high'], sign=True)}],"
                 f" p_Holm {_p(c['p_holm'])}, n = {int(c['n'])}")
        if c["verdict"] == "no detectable difference":
            text += f", MDE {_fmt(c['mde'])}"
        return text + ")"

    for world, table in tables.items():
        config = table.loc[table["row"] == tuned, "config"]
        chosen = f" (`{config.iloc[0]}`)" if len(config) else ""
        lines.append(f"- **{world}**: DistilVPR tuned{chosen}: {one(world, tuned, baseline)}.")
        lines.append(f"- **{world}**: the paper's preset: {one(world, paper_row, baseline)}.")
        verdicts = comparisons[(comparisons["world"] == world) & (comparisons["family"] == "B")
                               & (comparisons["second"].isin([v for v in versus if v != paper_row]))]
        groups: dict[str, list[str]] = {}
        for _, c in verdicts.iterrows():
            key = c["verdict"] if int(c["n"]) else "not paired yet"
            groups.setdefault(key, []).append(f"`{c['second']}`")
        baselines = [v for v in versus if v != paper_row]
        summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items()) or (
            "no baseline rows yet" if baselines else "no KD baseline in this benchmark")
        lines.append(f"- **{world}**: DistilVPR tuned against the baselines — {summary}.")
        not_flat = [f"`{r}`" for r, k in zip(table["row"], table["not_flat"]) if int(k)]
        lines.append(f"- **{world}**: runs not flat over the last quarter (§5): "
                     f"{', '.join(not_flat) if not_flat else 'none'}.")
    for world, table in tables.items():
        for row in extra:
            config = table.loc[table["row"] == row, "config"]
            chosen = f" (`{config.iloc[0]}`)" if len(config) else ""
            others = comparisons[(comparisons["world"] == world) & (comparisons["family"] == EXTRA_FAMILY)
                                 & (comparisons["first"] == row) & (comparisons["second"] != baseline)]
            groups = {}
            for _, c in others.iterrows():
                groups.setdefault(c["verdict"] if int(c["n"]) else "not paired yet", []).append(f"`{c['second']}`")
            summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items()) or "no paired rows yet"
            lines.append(f"- **{world}**: your row{chosen} (family C, Holm apart): {one(world, row, baseline)}; "
                         f"against DistilVPR tuned and the baselines — {summary}.")
    lines.append(f"- \"beats\" / \"is beaten by\": Δ > 0 / Δ < 0 with Holm-adjusted p < {alpha:g}; otherwise no "
                 "detectable difference, with the smallest effect the design detects (MDE, 80 % power).")
    lines.append("")
    lines.append(main_table(tables, comparisons, baseline))
    return "\n".join(lines)


__all__ = ["EXTRA_FAMILY", "FINGERPRINT_COLUMNS", "FingerprintMismatchError", "PROTOCOL_FAMILIES", "NO_ROWS_ANSWER", "RUN_COLUMNS", "TUNING_COLUMNS",
           "answer_markdown", "check_fingerprints", "choose_configuration", "choose_from_table", "comparison_pairs", "comparison_table",
           "last_quarter_gain", "main_table", "markdown_table", "row_table", "validation_history_table"]
