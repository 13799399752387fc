"""The benchmark's running stages: provenance stamps, setup (worlds, prior, teachers and their gate), tune, choose,
final and collect (see :mod:`distilvpr_lib.benchmark`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from distilvpr_lib.benchmark.spec import (
    CHOSEN_FILE,
    LAUNCHES_FILE,
    NOKD,
    PRIOR_WEIGHTS,
    SETUP_FILE,
    TEACHER_WEIGHTS,
    TUNING_CSV,
    BenchmarkSpec,
    BenchmarkStateError,
    Log,
    World,
    at_root,
    cell_name,
    final_config,
    final_grid,
    records_dir,
    stage_dir,
    tune_grid,
    tuning_configs,
    world_dir,
)
from distilvpr_lib.benchmark.provenance import (
    check_machine,
    code_commit,
    row_machine_problem,
    threads_per_run,
    torch_version,
)
from distilvpr_lib.config import parse_method_name
from distilvpr_lib.data.files import atomic_write, file_sha256, write_json
from distilvpr_lib.errors import DataFormatError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from distilvpr_lib.batch import Grid

def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"unreadable JSON ({exc})", path=path) from exc


def write_yaml(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="w") as fh:
        yaml.safe_dump(obj, fh, sort_keys=False)


def write_csv(path: Path, frame: "pd.DataFrame") -> None:  # noqa: F821
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="w") as fh:
        frame.to_csv(fh, index=False, lineterminator="\n")


def setup_record(spec: BenchmarkSpec, world: str, root: Path) -> dict[str, Any]:
    """A world's ``setup.json`` (written by the setup stage).

    Raises:
        BenchmarkStateError: the setup stage has not finished this world.
    """
    path = world_dir(spec, world, root) / SETUP_FILE
    if not path.is_file():
        raise BenchmarkStateError("the world's setup is not done", path=path,
                                  hint=f"run: distilvpr benchmark run {spec.source} --stage setup")
    return read_json(path)


def _launch_fingerprints(spec: BenchmarkSpec, world: str, root: Path) -> dict[str, Any]:
    """The fingerprints a cell is launched with: the setup's dataset fingerprint, the prior's and teacher's SHA-256
    re-read from the files now (refused when they changed since setup), the commit, torch and threads."""
    setup = setup_record(spec, world, root)
    for key, file in (("prior_sha256", setup["prior_weights"]),
                      ("teacher_sha256", Path(setup["teacher_folder"]) / TEACHER_WEIGHTS)):
        now = file_sha256(file)
        if now != setup["fingerprints"][key]:
            raise BenchmarkStateError(f"changed since the setup stage recorded it ({key} {now[:12]} != "
                                      f"{setup['fingerprints'][key][:12]})", path=file,
                                      hint="restore it, or redo the setup and every run made with it")
    return {"dataset_fingerprint": setup["fingerprints"]["dataset_fingerprint"],
            "prior_sha256": setup["fingerprints"]["prior_sha256"],
            "teacher_sha256": setup["fingerprints"]["teacher_sha256"], "code_commit": code_commit(),
            "torch_version": torch_version(), "loss_plugins": loss_plugin_fingerprint()}


def loss_plugin_fingerprint() -> str:
    """The loss plugins named by ``DISTILVPR_LOSS_PLUGINS`` as ``<file name>:<SHA-256>`` joined by ``;`` (``none``
    without plugins): stamped at every launch, so that a row of a user's loss is refused when its file changed
    after the run (:func:`read_cell`)."""
    from distilvpr_lib.losses.plugins import plugin_paths

    paths = plugin_paths()
    return ";".join(f"{p.name}:{file_sha256(p)}" for p in paths) if paths else "none"


def _stamp_launch(batch_dir: Path, cells: list[str], fingerprints: dict[str, Any]) -> None:
    path = batch_dir / LAUNCHES_FILE
    launches = read_json(path) if path.is_file() else []
    launches.append({"time": datetime.datetime.now().isoformat(timespec="seconds"), "cells": cells, **fingerprints})
    batch_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, launches)


def cell_fingerprints(batch_dir: Path, cell: str) -> dict[str, Any]:
    """The fingerprints a cell was launched with (every launch that ran it must agree; else the differing values
    are joined with ``|``, which the report refuses)."""
    path = batch_dir / LAUNCHES_FILE
    launches = [x for x in (read_json(path) if path.is_file() else []) if cell in x.get("cells", [])]
    out: dict[str, Any] = {}
    for key in ("dataset_fingerprint", "prior_sha256", "teacher_sha256", "code_commit", "torch_version",
                "loss_plugins"):
        values = list(dict.fromkeys(str(x.get(key)) for x in launches))
        out[key] = "|".join(values) if values else "unknown"
    return out


# ---------------------------------------------------------------------------
# Stage: setup
# ---------------------------------------------------------------------------
def _cli(root: Path, args: Sequence[str], log: Log) -> None:
    command = [sys.executable, "-m", "distilvpr_lib.cli", *args]
    log("$ distilvpr " + " ".join(args))
    proc = subprocess.run(command, cwd=root)
    if proc.returncode != 0:
        raise BenchmarkStateError(f"`distilvpr {' '.join(args)}` failed with exit status {proc.returncode}",
                                  hint="fix it and re-run the setup stage (finished steps are skipped)")


def _teacher_done(folder: Path) -> bool:
    metrics = folder / "metrics.json"
    if not (folder / TEACHER_WEIGHTS).is_file() or not metrics.is_file():
        return False
    try:
        return json.loads(metrics.read_text()).get("status") == "complete"
    except json.JSONDecodeError:
        return False


def _retry_folder(teacher: Path) -> Path:
    """Where a teacher that failed its gate is trained again (``retry_factor`` x the epochs): ``<teacher>-retry``."""
    return teacher.with_name(teacher.name + "-retry")


def _check_teacher_folder(folder: Path, dataset: Path, epochs: int, milestones: Sequence[int],
                          prior_weights: Path, root: Path) -> None:
    """A finished teacher folder must be the one the spec asks for (epochs, LR step, dataset, prior): a teacher
    trained otherwise is refused, never silently reused."""
    config = read_json(folder / "config.json")
    got = {"train.epochs": config["train"]["epochs"], "train.milestones": list(config["train"]["milestones"]),
           "data.dataset_dir": str(at_root(root, str(config["data"]["dataset_dir"])).resolve()),
           "model.pretrained_image_weights": str(at_root(root, str(config["model"]["pretrained_image_weights"])).resolve())
           if config["model"].get("pretrained_image_weights") else None}
    want = {"train.epochs": int(epochs), "train.milestones": list(milestones),
            "data.dataset_dir": str(dataset.resolve()), "model.pretrained_image_weights": str(prior_weights.resolve())}
    for key, value in want.items():
        if got[key] != value:
            raise BenchmarkStateError(f"the teacher here has {key} = {got[key]!r}, the spec asks for {value!r}",
                                      path=folder, hint="move the folder away; the setup stage retrains it")


def teacher_gate(teacher_folder: Path, dataset: Path, gate_ar1: float) -> dict[str, Any]:
    """PROTOCOL §2's teacher gate on the teacher's own test split (of ``dataset``): fused AR@1 ≥ ``gate_ar1`` and
    fused ≥ both single heads (cloud-only, image-only), from
    :func:`~distilvpr_lib.engine.runs.run_evaluation.evaluate_heads`."""
    from distilvpr_lib.engine.runs.run_evaluation import evaluate_heads, load_benchmark
    from distilvpr_lib.engine.runs.run_folder import load_run_config

    cfg = load_run_config(teacher_folder)
    cfg.data.dataset_dir, cfg.data.image_dir = str(dataset), None
    heads = evaluate_heads(teacher_folder, load_benchmark(cfg), split="test", cfg=cfg)
    ar1 = {str(h): float(heads.loc[h, "AR@1"]) for h in heads.index}
    fused = ar1.get("fused", math.nan)
    singles = [v for k, v in ar1.items() if k != "fused"]
    passed = bool(fused >= gate_ar1 and all(fused >= v for v in singles))
    return {"test_ar1": ar1, "gate_ar1": gate_ar1, "passed": passed}


def _teacher_args(spec: BenchmarkSpec, world: World, folder: Path, epochs: int, milestones: Sequence[int],
                  prior_weights: Path) -> list[str]:
    return ["train-teacher", "--profile", spec.profile, "--dataset", world.dataset, "--epochs", str(epochs),
            "--set", "train.milestones=" + "_".join(str(m) for m in milestones),
            "--set", f"model.pretrained_image_weights={prior_weights}", "--out", str(folder), "--quiet"]


def run_setup(spec: BenchmarkSpec, root: Path, log: Log = print) -> dict[str, dict[str, Any]]:
    """The setup stage (see the module docstring); returns ``{world: setup record}``.

    Raises:
        BenchmarkStateError: a command failed, or a world shares a place with the prior world.
    """
    from distilvpr_lib.data.fingerprint import dataset_fingerprint
    from distilvpr_lib.data.synth.skeleton import COMPLETE_FILE
    from distilvpr_lib.engine.runs.prior import shared_places

    prior_folder = at_root(root, spec.prior_folder)
    prior_weights = prior_folder / PRIOR_WEIGHTS
    retries = [_retry_folder(at_root(root, w.teacher)) for w in spec.worlds]
    if not (prior_weights.is_file() and all(_teacher_done(at_root(root, w.teacher)) for w in spec.worlds)
            and all(_teacher_done(r) for r in retries if r.exists())):
        check_machine(spec, "setup")  # before anything is generated: the prior or a teacher still has to train
    for world in spec.worlds:
        if (at_root(root, world.dataset) / COMPLETE_FILE).is_file():
            log(f"[setup] {world.name}: dataset {world.dataset} is complete")
        else:
            _cli(root, ["synth", *world.synth, "--no-progress"], log)
    if prior_weights.is_file() and (prior_folder / "prior.json").is_file():
        log(f"[setup] prior: {prior_weights} is there")
    else:
        _cli(root, ["pretrain-image", *spec.prior_args, "--quiet"], log)
    records = {}
    for world in spec.worlds:
        places = shared_places(at_root(root, world.dataset), at_root(root, spec.prior_dataset))
        log(f"[setup] {world.name}: no shared place with the prior world: "
            f"{'PASS' if places['shared'] == 0 else 'FAIL'} ({places['shared']} of {places['prior_locations']} "
            f"prior locations within {places['radius_m']:g} m of the world's {places['world_locations']}; nearest "
            f"{places['min_distance_m']:.1f} m)")
        if places["shared"]:
            raise BenchmarkStateError(f"the prior world shares {places['shared']} places with world {world.name}",
                                      path=at_root(root, spec.prior_dataset),
                                      hint="PROTOCOL §2 forbids it: choose another prior seed")
        teacher = at_root(root, world.teacher)
        epochs, milestones = spec.teacher_epochs, spec.teacher_milestones
        if not _teacher_done(teacher):
            _cli(root, _teacher_args(spec, world, teacher, epochs, milestones, prior_weights), log)
        _check_teacher_folder(teacher, at_root(root, world.dataset), epochs, milestones, prior_weights, root)
        gate = teacher_gate(teacher, at_root(root, world.dataset), spec.gate_ar1)
        gate["retried"], gate["flagged"] = False, False
        log(f"[setup] {world.name}: teacher gate {'PASS' if gate['passed'] else 'FAIL'} "
            f"(test AR@1 {', '.join(f'{k} {v:.2f}' for k, v in gate['test_ar1'].items())}; fused >= "
            f"{spec.gate_ar1:g} and >= both heads)")
        if not gate["passed"] and not spec.retry_factor:  # smoke specs only: flagged without the retraining
            gate["flagged"] = True
            log(f"[setup] {world.name}: teacher FLAGGED (retry_factor 0: not retrained)")
        elif not gate["passed"]:  # retrained once with retry_factor x the epochs, the LR step at the same fraction
            first = gate
            teacher = _retry_folder(teacher)
            epochs = epochs * spec.retry_factor
            milestones = tuple(m * spec.retry_factor for m in milestones)
            if not _teacher_done(teacher):
                check_machine(spec, "setup")  # the gate asked for a teacher no earlier check knew of
                _cli(root, _teacher_args(spec, world, teacher, epochs, milestones, prior_weights), log)
            _check_teacher_folder(teacher, at_root(root, world.dataset), epochs, milestones, prior_weights, root)
            gate = teacher_gate(teacher, at_root(root, world.dataset), spec.gate_ar1)
            gate.update(retried=True, flagged=not gate["passed"], first_try=first)
            log(f"[setup] {world.name}: retrained teacher gate {'PASS' if gate['passed'] else 'FAIL: FLAGGED'} "
                f"(test AR@1 {', '.join(f'{k} {v:.2f}' for k, v in gate['test_ar1'].items())})")
        fingerprints = {"dataset_fingerprint": dataset_fingerprint(at_root(root, world.dataset)),
                        "prior_sha256": file_sha256(prior_weights),
                        "teacher_sha256": file_sha256(teacher / TEACHER_WEIGHTS),
                        "code_commit": code_commit(), "torch_version": torch_version(),
                        "cpu_threads": threads_per_run(spec.workers)}
        record = {"world": world.name, "layout": world.layout, "dataset": str(at_root(root, world.dataset)),
                  "synth_args": list(world.synth), "prior_weights": str(prior_weights),
                  "prior_dataset": str(at_root(root, spec.prior_dataset)), "teacher_folder": str(teacher),
                  "teacher_epochs": epochs, "teacher_milestones": list(milestones), "teacher_gate": gate,
                  "no_shared_place": places, "fingerprints": fingerprints,
                  "written": datetime.datetime.now().isoformat(timespec="seconds")}
        write_json(world_dir(spec, world.name, root) / SETUP_FILE, record)
        write_json(records_dir(spec, root) / f"{world.name}_setup.json", record)
        log(f"[setup] {world.name}: {world_dir(spec, world.name, root) / SETUP_FILE} (dataset "
            f"{fingerprints['dataset_fingerprint'][:12]}, prior {fingerprints['prior_sha256'][:12]}, teacher "
            f"{fingerprints['teacher_sha256'][:12]}, commit {fingerprints['code_commit'][:12]})")
        records[world.name] = record
    return records


# ---------------------------------------------------------------------------
# Stages: tune, final (through the batch runner)
# ---------------------------------------------------------------------------
def run_grid(spec: BenchmarkSpec, root: Path, grid: "Grid", world: str, workers: int, log: Log,  # noqa: F821
              only: list[str] | None = None, out_root: Path | None = None) -> Any:
    from distilvpr_lib.batch import preflight_grid, run_batch, run_is_complete
    from distilvpr_lib.losses.plugins import ENV_VAR, plugin_paths

    out_root = out_root or world_dir(spec, world, root)
    if plugin_paths():  # the notebook kernels run in their run folders: hand them the plugins' absolute paths
        os.environ[ENV_VAR] = os.pathsep.join(str(p) for p in plugin_paths())
    preflight_grid(grid, out_root)
    batch_dir = out_root / grid.name
    todo = [r.name for r in grid.runs() if (not only or r.name in only) and not run_is_complete(batch_dir / r.name)]
    if todo:
        check_machine(spec, grid.name)
        _stamp_launch(batch_dir, todo, _launch_fingerprints(spec, world, root))
    log(f"[{grid.name}] {world}: {len(grid.runs()) - len(todo)} of {len(grid.runs())} cells done, running "
        f"{len(todo)} ({workers} side by side, {threads_per_run(workers)} thread(s) each) -> {batch_dir}")
    if not todo:
        return None
    summary = run_batch(grid, out_root=out_root, workers=workers, only=todo, progress=False)
    log(str(summary))
    return summary


def run_tune(spec: BenchmarkSpec, root: Path, workers: int | None = None, log: Log = print) -> None:
    """The tuning stage: the tuning grid on the tuning world's validation split."""
    setup = setup_record(spec, spec.tuning_world, root)
    summary = run_grid(spec, root, tune_grid(spec, root, setup), spec.tuning_world, workers or spec.workers, log)
    if summary is not None and summary.n_failed:
        raise BenchmarkStateError(f"{summary.n_failed} tuning cells failed", path=summary.batch_dir,
                                  hint="see their notebook.ipynb; re-run the stage to retry them")


