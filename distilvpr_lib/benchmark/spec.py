"""The benchmark spec (``ablations/benchmark.yaml``): its checked loading, the tuning names, folders and grids.

See :mod:`distilvpr_lib.benchmark` for the stages and docs/benchmark/RUNNING.md for the keys.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from distilvpr_lib.config import LAYOUTS, MethodName, parse_method_name
from distilvpr_lib.errors import DistilVPRError, OptionError
from distilvpr_lib.paths import project_root

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.batch import Grid

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
    #: Where rows may be made (PROTOCOL §5 "Machine"): ``"cpu-native-bf16"`` = on the CPU, and, when the profile
    #: autocasts to bfloat16, only on a CPU with native bfloat16 kernels; ``"any"`` (the default) = anywhere.
    machine: str = "any"
    #: Rows of the spec's own (a user's losses, ``extra_rows:``): tuned like a KD method, run as final rows, compared
    #: in a family of their own (C) so that they leave the protocol's verdicts unchanged. Empty in the protocol.
    extra_rows: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def world(self, name: str) -> World:
        """The world called ``name``."""
        for w in self.worlds:
            if w.name == name:
                return w
        raise KeyError(f"no world {name!r} in {self.source}; worlds: {[w.name for w in self.worlds]}")

    @property
    def all_rows(self) -> tuple[str, ...]:
        """The final rows: the protocol's ``rows`` then the ``extra_rows``."""
        return self.rows + self.extra_rows

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
#: Optional top-level keys (absent from the protocol's spec, except machine).
_OPTIONAL_TOP_KEYS = {"extra_rows", "machine"}
#: The values of the spec's ``machine`` key (see :attr:`BenchmarkSpec.machine`).
MACHINES = ("any", "cpu-native-bf16")
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
    from distilvpr_lib.losses.plugins import load_loss_plugins

    path = Path(path)
    load_loss_plugins()  # the user's presets (DISTILVPR_LOSS_PLUGINS) are names like the package's; bad file: exit 2

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
    unknown = sorted(set(raw) - _TOP_KEYS - _OPTIONAL_TOP_KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key; known: {sorted(_TOP_KEYS | _OPTIONAL_TOP_KEYS)}")
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

    extra_rows: tuple[str, ...] = ()
    if "extra_rows" in raw:
        extra_rows = items("extra_rows", raw["extra_rows"], preset)
        for i, row in enumerate(extra_rows):
            key = f"extra_rows[{i}]"
            if parse_method_name(row).name != parse_method_name(row).base:
                raise bad(key, f"{row!r} carries a modifier: give the plain preset (the tuning grid adds _x, _norm)")
            if row in (NOKD, PAPER_ROW) or row in kd_methods or row in rows:
                raise bad(key, f"{row!r} is already a row of the protocol; extra rows are presets of your own")
            if not PRESETS[row]:
                raise bad(key, f"preset {row!r} has no distillation weight to tune (_x)")

    stats = sections["statistics"]
    baseline = text("statistics.baseline", stats["baseline"])
    tuned = text("statistics.tuned", stats["tuned"])
    versus = items("statistics.versus", stats["versus"], text)
    for key, value in (("statistics.baseline", baseline), ("statistics.tuned", tuned),
                       *((f"statistics.versus[{i}]", v) for i, v in enumerate(versus))):
        if value not in rows:
            raise bad(key, f"{value!r} is not one of final.rows {list(rows)}")

    machine = text("machine", raw.get("machine", "any"))
    if machine not in MACHINES:
        raise bad("machine", f"unknown machine {machine!r}; known: {list(MACHINES)}")

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
        bootstrap_seed=integer("statistics.bootstrap_seed", stats["bootstrap_seed"]), extra_rows=extra_rows,
        machine=machine)
    for cfg in tuning_configs(spec):  # every generated name reads back as itself
        parsed = parse_method_name(cfg.config)
        if parsed.name != cfg.config or parsed.base != cfg.method:
            raise bad("tuning", f"the generated name {cfg.config!r} does not read back as itself")
    return spec


# ---------------------------------------------------------------------------
# Names, folders, grids
# ---------------------------------------------------------------------------
def tuning_configs(spec: BenchmarkSpec) -> list[TuneConfig]:
    """The tuning grid (PROTOCOL §4), per method (no-KD first, then the KD methods in spec order, then the extra rows,
    tuned as KD methods), per task, per scale: ``<m>[_x<α>][_norm]`` and ``nokd[_lr<β>][_norm]`` by the grammar of
    :class:`~distilvpr_lib.config.MethodName`."""
    out = []
    for method in (NOKD, *spec.kd_methods, *spec.extra_rows):
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


def resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(root).resolve() if root is not None else project_root()


def at_root(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def world_dir(spec: BenchmarkSpec, world: str, root: Path) -> Path:
    """``<out>/<world>``."""
    return at_root(root, spec.out) / world


def stage_dir(spec: BenchmarkSpec, world: str, stage: str, root: Path) -> Path:
    """The batch folder of a student stage: ``<out>/<world>/tune`` or ``<out>/<world>/final`` (``-e48`` once the
    contingency is applied)."""
    return world_dir(spec, world, root) / f"{stage}{spec.stage_suffix}"


def records_dir(spec: BenchmarkSpec, root: Path) -> Path:
    """The committed records folder (``docs/benchmark``)."""
    return at_root(root, spec.records)


def final_config(spec: BenchmarkSpec, world: World, row: str, chosen: dict[str, str]) -> str:
    """The configuration a final row runs on a world: the world's paper preset for ``distilvpr_paper``, else the
    method's chosen configuration."""
    if row == PAPER_ROW:
        return world.paper_preset
    if row not in chosen:
        raise BenchmarkStateError(f"no configuration chosen for {row!r}", path=records_dir(spec, project_root())
                                  / CHOSEN_FILE, hint="run the choose stage first")
    return chosen[row]


def student_grid(spec: BenchmarkSpec, root: Path, world: World, stage: str, rows: list[tuple[str, str]],
                  seeds: Sequence[int], setup: dict[str, Any]) -> Grid:
    from distilvpr_lib.batch import Grid

    epochs, milestones = spec.schedule
    base = {"dataset": str(at_root(root, world.dataset)), "teacher": str(setup["teacher_folder"]),
            "profile": spec.profile, "epochs": epochs}
    overrides = {"train.milestones": list(milestones), "model.pretrained_image_weights": str(setup["prior_weights"])}
    variations = [{"name": name, "method": config, "overrides": dict(overrides)} for name, config in rows]
    return Grid(name=f"{stage}{spec.stage_suffix}", notebook=at_root(root, spec.notebook), base=base,
                variations=variations, seeds=[int(s) for s in seeds], source=spec.source)


def tune_grid(spec: BenchmarkSpec, root: Path, setup: dict[str, Any]) -> Grid:
    """The tuning grid (one variation per configuration, the tuning seed) on the tuning world."""
    rows = [(c.config, c.config) for c in tuning_configs(spec)]
    return student_grid(spec, root, spec.world(spec.tuning_world), "tune", rows, [spec.tuning_seed], setup)


def final_grid(spec: BenchmarkSpec, root: Path, world: World, chosen: dict[str, str],
               setup: dict[str, Any]) -> Grid:
    """The final grid of a world (one variation per row, the final seeds)."""
    rows = [(row, final_config(spec, world, row, chosen)) for row in spec.all_rows]
    return student_grid(spec, root, world, "final", rows, spec.seeds, setup)


# ---------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------
