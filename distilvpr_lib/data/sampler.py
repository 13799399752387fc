"""MinkLoc positive-pair batch sampler (METHOD.md §4.5), seeded and epoch-aware.

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