def read_chosen(spec: BenchmarkSpec, root: Path) -> dict[str, Any]:
    """``chosen.yaml`` (written by the choose stage).

    Raises:
        BenchmarkStateError: the choose stage has not run.
    """
    path = records_dir(spec, root) / CHOSEN_FILE
    if not path.is_file():
        raise BenchmarkStateError("no configuration chosen yet", path=path,
                                  hint=f"run: distilvpr benchmark run {spec.source} --stage choose")
    return yaml.safe_load(path.read_text()) or {}


def run_final(spec: BenchmarkSpec, root: Path, workers: int | None = None, log: Log = print) -> None:
    """The final stage: every row x final seed on every world, with the chosen configurations."""
    chosen = read_chosen(spec, root)
    if chosen.get("contingency_due") and not spec.contingency_applied:
        raise BenchmarkStateError("the chosen no-KD configuration is not flat: PROTOCOL §5's contingency is due",
                                  path=spec.source, hint="set student.contingency_applied: true and re-run tune")
    if int(chosen.get("epochs", -1)) != spec.schedule[0]:
        raise BenchmarkStateError(f"chosen on {chosen.get('epochs')}-epoch tuning runs but the schedule is "
                                  f"{spec.schedule[0]} epochs", path=records_dir(spec, root) / CHOSEN_FILE,
                                  hint="re-run the tune and choose stages")
    failed = 0
    for world in spec.worlds:
        setup = setup_record(spec, world.name, root)
        summary = run_grid(spec, root, final_grid(spec, root, world, chosen["methods"], setup), world.name,
                            workers or spec.workers, log)
        failed += summary.n_failed if summary is not None else 0
    if failed:
        raise BenchmarkStateError(f"{failed} final cells failed", hint="see their notebook.ipynb; re-run the stage")


