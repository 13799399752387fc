"""Distributed data-parallel training with PyTorch's own engine (``torchrun`` + DistributedDataParallel).

The training engine runs unchanged under ``torchrun``::

    torchrun --nproc-per-node 2 -m distilvpr_lib.cli train-teacher --dataset data/smoke --profile smoke --device cpu

:func:`init_distributed` reads the torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``); with ``WORLD_SIZE`` unset or 1 it returns a single-process
:class:`DistributedContext` and nothing else changes (single-process runs are bit-identical to a
build without this module). Otherwise it initialises the process group (``gloo`` on CPU, ``nccl`` on
CUDA, one device per ``LOCAL_RANK``).

How the global batch is formed (the loss sees the same batch as single-process training)
------------------------------------------------------------------------------------------
1. Every rank builds the **same global batches** as single-process training: the positive-pair
   sampler is a pure function of ``(seed, epoch)`` (:class:`~distilvpr_lib.data.sampler.
   DistributedPositivePairBatchSampler`). Each global batch is cut into ``world_size`` contiguous
   slices of whole pairs (rank 0 gets the first pairs, rank 1 the next, ...), so positive pairs are
   never split and the concatenation of the slices in rank order *is* the global batch.
2. Each rank loads, augments and embeds only its slice (DDP-wrapped model).
3. :func:`assemble_global_batch` all-gathers the slice labels and rebuilds the positive/negative
   masks and ``rel_paths`` of the **global** batch (so batch-hard mining, the relational
   distillation terms and the teacher-cache lookup see all ``B`` samples); a batch is skipped
   (no positive or no negative pair) by all ranks together.
4. :func:`gather_rows_with_grad` all-gathers the (B_local, D) embeddings into (B, D) in rank order.
   Its backward hands every rank the gradient of **its own rows only** (the exact partial
   derivative of the global loss with respect to its slice). Every rank computes the identical
   global loss; back-propagating ``world_size · loss`` and letting DDP *average* the parameter
   gradients gives ``(1/W) Σ_r W ∂L/∂θ|_slice r = ∂L/∂θ`` — exactly the single-process gradient.
5. Batch norm: per-rank statistics would change the forward pass, so the model's BatchNorm layers
   are converted to :class:`DistributedBatchNorm` (``train.sync_batchnorm``, default on): mean and
   variance over the global batch (every rank's count, mean and sum of squared deviations all-gathered
   and merged exactly), the same running statistics as single-process training, and gradients through
   the statistics (one all-reduce in the backward).
   State-dict keys are unchanged. torch's ``SyncBatchNorm`` is CUDA-only; this one runs on gloo too.

Rank 0 alone logs (tqdm, TensorBoard, per-epoch lines), validates, writes checkpoints and result
files; the other ranks wait at a barrier. Checkpoints hold the unwrapped module's ``state_dict``, so
they resume single-process runs too. In distributed mode every rank's generators are reseeded at the
start of each epoch from ``(seed, epoch, rank)`` (:func:`rank_epoch_seed`), so each rank draws its own
augmentations and a resumed distributed run (same world size) repeats the uninterrupted one.

The last partial batch of an epoch is trained only when it holds at least ``world_size`` pairs (a
rank cannot run the sparse model on an empty slice); with 2 ranks this never drops anything, since
every batch holds at least 2 pairs.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from distilvpr_lib.engine.train.devices import resolve_device

log = logging.getLogger(__name__)

#: torchrun's environment variables.
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_RANK = "RANK"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"

#: ``train.distributed_backend`` values.
BACKENDS: tuple[str, ...] = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 in single-process runs).
        world_size: number of processes (1 in single-process runs).
        local_rank: rank on this node (selects the CUDA device).
        local_world_size: processes on this node.
        device: this process's device.
        backend: ``"gloo"`` / ``"nccl"``, or ``None`` without a process group.
        owns_group: whether :func:`init_distributed` created the process group (and so
            :func:`shutdown_distributed` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Device of the tensors passed to collectives (CUDA for nccl, CPU for gloo)."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        """Wait for every rank (no-op in single-process runs)."""
        if self.is_distributed:
            if self.backend == "nccl" and self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; tensors inside are fine). Identity when single."""
        if not self.is_distributed:
            return obj
        holder = [obj if self.rank == src else None]
        dist.broadcast_object_list(holder, src=src, device=self.comm_device if self.backend == "nccl" else None)
        return holder[0]

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` when single)."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def single_process_context(device: torch.device | str = "cpu") -> DistributedContext:
    """The context of an ordinary run: rank 0 of 1 on ``device``."""
    return DistributedContext(device=torch.device(device))


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get(ENV_WORLD_SIZE, "1") or 1)


def process_rank() -> int:
    """This process's global rank: the process group's, else ``RANK`` from the environment, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get(ENV_RANK, "0") or 0)


def is_main_process() -> bool:
    """Rank 0 (or no distributed run at all)."""
    return process_rank() == 0


def _distributed_device(device: str, local_rank: int) -> torch.device:
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise ValueError(f"train.device={device!r}: distributed training supports cpu and cuda devices")
    if not torch.cuda.is_available():
        raise RuntimeError(f"train.device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
    count = torch.cuda.device_count()
    index = local_rank if count > 1 else 0  # one visible device per process: use it
    if index >= count:
        raise RuntimeError(f"LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible; "
                           "use --nproc-per-node <= the number of GPUs")
    requested = torch.device(device)
    if requested.type == "cuda" and requested.index is not None and requested.index != index:
        log.warning("train.device=%s ignored under torchrun: rank %d uses cuda:%d (its LOCAL_RANK)",
                    device, local_rank, index)
    return torch.device("cuda", index)


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """The run's :class:`DistributedContext`, initialising the process group from torchrun's environment.

    Args:
        device: ``train.device`` (``"auto"`` / ``"cpu"`` / ``"cuda[:n]"``). Under torchrun the CUDA
            device index is ``LOCAL_RANK`` (or 0 when each process sees one device).
        backend: ``"auto"`` (nccl on CUDA, gloo on CPU), ``"gloo"`` or ``"nccl"``.
        timeout_s: collective timeout (rank 0 validates and tests while the others wait).

    Returns:
        A single-process context (``WORLD_SIZE`` unset or 1 and no process group) or the distributed one.
        An already initialised process group is reused (and not owned).

    Raises:
        KeyError: unknown backend. RuntimeError: CUDA asked for but missing, or too few GPUs.
    """
    if backend not in BACKENDS:
        raise KeyError(f"unknown distributed backend {backend!r}; known: {list(BACKENDS)}")
    initialised = dist.is_available() and dist.is_initialized()
    if env_world_size() <= 1 and not initialised:
        return single_process_context(resolve_device(device))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get(ENV_LOCAL_RANK, "0") or 0)
    local_world = int(os.environ.get(ENV_LOCAL_WORLD_SIZE, "0") or 0)
    torch_device = _distributed_device(device, local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    owns = False
    if not initialised:
        chosen = backend if backend != "auto" else ("nccl" if torch_device.type == "cuda" else "gloo")
        if chosen == "nccl" and torch_device.type != "cuda":
            raise ValueError("the nccl backend needs CUDA devices; use train.distributed_backend=gloo on CPU")
        dist.init_process_group(backend=chosen, timeout=datetime.timedelta(seconds=float(timeout_s)))
        owns = True
    world = dist.get_world_size()
    ctx = DistributedContext(rank=dist.get_rank(), world_size=world, local_rank=local_rank,
                             local_world_size=local_world or world, device=torch_device,
                             backend=str(dist.get_backend()), owns_group=owns)
    if ctx.is_main:
        log.info("distributed: %d processes, backend %s, device %s", world, ctx.backend, torch_device)
    return ctx


def shutdown_distributed(ctx: DistributedContext) -> None:
    """Destroy the process group if ``ctx`` created it (after a final barrier)."""
    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        ctx.barrier()
        dist.destroy_process_group()


def rank_epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of rank ``rank``'s generators in ``epoch`` of a distributed run (a pure function, < 2**31)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0]) & 0x7FFFFFFF


# ---------------------------------------------------------------------------
# Collectives on rows
# ---------------------------------------------------------------------------
def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))], dim=0)


def gather_sizes(ctx: DistributedContext, n_local: int) -> list[int]:
    """Every rank's row count, in rank order."""
    if not ctx.is_distributed:
        return [int(n_local)]
    mine = torch.tensor([int(n_local)], dtype=torch.int64, device=ctx.comm_device)
    out = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def all_gather_rows(ctx: DistributedContext, x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (n_r, ...) in rank order -> (Σ n_r, ...); no gradient.

    Args:
        x: this rank's rows (any dtype the backend supports).
        sizes: every rank's row count when known (saves a collective).
    """
    if not ctx.is_distributed:
        return x
    sizes = list(sizes) if sizes is not None else gather_sizes(ctx, x.shape[0])
    rows = max(sizes)
    device = x.device
    padded = _padded(x.detach().to(ctx.comm_device), rows)
    out = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded)
    return torch.cat([part[:n] for part, n in zip(out, sizes)], dim=0).to(device)


class _GatherRowsWithGrad(torch.autograd.Function):
    """All-gather of equally sized (padded) row blocks; the backward keeps this rank's block only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:  # type: ignore[override]
        ctx.rank = rank
        out = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        # d(global loss)/d(this rank's rows): the other ranks' rows are constants here; each rank
        # back-propagates its own slice (see the module docstring for the world_size scaling).
        return grad[ctx.rank].contiguous(), None, None


def gather_rows_with_grad(ctx: DistributedContext, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """All-gather (n_local, D) rows into (Σ n_r, D) in rank order, differentiable w.r.t. the local rows.

    The gradient flowing back to ``x`` is the block of the output gradient that belongs to this rank
    (no communication in the backward). The collective runs on ``ctx.comm_device`` (the model's device
    with nccl, CPU with gloo); the result lives on ``x``'s device.
    """
    if not ctx.is_distributed:
        return x
    sizes = [int(s) for s in sizes]
    if x.shape[0] != sizes[ctx.rank]:
        raise ValueError(f"rank {ctx.rank}: {x.shape[0]} local rows but the gathered sizes say {sizes[ctx.rank]}")
    device = x.device
    stacked = _GatherRowsWithGrad.apply(_padded(x.to(ctx.comm_device), max(sizes)), ctx.rank, ctx.world_size)
    return torch.cat([stacked[r, :n] for r, n in enumerate(sizes)], dim=0).to(device)


def gather_outputs(ctx: DistributedContext, outputs: Mapping[str, Any], sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """The model's per-sample outputs of the global batch: every (B_local, D) tensor gathered with gradient.

    Feature maps and other non-2-D outputs are dropped (the objectives use the embeddings only).
    """
    n_local = int(sizes[ctx.rank])
    return {name: gather_rows_with_grad(ctx, value, sizes) for name, value in outputs.items()
            if torch.is_tensor(value) and value.ndim == 2 and value.shape[0] == n_local}


def assemble_global_batch(ctx: DistributedContext, batch: Mapping[str, Any],
                          tuples: Mapping[int, Any]) -> dict[str, Any]:
    """This rank's collated slice plus what the objective needs of the **global** batch.

    Args:
        batch: the slice collated by ``data.collate`` (``labels`` (B_local,), ``coords``, ``images``, ...).
        tuples: ``{id: TrainingTuple}`` (for the masks and the ``rel_paths``).

    Returns:
        A copy of ``batch`` whose ``labels`` (B,), ``rel_paths`` (B), ``positives_mask`` /
        ``negatives_mask`` (B, B) and ``skip`` describe the global batch (slices concatenated in rank
        order), with ``local_sizes`` (every rank's slice size), ``local_labels`` and ``local_rel_paths``.
        The model inputs (``coords``, ``images``, ``clouds``) stay those of the slice.
    """
    from distilvpr_lib.data.collate import make_masks

    local_labels = torch.as_tensor(batch["labels"], dtype=torch.int64)
    sizes = gather_sizes(ctx, int(local_labels.shape[0]))
    labels = all_gather_rows(ctx, local_labels, sizes).cpu()
    positives, negatives = make_masks(labels.numpy(), tuples)
    out = dict(batch)
    out.update(
        labels=labels,
        rel_paths=[tuples[int(i)].rel_scan_filepath for i in labels.tolist()],
        positives_mask=positives,
        negatives_mask=negatives,
        skip=not (bool(positives.any()) and bool(negatives.any())),
        local_sizes=sizes,
        local_labels=local_labels,
        local_rel_paths=list(batch.get("rel_paths", [])),
    )
    return out


def broadcast_module_state(ctx: DistributedContext, module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (in place)."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if not torch.is_tensor(tensor):
                continue
            if tensor.device == ctx.comm_device:
                dist.broadcast(tensor, src=src)
            else:
                buffer = tensor.to(ctx.comm_device)
                dist.broadcast(buffer, src=src)
                tensor.copy_(buffer)


# ---------------------------------------------------------------------------
# Batch norm over the global batch
# ---------------------------------------------------------------------------
def _sync_active(group: Any) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the global batch (all ranks); CPU (gloo) and CUDA.

    Outside distributed training, or in eval mode, it is exactly ``nn.BatchNorm{1,2,3}d``
    (``F.batch_norm``). Parameter and buffer names are those of ``nn.BatchNorm*``, so state dicts
    are interchangeable. Inputs are (N, C, *) with any number of trailing dims.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _sync_active(self.process_group)):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else float(self.momentum)
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.item())
        return _global_batch_norm(input, self, factor)


class _AllGatherSumGrad(torch.autograd.Function):
    """All-gather of one row per rank -> (W, K); the backward sums the gradients over ranks (every rank's
    loss depends on every rank's row) and keeps this rank's row."""

    @staticmethod
    def forward(ctx: Any, row: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        # gloo with CUDA tensors (several ranks sharing a GPU): communicate through the host
        ctx.via_host = row.is_cuda and dist.get_backend(group) == "gloo"
        send = row.detach().cpu() if ctx.via_host else row.contiguous()
        out = [torch.empty_like(send) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, send, group=group)
        return torch.stack(out, dim=0).to(row.device)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        summed = grad.detach().cpu() if ctx.via_host else grad.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=ctx.group)
        return summed[ctx.rank].to(grad.device), None


def _all_gather_with_grad(row: torch.Tensor, group: Any) -> torch.Tensor:
    return _AllGatherSumGrad.apply(row, group)


def _global_batch_norm(input: torch.Tensor, bn: DistributedBatchNorm, factor: float) -> torch.Tensor:
    """Batch norm with the statistics of the global batch: one all-gather of every rank's (count, mean,
    sum of squared deviations), merged exactly (Chan et al.); one all-reduce in the backward."""
    channels = input.shape[1]
    dims = [0, *range(2, input.dim())]
    shape = [1, channels] + [1] * (input.dim() - 2)
    x = input.float()
    # Reductions accumulate in float64 on the CPU (as ATen's CPU batch norm); activations stay float32.
    acc = torch.float64 if x.device.type == "cpu" else torch.float32
    n_local = input.numel() // max(channels, 1)
    count = torch.full((1,), float(n_local), dtype=acc, device=x.device)
    local_mean = x.sum(dim=dims, dtype=acc) / max(n_local, 1)
    local_m2 = (x - local_mean.to(x.dtype).view(shape)).square().sum(dim=dims, dtype=acc)
    stats = _all_gather_with_grad(torch.cat([count, local_mean, local_m2]), bn.process_group)  # (W, 1 + 2C)
    counts = stats[:, :1].detach()
    total = counts.sum()
    means, m2s = stats[:, 1:1 + channels], stats[:, 1 + channels:]
    mean = (counts * means).sum(dim=0) / total
    var = (m2s + counts * (means - mean).square()).sum(dim=0) / total  # biased, as batch norm normalises
    out = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + bn.eps).to(x.dtype).view(shape)
    if bn.affine:
        out = out * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.training and bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            unbiased = var.detach() * (total / (total - 1).clamp(min=1))
            bn.running_mean.mul_(1 - factor).add_(mean.detach().to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return out.to(input.dtype)


def convert_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every ``nn.BatchNorm{1,2,3}d`` inside ``module`` by :class:`DistributedBatchNorm`, in place.

    The new layers reuse the old ``Parameter`` objects and buffers (an optimiser built before keeps
    working) and sit under the same attribute names (identical ``state_dict`` keys and order).

    Returns:
        ``module`` (or the replacement when ``module`` itself is a batch norm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistributedBatchNorm):
        new = DistributedBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats, process_group=process_group)
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        replacement = convert_batchnorm(child, process_group)
        if replacement is not child:
            module._modules[name] = replacement
    return module


# ---------------------------------------------------------------------------
# Local launcher (tests, benchmarks): N processes on this machine without torchrun
# ---------------------------------------------------------------------------
def _spawn_entry(local_rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    os.environ.update({ENV_RANK: str(local_rank), ENV_LOCAL_RANK: str(local_rank), ENV_WORLD_SIZE: str(world_size),
                       ENV_LOCAL_WORLD_SIZE: str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    fn(*args)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (for ``MASTER_PORT``)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_local(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``world_size`` fresh processes with torchrun's environment set (single node).

    ``fn`` must be importable (a module-level function); it calls :func:`init_distributed` itself.
    An exception in any process is raised here.
    """
    import torch.multiprocessing as mp

    mp.spawn(_spawn_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)


__all__ = [
    "DistributedBatchNorm",
    "DistributedContext",
    "all_gather_rows",
    "assemble_global_batch",
    "broadcast_module_state",
    "convert_batchnorm",
    "env_world_size",
    "gather_outputs",
    "gather_rows_with_grad",
    "gather_sizes",
    "init_distributed",
    "is_main_process",
    "process_rank",
    "rank_epoch_seed",
    "shutdown_distributed",
    "single_process_context",
    "spawn_local",
]
