"""The training loop: one :class:`Trainer` for the teacher and the student (docs/METHOD.md §5).

:class:`Trainer` runs epochs: positive-pair batches (the sampler reseeded per epoch through
``set_epoch``), batches without a positive or a negative pair skipped, Adam steps,
``MultiStepLR`` stepped once per epoch, validation every ``eval_every`` epochs (always at the
last), the best weights by **validation** AR@1 kept, an atomic checkpoint after every epoch
and exact resume from it, tqdm progress and TensorBoard scalars
(:mod:`~distilvpr_lib.engine.train.tensorboard_log`). What it minimises is an objective
(:mod:`~distilvpr_lib.engine.train.objectives`); its optimiser and schedule come from
:mod:`~distilvpr_lib.engine.train.optim`. The teacher and student pipelines
(:mod:`~distilvpr_lib.engine.runs.teacher_run`, :mod:`~distilvpr_lib.engine.runs.student_run`) wire
config → data → model → objective → trainer → test evaluation → files.

Model selection (documented choice): the epoch with the highest validation AR@1 is kept; on a
tie the **later** epoch wins (it has trained longer at an equal score). With
``train.use_validation_split = False`` no selection happens: the last epoch is kept. The test
split is never read during training (the reference picked epochs on test, docs/METHOD.md §8.3).

Exact resume: the checkpoint written at the end of epoch e holds the model, optimiser,
scheduler, AMP scaler and every global RNG state *after* the whole epoch; validation runs inside
:func:`~distilvpr_lib.engine.train.seeding.preserved_rng_state`, so evaluating never shifts the training
stream. The sampler's batches depend only on ``(seed, epoch)``. A run stopped after epoch e and
resumed therefore reaches bit-identical weights to an uninterrupted one in deterministic mode
(``cfg.train.deterministic``).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distilvpr_lib.data.collate import move_to_device
from distilvpr_lib.engine.train.checkpoint import (
    BEST_WEIGHTS_NAME,
    CHECKPOINT_DIR_NAME,
    LAST_CHECKPOINT_NAME,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from distilvpr_lib.engine.train.console import say
from distilvpr_lib.engine.train.devices import (channels_last_enabled, cpu_has_native_bfloat16,
                                                keep_float32_under_autocast, precision_record, resolve_amp_dtype)
from distilvpr_lib.engine.train.distributed import (
    DistributedContext,
    assemble_global_batch,
    convert_batchnorm,
    gather_outputs,
    rank_epoch_seed,
    single_process_context,
)
from distilvpr_lib.engine.evaluation.results import retrieval_summary
from distilvpr_lib.engine.train.objectives import LossOutput, Objective
from distilvpr_lib.engine.train.seeding import capture_rng_state, preserved_rng_state, restore_rng_state, seed_everything
from distilvpr_lib.engine.train.tensorboard_log import ScalarLog

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import TrainConfig
    from distilvpr_lib.engine.evaluation.results import RetrievalResults

log = logging.getLogger(__name__)

#: Metric used for model selection on the validation split.
SELECTION_METRIC: str = "AR@1"
SELECTION_RULE: str = "highest validation AR@1; ties -> the later epoch"


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
        run_record: plain values stored in the checkpoint as ``run`` (the run pipelines record the dataset's
            fingerprint there, for the resume check of ``engine.runs.run_folder.check_resumable``).
        progress: tqdm bars and per-epoch lines.
        tensorboard: write TensorBoard scalars.
        distributed: the :class:`~distilvpr_lib.engine.train.distributed.DistributedContext` of a torchrun run
            (``None`` = single process). Then the model is DDP-wrapped (batch norm over the global batch
            with ``train_cfg.sync_batchnorm``), the loader's batch sampler must be a
            ``DistributedPositivePairBatchSampler``, the loss is computed on the gathered global batch,
            and only rank 0 logs, validates and writes (see :mod:`distilvpr_lib.engine.train.distributed`).

    Mixed precision (``train_cfg.mixed_precision``; CUDA, or bfloat16 on the CPU) autocasts the forward pass to
    ``train_cfg.amp_dtype`` (float16 with a GradScaler, or bfloat16) except the sparse cloud branch, which
    stays float32 (:func:`keep_float32_under_autocast`); the model and images use the channels-last memory
    format when ``train_cfg.channels_last`` on CUDA, and on the CPU when ``train_cfg.channels_last_cpu`` too
    (:func:`channels_last_enabled`).
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
        run_record: Mapping[str, Any] | None = None,
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
        self.run_record = dict(run_record or {})
        self.ctx = distributed if distributed is not None else single_process_context(self.device)
        self.progress = progress and self.ctx.is_main
        self.tensorboard = tensorboard and self.ctx.is_main
        self.amp_dtype = resolve_amp_dtype(train_cfg.amp_dtype, self.device)
        # CUDA: float16 (with a GradScaler) or bfloat16. CPU: bfloat16 only (AVX-512 BF16 / AMX kernels);
        # float16 autocast on CPU is left off.
        self.use_amp = bool(train_cfg.mixed_precision) and (
            self.device.type == "cuda" or (self.device.type == "cpu" and self.amp_dtype == torch.bfloat16))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.channels_last = channels_last_enabled(train_cfg, self.device)
        if self.use_amp and self.device.type == "cpu" and not cpu_has_native_bfloat16():
            log.warning("train.mixed_precision: bfloat16 autocast on a CPU without bfloat16 kernels (%s) is ~15x "
                        "slower than float32 (benchmarks/README.md, 'Stage profile (issue 26)')",
                        torch.backends.cpu.get_cpu_capability())
        self.sync_batchnorm = bool(train_cfg.sync_batchnorm)
        #: The module that trains: ``model`` itself, or its DDP wrapper in distributed runs (set by fit).
        self.train_model: nn.Module = model
        self._tuples: Any = None
        self.checkpoint_dir = self.out_dir / CHECKPOINT_DIR_NAME
        self.last_checkpoint = self.checkpoint_dir / LAST_CHECKPOINT_NAME
        self.best_weights = self.checkpoint_dir / BEST_WEIGHTS_NAME
        self.history = TrainingHistory()
        self.scalars = ScalarLog(self.out_dir / "tensorboard", enabled=self.tensorboard)

    # ------------------------------------------------------------------ helpers
    @property
    def precision(self) -> dict[str, Any]:
        """What this run's training floats are computed in (device, autocast, CPU capability), for its record."""
        return precision_record(self.device, self.amp_dtype if self.use_amp else None)

    @property
    def group_names(self) -> list[str]:
        return [g.get("name", f"group{i}") for i, g in enumerate(self.optimizer.param_groups)]

    def _say(self, message: str) -> None:
        if not self.ctx.is_main:
            return
        log.info(message)
        say(message, self.progress)

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
            "run": self.run_record,
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
        from distilvpr_lib.progress import progress_bar

        sampler = self._sampler()
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.ctx.is_distributed:  # every rank its own augmentations; exact resume at a given world size
            seed_everything(rank_epoch_seed(self.train_cfg.seed, epoch, self.ctx.rank))
        if hasattr(self.objective, "set_epoch"):  # objectives whose terms depend on the epoch
            self.objective.set_epoch(epoch)
        self.train_model.train()  # every epoch: evaluation leaves the model in eval mode (docs/METHOD.md §8.2)
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
        bar = progress_bar(self.train_loader, total=total, desc=f"epoch {epoch}/{self.train_cfg.epochs}",
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
                self.scalars.scalar(f"train/loss/{name}", value, step)
            for name, value in result.stats.items():
                if name.endswith("_max"):
                    stat_max[name] = max(stat_max.get(name, -math.inf), value)
                else:
                    stat_sums[name] = stat_sums.get(name, 0.0) + value
                if name == "active_fraction":
                    self.scalars.scalar("train/active_fraction", value, step)
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
        :func:`~distilvpr_lib.engine.train.distributed.assemble_global_batch`; the model embeds the slice,
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
        :class:`~distilvpr_lib.engine.train.distributed.DistributedBatchNorm` (same parameters, same state-dict
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
        self.scalars.enabled = self.tensorboard
        self.scalars.open(purge_step=self.history.global_step + 1 if start else None)
        try:
            for epoch in range(start + 1, self.train_cfg.epochs + 1):
                record = self._train_one_epoch(epoch)
                self.scheduler.step()
                step = self.history.global_step
                self.scalars.epoch(record, step)
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
                    self.scalars.validation(summary, step)
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
                self.scalars.flush()
                self.ctx.barrier()
        finally:
            self.scalars.close()
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
    if record.get("skipped_batches"):
        total = record["batches"] + record["skipped_batches"]
        line += (f"  skipped {record['skipped_batches']}/{total} batches (no positive or no negative pair in the "
                 "batch)")
    val = record.get("validation")
    if val:
        ar1 = val.get("AR@1")
        ar1p = val.get("AR@1%")
        line += f"  val AR@1={ar1 if ar1 is None else f'{ar1:.2f}'} AR@1%={ar1p if ar1p is None else f'{ar1p:.2f}'}"
        if history.best_epoch == record["epoch"]:
            line += " *"
    return line


__all__ = ["SELECTION_METRIC", "SELECTION_RULE", "Trainer", "TrainingHistory", "Validator"]