# ---------------------------------------------------------------------------
# Reading run folders
# ---------------------------------------------------------------------------
def read_cell(spec: BenchmarkSpec, root: Path, world: World, stage: str, row: str, config: str, seed: int,
              batch_dir: Path | None = None) -> dict[str, Any] | None:
    """One finished cell as a record row (PROTOCOL §8), or ``None`` when it is not finished.

    Raises:
        BenchmarkStateError: the run folder ran something other than its name and the spec say (method, seed,
            schedule, dataset, teacher or prior): the worst bug a record can have.
    """
    from distilvpr_lib.analysis.benchmark_records import last_quarter_gain
    from distilvpr_lib.batch import run_is_complete

    batch_dir = batch_dir or stage_dir(spec, world.name, stage, root)
    run = batch_dir / cell_name(row, seed)
    if not run_is_complete(run):
        return None
    metrics = read_json(run / "metrics.json")
    config_json = read_json(run / "config.json")
    setup = setup_record(spec, world.name, root)
    epochs, milestones = spec.schedule
    expected = {"distill.method": config, "train.seed": int(seed), "train.epochs": epochs,
                "train.milestones": list(milestones), "data.dataset_dir": str(at_root(root, world.dataset)),
                "model.pretrained_image_weights": str(setup["prior_weights"])}
    for key, want in expected.items():
        section, name = key.split(".")
        got = config_json.get(section, {}).get(name)
        if (list(got) if isinstance(got, (list, tuple)) else got) != want:
            raise BenchmarkStateError(f"the run's {key} is {got!r}, but its cell says {want!r}", path=run,
                                      hint="move the folder away and re-run the cell")
    if parse_method_name(config).base in spec.extra_rows:  # a user's loss: its file must be the one it ran with
        stamped, now = cell_fingerprints(batch_dir, cell_name(row, seed))["loss_plugins"], loss_plugin_fingerprint()
        if stamped != now:
            raise BenchmarkStateError(f"the loss plugins changed since this cell was launched ({stamped} then, {now} "
                                      "now)", path=run, hint="restore the plugin file, or re-run the cell")
    if str(Path(metrics.get("teacher_dir") or "")) != str(setup["teacher_folder"]):
        raise BenchmarkStateError(f"the run used the teacher {metrics.get('teacher_dir')!r}, not the world's "
                                  f"{setup['teacher_folder']!r}", path=run, hint="move it away and re-run the cell")
    precision = metrics.get("precision") or {}
    problem = row_machine_problem(spec, precision)
    if problem:
        raise BenchmarkStateError(f"{problem}: not a row of machine: {spec.machine}", path=run,
                                  hint="move it away and re-run the cell on a CPU with native bfloat16 kernels")
    history = [(e.get("validation") or {}).get("AR@1") for e in metrics.get("epochs", [])]
    gain = last_quarter_gain(history)
    test, val = metrics.get("test") or {}, metrics.get("validation") or {}
    return {"world": world.name, "row": row, "config": config, "seed": int(seed),
            "selected_epoch": metrics.get("best_epoch"), "val_ar1": val.get("AR@1"), "test_ar1": test.get("AR@1"),
            "test_ar5": test.get("AR@5"), "test_ar1pct": test.get("AR@1%"), "last_quarter_gain": gain,
            "flat": bool(math.isfinite(gain) and gain < spec.flat_gain), "wall_time_s": metrics.get("wall_time_s"),
            "weights_sha256": file_sha256(run / "student.pt"), "cpu_threads": metrics.get("cpu_threads"),
            "machine": precision.get("machine", "unknown"), **cell_fingerprints(batch_dir, cell_name(row, seed)), "validation_history": history}


