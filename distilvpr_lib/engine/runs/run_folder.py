"""The run-folder format: file names, strict JSON, the config round trip, loading a folder's model.

A teacher folder ``teacher_weights/<name>/`` (written by :func:`~distilvpr_lib.engine.runs.teacher_run.train_teacher`, or by
:func:`import_reference_teacher` from an authors' checkpoint: then ``import.json`` instead of the cache,
checkpoints and TensorBoard)::

    config.json         the resolved ExperimentConfig
    teacher.pt          the selected weights (bare state_dict)
    metrics.json        per-epoch losses, validation summaries, best epoch, test summary, ...
    test_results.npz    the selected teacher's RetrievalResults on the test split (browser input)
    teacher_cache.pt    teacher embeddings of every training sub-map (see engine.runs.teacher_cache)
    teacher_cache-<key16>.pt   caches of the same dataset for other inputs (built by students; never overwritten)
    summary.json        one screen: config changes vs the profile, selected epoch, recalls, skipped batches, time
    run.log             the run's console lines (appended across resumes)
    checkpoints/        last.pt (exact resume) and best.pt, while the run can resume; removed when it completes
                        (``train.keep_checkpoints`` keeps last.pt, best.pt then a hard link to the weights)
    tensorboard/        scalars

A student run folder ``runs/<name>/`` (:func:`~distilvpr_lib.engine.runs.student_run.distill_student`) holds the
same files, ``student.pt`` instead of ``teacher.pt`` and no cache (except ``teacher_cache-<key16>.pt`` when the
student trains on another dataset than its teacher's: see engine.runs.student_cache).

``metrics.json`` schema (all recalls in percent; written by
:func:`~distilvpr_lib.engine.runs.run_setup.finish_run` from a
:class:`~distilvpr_lib.engine.runs.run_setup.RunMetrics`)::

    kind: "teacher" | "student";  method: "teacher" | distillation preset;  profile, seed, device
    cpu_threads;  precision: {device, autocast: "off" | "bfloat16" | "float16", cpu_capability, native_bfloat16,
                              machine: e.g. "cpu AVX2 autocast=off"}   (what the floats were computed in)
    dataset_dir, dataset_fingerprint (data.fingerprint.dataset_fingerprint: the data the weights were trained on)
    teacher_dir, teacher_cache: {file, cache_key} | null (student), status: "complete"
    epochs: [{epoch, lr: {group: lr}, losses: {term: mean, total: mean}, stats: {...},
              batches, skipped_batches, seconds, validation: {AR@1, AR@5, AR@10, AR@1%,
              per_run_AR@1: {run: AR@1}, seconds} | null}]
    best_epoch, selection (the rule), validation (summary of the best epoch | null)
    test: {AR@1, AR@5, AR@10, AR@1%, per_run_AR@1: {run: AR@1}}
    final_losses: {term: last epoch's mean, total}
    loss_weights: {term: effective weight}
    embedding_norms: {student: {mean, max}, teacher: {mean, max}}   (raw L2 norms)
    wall_time_s (this call), train_seconds (sum over epochs, across resumes), seconds_per_epoch
    files: {name: path relative to the folder}
    world_size (distributed runs only): number of processes
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distilvpr_lib.config import ExperimentConfig
from distilvpr_lib.data.files import file_sha256, write_json
from distilvpr_lib.engine.train.checkpoint import (BEST_WEIGHTS_NAME, CHECKPOINT_DIR_NAME, LAST_CHECKPOINT_NAME,
                                                   load_state_dict_checked, save_weights)
from distilvpr_lib.errors import CheckpointError, DistilVPRError, MissingCheckpointError, RunFolderError

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.models.reference_import import ReferenceTeacherImport


class RunConfigMismatchError(RunFolderError, ValueError):
    """The run folder holds a checkpoint of another configuration (resume refused)."""

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TEACHER_WEIGHTS_FILE = "teacher.pt"
STUDENT_WEIGHTS_FILE = "student.pt"
TEST_RESULTS_FILE = "test_results.npz"
#: Provenance file of an imported teacher, written next to ``teacher.pt`` (:func:`write_reference_teacher`).
IMPORT_FILE = "import.json"


# ---------------------------------------------------------------------------
# The configuration round trip
# ---------------------------------------------------------------------------
def load_run_config(run_dir: PathLike) -> ExperimentConfig:
    """The ``config.json`` of a teacher folder or student run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MissingCheckpointError("run configuration not found", path=path,
                                     hint=f"is {run_dir} a teacher folder or run folder?")
    try:
        return ExperimentConfig.load(path)  # a DataFormatError naming the file and the field
    except DistilVPRError:
        raise
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"not a readable run configuration ({type(exc).__name__}: {exc})", path=path,
                              hint="restore it, or re-create the folder") from exc


