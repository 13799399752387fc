"""The training engine: one loop for the teacher and the student (METHOD.md §6).

Layers, bottom up:

* **Objectives** turn a model's outputs on a batch into a :class:`LossOutput` — the total
  loss, its *weighted named terms* (their sum is the total) and statistics:
  :class:`TeacherObjective` (``w0·triplet(fused) + w1·triplet(cloud) [+ w2·triplet(image)]``,
  METHOD.md §5.1) and :class:`StudentObjective` (``student_task_weight·triplet(s)`` plus the
  Distiller's weighted terms against cached teacher embeddings, §5.5).
* :class:`Trainer` runs epochs: positive-pair batches (the sampler reseeded per epoch through
  ``set_epoch``), batches without a positive or a negative pair skipped, Adam steps,
  ``MultiStepLR`` stepped once per epoch, validation every ``eval_every`` epochs (always at the
  last), the best weights by **validation** AR@1 kept, an atomic checkpoint after every epoch
  and exact resume from it, tqdm progress and TensorBoard scalars.
* :func:`train_teacher` / :func:`distill_student` / :func:`evaluate_run` (defined in
  :mod:`distilvpr_lib.engine.runs`, importable from this module too) wire config → data →
  model → objective → trainer → test evaluation → files.

Model selection (documented choice): the epoch with the highest validation AR@1 is kept; on a
tie the **later** epoch wins (it has trained longer at an equal score). With
``train.use_validation_split = False`` no selection happens: the last epoch is kept. The test
split is never read during training (the reference picked epochs on test, METHOD.md §10.3).

Exact resume: the checkpoint written at the end of epoch e holds the model, optimiser,
scheduler, AMP scaler and every global RNG state *after* the whole epoch; validation runs inside
:func:`~distilvpr_lib.engine.seeding.preserved_rng_state`, so evaluating never shifts the training
stream. The sampler's batches depend only on ``(seed, epoch)``. A run stopped after epoch e and
resumed therefore reaches bit-identical weights to an uninterrupted one in deterministic mode
(``cfg.train.deterministic``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from distilvpr_lib.engine.checkpoint import (
    BEST_WEIGHTS_NAME,
    LAST_CHECKPOINT_NAME,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from distilvpr_lib.engine.distributed import (
    DistributedContext,
    assemble_global_batch,
    convert_batchnorm,
    gather_outputs,
    rank_epoch_seed,
    single_process_context,
)
from distilvpr_lib.engine.seeding import capture_rng_state, preserved_rng_state, restore_rng_state, seed_everything
from distilvpr_lib.engine.teacher_cache import TeacherCache, move_to_device

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import ExperimentConfig, TrainConfig
    from distilvpr_lib.engine.evaluate import RetrievalResults

log = logging.getLogger(__name__)

#: Name of the student's task term.
STUDENT_TASK_TERM: str = "triplet"
#: Metric used for model selection on the validation split.
SELECTION_METRIC: str = "AR@1"
SELECTION_RULE: str = "highest validation AR@1; ties -> the later epoch"


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise ``torch.device(name)``.

    Raises:
        RuntimeError: a CUDA device was asked for but CUDA is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


#: ``TrainConfig.amp_dtype`` values.
AMP_DTYPES: dict[str, torch.dtype | None] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "auto": None}


def resolve_amp_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Autocast dtype for ``TrainConfig.amp_dtype``: ``"auto"`` = bfloat16 where the CUDA device supports it.

    Raises:
        KeyError: unknown name (lists the known ones).
    """
    if name not in AMP_DTYPES:
        raise KeyError(f"unknown train.amp_dtype {name!r}; known: {sorted(AMP_DTYPES)}")
    dtype = AMP_DTYPES[name]
    if dtype is None:
        device = torch.device(device)
        supported = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if supported else torch.float16
    return dtype


