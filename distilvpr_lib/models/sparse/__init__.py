"""Sparse 3-D convolution backends and the MinkLoc cloud branch built on them.

``SPARSE_BACKENDS`` maps a name to a backend class (a factory taking no arguments):

* ``"torch"``: pure PyTorch (:mod:`.torch_backend`), always available;
* ``"minkowski"``: MinkowskiEngine (:mod:`.minkowski_backend`), needs ``python scripts/build_minkowski.py``.

Both give identical ``state_dict`` keys and shapes (kernels ``(K, in, out)`` in MinkowskiEngine's offset
order, :mod:`.kernel_offsets`).
"""

from __future__ import annotations

from typing import Callable

from .base import SparseBackend
from .kernel_offsets import ME_OFFSETS_2, ME_OFFSETS_3, kernel_offsets
from .minkfpn import CloudBranch, ECABasicBlock, ECALayer, MinkFPN, MinkGeM, per_cloud_mean
from .minkowski_backend import MinkowskiBackend
from .torch_backend import TorchSparseBackend

SPARSE_BACKENDS: dict[str, Callable[[], SparseBackend]] = {
    "torch": TorchSparseBackend,
    "minkowski": MinkowskiBackend,
}


def get_sparse_backend(name: str) -> SparseBackend:
    """Instantiate a backend by name.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        ImportError: ``"minkowski"`` without MinkowskiEngine installed (says how to build it).
    """
    if name not in SPARSE_BACKENDS:
        raise KeyError(f"unknown sparse backend {name!r}; known backends: {sorted(SPARSE_BACKENDS)}")
    return SPARSE_BACKENDS[name]()


__all__ = [
    "SPARSE_BACKENDS", "SparseBackend", "TorchSparseBackend", "MinkowskiBackend", "get_sparse_backend",
    "CloudBranch", "MinkFPN", "ECABasicBlock", "ECALayer", "MinkGeM", "per_cloud_mean",
    "kernel_offsets", "ME_OFFSETS_2", "ME_OFFSETS_3",
]
