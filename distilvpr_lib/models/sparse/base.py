"""The small interface a sparse-convolution backend provides to the cloud branch (MinkFPN + GeM).

The network in :mod:`distilvpr_lib.models.sparse.minkfpn` is written once against this interface; a backend
supplies the layer modules (whose parameter names and shapes follow MinkowskiEngine, so every backend has
the same ``state_dict``) and a handful of functions on its sparse-tensor type.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class SparseBackend:
    """Abstract sparse backend. ``SparseTensor`` below means the backend's own sparse-tensor type."""

    #: registry name
    name: str = "abstract"

    # -- availability ------------------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        """Whether the backend's dependencies can be imported."""
        return True

    # -- tensors ---------------------------------------------------------------------------------------
    def sparse_input(self, coords: Tensor, features: Tensor, num_batches: int | None = None) -> Any:
        """Sparse tensor at stride 1 from IntTensor (N, 4) ``[batch, x, y, z]`` and features (N, C)."""
        raise NotImplementedError

    def features(self, x: Any) -> Tensor:
        """(N, C) features of a sparse tensor."""
        raise NotImplementedError

    def batch_index(self, x: Any) -> Tensor:
        """LongTensor (N,) cloud index of each row of ``features(x)``."""
        raise NotImplementedError

    def coordinates(self, x: Any) -> Tensor:
        """LongTensor (N, 4) ``[batch, x, y, z]`` of each row of ``features(x)``."""
        raise NotImplementedError

    def tensor_stride(self, x: Any) -> int:
        """Tensor stride of ``x``."""
        raise NotImplementedError

    def replace_features(self, x: Any, features: Tensor) -> Any:
        """A sparse tensor on the same coordinates as ``x`` with new features (N, C')."""
        raise NotImplementedError

    def add(self, x: Any, y: Any) -> Any:
        """Element-wise sum of two sparse tensors on the same coordinate set."""
        raise NotImplementedError

    # -- layers (parameter names as MinkowskiEngine's) --------------------------------------------------
    def convolution(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
        """Sparse convolution without bias; parameter ``kernel`` (K, in, out) or (in, out) when K == 1."""
        raise NotImplementedError

    def convolution_transpose(self, in_channels: int, out_channels: int, kernel_size: int,
                              stride: int) -> nn.Module:
        """Transposed sparse convolution onto the existing finer coordinate set; parameter ``kernel``."""
        raise NotImplementedError

    def batch_norm(self, num_features: int, momentum: float = 0.1) -> nn.Module:
        """Batch norm over voxels; holds an ``nn.BatchNorm1d`` as attribute ``bn``."""
        raise NotImplementedError

    def relu(self) -> nn.Module:
        raise NotImplementedError

    def is_convolution(self, module: nn.Module) -> bool:
        """True for (non-transposed) sparse convolutions: the ones the reference initialises Kaiming-normal."""
        raise NotImplementedError