class _Float32Forward:
    """A module's bound ``forward`` run with autocast disabled (installed as an instance attribute)."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            return self.forward(*args, **kwargs)


def keep_float32_under_autocast(model: nn.Module) -> list[str]:
    """Make the sparse cloud branches of ``model`` run in float32 inside autocast regions (in place).

    The sparse-convolution backends do not support autocast (the torch backend's scatter-add mixes the
    dtypes autocast gives its matrix products); the cloud branch is small next to the image branch, so
    mixed precision keeps it in float32 and autocasts the rest. Idempotent; parameters and state-dict
    keys are untouched.

    Returns:
        The names of the wrapped submodules (``["cloud_fe"]`` for the teacher, ``[]`` for the student).
    """
    from distilvpr_lib.models.sparse import CloudBranch

    wrapped = []
    for name, module in model.named_modules():
        if isinstance(module, CloudBranch):
            if not isinstance(module.__dict__.get("forward"), _Float32Forward):
                module.forward = _Float32Forward(module.forward)  # type: ignore[method-assign]
            wrapped.append(name)
    return wrapped


# ---------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------
@dataclass
class LossOutput:
    """What an objective returns for one batch.

    Attributes:
        total: scalar tensor to back-propagate (= sum of ``terms``).
        terms: weighted named terms (scalar tensors), e.g. ``triplet_embedding``, ``rkdg_distance``.
        stats: floats to log, e.g. ``active_fraction``, ``student_norm_mean``; keys ending in
            ``_max`` are aggregated over an epoch by max, the others by mean.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """``objective(outputs, batch) -> LossOutput``; ``outputs`` is the model's output dict."""

    kind: str

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> LossOutput: ...


def _norm_stats(prefix: str, embeddings: torch.Tensor) -> dict[str, float]:
    norms = embeddings.detach().float().norm(dim=1)
    return {f"{prefix}_norm_mean": float(norms.mean()), f"{prefix}_norm_max": float(norms.max())}


