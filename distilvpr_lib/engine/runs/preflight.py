"""Preflight: check everything a command will read **before** anything is written.

``train-teacher``, ``distill``, ``evaluate``, ``train`` and ``batch`` (and the library functions behind
them, so notebooks get the same) call one of :func:`preflight_train_teacher`, :func:`preflight_distill`,
:func:`preflight_evaluate`, :func:`preflight_batch` first. Each raises the first problem as a one-line
project error (:mod:`distilvpr_lib.errors`) naming the file, and creates nothing:

* **the dataset** — the pickles load safely and are well typed (:meth:`Benchmark.load`), the sets the
  command needs exist (training tuples, validation and test splits, images), every cloud the training,
  validation and test sets reference exists with a plausible size (``.bin``: exactly 98,304 bytes;
  ``.npy``: its header says (4096, 3) floats), and every image they use has a readable header
  (``check-data --deep`` decodes every pixel; the preflight does not);
* **weights** — ``teacher.pt`` / ``student.pt`` / a resumable ``checkpoints/last.pt`` load with
  ``weights_only=True`` and their state_dict keys and shapes match the model of the config (the message
  lists the first mismatches), a teacher cache is readable;
* **the output folder** — not a file, writable, not locked by another process, and (resuming, or re-running
  a finished run) not a run of another configuration or dataset (every field that differs named, old → new).

``batch`` checks its grid's datasets and teachers with these functions (``distilvpr_lib.batch.preflight_grid``).

The clouds are only ``stat``-ed and the images' headers read, so a preflight at the cpu profile takes
seconds (``benchmarks/bench_preflight.py``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distilvpr_lib.config_checks import check_config_values
from distilvpr_lib.data.clouds import BIN_CLOUD_BYTES, describe_bad_bin_size
from distilvpr_lib.data.files import symlink_problem
from distilvpr_lib.data.images import check_image_file, image_size_problems
from distilvpr_lib.engine.runs.cache_dirs import nearest_existing, probe_writable, resolve_image_cache_dir
from distilvpr_lib.errors import (
    CheckpointError,
    DataFormatError,
    DistilVPRError,
    MissingCheckpointError,
    MissingDataError,
    RunFolderError,
)

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import ExperimentConfig, ModelConfig
    from distilvpr_lib.data.benchmark import Benchmark

PathLike = str | os.PathLike

#: What to do about a damaged dataset file.
_DAMAGED_HINT = "the dataset is damaged: re-copy the file, or regenerate the dataset with distilvpr synth"
#: Pointer to the full list when a preflight found several problems (the first is the message).
_CHECK_DATA_HINT = "distilvpr check-data {dataset} lists every problem"


@dataclass
class PreflightReport:
    """What a preflight looked at (for benchmarks and logs)."""

    clouds: int = 0
    images: int = 0
    weights: list[str] = field(default_factory=list)
    seconds: float = 0.0
    benchmark: "Benchmark | None" = None


# ---------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------
def _first_problem(problems: list[DistilVPRError], dataset_dir: Path) -> DistilVPRError:
    first = problems[0]
    if len(problems) > 1:
        more = f"{len(problems) - 1} more problem(s): " + _CHECK_DATA_HINT.format(dataset=dataset_dir)
        first.hint = f"{first.hint}; {more}" if first.hint else more
    return first


def _check_cloud_size(path: Path) -> None:
    """Exists and has a plausible size (``.bin``: exact byte count; ``.npy``: header shape and dtype)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if path.is_symlink():
            raise DataFormatError(symlink_problem(path), path=path, hint="remove or fix the link") from None
        raise MissingDataError("cloud referenced by the benchmark pickles not found", path=path) from None
    except OSError as exc:  # ELOOP: a symlink loop; EACCES ...
        if exc.errno == errno.ELOOP:
            raise DataFormatError(symlink_problem(path), path=path, hint="remove or fix the link") from None
        raise DataFormatError(f"cannot read ({exc.strerror or exc})", path=path) from None
    if path.is_dir():
        raise DataFormatError("is a folder, expected a point cloud file", path=path)
    if path.suffix == ".bin":
        if size != BIN_CLOUD_BYTES:
            raise DataFormatError(describe_bad_bin_size(size, path), path=path)
    elif path.suffix == ".npy":
        import numpy as np

        try:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(handle)  # the header only
        except (ValueError, OSError, EOFError) as exc:
            raise DataFormatError(f"not a numpy array file ({exc})", path=path) from exc
        if tuple(shape) != (4096, 3) or dtype.kind != "f":
            raise DataFormatError(f"expected a (4096, 3) float array, header says shape {tuple(shape)} "
                                  f"dtype {dtype}", path=path)
        if size < 4096 * 3 * dtype.itemsize:
            raise DataFormatError(f"truncated: expected at least {4096 * 3 * dtype.itemsize} bytes of data, "
                                  f"found {size} bytes in all", path=path)
    else:
        raise DataFormatError(f"unknown point cloud format {path.suffix!r}; expected .bin or .npy", path=path)


