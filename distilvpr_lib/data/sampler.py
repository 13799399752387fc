"""MinkLoc positive-pair batch sampler (docs/METHOD.md §2.6), seeded and epoch-aware.

Per epoch, with a ``numpy.random.Generator`` seeded from ``(seed, epoch)``:

1. all ids start unused; visit them in a random order (= pick an unused anchor uniformly);
   an id already used as a second element is skipped;
2. an anchor without positives is skipped;
3. its partner is drawn uniformly among its *unused* positives, or among all its positives when
   none is unused (partners may then repeat); both are marked used;
4. the pair is appended; a batch is emitted as soon as it holds ``batch_size`` elements;
   the last partial batch is kept when it holds at least 4 elements.

So elements ``2k`` and ``2k+1`` of every batch are positives of each other, every batch has an
even size ≥ 4, and all but possibly the last have exactly ``batch_size`` elements. The same
``(seed, epoch)`` always gives the same batches; call :meth:`set_epoch` before each epoch.

:class:`DistributedPositivePairBatchSampler` (torchrun / DDP) forms the *same* global batches and
yields each rank its slice: the batch's pairs cut into ``world_size`` contiguous, near-equal runs of
whole pairs (rank 0 the first), so pairs are never split and the slices, concatenated in rank order,
are the single-process batch. A batch with fewer pairs than ranks (only ever the last, partial one)
is dropped: a rank cannot embed an empty slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

MIN_BATCH_SIZE = 4


class PositivePairBatchSampler(Sampler[list[int]]):
    """Batches of positive pairs for the MinkLoc triplet loss.

    Args:
        tuples: ``{id: TrainingTuple}`` (or a sequence indexed by id) with sorted ``positives``.
        batch_size: even, ≥ 4.
        seed: base seed; the epoch's generator is ``np.random.default_rng([seed, epoch])``.
    """

    def __init__(self, tuples: Mapping[int, Any] | Sequence[Any], batch_size: int, seed: int) -> None:
        if batch_size < MIN_BATCH_SIZE or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= {MIN_BATCH_SIZE}, got {batch_size}")
        items = tuples.items() if isinstance(tuples, Mapping) else enumerate(tuples)
        self.ids = np.array(sorted(int(k) for k, _ in items), dtype=np.int64)
        if self.ids.size and not np.array_equal(self.ids, np.arange(len(self.ids))):
            raise ValueError("training tuple ids must be consecutive 0..N-1")
        self.positives = [np.asarray(tuples[int(i)].positives, dtype=np.int64) for i in self.ids]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of an epoch (default the current one); deterministic in ``(seed, epoch)``."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        used = np.zeros(len(self.ids), dtype=bool)
        batches: list[list[int]] = []
        batch: list[int] = []
        for anchor in rng.permutation(len(self.ids)).tolist():
            if used[anchor]:
                continue
            used[anchor] = True
            positives = self.positives[anchor]
            if positives.size == 0:
                continue
            unused = positives[~used[positives]]
            pool = unused if unused.size else positives
            partner = int(pool[rng.integers(pool.size)])
            used[partner] = True
            batch.extend((anchor, partner))
            if len(batch) >= self.batch_size:
                batches.append(batch)
                batch = []
        if len(batch) >= MIN_BATCH_SIZE:
            batches.append(batch)
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            yield list(batch)

    def __len__(self) -> int:
        """Number of batches in the current epoch (exact: the epoch's batches are generated)."""
        return len(self.batches())


def split_pairs(batch: Sequence[int], world_size: int) -> list[list[int]]:
    """Cut a positive-pair batch into ``world_size`` contiguous slices of whole pairs.

    Args:
        batch: ``2P`` ids, elements ``2k`` and ``2k+1`` a positive pair.
        world_size: number of slices W.

    Returns:
        W lists; slice ``r`` holds pairs ``[floor(r P / W), floor((r+1) P / W))``, so sizes differ by at
        most one pair and ``sum(slices, []) == list(batch)``.

    Raises:
        ValueError: odd batch length or ``world_size < 1``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if len(batch) % 2:
        raise ValueError(f"a positive-pair batch has an even length, got {len(batch)}")
    pairs = len(batch) // 2
    bounds = [2 * ((r * pairs) // world_size) for r in range(world_size + 1)]
    return [list(batch[bounds[r]:bounds[r + 1]]) for r in range(world_size)]


class DistributedPositivePairBatchSampler(PositivePairBatchSampler):
    """The positive-pair batches of :class:`PositivePairBatchSampler`, one slice per rank (DDP).

    Every rank builds the same global batches from ``(seed, epoch)`` and iterates over its slice of
    each (:func:`split_pairs`); all ranks take the same number of steps. ``len()`` is the number of
    global batches trained (those with at least ``world_size`` pairs).

    Args:
        tuples: ``{id: TrainingTuple}`` (kept as ``self.tuples``: the trainer rebuilds the global masks).
        batch_size: the **global** batch size (even, ≥ 4, ≥ 2 · world_size).
        seed: base seed (as the single-process sampler).
        rank: this process's rank; ``None`` = ``torch.distributed``'s (0 without a process group).
        world_size: number of ranks; ``None`` = ``torch.distributed``'s (1 without a process group).
    """

    def __init__(self, tuples: Mapping[int, Any] | Sequence[Any], batch_size: int, seed: int,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__(tuples, batch_size, seed)
        if rank is None or world_size is None:
            import torch.distributed as dist

            initialised = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if initialised else 0) if rank is None else rank
            world_size = (dist.get_world_size() if initialised else 1) if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if self.batch_size // 2 < world_size:
            raise ValueError(f"batch_size={self.batch_size} holds {self.batch_size // 2} pairs, fewer than the "
                             f"{world_size} ranks; use a batch size of at least {2 * world_size}")
        self.tuples = tuples
        self.rank = int(rank)
        self.world_size = int(world_size)

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The single-process batches of an epoch that are trained (those with >= ``world_size`` pairs)."""
        return [b for b in self.batches(epoch) if len(b) // 2 >= self.world_size]

    def dropped_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Single-process batches not trained in distributed mode (fewer pairs than ranks; at most the last)."""
        return [b for b in self.batches(epoch) if len(b) // 2 < self.world_size]

    def local_batches(self, epoch: int | None = None, rank: int | None = None) -> list[list[int]]:
        """Rank ``rank``'s (default this one's) slice of every trained global batch."""
        rank = self.rank if rank is None else int(rank)
        return [split_pairs(b, self.world_size)[rank] for b in self.global_batches(epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.local_batches():
            yield list(batch)

    def __len__(self) -> int:
        """Number of global batches trained this epoch (the same on every rank)."""
        return len(self.global_batches())
