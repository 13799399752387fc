"""MinkowskiEngine backend (the reference's library), imported lazily.

MinkowskiEngine is not a pip dependency of the project: build it with ``python scripts/build_minkowski.py``.
Per-cloud reductions (ECA's channel descriptor, GeM) are done by the shared network code with
``index_add_`` on the batch index, never with ME's global pooling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...optional import require
from .base import SparseBackend

def import_minkowski() -> Any:
    """Import MinkowskiEngine or raise ImportError with the build instruction (:mod:`distilvpr_lib.optional`)."""
    return require("MinkowskiEngine", "the 'minkowski' sparse backend")


class MinkowskiBackend(SparseBackend):
    """Sparse layers from MinkowskiEngine (``ME.MinkowskiConvolution`` etc.)."""

    name = "minkowski"

    def __init__(self) -> None:
        import_minkowski()  # fail early with the build instruction

    @property
    def ME(self) -> Any:  # noqa: N802 - the library's usual alias
        """The MinkowskiEngine module (not stored on the instance, so models stay deep-copyable)."""
        return import_minkowski()

    @classmethod
    def is_available(cls) -> bool:
        try:
            import_minkowski()
        except ImportError:
            return False
        return True

    def sparse_input(self, coords: Tensor, features: Tensor, num_batches: int | None = None) -> Any:
        ME = self.ME
        return ME.SparseTensor(features=features, coordinates=coords.int().to(features.device),
                               device=features.device)

    def features(self, x: Any) -> Tensor:
        return x.F

    def batch_index(self, x: Any) -> Tensor:
        return x.C[:, 0].long()

    def coordinates(self, x: Any) -> Tensor:
        return x.C.long()

    def tensor_stride(self, x: Any) -> int:
        return int(x.tensor_stride[0])

    def replace_features(self, x: Any, features: Tensor) -> Any:
        return self.ME.SparseTensor(features, coordinate_map_key=x.coordinate_map_key,
                                    coordinate_manager=x.coordinate_manager)

    def add(self, x: Any, y: Any) -> Any:
        return x + y

    def convolution(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
        return self.ME.MinkowskiConvolution(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                            bias=False, dimension=3)

    def convolution_transpose(self, in_channels: int, out_channels: int, kernel_size: int,
                              stride: int) -> nn.Module:
        return self.ME.MinkowskiConvolutionTranspose(in_channels, out_channels, kernel_size=kernel_size,
                                                     stride=stride, bias=False, dimension=3)

    def batch_norm(self, num_features: int, momentum: float = 0.1) -> nn.Module:
        return self.ME.MinkowskiBatchNorm(num_features, momentum=momentum)

    def relu(self) -> nn.Module:
        return self.ME.MinkowskiReLU()

    def is_convolution(self, module: nn.Module) -> bool:
        return isinstance(module, self.ME.MinkowskiConvolution)


def minkowski_kernel_offsets(kernel_size: int, transpose: bool = False) -> torch.Tensor:
    """Derive MinkowskiEngine's kernel-offset order from the library itself (a one-voxel probe).

    A single input voxel at the origin (feature 1) goes through a 1->1 channel convolution whose kernel
    row ``k`` holds the value ``k + 1``; the output is evaluated on a dense block of candidate coordinates.
    For a convolution ``out[o] = sum_k in[o + off_k] W[k]``, the output at ``o = -off_k`` equals ``k + 1``;
    for a transposed convolution ``out[i + off_k] += in[i] W[k]`` it appears at ``o = off_k``.

    Args:
        kernel_size: kernel size per axis.
        transpose: probe ``MinkowskiConvolutionTranspose`` (stride = kernel_size, onto stride 1) instead of a
            stride-1 ``MinkowskiConvolution``.

    Returns:
        LongTensor (kernel_size**3, 3): row k is the offset (in units of the fine tensor stride) of kernel row k.
    """
    ME = import_minkowski()
    volume = kernel_size**3
    span = torch.arange(-kernel_size, kernel_size + 1)
    grid = torch.stack(torch.meshgrid(span, span, span, indexing="ij"), dim=-1).reshape(-1, 3)
    out_coords = torch.cat([torch.zeros(len(grid), 1, dtype=torch.long), grid], 1).int()
    if transpose:
        stride = kernel_size
        # a fine set containing the candidate outputs, a coarse voxel at the origin built from it
        fine = ME.SparseTensor(torch.zeros(len(out_coords), 1), coordinates=out_coords)
        pool = ME.MinkowskiConvolution(1, 1, kernel_size=stride, stride=stride, bias=False, dimension=3)
        coarse = pool(fine)
        feats = torch.zeros(coarse.F.shape[0], 1)
        feats[(coarse.C[:, 1:] == 0).all(1)] = 1.0
        x = ME.SparseTensor(feats, coordinate_map_key=coarse.coordinate_map_key,
                            coordinate_manager=coarse.coordinate_manager)
        conv = ME.MinkowskiConvolutionTranspose(1, 1, kernel_size=kernel_size, stride=stride, bias=False,
                                                dimension=3)
        with torch.no_grad():
            conv.kernel.copy_(torch.arange(1, volume + 1, dtype=torch.float32).view(-1, 1, 1))
            y = conv(x, fine.coordinate_map_key)
        sign = 1
    else:
        x = ME.SparseTensor(torch.ones(1, 1), coordinates=torch.zeros(1, 4, dtype=torch.int32))
        conv = ME.MinkowskiConvolution(1, 1, kernel_size=kernel_size, stride=1, bias=False, dimension=3)
        with torch.no_grad():
            conv.kernel.copy_(torch.arange(1, volume + 1, dtype=torch.float32).view(-1, 1, 1))
            y = conv(x, out_coords)
        sign = -1
    values = y.F[:, 0].round().long()
    coords = y.C[:, 1:].long()
    offsets = torch.full((volume, 3), 10**6, dtype=torch.long)
    for value, coord in zip(values.tolist(), coords):
        if value > 0:
            offsets[value - 1] = sign * coord
    if (offsets == 10**6).any():
        raise RuntimeError(f"probe did not recover every kernel offset for kernel_size={kernel_size}")
    return offsets