def required_rel_paths(benchmark: "Benchmark", training: bool, splits: Iterable[str]) -> list[str]:
    """The clouds a command reads: the training sub-maps (``training``) and the sets of ``splits``."""
    seen: dict[str, None] = {}
    if training:
        for t in benchmark.training_tuples.values():
            seen.setdefault(t.rel_scan_filepath, None)
    for split in splits:
        for run_set in (*benchmark.database_sets(split), *benchmark.query_sets(split)):
            for entry in run_set.values():
                seen.setdefault(entry["query"], None)
    return list(seen)


def preflight_dataset(dataset_dir: PathLike, image_dir: PathLike | None = None, layout: str = "auto",
                      training: bool = True, splits: Iterable[str] = ("test",), need_images: bool = True,
                      decode_images: bool = False, report: PreflightReport | None = None,
                      expected_size: tuple[int, int] | None = None) -> "Benchmark":
    """Load a benchmark and check every file the run will read (see the module docstring).

    Every image the run reads must have one size (batches stack them), ``expected_size`` (width, height)
    when given; a training set must hold a tuple with a positive and a negative (else every batch is skipped).

    Args:
        training: the run trains: training tuples must exist and their clouds / images are checked.
        splits: evaluation splits the run reads (``"test"``, ``"validation"``).
        need_images: the model reads images (teacher and student both do).
        decode_images: decode every image completely (slow; ``check-data --deep``).

    Returns:
        The loaded :class:`Benchmark`.

    Raises:
        MissingDataError / DataFormatError: the first problem, naming its file (with the number of others).
    """
    from distilvpr_lib.data.benchmark import Benchmark

    dataset_dir = Path(dataset_dir)
    benchmark = Benchmark.load(dataset_dir, image_dir=image_dir, layout=layout)
    splits = tuple(splits)
    if training and not benchmark.training_tuples:
        raise MissingDataError("no training tuples (training_queries_baseline.pickle); cannot train",
                               path=dataset_dir, hint="generate the dataset with distilvpr synth, or build its "
                               f"pickles with distilvpr prepare-data {dataset_dir}")
    for split in splits:
        if not benchmark.has_split(split):
            hint = (f"build it with distilvpr prepare-data {dataset_dir}, or set "
                    "train.use_validation_split=false (then the last epoch is kept)") if split == "validation" else \
                f"build the evaluation pickles with distilvpr prepare-data {dataset_dir}"
            raise MissingDataError(f"no {split} split (evaluation pickles) in this benchmark", path=dataset_dir,
                                   hint=hint)
    if need_images and not benchmark.has_images:
        raise MissingDataError("the benchmark has no images (no LiDAR-to-image index); the models need images",
                               path=dataset_dir, hint="pass --image-dir, or generate the dataset with images")
    rel_paths = required_rel_paths(benchmark, training, splits)
    problems: list[DistilVPRError] = []
    for rel in rel_paths:
        try:
            _check_cloud_size(benchmark.cloud_path(rel))
        except DistilVPRError as exc:
            exc.hint = exc.hint or _DAMAGED_HINT
            problems.append(exc)
    images = 0
    if need_images:
        sizes: dict[Path, tuple[int, int]] = {}
        for rel in rel_paths:
            try:
                count = benchmark.image_count(rel)
                for k in range(max(count, 1)):
                    path = benchmark.image_path(rel, k)
                    sizes[path] = check_image_file(path, decode=decode_images)
                    images += 1
            except DistilVPRError as exc:
                exc.hint = exc.hint or _DAMAGED_HINT
                problems.append(exc)
            except IndexError as exc:
                problems.append(DataFormatError(str(exc)))
        problems.extend(image_size_problems(sizes, expected_size))
    if training and not problems:
        problem = training_set_problem(benchmark)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise _first_problem(problems, dataset_dir)
    if report is not None:
        report.clouds += len(rel_paths)
        report.images += images
        report.benchmark = benchmark
    return benchmark