def _without_pretrained(model_cfg: Any) -> Any:
    """The model config with ``pretrained_image_weights=None``: a saved model needs no ImageNet file to load."""
    return dataclasses.replace(model_cfg, pretrained_image_weights=None)


#: Execution settings left out of :func:`config_fingerprint` (they do not define the experiment).
RUNTIME_FIELDS: tuple[str, ...] = (
    "train.amp_dtype", "train.channels_last", "train.sync_batchnorm", "train.distributed_backend",
    "train.distributed_timeout_s", "data.persistent_workers", "data.image_cache", "data.image_cache_dir",
    "train.loss_diagnostics", "train.keep_checkpoints",
)


def config_fingerprint(cfg: "ExperimentConfig", ignore: Iterable[str] = ()) -> str:
    """Hash of the resolved config minus fields that may change between a run and its resume.

    Ignored always: ``train.epochs``, ``train.device``, ``train.eval_batch_size``,
    ``train.eval_every``, ``data.num_workers``, ``data.dataset_dir``, ``data.image_dir``, ``synth.*``, ``profile``,
    and the execution settings in :data:`RUNTIME_FIELDS` (AMP dtype, channels-last, distributed options,
    persistent workers, the input path (image cache), diagnostics: a run may resume on other hardware or
    another number of processes). Fields at their dataclass default are left out too, so a field added to the
    config in a later version (with a default that keeps the old behaviour) does not make older run folders
    unresumable. Under ``train.lr_schedule="cosine"`` ``train.epochs`` is kept: it sets every epoch's learning
    rate (the step schedule's rates do not depend on it, so a step run may be extended).
    """
    ignore = tuple(ignore)
    data = cfg.to_dict()
    defaults = type(cfg)().to_dict()
    skip = {"train.epochs", "train.device", "train.eval_batch_size", "train.eval_every", "data.num_workers",
            "data.dataset_dir", "data.image_dir", *RUNTIME_FIELDS, *ignore}
    if cfg.train.lr_schedule != "step" and "train.epochs" not in ignore:
        skip.discard("train.epochs")  # the cosine schedule's rates depend on it
    data.pop("synth", None)
    data.pop("profile", None)
    for dotted in skip:
        section, _, name = dotted.partition(".")
        data.get(section, {}).pop(name, None)
    for section, values in data.items():
        if isinstance(values, dict):
            base = defaults.get(section, {})
            data[section] = {k: v for k, v in values.items() if k not in base or base[k] != v}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:16]


#: Fields that may differ between a run and its resume (:func:`check_resumable`): where and how it executes, not
#: what it computes (a run may resume on other hardware, with other workers or another number of processes).
RESUME_EXEMPT_FIELDS: tuple[str, ...] = ("train.device", "train.eval_batch_size", "data.num_workers",
                                         *RUNTIME_FIELDS)
#: Sections that configure other commands (generating the dataset, pre-training the image prior): the dataset's
#: fingerprint and ``model.pretrained_image_weights`` stand for what they made.
OTHER_COMMAND_SECTIONS: tuple[str, ...] = ("synth", "prior")
#: Compared through the dataset's fingerprint (its content), not as paths: a moved dataset is the same dataset.
DATASET_PATH_FIELDS: tuple[str, ...] = ("data.dataset_dir", "data.image_dir")
#: Paths compared after resolving them (a notebook writes them absolute, the command line as given).
_RESOLVED_PATH_FIELDS: tuple[str, ...] = ("model.pretrained_image_weights",)


@dataclasses.dataclass(frozen=True)
class ConfigDifference:
    """One way a run folder's run differs from the one asked for: ``field old → new (note)``."""

    field: str
    old: Any
    new: Any
    note: str = ""

    def __str__(self) -> str:
        text = f"{self.field} {_show(self.old)} → {_show(self.new)}"
        return f"{text} ({self.note})" if self.note else text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=list, sort_keys=True)


