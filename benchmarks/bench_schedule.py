"""Epochs to no-KD's validation plateau under each learning-rate schedule (issue 26 item 4).

    # no-KD students, one at a time, under the step schedule (the reference) and cosine schedules, 3 seeds;
    # run folders under --runs (reused: a complete run is not trained again, a stopped one resumes); the
    # --schedule items below are the defaults (DEFAULT_SCHEDULES):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_schedule.py /tmp/speed-world \\
        --runs /tmp/schedule-runs --seeds 0 1 2 \\
        --set train.mixed_precision=false model.pretrained_image_weights=None \\
        --schedule step-e32:32:train.milestones=24 \\
        --schedule "cosine-e32:32:train.lr_schedule=cosine,train.warmup_epochs=2,train.milestones=" \\
        --schedule "cosine-e16:16:train.lr_schedule=cosine,train.warmup_epochs=1,train.milestones="
    # the table only, from the folders there (trains nothing):
    .venv/bin/python benchmarks/bench_schedule.py /tmp/speed-world --runs /tmp/schedule-runs ... --report-only

Each run is ``distilvpr distill --method nokd`` in its own process (``--profile``, ``--seed``, ``--epochs`` and the
``--set`` items: the shared ones, then the schedule's), in ``<runs>/<schedule>-seed<seed>``, its console output in
``<runs>/<schedule>-seed<seed>.distill.log`` (not printed: its summary names the test recalls). The first schedule is
the reference (``--reference`` picks another). **Only validation numbers are read** (each run's ``metrics.json``,
its per-epoch validation AR@1); the test split is the benchmark's and is not printed. Per run:

* the **plateau** of the reference: the mean validation AR@1 over the last quarter of the reference run's epochs
  (32 epochs: epochs 25-32), per seed; the **target** is the mean of the seeds' plateaus minus a tolerance
  (``--tolerance``: ``sd`` = the seeds' standard deviation of the plateau, the default, or a number of points);
* **epochs to target**: the first epoch ``e >= window`` at which the running mean of the validation AR@1 of epochs
  ``e-window+1 .. e`` (``--window``, 3) reaches the target (``-`` = never);
* **epochs to its seed's plateau**: the same with the run's own seed's reference plateau as the target and no
  tolerance (a paired view: same seed, so same initial weights and batch order);
* **flat**: the fitted change over the last quarter (least-squares slope over its epochs × its length in epochs)
  below ``--flat-tol`` points (1.0) in absolute value; the protocol's last-quarter gain (best-so-far at the end
  minus at the start of the last quarter, docs/benchmark/PROTOCOL.md §5, flat when < 1.0) beside it;
* the selected epoch's validation AR@1, the last quarter's mean, the run's wall time and seconds per epoch.

The machine this project runs on is shared: wall times are the load's as much as the schedule's; the epochs are not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The schedules of issue 26 item 4 at the study profile's 32 epochs (``--schedule`` replaces them): the step
#: schedule of ablations/study_long.yaml (the reference) and warm-up + cosine at 32 and 16 epochs.
DEFAULT_SCHEDULES: tuple[str, ...] = (
    "step-e32:32:train.milestones=24",
    "cosine-e32:32:train.lr_schedule=cosine,train.warmup_epochs=2,train.milestones=",
    "cosine-e16:16:train.lr_schedule=cosine,train.warmup_epochs=1,train.milestones=",
)


@dataclass(frozen=True)
class Schedule:
    """One schedule of the comparison: its name (the run folders' prefix), epochs and ``--set`` items."""

    name: str
    epochs: int
    sets: tuple[str, ...]


def parse_schedule(text: str) -> Schedule:
    """``NAME:EPOCHS:KEY=VALUE,KEY=VALUE`` (the items may be empty) -> :class:`Schedule`.

    Raises:
        ValueError: a malformed item (the caller turns it into a one-line option error, exit 2).
    """
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[0].replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"--schedule {text!r}: expected NAME:EPOCHS[:KEY=VALUE,...] with a plain NAME")
    try:
        epochs = int(parts[1])
    except ValueError:
        raise ValueError(f"--schedule {text!r}: EPOCHS must be an integer, got {parts[1]!r}") from None
    if epochs < 1:
        raise ValueError(f"--schedule {text!r}: EPOCHS must be >= 1")
    sets = tuple(item for item in (parts[2].split(",") if len(parts) == 3 else []) if item)
    bad = [item for item in sets if "=" not in item]
    if bad:
        raise ValueError(f"--schedule {text!r}: items must be KEY=VALUE, got {bad[0]!r}")
    return Schedule(parts[0], epochs, sets)