def training_set_problem(benchmark: "Benchmark") -> DistilVPRError | None:
    """Why no batch of the training set could form a triplet, or ``None``.

    A training step needs, within a batch, an anchor with a positive (a sub-map within 10 m) and a negative
    (one farther than 50 m). When no training tuple has both, every batch is skipped, so refuse up front.
    """
    import numpy as np

    tuples = benchmark.training_tuples
    n = len(tuples)
    if any(len(t.positives) and len(set(np.asarray(t.non_negatives).tolist()) | {t.id}) < n for t in tuples.values()):
        return None
    from distilvpr_lib.data.benchmark import LAYOUT_FILES

    training_file = benchmark.dataset_dir / LAYOUT_FILES[benchmark.layout]["training"][0]
    return DataFormatError(
        f"no training tuple has both a positive (<= 10 m) and a negative (> 50 m) among the {n} training "
        "sub-maps, so every batch would be skipped", path=training_file,
        hint="the training region is too small: generate the dataset with a longer route (distilvpr synth "
             "--route-length 500 ..., or a larger --profile), or use a larger real dataset")


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
def expected_state_shapes(model_cfg: "ModelConfig", kind: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the model a config builds (``kind``: ``"teacher"`` | ``"student"``).

    Built on the ``meta`` device (no memory, no initialisation), falling back to the CPU.
    """
    import torch

    from distilvpr_lib.models import build_student, build_teacher

    builders = {"teacher": build_teacher, "student": build_student}
    if kind not in builders:
        raise KeyError(f"unknown model kind {kind!r}; known kinds: {sorted(builders)}")
    cfg = dataclasses.replace(model_cfg, pretrained_image_weights=None)
    try:
        with torch.device("meta"):
            model = builders[kind](cfg)
    except Exception:  # noqa: BLE001 - a backend that cannot live on meta: build it for real
        model = builders[kind](cfg)
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def preflight_weights(path: PathLike, model_cfg: "ModelConfig", kind: str, hint: str | None = None,
                      report: PreflightReport | None = None) -> None:
    """A weights file (or training checkpoint) loads safely and fits the config's model.

    Raises:
        MissingCheckpointError: no such file. CheckpointError: unreadable, or keys / shapes differ (the
            first mismatches listed).
    """
    from distilvpr_lib.engine.train.checkpoint import check_state_dict, load_weights

    path = Path(path)
    check_state_dict(load_weights(path), expected_state_shapes(model_cfg, kind), path, hint=hint)
    if report is not None:
        report.weights.append(str(path))


def _read_config(folder: Path, what: str) -> "ExperimentConfig":
    import json

    from distilvpr_lib.config import ExperimentConfig
    from distilvpr_lib.engine.runs.run_folder import CONFIG_FILE

    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise MissingCheckpointError(f"{what} not found (no such folder)", path=folder)
    if not path.is_file():
        raise MissingCheckpointError(f"configuration of the {what} not found", path=path,
                                     hint=f"is {folder} a folder written by this workbench?")
    try:
        return ExperimentConfig.load(path)  # names the file and the field (DataFormatError)
    except DistilVPRError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"unreadable JSON ({exc})", path=path) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"not a workbench configuration ({exc})", path=path) from exc


def preflight_teacher_folder(teacher_dir: PathLike, cfg: "ExperimentConfig",
                             report: PreflightReport | None = None) -> None:
    """The teacher a student run reads: ``config.json``, ``teacher.pt`` fitting it, a readable cache.

    ``teacher.pt`` and ``config.json`` may be absent when the cache the run needs is there (an exported teacher).
    """
    from distilvpr_lib.engine.runs.run_folder import TEACHER_WEIGHTS_FILE
    from distilvpr_lib.engine.runs.teacher_cache import TeacherCache, cache_file_name

    from distilvpr_lib.engine.runs.run_folder import CONFIG_FILE

    teacher_dir = Path(teacher_dir)
    if not teacher_dir.is_dir():
        raise MissingCheckpointError("teacher folder not found (no such folder)", path=teacher_dir,
                                     hint="train the teacher first: distilvpr train-teacher")
    weights = teacher_dir / TEACHER_WEIGHTS_FILE
    cache = teacher_dir / cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed)
    if cache.exists():
        TeacherCache.load(cache)
    if not cache.exists() or (teacher_dir / CONFIG_FILE).exists():  # without a cache the run builds one
        teacher_cfg = _read_config(teacher_dir, "teacher folder")
        if weights.exists():
            preflight_weights(weights, teacher_cfg.model, "teacher", report=report,
                              hint=f"is it the teacher of {teacher_dir / CONFIG_FILE}? retrain or re-import it")
        elif not cache.exists():
            raise MissingCheckpointError("teacher weights not found, and no teacher cache to use instead",
                                         path=weights, hint="train the teacher first: distilvpr train-teacher")


# ---------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------
def _is_main_process() -> bool:
    """Rank 0, without importing torch when it is not loaded yet (the CLI preflights before it loads torch):
    then no process group can exist, and the rank is the one ``torchrun`` put in the environment."""
    if "torch" not in sys.modules:
        return int(os.environ.get("RANK", "0") or 0) == 0
    from distilvpr_lib.engine.train.distributed import is_main_process

    return is_main_process()


def preflight_out_dir(out_dir: PathLike, check_lock: bool | None = None) -> None:
    """The run folder can be created / written, and no other process holds it.

    ``check_lock`` (default: only on the main process) looks for another writer; under ``torchrun`` the other
    ranks skip it, since rank 0 of the same run may already hold the lock (only rank 0 locks and writes).

    Nothing is left behind: writability is probed with a temporary folder in the nearest existing
    ancestor, removed at once.

    Raises:
        RunFolderError: a file stands there, or the place is not writable. RunFolderLockedError: another
            process is writing the folder.
    """
    from distilvpr_lib.engine.runs.run_guard import check_not_locked

    if check_lock is None:
        check_lock = _is_main_process()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError("is a file, not a run folder", path=out_dir, hint="choose another --out")
    ancestor = nearest_existing(out_dir)
    if not ancestor.is_dir():
        raise RunFolderError("cannot create the run folder: a file stands in its path", path=ancestor,
                             hint="choose another --out")
    try:
        probe_writable(ancestor)
    except OSError as exc:
        raise RunFolderError(f"not writable ({exc.strerror or exc})", path=ancestor,
                             hint="check its permissions, or choose another --out") from exc
    if check_lock:
        check_not_locked(out_dir)


def preflight_image_cache_dir(cfg: "ExperimentConfig", out_dir: PathLike) -> Path | None:
    """With ``data.image_cache`` on: the folder the image cache will use (:func:`resolve_image_cache_dir`)."""
    if not cfg.data.image_cache:
        return None
    return resolve_image_cache_dir(cfg, out_dir)


def preflight_resume(cfg: "ExperimentConfig", out_dir: PathLike, kind: str, resume: bool,
                     report: PreflightReport | None = None) -> None:
    """Resuming: the folder's run has this configuration and dataset (every field, the dataset's fingerprint:
    :func:`~distilvpr_lib.engine.runs.run_folder.check_resumable`) and its ``checkpoints/last.pt`` fits the model.
    A finished run without its checkpoint is compared too."""
    from distilvpr_lib.engine.train.checkpoint import (CHECKPOINT_DIR_NAME, LAST_CHECKPOINT_NAME, check_state_dict,
                                                       load_checkpoint)

    out_dir = Path(out_dir)
    has_config = (out_dir / "config.json").is_file()
    if not resume or not (has_config or (out_dir / CHECKPOINT_DIR_NAME).is_dir()):  # fresh: nothing to compare or load
        return
    from distilvpr_lib.engine.runs.run_folder import check_resumable

    last = out_dir / CHECKPOINT_DIR_NAME / LAST_CHECKPOINT_NAME
    if not last.is_file():
        if has_config:
            check_resumable(cfg, out_dir, resume)
        return
    hint = "delete it, or run with --no-resume to start over"
    try:
        state = load_checkpoint(last)
    except CheckpointError as exc:
        exc.hint = hint
        raise
    check_resumable(cfg, out_dir, resume, checkpoint=state)
    model_state = state.get("model")
    if not isinstance(model_state, dict):
        raise CheckpointError("training checkpoint without model weights", path=last, hint=hint)
    check_state_dict(model_state, expected_state_shapes(cfg.model, kind), last,
                     hint="a checkpoint of another model: " + hint)
    if report is not None:
        report.weights.append(str(last))


# ---------------------------------------------------------------------------
# Per command
# ---------------------------------------------------------------------------
def _dataset_of(cfg: "ExperimentConfig", training: bool, splits: tuple[str, ...],
                report: PreflightReport) -> "Benchmark":
    return preflight_dataset(cfg.data.dataset_dir, image_dir=cfg.data.image_dir, layout=cfg.data.layout,
                             training=training, splits=splits, need_images=True, report=report)


def _training_splits(cfg: "ExperimentConfig") -> tuple[str, ...]:
    return ("test", "validation") if cfg.train.use_validation_split else ("test",)


def preflight_train_teacher(cfg: "ExperimentConfig", out_dir: PathLike, resume: bool = True) -> PreflightReport:
    """Everything ``train-teacher`` reads and writes: dataset (training + validation + test), the folder,
    a checkpoint to resume. Raises the first problem (module docstring); returns what was checked."""
    started = time.perf_counter()
    report = PreflightReport()
    check_config_values(cfg)
    preflight_out_dir(out_dir)
    preflight_resume(cfg, out_dir, "teacher", resume, report)
    _dataset_of(cfg, True, _training_splits(cfg), report)
    report.seconds = time.perf_counter() - started
    return report


def preflight_distill(cfg: "ExperimentConfig", teacher_dir: PathLike | None, out_dir: PathLike,
                      resume: bool = True) -> PreflightReport:
    """Everything ``distill`` reads and writes: the teacher folder (when given), the dataset, the folder, a
    checkpoint to resume."""
    started = time.perf_counter()
    report = PreflightReport()
    check_config_values(cfg)
    preflight_out_dir(out_dir)
    preflight_image_cache_dir(cfg, out_dir)
    if teacher_dir is not None:
        preflight_teacher_folder(teacher_dir, cfg, report)
    preflight_resume(cfg, out_dir, "student", resume, report)
    _dataset_of(cfg, True, _training_splits(cfg), report)
    report.seconds = time.perf_counter() - started
    return report


def preflight_evaluate(model_dir: PathLike, dataset_dir: PathLike | None = None, split: str = "test",
                       image_dir: PathLike | None = None, layout: str | None = None) -> PreflightReport:
    """What ``evaluate`` reads: the folder's config and weights (fitting it), the split's clouds and images.

    ``layout``: the evaluated dataset's (``"auto"``: detected); ``None`` = the folder's ``data.layout``."""
    from distilvpr_lib.engine.runs.run_folder import STUDENT_WEIGHTS_FILE, TEACHER_WEIGHTS_FILE

    started = time.perf_counter()
    report = PreflightReport()
    model_dir = Path(model_dir)
    cfg = _read_config(model_dir, "model folder")
    if (model_dir / STUDENT_WEIGHTS_FILE).exists():
        preflight_weights(model_dir / STUDENT_WEIGHTS_FILE, cfg.model, "student", report=report)
    elif (model_dir / TEACHER_WEIGHTS_FILE).exists():
        preflight_weights(model_dir / TEACHER_WEIGHTS_FILE, cfg.model, "teacher", report=report)
    else:
        raise MissingCheckpointError(f"neither {STUDENT_WEIGHTS_FILE} nor {TEACHER_WEIGHTS_FILE} found",
                                     path=model_dir, hint="is it a finished teacher folder or student run?")
    preflight_dataset(dataset_dir if dataset_dir is not None else cfg.data.dataset_dir,
                      image_dir=image_dir if image_dir is not None else cfg.data.image_dir,
                      layout=cfg.data.layout if layout is None else layout, training=False, splits=(split,),
                      report=report)
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["PreflightReport", "expected_state_shapes", "image_size_problems", "preflight_dataset",
           "preflight_distill", "preflight_evaluate", "preflight_image_cache_dir", "preflight_out_dir",
           "preflight_resume", "preflight_teacher_folder", "preflight_train_teacher", "preflight_weights",
           "required_rel_paths", "training_set_problem"]