# ---------------------------------------------------------------------------
# Stage: choose
# ---------------------------------------------------------------------------
def run_choose(spec: BenchmarkSpec, root: Path, log: Log = print) -> dict[str, Any]:
    """Write ``tuning.csv`` and ``chosen.yaml`` (PROTOCOL §4); returns the chosen record.

    Raises:
        BenchmarkStateError: a tuning cell is missing, or a different choice exists while final runs exist.
    """
    import pandas as pd

    from distilvpr_lib.analysis.benchmark_records import TUNING_COLUMNS, choose_from_table

    world = spec.world(spec.tuning_world)
    lines = []
    for cfg in tuning_configs(spec):
        record = read_cell(spec, root, world, "tune", cfg.config, cfg.config, spec.tuning_seed)
        if record is None:
            raise BenchmarkStateError(f"tuning cell {cell_name(cfg.config, spec.tuning_seed)} is not finished",
                                      path=stage_dir(spec, world.name, "tune", root),
                                      hint=f"run: distilvpr benchmark run {spec.source} --stage tune")
        lines.append({**record, "method": cfg.method, "weight_scale": cfg.scale if cfg.method != NOKD else 1.0,
                      "lr_scale": cfg.scale if cfg.method == NOKD else 1.0, "task": cfg.task})
    frame = pd.DataFrame(lines)
    chosen = choose_from_table(frame, spec.tie)
    frame["chosen"] = [chosen[m] == c for m, c in zip(frame["method"], frame["config"])]
    nokd = frame[(frame["method"] == NOKD) & frame["chosen"]].iloc[0]
    due = not bool(nokd["flat"])
    record = {"protocol": spec.protocol, "tuning_world": world.name, "tuning_seed": spec.tuning_seed,
              "epochs": spec.schedule[0], "milestones": list(spec.schedule[1]), "methods": chosen,
              "nokd_last_quarter_gain": float(nokd["last_quarter_gain"]), "contingency_due": due,
              "contingency_applied": spec.contingency_applied}
    path = records_dir(spec, root) / CHOSEN_FILE
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        started = any(stage_dir(spec, w.name, "final", root).is_dir() for w in spec.worlds)
        if old.get("methods") != chosen and started:
            raise BenchmarkStateError(f"the recomputed choice {chosen} differs from the recorded one "
                                      f"{old.get('methods')} and final runs exist", path=path,
                                      hint="PROTOCOL §4: the choice precedes every final run; investigate")
    write_csv(records_dir(spec, root) / TUNING_CSV, frame[list(TUNING_COLUMNS)])
    write_yaml(path, record)
    for method, config in chosen.items():
        val = frame.loc[frame["config"] == config, "val_ar1"].iloc[0]
        log(f"[choose] {method}: {config} (validation AR@1 {val:.2f})")
    log(f"[choose] chosen no-KD last-quarter gain {record['nokd_last_quarter_gain']:.2f} "
        f"({'not flat: the contingency of PROTOCOL §5 is due' if due else 'flat'}) -> {path}")
    return record