def _sum_terms(terms: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    total = like.new_zeros(())
    for value in terms.values():
        total = total + value
    return total


def _make_triplet(margin: float) -> nn.Module:
    from distilvpr_lib.losses.triplet import BatchHardTripletLoss

    return BatchHardTripletLoss(margin=margin)


class TeacherObjective:
    """``Σ_h w_h · triplet(outputs[h])`` over the teacher's heads (fused, cloud, image), METHOD.md §5.1.

    Delegates to :func:`distilvpr_lib.losses.triplet.teacher_task_loss`: heads with weight 0 are
    not computed (the reference computed the image head and multiplied it by 0). Term names:
    ``triplet_embedding`` (fused), ``triplet_cloud_embedding``, ``triplet_image_embedding``.
    Stats: ``active_fraction`` / ``num_triplets`` of the fused head, every head's triplet stats as
    ``<head>/<stat>``, and the fused norms as ``teacher_norm_{mean,max}``.
    """

    kind = "teacher"

    def __init__(self, train_cfg: "TrainConfig", triplet: nn.Module | None = None) -> None:
        self.weights = tuple(float(w) for w in train_cfg.teacher_loss_weights)
        if len(self.weights) != 3:
            raise ValueError(f"train.teacher_loss_weights needs 3 weights (fused, cloud, image), got {self.weights}")
        if not any(self.weights):
            raise ValueError("train.teacher_loss_weights are all zero: nothing to train")
        self.margin = float(train_cfg.margin)
        self.triplet = triplet if triplet is not None else _make_triplet(train_cfg.margin)

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> LossOutput:
        from distilvpr_lib.losses.triplet import teacher_task_loss

        outputs32 = {k: v.float() for k, v in outputs.items() if torch.is_tensor(v)}
        terms, head_stats = teacher_task_loss(
            outputs32, (batch["positives_mask"], batch["negatives_mask"]), weights=self.weights,
            margin=self.margin, loss_fn=self.triplet)
        if not terms:
            raise ValueError(f"teacher objective: no head with a non-zero weight among outputs {sorted(outputs)}")
        stats = {k: float(v) for k, v in head_stats.items()}
        for name in ("active_fraction", "num_triplets"):
            if f"embedding/{name}" in head_stats:
                stats[name] = float(head_stats[f"embedding/{name}"])
        stats.update(_norm_stats("teacher", outputs32["embedding"]))
        return LossOutput(_sum_terms(terms, outputs32["embedding"]), terms, stats)


class StudentObjective:
    """``student_task_weight · triplet(s)`` + the Distiller's weighted named terms (METHOD.md §5.5).

    The teacher embeddings ``t`` come from a :class:`TeacherCache`, looked up by the batch's
    ``rel_paths``; the teacher never runs. With ``distiller=None`` (method ``nokd``) only the task
    term is used. Stats: ``active_fraction`` / ``num_triplets`` of the task triplet and
    ``{student,teacher}_norm_{mean,max}`` (raw norms; the self-agent hyperbolic term saturates
    for large raw norms, METHOD.md §10.5).
    """

    kind = "student"

    def __init__(self, train_cfg: "TrainConfig", teacher_cache: TeacherCache | None,
                 distiller: nn.Module | None = None, triplet: nn.Module | None = None) -> None:
        self.task_weight = float(train_cfg.student_task_weight)
        self.triplet = triplet if triplet is not None else _make_triplet(train_cfg.margin)
        self.distiller = distiller
        self.teacher_cache = teacher_cache
        if distiller is not None and teacher_cache is None:
            raise ValueError("student objective: a distiller needs a teacher cache")

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> LossOutput:
        student = outputs["embedding"].float()
        positives, negatives = batch["positives_mask"], batch["negatives_mask"]
        task, task_stats = self.triplet(student, positives, negatives)
        terms: dict[str, torch.Tensor] = {STUDENT_TASK_TERM: self.task_weight * task}
        stats = {k: float(v) for k, v in task_stats.items() if isinstance(v, (int, float))}
        stats.update(_norm_stats("student", student))
        if self.teacher_cache is not None:
            teacher = self.teacher_cache.lookup(batch["rel_paths"], device=student.device)
            stats.update(_norm_stats("teacher", teacher))
            if self.distiller is not None:
                distill_terms = self.distiller(student, teacher, positives, negatives)
                for name, value in distill_terms.items():
                    if name in terms:
                        raise ValueError(f"distiller term {name!r} collides with the task term")
                    terms[name] = value
        return LossOutput(_sum_terms(terms, student), terms, stats)


# ---------------------------------------------------------------------------
# Optimiser and scheduler (METHOD.md §6.1)
# ---------------------------------------------------------------------------
def teacher_parameter_groups(model: nn.Module, train_cfg: "TrainConfig") -> list[dict[str, Any]]:
    """Adam groups of the teacher: the image branch at ``image_lr``, the cloud branch at ``cloud_lr``.

    A parameter belongs to the image (cloud) branch when the first component of its name
    contains ``image`` (``cloud``). Parameters without gradient are left out (as the reference:
    unused heads get no update). Any other trainable parameter is an error, so nothing is
    silently trained at the wrong rate.
    """
    groups: dict[str, list[nn.Parameter]] = {"image": [], "cloud": []}
    unassigned: list[str] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        top = name.split(".", 1)[0].lower()
        if "image" in top or "img" in top:
            groups["image"].append(param)
        elif "cloud" in top or "pc" == top or "point" in top:
            groups["cloud"].append(param)
        else:
            unassigned.append(name)
    if unassigned:
        raise ValueError(f"teacher parameters in neither the image nor the cloud branch: {unassigned[:5]}")
    return [
        {"params": groups["image"], "lr": train_cfg.image_lr, "name": "image"},
        {"params": groups["cloud"], "lr": train_cfg.cloud_lr, "name": "cloud"},
    ]


def student_parameter_groups(model: nn.Module, train_cfg: "TrainConfig") -> list[dict[str, Any]]:
    """One Adam group: every trainable student parameter at ``image_lr``."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": train_cfg.image_lr,
             "name": "student"}]


def build_optimizer(groups: list[dict[str, Any]], train_cfg: "TrainConfig") -> torch.optim.Adam:
    """Adam (L2 ``weight_decay``, not AdamW) over the given parameter groups (empty groups dropped)."""
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters")
    return torch.optim.Adam(groups, weight_decay=train_cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: "TrainConfig") -> torch.optim.lr_scheduler.MultiStepLR:
    """``MultiStepLR(milestones, gamma)``, stepped once per epoch."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(train_cfg.milestones), gamma=train_cfg.gamma)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------
#: ``validate(model) -> RetrievalResults`` on the validation split.
Validator = Callable[[nn.Module], "RetrievalResults"]


@dataclass
class TrainingHistory:
    """What :meth:`Trainer.fit` returns (and what the checkpoint stores, as plain values).

    Attributes:
        epochs: one record per finished epoch: ``epoch``, ``lr`` {group: lr used in the epoch},
            ``losses`` {term: mean, "total": mean}, ``stats`` {name: mean or max}, ``batches``,
            ``skipped_batches``, ``seconds``, ``validation`` (summary dict + ``per_run_AR@1``, or None).
        best_epoch: the selected epoch (validation AR@1, ties -> later; the last one without validation).
        best_metric: its validation AR@1 (None without validation).
        best_weights: path of the selected weights (``checkpoints/best.pt``).
        resumed_from: the epoch the run resumed after (0 = fresh start).
        global_step: optimiser steps taken in total.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float | None = None
    best_weights: Path | None = None
    resumed_from: int = 0
    global_step: int = 0

    @property
    def last(self) -> dict[str, Any] | None:
        return self.epochs[-1] if self.epochs else None


def retrieval_summary(results: "RetrievalResults") -> dict[str, Any]:
    """``{"AR@1", "AR@5", "AR@10", "AR@1%", "per_run_AR@1": {run_name: AR@1}}`` (NaN -> None)."""
    out: dict[str, Any] = {k: _finite_or_none(v) for k, v in results.summary().items()}
    names = list(results.run_names)
    per_run = {}
    for index, value in results.per_database_recall_at_1.items():
        name = names[int(index)] if isinstance(index, numbers.Integral) and 0 <= int(index) < len(names) else str(index)
        per_run[name] = _finite_or_none(value)
    out["per_run_AR@1"] = per_run
    return out


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


#: Execution settings left out of :func:`config_fingerprint` (they do not define the experiment).
RUNTIME_FIELDS: tuple[str, ...] = (
    "train.amp_dtype", "train.channels_last", "train.sync_batchnorm", "train.distributed_backend",
    "train.distributed_timeout_s", "data.persistent_workers",
)


def config_fingerprint(cfg: "ExperimentConfig", ignore: Iterable[str] = ()) -> str:
    """Hash of the resolved config minus fields that may change between a run and its resume.

    Ignored always: ``train.epochs``, ``train.device``, ``train.eval_batch_size``,
    ``train.eval_every``, ``data.num_workers``, ``data.dataset_dir``, ``data.image_dir``, ``synth.*``, ``profile``,
    and the execution settings in :data:`RUNTIME_FIELDS` (AMP dtype, channels-last, distributed options,
    persistent workers: a run may resume on other hardware or another number of processes).
    """
    data = cfg.to_dict()
    skip = {"train.epochs", "train.device", "train.eval_batch_size", "train.eval_every", "data.num_workers",
            "data.dataset_dir", "data.image_dir", *RUNTIME_FIELDS, *ignore}
    data.pop("synth", None)
    data.pop("profile", None)
    for dotted in skip:
        section, _, name = dotted.partition(".")
        data.get(section, {}).pop(name, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:16]


class Trainer:
    """Run epochs of one model with one objective; checkpoint and resume exactly.

    Args:
        model: the network; ``model(batch)`` returns a dict with at least ``embedding``.
        objective: a :class:`TeacherObjective`, :class:`StudentObjective` or any :class:`Objective`.
        optimizer: Adam over named groups (``group["name"]`` used in logs).
        scheduler: stepped once per epoch.
        train_loader: a ``DataLoader`` whose ``batch_sampler`` has ``set_epoch`` (positive pairs)
            and whose batches carry ``positives_mask``/``negatives_mask`` (and optionally ``skip``).
        train_cfg: epochs, eval cadence, mixed precision.
        out_dir: run folder; ``checkpoints/`` and ``tensorboard/`` are created inside.
        validate: ``validate(model) -> RetrievalResults`` on the validation split, or ``None``
            (no selection: the last epoch is kept).
        device: where the model and batches live.
        fingerprint: config hash stored in the checkpoint; resuming with another one is refused.
        progress: tqdm bars and per-epoch lines.
        tensorboard: write TensorBoard scalars.
        distributed: the :class:`~distilvpr_lib.engine.distributed.DistributedContext` of a torchrun run
            (``None`` = single process). Then the model is DDP-wrapped (batch norm over the global batch
            with ``train_cfg.sync_batchnorm``), the loader's batch sampler must be a
            ``DistributedPositivePairBatchSampler``, the loss is computed on the gathered global batch,
            and only rank 0 logs, validates and writes (see :mod:`distilvpr_lib.engine.distributed`).

    Mixed precision (``train_cfg.mixed_precision``, CUDA only) autocasts the forward pass to
    ``train_cfg.amp_dtype`` (float16 with a GradScaler, or bfloat16) except the sparse cloud branch, which
    stays float32 (:func:`keep_float32_under_autocast`); on CUDA the model and images use the
    channels-last memory format when ``train_cfg.channels_last``.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: Iterable[dict[str, Any]],
        train_cfg: "TrainConfig",
        out_dir: str | Path,
        validate: Validator | None = None,
        device: torch.device | str = "cpu",
        fingerprint: str | None = None,
        progress: bool = True,
        tensorboard: bool = True,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.train_cfg = train_cfg
        self.out_dir = Path(out_dir)
        self.validate = validate
        self.device = torch.device(device)
        self.fingerprint = fingerprint
        self.ctx = distributed if distributed is not None else single_process_context(self.device)
        self.progress = progress and self.ctx.is_main
        self.tensorboard = tensorboard and self.ctx.is_main
        self.use_amp = bool(train_cfg.mixed_precision) and self.device.type == "cuda"
        self.amp_dtype = resolve_amp_dtype(getattr(train_cfg, "amp_dtype", "float16"), self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.channels_last = bool(getattr(train_cfg, "channels_last", False)) and self.device.type == "cuda"
        self.sync_batchnorm = bool(getattr(train_cfg, "sync_batchnorm", True))
        #: The module that trains: ``model`` itself, or its DDP wrapper in distributed runs (set by fit).
        self.train_model: nn.Module = model
        self._tuples: Any = None
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.last_checkpoint = self.checkpoint_dir / LAST_CHECKPOINT_NAME
        self.best_weights = self.checkpoint_dir / BEST_WEIGHTS_NAME
        self.history = TrainingHistory()
        self._writer: Any = None

    # ------------------------------------------------------------------ helpers
    @property
    def group_names(self) -> list[str]:
        return [g.get("name", f"group{i}") for i, g in enumerate(self.optimizer.param_groups)]

    def _say(self, message: str) -> None:
        if not self.ctx.is_main:
            return
        log.info(message)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def _open_writer(self, purge_step: int | None) -> None:
        if not self.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=purge_step)

    def _scalar(self, tag: str, value: float | None, step: int) -> None:
        if self._writer is not None and value is not None and math.isfinite(float(value)):
            self._writer.add_scalar(tag, float(value), step)

    def _sampler(self) -> Any:
        return getattr(self.train_loader, "batch_sampler", None)

    def _state(self, epoch: int) -> dict[str, Any]:
        sampler = self._sampler()
        sampler_state: dict[str, Any] = {"epoch": epoch}
        if sampler is not None and hasattr(sampler, "state_dict"):
            sampler_state = dict(sampler.state_dict())
        elif sampler is not None and hasattr(sampler, "seed"):
            sampler_state["seed"] = int(sampler.seed)
        return {
            "kind": getattr(self.objective, "kind", "model"),
            "epoch": epoch,
            "global_step": self.history.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "sampler": sampler_state,
            "best_epoch": self.history.best_epoch,
            "best_metric": self.history.best_metric,
            "history": self.history.epochs,
            "fingerprint": self.fingerprint,
        }

    def _resume_state(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or ``None``; read by rank 0 and broadcast to the others."""
        if not self.ctx.is_distributed:
            return load_checkpoint(self.last_checkpoint, map_location="cpu") if self.last_checkpoint.is_file() else None
        state = None
        if self.ctx.is_main and self.last_checkpoint.is_file():
            state = load_checkpoint(self.last_checkpoint, map_location="cpu")
        return self.ctx.broadcast_object(state)

    def _resume(self, state: dict[str, Any] | None = None) -> int:
        if state is None:
            state = load_checkpoint(self.last_checkpoint, map_location="cpu")
        if self.fingerprint is not None and state.get("fingerprint") not in (None, self.fingerprint):
            raise ValueError(
                f"{self.last_checkpoint}: checkpoint was written with another configuration "
                f"(fingerprint {state.get('fingerprint')} != {self.fingerprint}); "
                "resume=False starts over, or use another output folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        sampler = self._sampler()
        if sampler is not None and hasattr(sampler, "load_state_dict") and state.get("sampler"):
            sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"])
        self.history = TrainingHistory(
            epochs=list(state.get("history", [])),
            best_epoch=state.get("best_epoch"),
            best_metric=state.get("best_metric"),
            best_weights=self.best_weights if self.best_weights.is_file() else None,
            resumed_from=int(state["epoch"]),
            global_step=int(state.get("global_step", 0)),
        )
        return int(state["epoch"])

    # ------------------------------------------------------------------ epochs
    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        from tqdm.auto import tqdm

        sampler = self._sampler()
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.ctx.is_distributed:  # every rank its own augmentations; exact resume at a given world size
            seed_everything(rank_epoch_seed(self.train_cfg.seed, epoch, self.ctx.rank))
        self.train_model.train()  # every epoch: evaluation leaves the model in eval mode (METHOD.md §10.2)
        lrs = {name: float(g["lr"]) for name, g in zip(self.group_names, self.optimizer.param_groups)}
        sums: dict[str, float] = {}
        stat_sums: dict[str, float] = {}
        stat_max: dict[str, float] = {}
        n_used = n_skipped = 0
        started = time.time()
        try:
            total = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            total = None
        bar = tqdm(self.train_loader, total=total, desc=f"epoch {epoch}/{self.train_cfg.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for batch in bar:
            if self.ctx.is_distributed:
                batch = assemble_global_batch(self.ctx, batch, self._tuples)
            if _skip_batch(batch):
                n_skipped += 1
                continue
            result = self.forward_backward(batch, epoch)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.history.global_step += 1
            n_used += 1
            step = self.history.global_step
            values = {name: float(v.detach()) for name, v in result.terms.items()}
            values["total"] = float(result.total.detach())
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
                self._scalar(f"train/loss/{name}", value, step)
            for name, value in result.stats.items():
                if name.endswith("_max"):
                    stat_max[name] = max(stat_max.get(name, -math.inf), value)
                else:
                    stat_sums[name] = stat_sums.get(name, 0.0) + value
                if name == "active_fraction":
                    self._scalar("train/active_fraction", value, step)
            bar.set_postfix(loss=f"{values['total']:.4f}", refresh=False)
        bar.close()
        if n_used == 0:
            raise RuntimeError(f"epoch {epoch}: every batch was skipped (no positive or no negative pair); "
                               "the training set or the batch size is too small")
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lrs,
            "losses": {name: s / n_used for name, s in sums.items()},
            "stats": {**{name: s / n_used for name, s in stat_sums.items()}, **stat_max},
            "batches": n_used,
            "skipped_batches": n_skipped,
            "seconds": round(time.time() - started, 3),
            "validation": None,
        }
        return record

    def forward_backward(self, batch: Mapping[str, Any], epoch: int = 0) -> LossOutput:
        """Forward, loss and backward of one batch (gradients left in the parameters, no optimiser step).

        Single process: ``batch`` is a collated batch. Distributed: it is this rank's slice completed by
        :func:`~distilvpr_lib.engine.distributed.assemble_global_batch`; the model embeds the slice,
        the embeddings are gathered (with gradient) into the global batch, every rank computes the
        global loss, and ``world_size · loss`` is back-propagated so that DDP's gradient *average*
        equals the single-process gradient.

        Returns:
            The objective's :class:`LossOutput` on the (global) batch.

        Raises:
            FloatingPointError: non-finite loss.
        """
        batch = move_to_device(batch, self.device)
        if self.channels_last and torch.is_tensor(batch.get("images")):
            batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            outputs = self.train_model(batch)
        if self.ctx.is_distributed:
            outputs = gather_outputs(self.ctx, outputs, batch["local_sizes"])
        result = self.objective(outputs, batch)
        if not torch.isfinite(result.total):
            raise FloatingPointError(
                f"epoch {epoch}: non-finite loss {float(result.total)} "
                f"(terms: { {k: float(v) for k, v in result.terms.items()} })")
        self.optimizer.zero_grad(set_to_none=True)
        loss = result.total * self.ctx.world_size if self.ctx.is_distributed else result.total
        self.scaler.scale(loss).backward()
        return result

    def prepare(self) -> None:
        """Move the model to the device and, as configured, to global batch norm, channels-last and
        float32 cloud branches under autocast.

        Called by :meth:`fit` before resuming (idempotent). In distributed runs the batch norms become
        :class:`~distilvpr_lib.engine.distributed.DistributedBatchNorm` (same parameters, same state-dict
        keys); :meth:`wrap_ddp` then wraps the model.
        """
        if self.train_model is not self.model:
            return
        self.model.to(self.device)
        if self.ctx.is_distributed:
            sampler = self._sampler()
            self._tuples = getattr(sampler, "tuples", None)
            if self._tuples is None or getattr(sampler, "world_size", None) != self.ctx.world_size:
                raise ValueError(
                    "distributed training needs the loader's batch_sampler to be a "
                    "data.sampler.DistributedPositivePairBatchSampler for this world size "
                    f"({self.ctx.world_size}), got {type(sampler).__name__}")
            if self.sync_batchnorm:
                convert_batchnorm(self.model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.use_amp:
            keep_float32_under_autocast(self.model)

    def wrap_ddp(self) -> None:
        """Distributed runs: :attr:`train_model` becomes the ``DistributedDataParallel`` wrapper of
        :attr:`model` (which stays the plain module that is validated and saved). Called by :meth:`fit`
        after resuming; a no-op in single-process runs or when already wrapped."""
        if not self.ctx.is_distributed or self.train_model is not self.model:
            return
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (batch-norm running statistics) are synchronised at construction; with the global
        # batch norm they then stay identical on every rank, so the per-forward broadcast is skipped.
        sync_name = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel.__init__).parameters else "broadcast_buffers")
        kwargs: dict[str, Any] = {sync_name: not self.sync_batchnorm}
        if self.device.type == "cuda":
            kwargs["device_ids"] = [self.device.index if self.device.index is not None else 0]
        self.train_model = DistributedDataParallel(self.model, **kwargs)

    def _should_validate(self, epoch: int) -> bool:
        every = max(1, int(self.train_cfg.eval_every))
        return self.validate is not None and (epoch % every == 0 or epoch == self.train_cfg.epochs)

    def fit(self, resume: bool = True) -> TrainingHistory:
        """Train up to ``train_cfg.epochs`` epochs, resuming from ``checkpoints/last.pt`` when asked.

        Returns:
            The :class:`TrainingHistory` (also kept in the checkpoint). After it returns the model
            holds the weights of the **last** epoch; the selected ones are in ``history.best_weights``.
        """
        self.prepare()
        start = 0
        state = self._resume_state() if resume else None
        if state is not None:
            start = self._resume(state)
            self._say(f"resumed from {self.last_checkpoint} after epoch {start}")
        self.wrap_ddp()
        self._open_writer(purge_step=self.history.global_step + 1 if start else None)
        try:
            for epoch in range(start + 1, self.train_cfg.epochs + 1):
                record = self._train_one_epoch(epoch)
                self.scheduler.step()
                step = self.history.global_step
                for name, value in record["losses"].items():
                    self._scalar(f"epoch/loss/{name}", value, step)
                for name, value in record["stats"].items():
                    self._scalar(f"epoch/{name}", value, step)
                for name, lr in record["lr"].items():
                    self._scalar(f"lr/{name}", lr, step)
                self._scalar("epoch", epoch, step)
                if not self.ctx.is_main:  # rank 0 validates and writes; the others wait for it
                    self.history.epochs.append(record)
                    self.ctx.barrier()
                    continue
                if self._should_validate(epoch):
                    assert self.validate is not None
                    started = time.time()
                    with preserved_rng_state():
                        results = self.validate(self.model)
                    summary = retrieval_summary(results)
                    summary["seconds"] = round(time.time() - started, 3)
                    record["validation"] = summary
                    for name, value in summary.items():
                        if name.startswith("AR@"):
                            self._scalar(f"val/{name}", value, step)
                    metric = summary.get(SELECTION_METRIC)
                    metric = -math.inf if metric is None else float(metric)
                    best = self.history.best_metric
                    if best is None or metric >= best:  # ties -> the later epoch
                        self.history.best_metric = metric
                        self.history.best_epoch = epoch
                        save_weights(self.best_weights, self.model.state_dict())
                        self.history.best_weights = self.best_weights
                elif self.validate is None:
                    self.history.best_epoch = epoch
                    save_weights(self.best_weights, self.model.state_dict())
                    self.history.best_weights = self.best_weights
                self.history.epochs.append(record)
                save_checkpoint(self.last_checkpoint, self._state(epoch))
                self._say(_epoch_line(record, self.history))
                if self._writer is not None:
                    self._writer.flush()
                self.ctx.barrier()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self.ctx.is_distributed:  # every rank returns rank 0's history (validation, best epoch)
            self.history = self.ctx.broadcast_object(self.history)
        if self.history.best_weights is None and self.best_weights.is_file():
            self.history.best_weights = self.best_weights
        return self.history


def _skip_batch(batch: Mapping[str, Any]) -> bool:
    if batch.get("skip"):
        return True
    positives, negatives = batch.get("positives_mask"), batch.get("negatives_mask")
    if positives is None or negatives is None:
        raise ValueError("training batches need positives_mask and negatives_mask (collate with the tuples)")
    return not (bool(positives.any()) and bool(negatives.any()))


def _epoch_line(record: Mapping[str, Any], history: TrainingHistory) -> str:
    losses = "  ".join(f"{k}={v:.4f}" for k, v in record["losses"].items())
    lrs = ",".join(f"{v:.1e}" for v in record["lr"].values())
    line = f"epoch {record['epoch']:3d}  {losses}  lr={lrs}  {record['seconds']:.1f}s"
    if "active_fraction" in record["stats"]:
        line += f"  active={record['stats']['active_fraction']:.2f}"
    val = record.get("validation")
    if val:
        ar1 = val.get("AR@1")
        ar1p = val.get("AR@1%")
        line += f"  val AR@1={ar1 if ar1 is None else f'{ar1:.2f}'} AR@1%={ar1p if ar1p is None else f'{ar1p:.2f}'}"
        if history.best_epoch == record["epoch"]:
            line += " *"
    return line


def train(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: Iterable[dict[str, Any]],
    train_cfg: "TrainConfig",
    out_dir: str | Path,
    validate: Validator | None = None,
    device: torch.device | str = "cpu",
    resume: bool = True,
    **kwargs: Any,
) -> TrainingHistory:
    """Functional form of ``Trainer(...).fit(resume)`` (see :class:`Trainer`)."""
    trainer = Trainer(model, objective, optimizer, scheduler, train_loader, train_cfg, out_dir,
                      validate=validate, device=device, **kwargs)
    return trainer.fit(resume=resume)


def aggregate_final_losses(history: TrainingHistory) -> dict[str, float]:
    """The last epoch's mean of every named term (and ``total``): the 'final magnitude' of each loss."""
    return dict(history.last["losses"]) if history.last else {}


#: High-level functions defined in :mod:`distilvpr_lib.engine.runs`, importable from here too.
_RUN_FUNCTIONS = ("train_teacher", "distill_student", "evaluate_run", "load_model_from_dir", "get_teacher_cache")


def __getattr__(name: str) -> Any:
    # ``from distilvpr_lib.engine.trainer import train_teacher`` (lazy: runs imports this module).
    if name in _RUN_FUNCTIONS:
        from distilvpr_lib.engine import runs

        return getattr(runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "distill_student",
    "evaluate_run",
    "train_teacher",
    "LossOutput",
    "Objective",
    "SELECTION_RULE",
    "StudentObjective",
    "TeacherObjective",
    "Trainer",
    "TrainingHistory",
    "build_optimizer",
    "build_scheduler",
    "config_fingerprint",
    "keep_float32_under_autocast",
    "resolve_amp_dtype",
    "resolve_device",
    "retrieval_summary",
    "student_parameter_groups",
    "teacher_parameter_groups",
    "train",
]