def _flat_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """``{"section.field": value}`` with JSON values (tuples as lists), ``profile`` as itself."""
    flat: dict[str, Any] = {}
    for section, values in json.loads(json.dumps(cfg.to_dict(), default=list)).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{name}": value for name, value in values.items()})
        else:
            flat[section] = values
    return flat


def _resolved(value: Any) -> Any:
    return str(Path(value).resolve()) if isinstance(value, str) and value not in ("", "hub") else value


def config_differences(previous: ExperimentConfig, cfg: ExperimentConfig) -> list[ConfigDifference]:
    """Every config field in which ``cfg`` differs from ``previous``, except :data:`RESUME_EXEMPT_FIELDS`, the
    sections of :data:`OTHER_COMMAND_SECTIONS`, :data:`DATASET_PATH_FIELDS` (see :func:`resume_differences`) and
    ``train.epochs`` (a run may be extended). Sorted by field name."""
    old, new = _flat_config(previous), _flat_config(cfg)
    skip = {*RESUME_EXEMPT_FIELDS, *DATASET_PATH_FIELDS, "train.epochs"}
    differences = []
    for name in sorted(set(old) | set(new)):
        if name in skip or name.partition(".")[0] in OTHER_COMMAND_SECTIONS:
            continue
        a, b = old.get(name), new.get(name)
        if name in _RESOLVED_PATH_FIELDS:
            a, b = _resolved(a), _resolved(b)
        if a != b:
            differences.append(ConfigDifference(name, old.get(name), new.get(name)))
    return differences


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """What a run folder says about the run it holds: epochs trained, and the dataset it trained on."""

    epochs_done: int
    dataset_fingerprint: str | None
    source: Path


def _read_checkpoint_cheaply(path: Path) -> dict[str, Any]:
    """A training checkpoint memory-mapped (its scalars read, its tensors not); an unreadable one raises
    :func:`~distilvpr_lib.engine.train.checkpoint.load_checkpoint`'s one-line error."""
    from distilvpr_lib.engine.train.checkpoint import load_checkpoint

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the full loader names the file and the problem
        return load_checkpoint(path)
    if not isinstance(state, dict) or "epoch" not in state:
        return load_checkpoint(path)
    return state


