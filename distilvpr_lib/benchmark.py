"""The benchmark of issue 27, run from one spec file (``ablations/benchmark.yaml``; docs/benchmark/PROTOCOL.md).

``distilvpr benchmark run SPEC`` runs its stages, each resumable and skipping what is done:

``setup``    per world: the dataset (``distilvpr synth``), the shared visual prior (``distilvpr pretrain-image``), the
             teacher (``distilvpr train-teacher``) and its gate (PROTOCOL §2, retrained once when it fails), the
             "no shared place" check; writes ``<out>/<world>/setup.json`` and ``<records>/<world>_setup.json`` with
             the fingerprints (dataset content hash, prior and teacher SHA-256, code commit, torch, threads).
``tune``     the tuning grid (PROTOCOL §4) on the tuning world, through the batch runner: one cell =
             ``<config>__seed<tuning seed>`` under ``<out>/<tuning world>/tune/``.
``choose``   ``<records>/tuning.csv`` (every tuning run) and ``<records>/chosen.yaml`` (the §4 rule, ties included).
``final``    every row x seed on every world: one cell = ``<row>__seed<k>`` under ``<out>/<world>/final/``.
``collect``  ``<records>/<world>_runs.csv`` (PROTOCOL §8 columns) from the run folders, atomically.
``report``   mean ± sd per row, families A and B (paired t, Holm over the whole family, BCa, Wilcoxon, MDE,
             verdict), into ``<records>/tables.md`` and ``<records>/comparisons.csv``; a world whose rows differ in
             a fingerprint is refused.

Every cell's launch is stamped (``<stage folder>/launches.json``: code commit, torch version, and the setup's
fingerprints re-read at launch), and ``collect`` checks that each run folder ran what its name says (method,
seed, schedule, dataset, teacher, prior) before it writes a row.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distilvpr_lib.config import LAYOUTS, MethodName, parse_method_name
from distilvpr_lib.data.files import atomic_write, file_sha256, write_json
from distilvpr_lib.errors import DataFormatError, DistilVPRError, MissingDataError, OptionError
from distilvpr_lib.paths import project_root

#: The stages of ``distilvpr benchmark run``, in order.
STAGES: tuple[str, ...] = ("setup", "tune", "choose", "final", "collect", "report")
#: The row that runs each world's paper preset untuned (PROTOCOL §3).
PAPER_ROW = "distilvpr_paper"
#: The no-distillation method.
NOKD = "nokd"
#: Markers of the README's generated block.
README_BEGIN, README_END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
SETUP_FILE = "setup.json"
LAUNCHES_FILE = "launches.json"
TUNING_CSV, CHOSEN_FILE, TABLES_FILE, COMPARISONS_CSV = "tuning.csv", "chosen.yaml", "tables.md", "comparisons.csv"
PRIOR_WEIGHTS = "image_prior.pth"
TEACHER_WEIGHTS = "teacher.pt"

Log = Callable[[str], None]


class BenchmarkSpecError(OptionError):
    """The spec file is malformed: the message names the file and the key (exit status 2)."""


class BenchmarkStateError(DistilVPRError):
    """A stage cannot run yet, or a run folder disagrees with the spec (exit status 1)."""


# ---------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """One generated world of the benchmark (PROTOCOL §2)."""

    name: str
    layout: str
    synth: tuple[str, ...]
    dataset: str
    teacher: str
    paper_preset: str


@dataclass(frozen=True)
class TuneConfig:
    """One configuration of the tuning grid: ``method`` (its preset), its ``config`` name, the ``scale`` (α for a
    KD method, β for no-KD) and the ``task`` (``raw`` / ``norm``)."""

    method: str
    config: str
    scale: float
    task: str


@dataclass(frozen=True)
class BenchmarkSpec:
    """A parsed benchmark spec (see ``ablations/benchmark.yaml`` for the meaning of every key)."""

    source: Path
    name: str
    protocol: str
    profile: str
    notebook: str
    out: str
    records: str
    workers: int
    prior_args: tuple[str, ...]
    prior_folder: str
    prior_dataset: str
    worlds: tuple[World, ...]
    teacher_epochs: int
    teacher_milestones: tuple[int, ...]
    gate_ar1: float
    retry_factor: int
    student_epochs: int
    student_milestones: tuple[int, ...]
    flat_gain: float
    contingency_epochs: int
    contingency_milestones: tuple[int, ...]
    contingency_applied: bool
    tuning_world: str
    tuning_seed: int
    kd_methods: tuple[str, ...]
    weight_scales: tuple[float, ...]
    nokd_lr_scales: tuple[float, ...]
    tasks: tuple[str, ...]
    tie: float
    rows: tuple[str, ...]
    seeds: tuple[int, ...]
    baseline: str
    tuned: str
    versus: tuple[str, ...]
    alpha: float
    bootstrap_resamples: int
    bootstrap_seed: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def world(self, name: str) -> World:
        """The world called ``name``."""
        for w in self.worlds:
            if w.name == name:
                return w
        raise KeyError(f"no world {name!r} in {self.source}; worlds: {[w.name for w in self.worlds]}")

    @property
    def schedule(self) -> tuple[int, tuple[int, ...]]:
        """(epochs, milestones) of every student: the contingency's once applied (PROTOCOL §5)."""
        if self.contingency_applied:
            return self.contingency_epochs, self.contingency_milestones
        return self.student_epochs, self.student_milestones

    @property
    def stage_suffix(self) -> str:
        """Folder suffix of the student stages: ``""``, or ``-e48`` once the contingency is applied."""
        return f"-e{self.contingency_epochs}" if self.contingency_applied else ""


_TOP_KEYS = {"name", "protocol", "profile", "notebook", "out", "records", "workers", "prior", "worlds", "teacher",
             "student", "tuning", "final", "statistics"}
_SECTION_KEYS = {
    "prior": {"args", "folder", "dataset"},
    "teacher": {"epochs", "milestones", "gate_ar1", "retry_factor"},
    "student": {"epochs", "milestones", "flat_gain", "contingency", "contingency_applied"},
    "tuning": {"world", "seed", "kd_methods", "weight_scales", "nokd_lr_scales", "tasks", "tie"},
    "final": {"rows", "seeds"},
    "statistics": {"baseline", "tuned", "versus", "alpha", "bootstrap_resamples", "bootstrap_seed"},
}
_WORLD_KEYS = {"name", "layout", "synth", "dataset", "teacher", "paper_preset"}
_TASKS = ("raw", "norm")


