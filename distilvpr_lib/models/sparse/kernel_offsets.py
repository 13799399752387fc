"""Kernel-offset order of MinkowskiEngine's hyper-cube kernels (shared by both sparse backends).

A sparse kernel is stored as a ``(K, C_in, C_out)`` tensor; row ``k`` multiplies the input voxel at
``out + offset[k] * tensor_stride`` (regular convolution) or feeds the output voxel
``in + offset[k] * out_tensor_stride`` (transposed convolution). Both backends must agree on this order so
that one state_dict drives both.

The order below was derived from the built MinkowskiEngine 0.5.4 library itself (a one-voxel probe through
``MinkowskiConvolution`` / ``MinkowskiConvolutionTranspose``; see
``tests/test_backend_equivalence.py::test_kernel_offset_order_matches_minkowski``):

* the **x axis varies fastest**, then y, then z;
* an **odd** kernel size ``k`` spans ``-(k//2) .. k//2`` along each axis (centred);
* an **even** kernel size spans ``0 .. k-1`` (anchored at the output voxel, so a 2x2x2 stride-2 kernel covers
  exactly the 8 fine voxels that fall into one coarse voxel).
"""

from __future__ import annotations

import torch

#: The 27 offsets of a 3x3x3 kernel in MinkowskiEngine order (index k -> (dx, dy, dz)).
ME_OFFSETS_3: tuple[tuple[int, int, int], ...] = tuple(
    (x, y, z) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)
)
#: The 8 offsets of a 2x2x2 kernel in MinkowskiEngine order.
ME_OFFSETS_2: tuple[tuple[int, int, int], ...] = tuple(
    (x, y, z) for z in (0, 1) for y in (0, 1) for x in (0, 1)
)


def axis_offsets(kernel_size: int) -> list[int]:
    """Offsets along one axis in MinkowskiEngine order (centred if odd, ``0..k-1`` if even)."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    if kernel_size % 2 == 1:
        return list(range(-(kernel_size // 2), kernel_size // 2 + 1))
    return list(range(kernel_size))


def kernel_offsets(kernel_size: int, dimension: int = 3) -> torch.Tensor:
    """All offsets of a hyper-cube kernel in MinkowskiEngine order.

    Returns:
        LongTensor (kernel_size**dimension, dimension); row k is the offset (in units of the tensor stride)
        that kernel row k refers to. The first axis varies fastest.
    """
    axis = axis_offsets(kernel_size)
    k = len(axis)
    idx = torch.arange(k**dimension)
    cols = []
    for _ in range(dimension):
        cols.append(torch.tensor(axis)[idx % k])
        idx = idx // k
    return torch.stack(cols, dim=1)