def _complete_metrics(metrics_path: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` at ``metrics_path`` when it is readable and says ``status: complete``, else ``None``."""
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "complete" else None


def previous_run(out_dir: PathLike, checkpoint: dict[str, Any] | None = None) -> PreviousRun | None:
    """The run a folder holds: from ``checkpoints/last.pt`` (``epoch``; the ``run`` record with the dataset
    fingerprint), else from a finished run's ``metrics.json`` beside its weights; ``None`` when it holds none.

    Args:
        checkpoint: ``last.pt``'s content when the caller has loaded it already.
    """
    out_dir = Path(out_dir)
    last = out_dir / CHECKPOINT_DIR_NAME / LAST_CHECKPOINT_NAME
    if checkpoint is not None or last.is_file():
        state = checkpoint if checkpoint is not None else _read_checkpoint_cheaply(last)
        record = state.get("run") if isinstance(state.get("run"), dict) else {}
        fingerprint = record.get("dataset_fingerprint")
        return PreviousRun(int(state.get("epoch", 0)), fingerprint if isinstance(fingerprint, str) else None, last)
    metrics_path = out_dir / METRICS_FILE
    if not any((out_dir / name).is_file() for name in (STUDENT_WEIGHTS_FILE, TEACHER_WEIGHTS_FILE)):
        return None
    metrics = _complete_metrics(metrics_path)
    if metrics is None:
        return None
    fingerprint = metrics.get("dataset_fingerprint")
    epochs = metrics.get("epochs")
    return PreviousRun(len(epochs) if isinstance(epochs, list) else 0,
                       fingerprint if isinstance(fingerprint, str) else None, metrics_path)


def resume_differences(previous: ExperimentConfig, cfg: ExperimentConfig, run: PreviousRun,
                       dataset_fingerprint: str | None) -> list[ConfigDifference]:
    """How the run asked for (``cfg`` on the dataset of ``dataset_fingerprint``) differs from the folder's
    (``previous``, ``run``): :func:`config_differences`, plus

    * ``dataset``: the fingerprints differ (both known); for a folder that records none, the resolved
      ``data.dataset_dir`` / ``data.image_dir`` paths are compared instead;
    * ``train.epochs``: fewer epochs than the folder has already trained (more extend the run), or another
      number of epochs for a ``train.lr_schedule="cosine"`` run (its rates depend on ``epochs``).
    """
    from distilvpr_lib.data.fingerprint import short_fingerprint

    differences = config_differences(previous, cfg)
    if run.dataset_fingerprint is not None and dataset_fingerprint is not None:
        if run.dataset_fingerprint != dataset_fingerprint:
            differences.insert(0, ConfigDifference(
                "dataset", f"{previous.data.dataset_dir} (fingerprint {short_fingerprint(run.dataset_fingerprint)})",
                f"{cfg.data.dataset_dir} (fingerprint {short_fingerprint(dataset_fingerprint)})"))
    else:
        for name in DATASET_PATH_FIELDS:
            section, _, field_name = name.partition(".")
            old, new = getattr(previous.data, field_name), getattr(cfg.data, field_name)
            if _resolved(old) != _resolved(new):
                differences.insert(0, ConfigDifference(name, old, new))
    if cfg.train.epochs < run.epochs_done:
        differences.append(ConfigDifference("train.epochs", previous.train.epochs, cfg.train.epochs,
                                            f"{run.epochs_done} epochs already trained"))
    elif cfg.train.epochs != previous.train.epochs and "cosine" in (previous.train.lr_schedule, cfg.train.lr_schedule):
        differences.append(ConfigDifference("train.epochs", previous.train.epochs, cfg.train.epochs, (
            f"train.lr_schedule=cosine anneals to 0 at train.epochs: another number of epochs changes every "
            f"learning rate after epoch {run.epochs_done}, and the record would name one schedule for two")))
    return differences


def check_resumable(cfg: ExperimentConfig, out_dir: PathLike, resume: bool, dataset_fingerprint: str | None = None,
                    checkpoint: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is written, to continue a folder that holds a run of another configuration.

    A folder holds a run when it has ``checkpoints/last.pt``, or a finished run's weights and ``metrics.json``,
    beside its ``config.json``. Resuming it (``resume``) — or re-running a finished one — must ask for the same
    run: every config field (:func:`resume_differences`: all but :data:`RESUME_EXEMPT_FIELDS`, the sections of
    other commands, and more epochs than trained) and the same dataset (its fingerprint). So ``config.json``
    always describes the weights beside it.

    Args:
        dataset_fingerprint: the dataset's :func:`~distilvpr_lib.data.fingerprint.dataset_fingerprint` when the
            caller has it (else computed from ``cfg.data`` when the folder records one).
        checkpoint: ``last.pt``'s content when the caller has loaded it already.

    Raises:
        RunConfigMismatchError: (a RunFolderError, exit status 1) naming every field that differs, old → new,
            in one line; ``--no-resume`` (``resume=False``) starts over instead.
    """
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_FILE
    if not resume or not config_path.is_file():
        return
    run = previous_run(out_dir, checkpoint)
    if run is None:
        return
    previous = load_run_config(out_dir)
    if run.dataset_fingerprint is not None and dataset_fingerprint is None:
        from distilvpr_lib.data.fingerprint import dataset_fingerprint as compute

        dataset_fingerprint = compute(cfg.data.dataset_dir, cfg.data.image_dir)
    differences = resume_differences(previous, cfg, run, dataset_fingerprint)
    if differences:
        raise RunConfigMismatchError(
            f"holds a run of another configuration: {'; '.join(str(d) for d in differences)}", path=out_dir,
            hint="--no-resume starts over and replaces it, or choose another --out")


def completed_run(cfg: ExperimentConfig, out_dir: PathLike, resume: bool, weights_file: str) -> dict[str, Any] | None:
    """The ``metrics.json`` of a run that already completed in ``out_dir`` with this configuration (nothing to do),
    else ``None`` (train, or resume from ``checkpoints/last.pt`` when it is there).

    A completed run keeps no ``checkpoints/last.pt`` (unless ``train.keep_checkpoints``), so this is the check that
    protects it: with ``resume`` a folder holding a complete run of another configuration, or of another number of
    epochs, is refused.

    Raises:
        RunConfigMismatchError: ``resume`` and the complete run in ``out_dir`` differs from ``cfg`` (its
            :func:`config_fingerprint` or ``train.epochs``) and cannot be resumed (no ``last.pt``).
    """
    out_dir = Path(out_dir)
    metrics_path, config_path = out_dir / METRICS_FILE, out_dir / CONFIG_FILE
    if not resume or not (metrics_path.is_file() and config_path.is_file() and (out_dir / weights_file).is_file()):
        return None
    metrics = _complete_metrics(metrics_path)
    if metrics is None:
        return None
    previous = ExperimentConfig.load(config_path)
    same = config_fingerprint(previous) == config_fingerprint(cfg)
    if same and previous.train.epochs == cfg.train.epochs:
        return metrics
    if (out_dir / CHECKPOINT_DIR_NAME / LAST_CHECKPOINT_NAME).is_file():
        return None  # a kept checkpoint: check_resumable and the trainer decide (e.g. more epochs)
    what = "another configuration" if not same else f"{previous.train.epochs} epochs"
    raise RunConfigMismatchError(
        f"holds a complete run of {what} (see {config_path}) and no checkpoint to continue it from", path=out_dir,
        hint="--no-resume (resume=False) starts over, or use another output folder "
             "(train.keep_checkpoints=true keeps a run extendable)")


def tidy_completed_run(out_dir: PathLike, weights_file: str, keep_checkpoints: bool) -> None:
    """After ``metrics.json`` says ``complete``: store the selected weights once and drop what only a resume needs.

    ``checkpoints/best.pt`` is byte-identical to ``<weights_file>`` (``teacher.pt`` / ``student.pt``): it is removed,
    or with ``keep_checkpoints`` replaced by a hard link to it; ``checkpoints/last.pt`` is removed unless
    ``keep_checkpoints``; an empty ``checkpoints/`` goes too.
    """
    checkpoints = Path(out_dir) / CHECKPOINT_DIR_NAME
    best, last = checkpoints / BEST_WEIGHTS_NAME, checkpoints / LAST_CHECKPOINT_NAME
    weights = Path(out_dir) / weights_file
    if best.is_file():
        if keep_checkpoints and weights.is_file() and file_sha256(best) == file_sha256(weights):
            link = best.with_name(f".{BEST_WEIGHTS_NAME}.link.tmp")
            link.unlink(missing_ok=True)
            os.link(weights, link)
            os.replace(link, best)
        elif not keep_checkpoints:
            best.unlink()
    if not keep_checkpoints:
        last.unlink(missing_ok=True)
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


# ---------------------------------------------------------------------------
# A folder's model
# ---------------------------------------------------------------------------
def load_teacher(teacher_dir: PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, ExperimentConfig]:
    """Build the teacher of a teacher folder from its ``config.json`` and load ``teacher.pt`` (strict)."""
    from distilvpr_lib.models import build_teacher

    teacher_dir = Path(teacher_dir)
    teacher_cfg = load_run_config(teacher_dir)
    model = build_teacher(_without_pretrained(teacher_cfg.model))
    load_state_dict_checked(model, teacher_dir / TEACHER_WEIGHTS_FILE)
    return model.to(device).eval(), teacher_cfg


def load_model_from_dir(model_dir: PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, ExperimentConfig, str]:
    """Build and load the model of a teacher folder (``teacher.pt``) or student run (``student.pt``).

    Returns:
        ``(model in eval mode, its config, "teacher" | "student")``.
    """
    from distilvpr_lib.models import build_student, build_teacher

    model_dir = Path(model_dir)
    cfg = load_run_config(model_dir)
    model_cfg = _without_pretrained(cfg.model)  # the weights file holds every parameter
    if (model_dir / STUDENT_WEIGHTS_FILE).is_file():
        kind, model, weights = "student", build_student(model_cfg), model_dir / STUDENT_WEIGHTS_FILE
    elif (model_dir / TEACHER_WEIGHTS_FILE).is_file():
        kind, model, weights = "teacher", build_teacher(model_cfg), model_dir / TEACHER_WEIGHTS_FILE
    else:
        raise MissingCheckpointError(f"neither {STUDENT_WEIGHTS_FILE} nor {TEACHER_WEIGHTS_FILE} found", path=model_dir)
    load_state_dict_checked(model, weights)
    return model.to(device).eval(), cfg, kind



# ---------------------------------------------------------------------------
# A teacher folder from the authors' checkpoint (models.reference_import converts it)
# ---------------------------------------------------------------------------
#: Files of a teacher folder that describe one particular set of weights (removed when the weights change).
_DERIVED_FILES = (METRICS_FILE, TEST_RESULTS_FILE)


def write_reference_teacher(imported: "ReferenceTeacherImport", out_dir: PathLike, overwrite: bool = False) -> Path:
    """Write a teacher folder (``config.json``, ``teacher.pt``, ``import.json``, ``metrics.json``).

    Re-importing the same source file into the same folder is allowed (the folder is refreshed). A folder that
    holds another teacher (trained, or imported from another file) is refused unless ``overwrite``; then its
    metrics, test results and teacher caches, which describe the old weights, are removed.

    Raises:
        FileExistsError: ``out_dir`` holds another teacher and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    weights = out_dir / TEACHER_WEIGHTS_FILE
    if weights.is_file():
        previous = None
        if (out_dir / IMPORT_FILE).is_file():
            try:
                previous = json.loads((out_dir / IMPORT_FILE).read_text()).get("source_sha256")
            except (OSError, ValueError):
                previous = None
        same_source = previous == imported.source_sha256
        if not same_source:
            if not overwrite:
                what = "a teacher imported from another file" if previous else "a trained teacher"
                raise FileExistsError(f"{out_dir}: already holds {what} ({weights}); choose another folder or "
                                      "overwrite (--overwrite)")
            for name in _DERIVED_FILES:
                (out_dir / name).unlink(missing_ok=True)
            for cache in out_dir.glob("teacher_cache*.pt"):
                cache.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(weights, imported.state_dict)
    write_json(out_dir / CONFIG_FILE, imported.config.to_dict())
    record = imported.summary()
    record["teacher_weights_sha256"] = file_sha256(weights)
    record["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(out_dir / IMPORT_FILE, record)
    write_json(out_dir / METRICS_FILE, {
        "kind": "teacher",
        "method": "imported",
        "status": "imported",
        "profile": imported.config.profile,
        "source": str(imported.source),
        "test": None,
        "reported_by_authors": {"epoch": imported.epoch, "AR@1": imported.reported_ar1},
        "files": {"config": CONFIG_FILE, "weights": TEACHER_WEIGHTS_FILE, "import": IMPORT_FILE},
    })
    return out_dir


def import_reference_teacher(path: PathLike, out_dir: PathLike, base_config: ExperimentConfig | None = None,
                             experiment_name: str | None = None, *, overwrite: bool = False) -> Path:
    """Convert an authors' teacher checkpoint into a teacher folder usable with both sparse backends.

    Args:
        path: ``.../<experiment name>/models/r1_best_ep<E>_<AR@1>.pth`` (bare MinkLoc++ state_dict).
        out_dir: the teacher folder to write (``teacher_weights/<name>``).
        base_config: non-architecture settings (``distilvpr train`` passes its resolved config); the
            architecture always comes from the shapes. ``None`` = reference defaults + experiment name.
        experiment_name: the experiment name when the path lacks it.
        overwrite: replace a folder that holds another teacher.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError, ReferenceCheckpointError, FileExistsError: see :func:`~distilvpr_lib.models.reference_import.prepare_reference_teacher`
        and :func:`write_reference_teacher`.
    """
    from distilvpr_lib.models.reference_import import prepare_reference_teacher

    imported = prepare_reference_teacher(path, base_config=base_config, experiment_name=experiment_name)
    return write_reference_teacher(imported, out_dir, overwrite=overwrite)


__all__ = ["CONFIG_FILE", "IMPORT_FILE", "METRICS_FILE", "RESUME_EXEMPT_FIELDS", "RUNTIME_FIELDS",
           "STUDENT_WEIGHTS_FILE", "TEACHER_WEIGHTS_FILE", "TEST_RESULTS_FILE", "ConfigDifference", "PreviousRun",
           "RunConfigMismatchError", "check_resumable", "completed_run", "config_differences", "config_fingerprint",
           "previous_run", "resume_differences", "load_model_from_dir", "load_run_config",
           "import_reference_teacher", "load_teacher", "tidy_completed_run", "write_reference_teacher"]