def load_spec(path: str | os.PathLike) -> BenchmarkSpec:
    """Read and check a benchmark spec; nothing is written.

    Raises:
        BenchmarkSpecError: (exit 2) one line ``<spec>: key '<key>': <problem>`` for the first problem found.
    """
    from distilvpr_lib.config import PROFILES
    from distilvpr_lib.losses.distiller import PRESETS

    path = Path(path)

    def bad(key: str, problem: str) -> BenchmarkSpecError:
        return BenchmarkSpecError(f"{path}: key '{key}': {problem}")

    if not path.is_file():
        raise BenchmarkSpecError(f"{path}: spec file does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BenchmarkSpecError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict):
        raise BenchmarkSpecError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key; known: {sorted(_TOP_KEYS)}")
    missing = sorted(_TOP_KEYS - set(raw))
    if missing:
        raise bad(missing[0], "missing")
    sections: dict[str, dict[str, Any]] = {}
    for section, keys in _SECTION_KEYS.items():
        value = raw[section]
        if not isinstance(value, dict):
            raise bad(section, "expected a mapping")
        extra = sorted(set(value) - keys)
        if extra:
            raise bad(f"{section}.{extra[0]}", f"unknown key; known: {sorted(keys)}")
        absent = sorted(keys - set(value))
        if absent:
            raise bad(f"{section}.{absent[0]}", "missing")
        sections[section] = value

    def text(key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise bad(key, f"expected a non-empty string, got {value!r}")
        return value

    def integer(key: str, value: Any, low: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(key, f"expected an integer >= {low}, got {value!r}")
        return int(value)

    def number(key: str, value: Any, low: float = 0.0, strict: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (strict and value == low):
            raise bad(key, f"expected a number {'>' if strict else '>='} {low:g}, got {value!r}")
        return float(value)

    def items(key: str, value: Any, kind: Callable[[str, Any], Any], unique: bool = True) -> tuple:
        if not isinstance(value, list) or not value:
            raise bad(key, f"expected a non-empty list, got {value!r}")
        out = tuple(kind(f"{key}[{i}]", v) for i, v in enumerate(value))
        if unique and len(set(out)) != len(out):
            raise bad(key, f"duplicate entries in {value!r}")
        return out

    def args(key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                   for v in value):
            raise bad(key, f"expected a list of command-line arguments, got {value!r}")
        return tuple(str(v) for v in value)

    def preset(key: str, value: Any) -> str:
        name = text(key, value)
        try:
            parsed = parse_method_name(name)
        except ValueError as exc:
            raise bad(key, str(exc)) from exc
        if parsed.base not in PRESETS:
            raise bad(key, f"unknown preset {parsed.base!r}; known: {sorted(PRESETS)}")
        return name

    profile = text("profile", raw["profile"])
    if profile not in PROFILES:
        raise bad("profile", f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    workers = integer("workers", raw["workers"], 1)
    prior = sections["prior"]
    prior_args = args("prior.args", prior["args"])
    prior_folder = text("prior.folder", prior["folder"])
    prior_dataset = text("prior.dataset", prior["dataset"])
    if "--out" not in prior_args or prior_args[prior_args.index("--out") + 1:][:1] != (prior_folder,):
        raise bad("prior.args", f"must write the prior into prior.folder: give --out {prior_folder}")
    if "--dataset" in prior_args and prior_args[prior_args.index("--dataset") + 1:][:1] != (prior_dataset,):
        raise bad("prior.dataset", "differs from the --dataset of prior.args")
    if "--dataset" not in prior_args:
        prior_profile = prior_args[prior_args.index("--profile") + 1] if "--profile" in prior_args else "study"
        if prior_dataset != f"data/{prior_profile}-prior":
            raise bad("prior.dataset", f"pretrain-image writes the prior world to data/{prior_profile}-prior unless "
                                       "prior.args gives --dataset")

    if not isinstance(raw["worlds"], list) or not raw["worlds"]:
        raise bad("worlds", "expected a non-empty list of worlds")
    worlds = []
    for i, w in enumerate(raw["worlds"]):
        key = f"worlds[{i}]"
        if not isinstance(w, dict):
            raise bad(key, "expected a mapping")
        extra, absent = sorted(set(w) - _WORLD_KEYS), sorted(_WORLD_KEYS - set(w))
        if extra:
            raise bad(f"{key}.{extra[0]}", f"unknown key; known: {sorted(_WORLD_KEYS)}")
        if absent:
            raise bad(f"{key}.{absent[0]}", "missing")
        name = text(f"{key}.name", w["name"])
        if not name.replace("_", "").replace("-", "").isalnum():
            raise bad(f"{key}.name", f"{name!r} is not folder-safe (letters, digits, - and _)")
        layout = text(f"{key}.layout", w["layout"])
        if layout not in LAYOUTS:
            raise bad(f"{key}.layout", f"unknown layout {layout!r}; known: {list(LAYOUTS)}")
        synth = args(f"{key}.synth", w["synth"])
        dataset = text(f"{key}.dataset", w["dataset"])
        if synth[synth.index("--out") + 1:][:1] != (dataset,) if "--out" in synth else True:
            raise bad(f"{key}.synth", f"must generate the world into its dataset folder: give --out {dataset}")
        synth_layout = synth[synth.index("--layout") + 1] if "--layout" in synth else "oxford"
        if synth_layout != layout:
            raise bad(f"{key}.layout", f"is {layout!r} but the synth arguments generate the {synth_layout!r} layout")
        worlds.append(World(name, layout, synth, dataset, text(f"{key}.teacher", w["teacher"]),
                            preset(f"{key}.paper_preset", w["paper_preset"])))
    names = [w.name for w in worlds]
    if len(set(names)) != len(names):
        raise bad("worlds", f"duplicate world names {names}")
    for attr in ("dataset", "teacher"):
        values = [getattr(w, attr) for w in worlds]
        if len(set(values)) != len(values):
            raise bad("worlds", f"two worlds share the {attr} folder {values}")

    teacher = sections["teacher"]
    student = sections["student"]
    t_epochs = integer("teacher.epochs", teacher["epochs"], 1)
    t_milestones = items("teacher.milestones", teacher["milestones"], lambda k, v: integer(k, v, 1))
    s_epochs = integer("student.epochs", student["epochs"], 1)
    s_milestones = items("student.milestones", student["milestones"], lambda k, v: integer(k, v, 1))
    contingency = student["contingency"]
    if not isinstance(contingency, dict) or set(contingency) != {"epochs", "milestones"}:
        raise bad("student.contingency", "expected {epochs: N, milestones: [M]}")
    c_epochs = integer("student.contingency.epochs", contingency["epochs"], 1)
    c_milestones = items("student.contingency.milestones", contingency["milestones"], lambda k, v: integer(k, v, 1))
    for key, epochs, milestones in (("teacher.milestones", t_epochs, t_milestones),
                                    ("student.milestones", s_epochs, s_milestones),
                                    ("student.contingency.milestones", c_epochs, c_milestones)):
        if any(m > epochs for m in milestones):
            raise bad(key, f"a milestone after the last epoch ({epochs})")
    retry_factor = integer("teacher.retry_factor", teacher["retry_factor"], 0)
    if not isinstance(student["contingency_applied"], bool):
        raise bad("student.contingency_applied", "expected true or false")

    tuning = sections["tuning"]
    tuning_world = text("tuning.world", tuning["world"])
    if tuning_world not in names:
        raise bad("tuning.world", f"{tuning_world!r} is not a world; worlds: {names}")
    kd_methods = items("tuning.kd_methods", tuning["kd_methods"], preset)
    if NOKD in kd_methods:
        raise bad("tuning.kd_methods", "nokd is tuned by nokd_lr_scales, not as a KD method")
    tasks = items("tuning.tasks", tuning["tasks"], text)
    if any(t not in _TASKS for t in tasks):
        raise bad("tuning.tasks", f"tasks are {list(_TASKS)}, got {list(tasks)}")
    weight_scales = items("tuning.weight_scales", tuning["weight_scales"], lambda k, v: number(k, v, 0, True))
    lr_scales = items("tuning.nokd_lr_scales", tuning["nokd_lr_scales"], lambda k, v: number(k, v, 0, True))
    seed = integer("tuning.seed", tuning["seed"])

    final = sections["final"]
    rows = items("final.rows", final["rows"], text)
    seeds = items("final.seeds", final["seeds"], integer)
    if seed in seeds:
        raise bad("tuning.seed", f"the tuning seed {seed} is one of the final seeds {list(seeds)}")
    tuned_methods = {NOKD, *kd_methods}
    for i, row in enumerate(rows):
        if row != PAPER_ROW and row not in tuned_methods:
            raise bad(f"final.rows[{i}]", f"{row!r} is neither {PAPER_ROW} nor a tuned method "
                                          f"({sorted(tuned_methods)})")

    stats = sections["statistics"]
    baseline = text("statistics.baseline", stats["baseline"])
    tuned = text("statistics.tuned", stats["tuned"])
    versus = items("statistics.versus", stats["versus"], text)
    for key, value in (("statistics.baseline", baseline), ("statistics.tuned", tuned),
                       *((f"statistics.versus[{i}]", v) for i, v in enumerate(versus))):
        if value not in rows:
            raise bad(key, f"{value!r} is not one of final.rows {list(rows)}")

    spec = BenchmarkSpec(
        source=path, name=text("name", raw["name"]), protocol=text("protocol", raw["protocol"]), profile=profile,
        notebook=text("notebook", raw["notebook"]), out=text("out", raw["out"]), records=text("records", raw["records"]),
        workers=workers, prior_args=prior_args, prior_folder=prior_folder, prior_dataset=prior_dataset,
        worlds=tuple(worlds), teacher_epochs=t_epochs, teacher_milestones=t_milestones,
        gate_ar1=number("teacher.gate_ar1", teacher["gate_ar1"]),
        retry_factor=retry_factor,
        student_epochs=s_epochs, student_milestones=s_milestones,
        flat_gain=number("student.flat_gain", student["flat_gain"]), contingency_epochs=c_epochs,
        contingency_milestones=c_milestones, contingency_applied=bool(student["contingency_applied"]),
        tuning_world=tuning_world, tuning_seed=seed, kd_methods=kd_methods, weight_scales=weight_scales,
        nokd_lr_scales=lr_scales, tasks=tasks, tie=number("tuning.tie", tuning["tie"]), rows=rows, seeds=seeds,
        baseline=baseline, tuned=tuned, versus=versus, alpha=number("statistics.alpha", stats["alpha"], 0, True),
        bootstrap_resamples=integer("statistics.bootstrap_resamples", stats["bootstrap_resamples"], 1),
        bootstrap_seed=integer("statistics.bootstrap_seed", stats["bootstrap_seed"]))
    for cfg in tuning_configs(spec):  # every generated name reads back as itself
        parsed = parse_method_name(cfg.config)
        if parsed.name != cfg.config or parsed.base != cfg.method:
            raise bad("tuning", f"the generated name {cfg.config!r} does not read back as itself")
    return spec


# ---------------------------------------------------------------------------
# Names, folders, grids
# ---------------------------------------------------------------------------
def tuning_configs(spec: BenchmarkSpec) -> list[TuneConfig]:
    """The tuning grid (PROTOCOL §4), per method (no-KD first, then the KD methods in spec order), per task, per
    scale: ``<m>[_x<α>][_norm]`` and ``nokd[_lr<β>][_norm]`` by the grammar of :class:`~distilvpr_lib.config.MethodName`."""
    out = []
    for method in (NOKD, *spec.kd_methods):
        scales = spec.nokd_lr_scales if method == NOKD else spec.weight_scales
        for task in spec.tasks:
            for scale in scales:
                name = (MethodName(method, lr_scale=scale, task_normalize=task == "norm") if method == NOKD
                        else MethodName(method, weight_scale=scale, task_normalize=task == "norm")).name
                out.append(TuneConfig(method, name, float(scale), task))
    return out


def cell_name(row: str, seed: int) -> str:
    """A cell's run-folder name: ``<row>__seed<k>`` (the batch runner's)."""
    return f"{row}__seed{int(seed)}"


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root).resolve() if root is not None else project_root()


def _at(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def world_dir(spec: BenchmarkSpec, world: str, root: Path) -> Path:
    """``<out>/<world>``."""
    return _at(root, spec.out) / world


def stage_dir(spec: BenchmarkSpec, world: str, stage: str, root: Path) -> Path:
    """The batch folder of a student stage: ``<out>/<world>/tune`` or ``<out>/<world>/final`` (``-e48`` once the
    contingency is applied)."""
    return world_dir(spec, world, root) / f"{stage}{spec.stage_suffix}"


def records_dir(spec: BenchmarkSpec, root: Path) -> Path:
    """The committed records folder (``docs/benchmark``)."""
    return _at(root, spec.records)


def final_config(spec: BenchmarkSpec, world: World, row: str, chosen: dict[str, str]) -> str:
    """The configuration a final row runs on a world: the world's paper preset for ``distilvpr_paper``, else the
    method's chosen configuration."""
    if row == PAPER_ROW:
        return world.paper_preset
    if row not in chosen:
        raise BenchmarkStateError(f"no configuration chosen for {row!r}", path=records_dir(spec, project_root())
                                  / CHOSEN_FILE, hint="run the choose stage first")
    return chosen[row]


def _student_grid(spec: BenchmarkSpec, root: Path, world: World, stage: str, rows: list[tuple[str, str]],
                  seeds: Sequence[int], setup: dict[str, Any]) -> "Grid":  # noqa: F821
    from distilvpr_lib.batch import Grid

    epochs, milestones = spec.schedule
    base = {"dataset": str(_at(root, world.dataset)), "teacher": str(setup["teacher_folder"]),
            "profile": spec.profile, "epochs": epochs}
    overrides = {"train.milestones": list(milestones), "model.pretrained_image_weights": str(setup["prior_weights"])}
    variations = [{"name": name, "method": config, "overrides": dict(overrides)} for name, config in rows]
    return Grid(name=f"{stage}{spec.stage_suffix}", notebook=_at(root, spec.notebook), base=base,
                variations=variations, seeds=[int(s) for s in seeds], source=spec.source)


def tune_grid(spec: BenchmarkSpec, root: Path, setup: dict[str, Any]) -> "Grid":  # noqa: F821
    """The tuning grid (one variation per configuration, the tuning seed) on the tuning world."""
    rows = [(c.config, c.config) for c in tuning_configs(spec)]
    return _student_grid(spec, root, spec.world(spec.tuning_world), "tune", rows, [spec.tuning_seed], setup)


def final_grid(spec: BenchmarkSpec, root: Path, world: World, chosen: dict[str, str],
               setup: dict[str, Any]) -> "Grid":  # noqa: F821
    """The final grid of a world (one variation per row, the final seeds)."""
    rows = [(row, final_config(spec, world, row, chosen)) for row in spec.rows]
    return _student_grid(spec, root, world, "final", rows, spec.seeds, setup)


# ---------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------
def code_commit() -> str:
    """The commit of the library's source checkout (``git rev-parse HEAD``), ``+dirty`` when its working tree
    differs from it; ``unknown`` outside a git checkout."""
    source = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def threads_per_run(workers: int) -> int:
    """Threads each of ``workers`` side-by-side runs gets from the batch runner (``cpu_count // workers``)."""
    return max(1, (os.cpu_count() or 1) // max(1, int(workers)))


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"unreadable JSON ({exc})", path=path) from exc


def _write_yaml(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="w") as fh:
        yaml.safe_dump(obj, fh, sort_keys=False)


def _write_csv(path: Path, frame: "pd.DataFrame") -> None:  # noqa: F821
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
    return _read_json(path)


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
            "torch_version": _torch_version()}


def _stamp_launch(batch_dir: Path, cells: list[str], fingerprints: dict[str, Any]) -> None:
    path = batch_dir / LAUNCHES_FILE
    launches = _read_json(path) if path.is_file() else []
    launches.append({"time": datetime.datetime.now().isoformat(timespec="seconds"), "cells": cells, **fingerprints})
    batch_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, launches)


def cell_fingerprints(batch_dir: Path, cell: str) -> dict[str, Any]:
    """The fingerprints a cell was launched with (every launch that ran it must agree; else the differing values
    are joined with ``|``, which the report refuses)."""
    path = batch_dir / LAUNCHES_FILE
    launches = [x for x in (_read_json(path) if path.is_file() else []) if cell in x.get("cells", [])]
    out: dict[str, Any] = {}
    for key in ("dataset_fingerprint", "prior_sha256", "teacher_sha256", "code_commit", "torch_version"):
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


def _check_teacher_folder(folder: Path, dataset: Path, epochs: int, milestones: Sequence[int],
                          prior_weights: Path, root: Path) -> None:
    """A finished teacher folder must be the one the spec asks for (epochs, LR step, dataset, prior): a teacher
    trained otherwise is refused, never silently reused."""
    config = _read_json(folder / "config.json")
    got = {"train.epochs": config["train"]["epochs"], "train.milestones": list(config["train"]["milestones"]),
           "data.dataset_dir": str(_at(root, str(config["data"]["dataset_dir"])).resolve()),
           "model.pretrained_image_weights": str(_at(root, str(config["model"]["pretrained_image_weights"])).resolve())
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

    prior_folder = _at(root, spec.prior_folder)
    prior_weights = prior_folder / PRIOR_WEIGHTS
    for world in spec.worlds:
        if (_at(root, world.dataset) / COMPLETE_FILE).is_file():
            log(f"[setup] {world.name}: dataset {world.dataset} is complete")
        else:
            _cli(root, ["synth", *world.synth, "--no-progress"], log)
    if prior_weights.is_file() and (prior_folder / "prior.json").is_file():
        log(f"[setup] prior: {prior_weights} is there")
    else:
        _cli(root, ["pretrain-image", *spec.prior_args, "--quiet"], log)
    records = {}
    for world in spec.worlds:
        places = shared_places(_at(root, world.dataset), _at(root, spec.prior_dataset))
        log(f"[setup] {world.name}: no shared place with the prior world: "
            f"{'PASS' if places['shared'] == 0 else 'FAIL'} ({places['shared']} of {places['prior_locations']} "
            f"prior locations within {places['radius_m']:g} m of the world's {places['world_locations']}; nearest "
            f"{places['min_distance_m']:.1f} m)")
        if places["shared"]:
            raise BenchmarkStateError(f"the prior world shares {places['shared']} places with world {world.name}",
                                      path=_at(root, spec.prior_dataset),
                                      hint="PROTOCOL §2 forbids it: choose another prior seed")
        teacher = _at(root, world.teacher)
        epochs, milestones = spec.teacher_epochs, spec.teacher_milestones
        if not _teacher_done(teacher):
            _cli(root, _teacher_args(spec, world, teacher, epochs, milestones, prior_weights), log)
        _check_teacher_folder(teacher, _at(root, world.dataset), epochs, milestones, prior_weights, root)
        gate = teacher_gate(teacher, _at(root, world.dataset), spec.gate_ar1)
        gate["retried"], gate["flagged"] = False, False
        log(f"[setup] {world.name}: teacher gate {'PASS' if gate['passed'] else 'FAIL'} "
            f"(test AR@1 {', '.join(f'{k} {v:.2f}' for k, v in gate['test_ar1'].items())}; fused >= "
            f"{spec.gate_ar1:g} and >= both heads)")
        if not gate["passed"] and not spec.retry_factor:  # smoke specs only: flagged without the retraining
            gate["flagged"] = True
            log(f"[setup] {world.name}: teacher FLAGGED (retry_factor 0: not retrained)")
        elif not gate["passed"]:  # retrained once with retry_factor x the epochs, the LR step at the same fraction
            first = gate
            teacher = teacher.with_name(teacher.name + "-retry")
            epochs = epochs * spec.retry_factor
            milestones = tuple(m * spec.retry_factor for m in milestones)
            if not _teacher_done(teacher):
                _cli(root, _teacher_args(spec, world, teacher, epochs, milestones, prior_weights), log)
            _check_teacher_folder(teacher, _at(root, world.dataset), epochs, milestones, prior_weights, root)
            gate = teacher_gate(teacher, _at(root, world.dataset), spec.gate_ar1)
            gate.update(retried=True, flagged=not gate["passed"], first_try=first)
            log(f"[setup] {world.name}: retrained teacher gate {'PASS' if gate['passed'] else 'FAIL: FLAGGED'} "
                f"(test AR@1 {', '.join(f'{k} {v:.2f}' for k, v in gate['test_ar1'].items())})")
        fingerprints = {"dataset_fingerprint": dataset_fingerprint(_at(root, world.dataset)),
                        "prior_sha256": file_sha256(prior_weights),
                        "teacher_sha256": file_sha256(teacher / TEACHER_WEIGHTS),
                        "code_commit": code_commit(), "torch_version": _torch_version(),
                        "cpu_threads": threads_per_run(spec.workers)}
        record = {"world": world.name, "layout": world.layout, "dataset": str(_at(root, world.dataset)),
                  "synth_args": list(world.synth), "prior_weights": str(prior_weights),
                  "prior_dataset": str(_at(root, spec.prior_dataset)), "teacher_folder": str(teacher),
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
def _run_grid(spec: BenchmarkSpec, root: Path, grid: "Grid", world: str, workers: int, log: Log,  # noqa: F821
              only: list[str] | None = None, out_root: Path | None = None) -> Any:
    from distilvpr_lib.batch import preflight_grid, run_batch, run_is_complete

    out_root = out_root or world_dir(spec, world, root)
    preflight_grid(grid, out_root)
    batch_dir = out_root / grid.name
    todo = [r.name for r in grid.runs() if (not only or r.name in only) and not run_is_complete(batch_dir / r.name)]
    if todo:
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
    summary = _run_grid(spec, root, tune_grid(spec, root, setup), spec.tuning_world, workers or spec.workers, log)
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
        summary = _run_grid(spec, root, final_grid(spec, root, world, chosen["methods"], setup), world.name,
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
    metrics = _read_json(run / "metrics.json")
    config_json = _read_json(run / "config.json")
    setup = setup_record(spec, world.name, root)
    epochs, milestones = spec.schedule
    expected = {"distill.method": config, "train.seed": int(seed), "train.epochs": epochs,
                "train.milestones": list(milestones), "data.dataset_dir": str(_at(root, world.dataset)),
                "model.pretrained_image_weights": str(setup["prior_weights"])}
    for key, want in expected.items():
        section, name = key.split(".")
        got = config_json.get(section, {}).get(name)
        if (list(got) if isinstance(got, (list, tuple)) else got) != want:
            raise BenchmarkStateError(f"the run's {key} is {got!r}, but its cell says {want!r}", path=run,
                                      hint="move the folder away and re-run the cell")
    if str(Path(metrics.get("teacher_dir") or "")) != str(setup["teacher_folder"]):
        raise BenchmarkStateError(f"the run used the teacher {metrics.get('teacher_dir')!r}, not the world's "
                                  f"{setup['teacher_folder']!r}", path=run, hint="move it away and re-run the cell")
    history = [(e.get("validation") or {}).get("AR@1") for e in metrics.get("epochs", [])]
    gain = last_quarter_gain(history)
    test, val = metrics.get("test") or {}, metrics.get("validation") or {}
    return {"world": world.name, "row": row, "config": config, "seed": int(seed),
            "selected_epoch": metrics.get("best_epoch"), "val_ar1": val.get("AR@1"), "test_ar1": test.get("AR@1"),
            "test_ar5": test.get("AR@5"), "test_ar1pct": test.get("AR@1%"), "last_quarter_gain": gain,
            "flat": bool(math.isfinite(gain) and gain < spec.flat_gain), "wall_time_s": metrics.get("wall_time_s"),
            "weights_sha256": file_sha256(run / "student.pt"), "cpu_threads": metrics.get("cpu_threads"),
            **cell_fingerprints(batch_dir, cell_name(row, seed)), "validation_history": history}


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
    _write_csv(records_dir(spec, root) / TUNING_CSV, frame[list(TUNING_COLUMNS)])
    _write_yaml(path, record)
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
    for row in rows or spec.rows:
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
        _write_csv(path, frame)
        log(f"[collect] {world.name}: {len(frame)} of {len(spec.rows) * len(spec.seeds)} final runs -> {path}")
        out[world.name] = path
    return out


# ---------------------------------------------------------------------------
# Stages: report, answer
# ---------------------------------------------------------------------------
def load_records(spec: BenchmarkSpec, root: Path, records: Path | None = None) -> dict[str, "pd.DataFrame"]:  # noqa: F821
    """The committed per-world CSVs (in ``records``, default the spec's folder), fingerprint-checked (PROTOCOL §8);
    worlds without rows are left out.

    Raises:
        FingerprintMismatchError: a world's rows (or its tuning rows) differ in a fingerprint.
    """
    import pandas as pd

    from distilvpr_lib.analysis.benchmark_records import check_fingerprints

    records = records if records is not None else records_dir(spec, root)
    tuning_path = records / TUNING_CSV
    tuning = pd.read_csv(tuning_path) if tuning_path.is_file() else None
    frames = {}
    for world in spec.worlds:
        path = records / f"{world.name}_runs.csv"
        if not path.is_file():
            continue
        frame = pd.read_csv(path)
        if frame.empty:
            continue
        check_fingerprints(frame, str(path), tuning if world.name == spec.tuning_world else None)
        frames[world.name] = frame
    return frames


def report_tables(spec: BenchmarkSpec, root: Path, records: Path | None = None,
                  ) -> tuple[dict[str, "pd.DataFrame"], "pd.DataFrame"]:  # noqa: F821
    """``({world: row table}, comparison table)`` from the committed records (see :func:`load_records`)."""
    from distilvpr_lib.analysis.benchmark_records import comparison_table, row_table

    frames = load_records(spec, root, records)
    tables = {w: row_table(f, spec.rows) for w, f in frames.items()}
    comparisons = comparison_table(frames, spec.rows, spec.baseline, spec.tuned, spec.versus, spec.alpha,
                                   spec.bootstrap_resamples, spec.bootstrap_seed)
    return tables, comparisons


def report_markdown(spec: BenchmarkSpec, root: Path) -> str:
    """The report's tables as markdown: per world mean ± sd per row, then every comparison."""
    from distilvpr_lib.analysis.benchmark_records import markdown_table

    tables, comparisons = report_tables(spec, root)
    if not tables:
        return "No benchmark rows committed yet."
    out = []
    for world, table in tables.items():
        out.append(f"### {world}: test AR@1 per row (mean ± sd over seeds)\n")
        out.append(markdown_table(
            ["row", "configuration", "n", "test AR@1", "AR@5", "AR@1%", "val AR@1", "max last-quarter gain",
             "runs not flat"],
            [[f"`{r.row}`", f"`{r.config}`", r.n, f"{r.test_ar1:.2f} ± {r.test_ar1_sd:.2f}",
              f"{r.test_ar5:.2f} ± {r.test_ar5_sd:.2f}", f"{r.test_ar1pct:.2f} ± {r.test_ar1pct_sd:.2f}",
              f"{r.val_ar1:.2f}", f"{r.last_quarter_gain_max:.2f}", r.not_flat] for r in table.itertuples()]))
        out.append("")
    out.append("### Comparisons (paired by seed; Holm over the whole family, both worlds)\n")
    out.append(markdown_table(
        ["world", "family", "first − second", "n", "Δ", "95 % t", "p (t)", "p (Holm)", "95 % BCa", "p (Wilcoxon)",
         "MDE", "verdict"],
        [[c.world, c.family, f"`{c.first}` − `{c.second}`", c.n, f"{c.delta:+.2f}", f"[{c.t_low:+.2f}, {c.t_high:+.2f}]",
          f"{c.p_t:.4f}", f"{c.p_holm:.4f}", f"[{c.bca_low:+.2f}, {c.bca_high:+.2f}]", f"{c.p_wilcoxon:.4f}",
          f"{c.mde:.2f}", c.verdict] for c in comparisons.itertuples()]))
    return "\n".join(out)


def run_report(spec: BenchmarkSpec, root: Path, log: Log = print) -> str:
    """Print and write ``<records>/tables.md`` and ``<records>/comparisons.csv``; returns the markdown."""
    text = report_markdown(spec, root)
    records = records_dir(spec, root)
    records.mkdir(parents=True, exist_ok=True)
    with atomic_write(records / TABLES_FILE, mode="w") as fh:
        fh.write(text + "\n")
    _, comparisons = report_tables(spec, root)
    if not comparisons.empty:
        _write_csv(records / COMPARISONS_CSV, comparisons)
    log(text)
    for world in spec.worlds:
        path = records / f"{world.name}_setup.json"
        if path.is_file() and _read_json(path).get("teacher_gate", {}).get("flagged"):
            log(f"[report] FLAG: world {world.name}'s teacher failed the gate twice (PROTOCOL §2)")
    return text


def final_run_folders(spec: BenchmarkSpec, root: Path) -> dict[tuple[str, str, int], Path]:
    """``{(world, row, seed): run folder}`` of the final cells whose folders exist here (for the report's curves)."""
    out = {}
    for world in spec.worlds:
        for row in spec.rows:
            for seed in spec.seeds:
                folder = stage_dir(spec, world.name, "final", root) / cell_name(row, seed)
                if folder.is_dir():
                    out[(world.name, row, int(seed))] = folder
    return out


def setup_flags(spec: BenchmarkSpec, root: Path, records: Path | None = None) -> list[str]:
    """One line per world from its committed setup record: teacher gate (retried, flagged), no shared place."""
    records = records if records is not None else records_dir(spec, root)
    lines = []
    for world in spec.worlds:
        path = records / f"{world.name}_setup.json"
        if not path.is_file():
            lines.append(f"{world.name}: no setup record ({path.name})")
            continue
        record = _read_json(path)
        gate = record.get("teacher_gate", {})
        heads = ", ".join(f"{k} {v:.2f}" for k, v in gate.get("test_ar1", {}).items())
        state = "FLAGGED (failed twice)" if gate.get("flagged") else ("passed after one retraining" if gate.get(
            "retried") else "passed") if gate.get("passed") or gate.get("flagged") else "failed"
        places = record.get("no_shared_place", {})
        lines.append(f"{world.name}: teacher gate {state} (test AR@1 {heads}); shared places with the prior world: "
                     f"{places.get('shared')}; commit {record.get('fingerprints', {}).get('code_commit', '?')[:12]}")
    return lines


def answer(spec: BenchmarkSpec, root: Path, records: Path | None = None) -> str:
    """The README's ten-line answer and main table (markdown), generated from the committed records."""
    from distilvpr_lib.analysis.benchmark_records import answer_markdown

    tables, comparisons = report_tables(spec, root, records)
    return answer_markdown(tables, comparisons, spec.baseline, spec.tuned, spec.versus, protocol=spec.protocol,
                           alpha=spec.alpha)


def readme_block(text: str, source: str = "README.md") -> str:
    """The text between :data:`README_BEGIN` and :data:`README_END` (stripped).

    Raises:
        DataFormatError: the markers are missing or out of order.
    """
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < 0 or end < begin:
        raise DataFormatError(f"no block between {README_BEGIN} and {README_END}", path=source,
                              hint="add the two markers around the benchmark answer")
    return text[begin + len(README_BEGIN):end].strip()


def check_readme(spec: BenchmarkSpec, root: Path, readme: str | os.PathLike) -> bool:
    """Whether the README's generated block equals :func:`answer` recomputed from the records."""
    path = Path(readme)
    if not path.is_file():
        raise MissingDataError("README not found", path=path)
    return readme_block(path.read_text(), str(path)) == answer(spec, root).strip()


# ---------------------------------------------------------------------------
# verify, status, plan
# ---------------------------------------------------------------------------
def parse_cell(spec: BenchmarkSpec, cell: str) -> tuple[World, str, str, int]:
    """``<world>/<stage>/<row>__seed<k>`` (or ``<world>/<row>__seed<k>``: a final cell) -> (world, stage, row, seed).

    Raises:
        OptionError: not a cell of this spec.
    """
    parts = cell.strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "final", parts[1]]
    if len(parts) != 3 or "__seed" not in parts[2] or parts[1] not in {"tune", "final"}:
        raise OptionError(f"cell {cell!r}: expected <world>/[tune|final/]<row>__seed<k>")
    name, stage, run = parts
    row, _, seed = run.rpartition("__seed")
    try:
        world = spec.world(name)
        seed_value = int(seed)
    except (KeyError, ValueError) as exc:
        raise OptionError(f"cell {cell!r}: {exc}") from exc
    allowed = ({c.config for c in tuning_configs(spec)}, {spec.tuning_seed}) if stage == "tune" else (
        set(spec.rows), set(spec.seeds))
    if row not in allowed[0] or seed_value not in allowed[1] or (stage == "tune" and name != spec.tuning_world):
        raise OptionError(f"cell {cell!r} is not a {stage} cell of {spec.source}")
    return world, stage, row, seed_value


def verify(spec: BenchmarkSpec, root: Path, cells: Sequence[str], log: Log = print,
           work: str | os.PathLike | None = None) -> bool:
    """Re-run ``cells`` from scratch into a temporary folder with the same spec and setup, and compare test AR@1
    and the weights' SHA-256 with the committed rows; prints ``equal`` / ``differs`` per cell. True when all equal.

    Raises:
        OptionError: a bad cell name. BenchmarkStateError: no committed row for a cell.
    """
    import pandas as pd

    parsed = [parse_cell(spec, c) for c in cells]
    records = records_dir(spec, root)
    chosen = read_chosen(spec, root)["methods"]
    all_equal = True
    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir=work) as tmp:
        for cell, (world, stage, row, seed) in zip(cells, parsed):
            if stage == "tune":
                committed_path = records / TUNING_CSV
                config, key = row, "config"
            else:
                committed_path = records / f"{world.name}_runs.csv"
                config, key = final_config(spec, world, row, chosen), "row"
            frame = pd.read_csv(committed_path) if committed_path.is_file() else pd.DataFrame(columns=[key, "seed"])
            match = frame[(frame[key] == row) & (frame["seed"] == seed)]
            if match.empty:
                raise BenchmarkStateError(f"no committed row for cell {cell}", path=committed_path)
            committed = match.iloc[0]
            setup = setup_record(spec, world.name, root)
            grid = _student_grid(spec, root, world, stage, [(row, config)], [seed], setup)
            out_root = Path(tmp) / world.name
            # the spec's workers: the same threads per run as the recorded cell (cpu_count // workers)
            _run_grid(spec, root, grid, world.name, spec.workers, log, only=[cell_name(row, seed)], out_root=out_root)
            fresh = read_cell(spec, root, world, stage, row, config, seed, batch_dir=out_root / grid.name)
            if fresh is None:
                log(f"[verify] {cell}: differs (the re-run did not finish)")
                all_equal = False
                continue
            same_ar1 = float(fresh["test_ar1"]) == float(committed["test_ar1"])
            same_sha = str(fresh["weights_sha256"]) == str(committed["weights_sha256"])
            verdict = "equal" if same_ar1 and same_sha else "differs"
            all_equal &= verdict == "equal"
            log(f"[verify] {cell}: {verdict} (test AR@1 {fresh['test_ar1']} vs committed {committed['test_ar1']}; "
                f"weights {str(fresh['weights_sha256'])[:12]} vs {str(committed['weights_sha256'])[:12]})")
    return all_equal


def _cell_state(run: Path) -> str:
    from distilvpr_lib.batch import STATUS_FILE, run_is_complete

    if run_is_complete(run):
        return "done"
    status = run / STATUS_FILE
    if status.is_file():
        try:
            state = json.loads(status.read_text()).get("status")
        except json.JSONDecodeError:
            state = None
        if state == "running":
            return "running"
        if state == "failed":
            return "failed"
    return "missing"


def stage_cells(spec: BenchmarkSpec, root: Path) -> dict[str, list[tuple[str, Path]]]:
    """Every student cell per stage label (``tune``, ``final/<world>``) as ``(cell, run folder)``; the final cells
    name their rows (their configurations come from chosen.yaml)."""
    tune = [(cell_name(c.config, spec.tuning_seed), stage_dir(spec, spec.tuning_world, "tune", root)
             / cell_name(c.config, spec.tuning_seed)) for c in tuning_configs(spec)]
    out = {"tune": tune}
    for world in spec.worlds:
        out[f"final/{world.name}"] = [(cell_name(r, s), stage_dir(spec, world.name, "final", root) / cell_name(r, s))
                                      for r in spec.rows for s in spec.seeds]
    return out


def status_lines(spec: BenchmarkSpec, root: Path) -> list[str]:
    """done / running / missing per stage (one line each)."""
    lines = []
    setups = [w.name for w in spec.worlds if (world_dir(spec, w.name, root) / SETUP_FILE).is_file()]
    lines.append(f"setup: {'done' if len(setups) == len(spec.worlds) else 'missing'} "
                 f"({len(setups)} of {len(spec.worlds)} worlds: {', '.join(setups) or 'none'})")
    cells = stage_cells(spec, root)
    for label in ["tune"] + [f"final/{w.name}" for w in spec.worlds]:
        states = [_cell_state(run) for _, run in cells[label]]
        counts = {s: states.count(s) for s in ("done", "running", "failed", "missing") if states.count(s)}
        overall = "done" if counts.get("done") == len(states) else ("running" if counts.get("running") else "missing")
        if label == "final/" + spec.worlds[0].name:
            chosen = (records_dir(spec, root) / CHOSEN_FILE).is_file()
            lines.append(f"choose: {'done' if chosen else 'missing'} ({records_dir(spec, root) / CHOSEN_FILE})")
        lines.append(f"{label}: {overall} ({', '.join(f'{k} {v}' for k, v in counts.items())} of {len(states)})")
    for world in spec.worlds:
        path = records_dir(spec, root) / f"{world.name}_runs.csv"
        n = max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0
        lines.append(f"collect/{world.name}: {'done' if n == len(spec.rows) * len(spec.seeds) else 'missing'} "
                     f"({n} rows in {path})")
    report = records_dir(spec, root) / TABLES_FILE
    lines.append(f"report: {'done' if report.is_file() else 'missing'} ({report})")
    return lines


def plan_lines(spec: BenchmarkSpec, root: Path) -> list[str]:
    """The stages and their cells (run names) with counts and what is done."""
    epochs, milestones = spec.schedule
    lines = [f"benchmark {spec.name} ({spec.source}; protocol {spec.protocol}); students: {spec.profile} profile, "
             f"{epochs} epochs, LR step after {list(milestones)}; {spec.workers} runs side by side",
             f"setup: prior ({spec.prior_folder}), worlds {', '.join(w.name for w in spec.worlds)} "
             f"(teachers: {spec.teacher_epochs} epochs, step {list(spec.teacher_milestones)}, gate fused AR@1 >= "
             f"{spec.gate_ar1:g})"]
    cells = stage_cells(spec, root)
    configs = tuning_configs(spec)
    per_method = {m: [c.config for c in configs if c.method == m] for m in (NOKD, *spec.kd_methods)}
    lines.append(f"tune: {len(configs)} cells on {spec.tuning_world} (seed {spec.tuning_seed}), "
                 f"{sum(_cell_state(r) == 'done' for _, r in cells['tune'])} done")
    for method, names in per_method.items():
        lines.append(f"  {method} ({len(names)}): {' '.join(names)}")
    lines.append(f"choose: -> {records_dir(spec, root) / TUNING_CSV}, {records_dir(spec, root) / CHOSEN_FILE}")
    for world in spec.worlds:
        label = f"final/{world.name}"
        done = sum(_cell_state(r) == "done" for _, r in cells[label])
        lines.append(f"{label}: {len(cells[label])} cells ({len(spec.rows)} rows x seeds {list(spec.seeds)}), "
                     f"{done} done; {PAPER_ROW} = {world.paper_preset}")
        lines.append("  " + " ".join(c for c, _ in cells[label]))
    total = len(configs) + sum(len(cells[f"final/{w.name}"]) for w in spec.worlds)
    lines.append(f"collect: -> {', '.join(str(records_dir(spec, root) / f'{w.name}_runs.csv') for w in spec.worlds)}")
    lines.append(f"report: -> {records_dir(spec, root) / TABLES_FILE}; {total} student runs in all")
    return lines


def run_stages(spec: BenchmarkSpec, root: Path, stages: Sequence[str] | None = None, workers: int | None = None,
               log: Log = print) -> None:
    """Run ``stages`` (default: all, in order), each skipping what is done."""
    for stage in stages or STAGES:
        log(f"== benchmark stage {stage}")
        if stage == "setup":
            run_setup(spec, root, log)
        elif stage == "tune":
            run_tune(spec, root, workers, log)
        elif stage == "choose":
            run_choose(spec, root, log)
        elif stage == "final":
            run_final(spec, root, workers, log)
        elif stage == "collect":
            run_collect(spec, root, log)
        elif stage == "report":
            run_report(spec, root, log)
        else:
            raise OptionError(f"unknown stage {stage!r}; stages: {list(STAGES)}")


__all__ = ["BenchmarkSpec", "BenchmarkSpecError", "BenchmarkStateError", "PAPER_ROW", "README_BEGIN", "README_END",
           "STAGES", "TuneConfig", "World", "answer", "cell_name", "check_readme", "code_commit", "collect_world",
           "final_grid", "final_run_folders", "load_records", "load_spec", "parse_cell", "plan_lines", "read_cell", "readme_block",
           "report_markdown", "report_tables", "run_choose", "run_collect", "run_final", "run_report", "run_setup",
           "run_stages", "run_tune", "setup_flags", "setup_record", "stage_cells", "stage_dir", "status_lines", "teacher_gate",
           "threads_per_run", "tune_grid", "tuning_configs", "verify"]