# ---------------------------------------------------------------------------
# Stage: collect
# ---------------------------------------------------------------------------
def collect_world(spec: BenchmarkSpec, root: Path, world: World, batch_dir: Path | None = None,
                  rows: Sequence[str] | None = None) -> "pd.DataFrame":  # noqa: F821
    """The finished final cells of a world as :data:`~distilvpr_lib.analysis.benchmark_records.RUN_COLUMNS`."""
    import pandas as pd

    from distilvpr_lib.analysis.benchmark_records import RUN_COLUMNS

    chosen = read_chosen(spec, root)["methods"]
    lines = []
    for row in rows or spec.all_rows:
        for seed in spec.seeds:
            record = read_cell(spec, root, world, "final", row, final_config(spec, world, row, chosen), seed,
                               batch_dir=batch_dir)
            if record is not None:
                lines.append(record)
    return pd.DataFrame(lines, columns=list(RUN_COLUMNS)) if lines else pd.DataFrame(columns=list(RUN_COLUMNS))


def run_collect(spec: BenchmarkSpec, root: Path, log: Log = print) -> dict[str, Path]:
    """Write ``<records>/<world>_runs.csv`` for every world (atomically); returns the paths."""
    out = {}
    for world in spec.worlds:
        frame = collect_world(spec, root, world)
        path = records_dir(spec, root) / f"{world.name}_runs.csv"
        write_csv(path, frame)
        log(f"[collect] {world.name}: {len(frame)} of {len(spec.all_rows) * len(spec.seeds)} final runs -> {path}")
        out[world.name] = path
    return out


# ---------------------------------------------------------------------------
# Stages: report, answer
# ---------------------------------------------------------------------------