# ---------------------------------------------------------------------------
# The numbers (validation only)
# ---------------------------------------------------------------------------
def quarter(epochs: int) -> int:
    """Epochs in the last quarter of a run of ``epochs`` (PROTOCOL §5: ``max(1, E // 4)``)."""
    return max(1, epochs // 4)


def last_quarter_mean(curve: list[float]) -> float:
    """Mean validation AR@1 over the last quarter of ``curve`` (epochs 1..E, in order)."""
    return statistics.fmean(curve[-quarter(len(curve)):])


def last_quarter_change(curve: list[float]) -> float:
    """Fitted change over the last quarter: least-squares slope over its epochs × (its length − 1) epochs, in AR@1
    points (the line's rise from the quarter's first epoch to its last); 0 for a one-epoch quarter."""
    tail = curve[-quarter(len(curve)):]
    if len(tail) < 2:
        return 0.0
    xs = range(len(tail))
    mx, my = statistics.fmean(xs), statistics.fmean(tail)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, tail)) / sum((x - mx) ** 2 for x in xs)
    return slope * (len(tail) - 1)


def protocol_gain(curve: list[float]) -> float:
    """PROTOCOL §5's last-quarter gain: best so far at epoch E minus best so far at epoch E − quarter."""
    return max(curve) - max(curve[: len(curve) - quarter(len(curve))]) if len(curve) > 1 else math.nan


def epochs_to_target(curve: list[float], target: float, window: int) -> int | None:
    """The first epoch ``e >= window`` (1-based) whose running mean over epochs ``e-window+1..e`` is >= ``target``;
    ``None`` when no epoch does."""
    for end in range(window, len(curve) + 1):
        if statistics.fmean(curve[end - window:end]) >= target:
            return end
    return None


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------
def run_folder(runs: Path, schedule: Schedule, seed: int) -> Path:
    return runs / f"{schedule.name}-seed{seed}"


def distill_command(args: argparse.Namespace, schedule: Schedule, seed: int) -> list[str]:
    sets = [*args.set, *schedule.sets]
    return [sys.executable, "-m", "distilvpr_lib.cli", "distill", "--dataset", str(args.dataset), "--profile",
            args.profile, "--method", "nokd", "--seed", str(seed), "--epochs", str(schedule.epochs),
            *(["--set", *sets] if sets else []), "--out", str(run_folder(args.runs, schedule, seed)), "--quiet"]


def complete_metrics(folder: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a complete run, else ``None``."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "complete" else None


def _recorded(config: dict[str, Any], key: str, default: Any = None) -> Any:
    section, _, name = key.partition(".")
    return (config.get(section) or {}).get(name, default)


def _as_recorded(text: str, recorded: Any) -> Any:
    """A ``--set`` value in the type of the recorded one (lists as ``1_2`` or ``1,2``; ``none`` = None)."""
    if text.lower() in ("none", "null"):
        return None
    if isinstance(recorded, list):
        return [type(recorded[0])(v) if recorded else int(v) for v in text.replace(",", "_").split("_") if v.strip()]
    if isinstance(recorded, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(recorded, (int, float)):
        return type(recorded)(float(text)) if isinstance(recorded, float) else int(text)
    return text


def folder_problem(folder: Path, schedule: Schedule, seed: int) -> str | None:
    """Why the complete run in ``folder`` is not this schedule's no-KD run of ``seed`` (``None``: it is).

    Checks the recorded method, seed, epochs, schedule (absent in folders older than ``train.lr_schedule``: step)
    and every field the schedule's items set (the distill command checks the whole configuration before it
    reuses a folder; this guards ``--report-only``).
    """
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{folder / 'config.json'}: unreadable ({exc})"
    want: dict[str, Any] = {"distill.method": "nokd", "train.seed": seed, "train.epochs": schedule.epochs,
                            "train.lr_schedule": "step", "train.warmup_epochs": 0}
    defaults = {"train.lr_schedule": "step", "train.warmup_epochs": 0}
    for item in schedule.sets:
        key, _, value = item.partition("=")
        want[key] = _as_recorded(value, _recorded(config, key, defaults.get(key)))
    for key, value in want.items():
        got = _recorded(config, key, defaults.get(key))
        if got != value:
            return f"{folder}: holds {key}={got!r}, the schedule {schedule.name!r} asks for {value!r}"
    return None


def train_runs(args: argparse.Namespace, schedules: list[Schedule]) -> None:
    """Every (schedule, seed) run, one at a time, schedules in the given order. Each goes through the distill
    command, which reuses a folder only when it holds this configuration on this dataset (a complete run: nothing
    to train; a stopped one: resumed) and refuses one of another configuration."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env.setdefault("MKL_NUM_THREADS", str(args.threads))
    for schedule in schedules:
        for seed in args.seeds:
            folder = run_folder(args.runs, schedule, seed)
            load = os.getloadavg()[0]
            print(f"[{time.strftime('%H:%M:%S')}] {folder.name}: distill (load {load:.2f})", flush=True)
            started = time.time()
            log = args.runs / f"{folder.name}.distill.log"  # the command's summary names test recalls: kept apart
            with open(log, "a") as out:
                result = subprocess.run(distill_command(args, schedule, seed), cwd=REPO, env=env, stdout=out,
                                        stderr=subprocess.STDOUT)
            if result.returncode != 0:
                tail = log.read_text().strip().splitlines()[-1:] or [""]
                sys.exit(f"bench_schedule: {folder}: the distill command failed (exit {result.returncode}): "
                         f"{tail[0]} (all of it in {log}); re-run to resume it")
            print(f"[{time.strftime('%H:%M:%S')}] {folder.name}: done in {time.time() - started:.0f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)


def validation_curve(metrics: dict[str, Any]) -> list[float]:
    """Validation AR@1 of epochs 1..E (every epoch must be validated: ``train.eval_every=1``)."""
    curve = [(e.get("validation") or {}).get("AR@1") for e in metrics.get("epochs", [])]
    if any(v is None for v in curve):
        raise ValueError("a run without a validation AR@1 at every epoch (train.eval_every must be 1)")
    return [float(v) for v in curve]


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def report(args: argparse.Namespace, schedules: list[Schedule], reference: Schedule) -> int:
    """Print the per-run table and the per-schedule summary; 1 when a reference run is missing."""
    curves: dict[tuple[str, int], tuple[list[float], dict[str, Any]]] = {}
    for schedule in schedules:
        for seed in args.seeds:
            folder = run_folder(args.runs, schedule, seed)
            metrics = complete_metrics(folder)
            if metrics is None:
                continue
            problem = folder_problem(folder, schedule, seed)
            if problem:
                print(f"bench_schedule: {problem}", file=sys.stderr)
                return 1
            curves[(schedule.name, seed)] = (validation_curve(metrics), metrics)
    plateaus = {seed: last_quarter_mean(curves[(reference.name, seed)][0])
                for seed in args.seeds if (reference.name, seed) in curves}
    if not plateaus:
        print(f"bench_schedule: no complete run of the reference schedule {reference.name!r} in {args.runs}",
              file=sys.stderr)
        return 1
    mean_plateau = statistics.fmean(plateaus.values())
    sd = statistics.stdev(plateaus.values()) if len(plateaus) > 1 else math.nan
    tolerance = sd if args.tolerance == "sd" else float(args.tolerance)
    if not math.isfinite(tolerance):
        print("bench_schedule: --tolerance sd needs >= 2 reference seeds; give a number of points", file=sys.stderr)
        return 1
    target = mean_plateau - tolerance
    print(f"\nreference {reference.name}: plateau (mean validation AR@1 over its last quarter, epochs "
          f"{reference.epochs - quarter(reference.epochs) + 1}-{reference.epochs}) per seed: "
          + ", ".join(f"seed {s} {p:.2f}" for s, p in plateaus.items())
          + f"; mean {mean_plateau:.2f}, sd {sd:.2f}")
    print(f"target = mean plateau - {'1 seed sd' if args.tolerance == 'sd' else 'tolerance'} = {mean_plateau:.2f} - "
          f"{tolerance:.2f} = {target:.2f} (validation AR@1, {args.window}-epoch running mean); flat: |fitted change "
          f"over the last quarter| < {args.flat_tol:g} points. Only validation numbers are read.\n")
    print("| schedule | seed | epochs | epochs to target | epochs to its seed's plateau | best val AR@1 (epoch) | "
          "last-quarter mean | last-quarter fitted change (flat?) | protocol gain (flat?) | wall s | s/epoch |")
    print("|---|---:|---:|---:|---:|---|---:|---|---|---:|---:|")
    summary: dict[str, list[dict[str, Any]]] = {}
    for schedule in schedules:
        for seed in args.seeds:
            if (schedule.name, seed) not in curves:
                print(f"| {schedule.name} | {seed} | {schedule.epochs} | (not run) | | | | | | | |")
                continue
            curve, metrics = curves[(schedule.name, seed)]
            reached = epochs_to_target(curve, target, args.window)
            paired = epochs_to_target(curve, plateaus[seed], args.window) if seed in plateaus else None
            change, gain = last_quarter_change(curve), protocol_gain(curve)
            flat = abs(change) < args.flat_tol
            best = max(range(len(curve)), key=lambda i: (curve[i], i))  # ties -> the later epoch, as selection
            row = {"reached": reached, "mean": last_quarter_mean(curve), "flat": flat, "gain_flat": gain < 1.0,
                   "wall": metrics.get("wall_time_s"), "best": curve[best]}
            summary.setdefault(schedule.name, []).append(row)
            wall, per_epoch = metrics.get("wall_time_s"), metrics.get("seconds_per_epoch")
            print(f"| {schedule.name} | {seed} | {len(curve)} | {reached if reached else '-'} | "
                  f"{paired if paired else '-'} | "
                  f"{curve[best]:.2f} ({best + 1}) | {row['mean']:.2f} | {change:+.2f} ({'yes' if flat else 'no'}) | "
                  f"{gain:.2f} ({'yes' if gain < 1.0 else 'no'}) | {_number(wall, 0)} | {_number(per_epoch, 1)} |")
    print("\n| schedule | runs | epochs to target (median; per seed) | last-quarter mean (mean ± sd) | flat runs | "
          "median wall s |")
    print("|---|---:|---|---|---:|---:|")
    for schedule in schedules:
        rows = summary.get(schedule.name, [])
        if not rows:
            continue
        reached = [r["reached"] for r in rows]
        hit = sorted(r for r in reached if r is not None)
        median = f"{statistics.median(hit):g}" if len(hit) == len(reached) else f"{len(reached) - len(hit)} never"
        means = [r["mean"] for r in rows]
        spread = f"{statistics.fmean(means):.2f} ± {statistics.stdev(means):.2f}" if len(means) > 1 else \
            f"{means[0]:.2f}"
        walls = [r["wall"] for r in rows if isinstance(r["wall"], (int, float))]
        print(f"| {schedule.name} | {len(rows)} | {median}; {', '.join(str(r) if r else '-' for r in reached)} | "
              f"{spread} | {sum(r['flat'] for r in rows)}/{len(rows)} | "
              f"{_number(statistics.median(walls) if walls else None, 0)} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, nargs="?",
                        help="benchmark folder (e.g. bench_run_stages.py --make-world); none: skip")
    parser.add_argument("--runs", type=Path, default=None, help="folder of the run folders (reused)")
    parser.add_argument("--profile", default="study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="--set items of every run")
    parser.add_argument("--schedule", action="append", default=[], metavar="NAME:EPOCHS:KEY=VALUE,...",
                        help="a schedule (repeatable; the first is the reference unless --reference); default: "
                             + " ".join(DEFAULT_SCHEDULES))
    parser.add_argument("--reference", default=None, help="name of the reference schedule (default: the first)")
    parser.add_argument("--tolerance", default="sd", help="'sd' (the reference plateau's seed sd) or points")
    parser.add_argument("--window", type=int, default=3, help="epochs of the running mean (3)")
    parser.add_argument("--flat-tol", type=float, default=1.0, help="flat: |fitted last-quarter change| below (1.0)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs unless set (1)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report the folders there")
    args = parser.parse_args(argv)
    if args.dataset is None:  # `make bench` runs every script without arguments
        print("bench_schedule: no dataset given, nothing measured (usage in the module docstring)")
        return 0
    if args.runs is None:
        parser.exit(2, "bench_schedule: --runs DIR is needed (the folder of the run folders)\n")
    try:
        schedules = [parse_schedule(text) for text in args.schedule or DEFAULT_SCHEDULES]
    except ValueError as exc:
        parser.exit(2, f"bench_schedule: {exc}\n")
    names = [s.name for s in schedules]
    if len(set(names)) != len(names):
        parser.exit(2, f"bench_schedule: --schedule names must differ, got {names}\n")
    reference = next((s for s in schedules if s.name == (args.reference or names[0])), None)
    if reference is None:
        parser.exit(2, f"bench_schedule: --reference {args.reference!r} is not one of {names}\n")
    if args.tolerance != "sd":
        try:
            float(args.tolerance)
        except ValueError:
            parser.exit(2, f"bench_schedule: --tolerance: 'sd' or a number of points, got {args.tolerance!r}\n")
    if args.window < 1:
        parser.exit(2, f"bench_schedule: --window must be >= 1, got {args.window}\n")
    if not (args.dataset / "training_queries_baseline.pickle").is_file():
        parser.exit(2, f"bench_schedule: {args.dataset}: not a benchmark folder "
                       "(no training_queries_baseline.pickle)\n")
    if not args.report_only:
        args.runs.mkdir(parents=True, exist_ok=True)
        train_runs(args, schedules)
    return report(args, schedules, reference)


if __name__ == "__main__":
    sys.exit(main())
