"""Pure-PyTorch sparse voxel convolutions with MinkowskiEngine semantics (CPU or GPU, no compiled code).

Data model
----------
A batch of voxelised clouds is a :class:`SparseVoxels`: a feature matrix ``(N, C)`` plus a reference to the
:class:`CoordinateManager` of that batch and the tensor stride of the rows. The manager holds one
:class:`CoordinateSet` per tensor stride (rows sorted by packed coordinate key) and caches every kernel map it
builds, so all layers working on the same coordinate set and kernel reuse one map (e.g. the two 3x3x3
convolutions of a residual block, or a transposed convolution reusing the map of the strided convolution it
mirrors).

Semantics (matched to MinkowskiEngine 0.5.4, see ``kernel_offsets.py``)
----------------------------------------------------------------------
* Coordinates are integer voxel indices ``[batch, x, y, z]``; a tensor at stride ``s`` has coordinates that
  are multiples of ``s``.
* Convolution (kernel ``k``, stride ``s``) on a tensor at stride ``t``: output coordinates are the input
  coordinates floored to multiples of ``t*s`` (identical to the input when ``s == 1``);
  ``out[o] = sum_k in[o + offset[k] * t] @ W[k]`` over the neighbours that exist.
* Transposed convolution (kernel ``k == s``) from stride ``T`` onto the existing coordinate set at stride
  ``T / s``: ``out[o + offset[k] * (T/s)] += in[o] @ W[k]`` (the transpose of the strided convolution).
* Kernels are ``(K, C_in, C_out)`` (``(C_in, C_out)`` when ``K == 1``), rows in MinkowskiEngine offset order.

Implementation: coordinates are packed into int64 keys (``((b*R + x)*R + y)*R + z`` after shifting by the
batch minimum and a margin), so an offset is a constant key increment. Kernel maps are found column by
column: one ``torch.searchsorted`` per (dx, dy) finds the first voxel of the column ``(b, x+dx, y+dy)`` at or
above the lowest z of the kernel, and the next ``k`` sorted keys hold every dz neighbour (z varies fastest).
Same-set odd kernels search only half the columns (offset ``-d`` mirrors ``d``) and keep the centre offset
as an implicit identity. Each convolution is one gather, ``K`` matrix products on contiguous slices and one
``index_add_`` (a custom autograd function recomputes the gather in the backward pass instead of storing
it); a 1-channel input (``conv0`` on constant features) uses a dense (N, K) neighbour matrix and one GEMM.
Everything is plain tensor ops with explicit devices, meant to run on CUDA tensors too (not yet tested on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SparseBackend
from .kernel_offsets import axis_offsets

#: Empty voxels kept around the bounding box of a batch when packing coordinates into keys; every kernel
#: reach (``max |offset| * tensor_stride``) must stay below it.
PACKING_MARGIN = 1024


# ---------------------------------------------------------------------------------------------------------
# Coordinates and kernel maps
# ---------------------------------------------------------------------------------------------------------
@dataclass
class CoordinateSet:
    """The distinct voxels of a batch at one tensor stride, sorted by packed key.

    Attributes:
        coords: LongTensor (N, 4) ``[batch, x, y, z]``, spatial values multiples of ``stride``.
        keys: LongTensor (N,) packed keys, strictly increasing.
        stride: tensor stride.
    """

    coords: Tensor
    keys: Tensor
    stride: int

    @property
    def batch_index(self) -> Tensor:
        """LongTensor (N,) cloud index of each voxel."""
        return self.coords[:, 0]

    def __len__(self) -> int:
        return int(self.keys.numel())


@dataclass
class KernelMap:
    """In/out row pairs of a convolution, grouped by kernel offset.

    ``in_idx[bounds[k]:bounds[k+1]]`` are the input rows multiplied by kernel row ``k`` and added into the
    output rows ``out_idx[...]`` of the same slice. ``identity`` (same-set odd kernels) is the kernel row whose
    pairs are every row with itself; those pairs are implicit (its slice is empty) and computed as one dense
    product.
    """

    in_idx: Tensor
    out_idx: Tensor
    bounds: tuple[int, ...]
    n_in: int
    n_out: int
    identity: int | None = None
    _flat: Tensor | None = field(default=None, repr=False)

    @property
    def flat_out_offset_index(self) -> Tensor:
        """(P,) index ``out_idx * K + k`` of each pair in a dense (n_out, K) matrix (cached)."""
        if self._flat is None:
            n_kernel = len(self.bounds) - 1
            counts = torch.tensor([self.bounds[k + 1] - self.bounds[k] for k in range(n_kernel)],
                                  device=self.in_idx.device)
            k_idx = torch.repeat_interleave(torch.arange(n_kernel, device=self.in_idx.device), counts)
            self._flat = self.out_idx * n_kernel + k_idx
        return self._flat

    def transposed(self) -> "KernelMap":
        """The same pairs with input and output swapped (the map of the transposed convolution)."""
        return KernelMap(self.out_idx, self.in_idx, self.bounds, self.n_out, self.n_in, self.identity)

    @property
    def num_pairs(self) -> int:
        """Number of (in, out) pairs, the implicit identity pairs included."""
        return int(self.in_idx.numel()) + (self.n_out if self.identity is not None else 0)


class CoordinateManager:
    """Coordinate sets (one per tensor stride) and cached kernel maps of one input batch.

    Args:
        coords: IntTensor/LongTensor (N, 4) ``[batch, x, y, z]`` of the input voxels at stride 1
            (duplicates allowed; they are merged).
        num_batches: number of clouds; default ``max(batch) + 1``.
    """

    def __init__(self, coords: Tensor, num_batches: int | None = None) -> None:
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be (N, 4) [batch, x, y, z], got shape {tuple(coords.shape)}")
        if coords.numel() == 0:
            raise ValueError("coords is empty: a batch needs at least one voxel")
        if coords.dtype.is_floating_point:
            raise TypeError(f"coords must be an integer tensor, got {coords.dtype}")
        coords = coords.long()
        if int(coords[:, 0].min()) < 0:
            raise ValueError("batch indices in coords[:, 0] must be >= 0")
        self.device = coords.device
        self.num_batches = int(coords[:, 0].max()) + 1 if num_batches is None else int(num_batches)
        lo = coords[:, 1:].min(0).values
        hi = coords[:, 1:].max(0).values
        self._origin = lo - PACKING_MARGIN
        ranges = (hi - lo + 2 * PACKING_MARGIN + 1).tolist()
        self._ranges = ranges
        capacity = self.num_batches * ranges[0] * ranges[1] * ranges[2]
        if capacity >= 2**62:
            raise ValueError(
                f"coordinates span {[int(r) - 2 * PACKING_MARGIN for r in ranges]} voxels over {self.num_batches} "
                "clouds: too large to pack into int64 keys; use a coarser quantization size"
            )
        self._mult = torch.tensor(
            [ranges[0] * ranges[1] * ranges[2], ranges[1] * ranges[2], ranges[2], 1], device=self.device
        )
        self._sets: dict[int, CoordinateSet] = {}
        self._maps: dict[tuple, KernelMap] = {}
        keys = self.pack(coords)
        unique_keys, inverse = torch.unique(keys, return_inverse=True)
        self.input_inverse = inverse  # (N,) row of each input point in the stride-1 set
        self._sets[1] = CoordinateSet(self.unpack(unique_keys), unique_keys, 1)

    # -- keys ------------------------------------------------------------------------------------------
    def pack(self, coords: Tensor) -> Tensor:
        """LongTensor (M, 4) coordinates -> (M,) int64 keys (order-preserving lexicographic packing)."""
        shifted = coords.long().clone()
        shifted[:, 1:] -= self._origin
        return (shifted * self._mult).sum(1)

    def unpack(self, keys: Tensor) -> Tensor:
        """(M,) keys -> LongTensor (M, 4) coordinates."""
        out = torch.empty(keys.numel(), 4, dtype=torch.long, device=keys.device)
        rest = keys
        for axis in range(4):
            out[:, axis] = torch.div(rest, self._mult[axis], rounding_mode="floor")
            rest = rest - out[:, axis] * self._mult[axis]
        out[:, 1:] += self._origin
        return out

    def delta_keys(self, offsets: Tensor) -> Tensor:
        """(K, 3) spatial offsets -> (K,) key increments."""
        return (offsets.to(self.device).long() * self._mult[1:]).sum(1)

    # -- coordinate sets -----------------------------------------------------------------------------
    def coordinate_set(self, stride: int) -> CoordinateSet:
        """The set at ``stride``, creating it by flooring the finest set whose stride divides it."""
        if stride in self._sets:
            return self._sets[stride]
        sources = [s for s in self._sets if stride % s == 0]
        if not sources:
            raise ValueError(f"no coordinate set whose stride divides {stride}; have {sorted(self._sets)}")
        src = self._sets[max(sources)]
        coords = src.coords.clone()
        coords[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride
        keys = torch.unique(self.pack(coords))
        self._sets[stride] = CoordinateSet(self.unpack(keys), keys, stride)
        return self._sets[stride]

    def has_stride(self, stride: int) -> bool:
        return stride in self._sets

    # -- kernel maps ---------------------------------------------------------------------------------
    def conv_map(self, in_stride: int, out_stride: int, kernel_size: int) -> KernelMap:
        """Kernel map of a (strided) convolution from the set at ``in_stride`` to the set at ``out_stride``."""
        key = ("conv", in_stride, out_stride, kernel_size)
        cached = self._maps.get(key)
        if cached is not None:
            return cached
        axis = axis_offsets(kernel_size)
        reach = max(abs(a) for a in axis) * in_stride + out_stride
        if reach >= PACKING_MARGIN:
            raise ValueError(f"kernel reach {reach} voxels exceeds the packing margin {PACKING_MARGIN}")
        src = self.coordinate_set(in_stride)
        dst = self.coordinate_set(out_stride)
        k = kernel_size
        n_kernel = k**3
        symmetric = in_stride == out_stride and k % 2 == 1 and n_kernel > 1
        centre = (n_kernel - 1) // 2
        pairs: dict[int, tuple[Tensor, Tensor]] = {}
        window = torch.arange(k, device=self.device)
        # keys padded with a sentinel so that a window running past the end matches nothing
        padded = torch.cat([src.keys, src.keys.new_full((k,), torch.iinfo(torch.int64).max)])
        # Search column by column: keys are sorted with z fastest, so the (at most k) voxels of the column
        # (b, x + dx, y + dy) with z in [z + axis[0]*t, z + axis[-1]*t] are consecutive from the first key >=
        # the lowest target. One searchsorted per (dx, dy) column instead of one per offset.
        for iy in range(k):
            for ix in range(k):
                column = ix + k * iy
                centre_column = column == (k * k - 1) // 2
                if symmetric and column > (k * k - 1) // 2:
                    continue  # mirrored from column k*k-1-column
                start = self.delta_keys(torch.tensor([[axis[ix] * in_stride, axis[iy] * in_stride,
                                                       axis[0] * in_stride]]))
                base = dst.keys + start
                idx = torch.searchsorted(src.keys, base).unsqueeze(1) + window  # (N_out, k)
                diff = padded[idx] - base.unsqueeze(1)  # >= 0; a multiple of t for voxels of the column
                valid = diff <= (k - 1) * in_stride
                out_rows, slot = valid.nonzero(as_tuple=True)
                in_rows = idx[out_rows, slot]
                iz_of_pair = torch.div(diff[out_rows, slot], in_stride, rounding_mode="floor")
                for iz in range(k):
                    index = column + k * k * iz
                    if symmetric and centre_column and index >= centre:
                        break  # centre column: dz = 0 is the identity, dz > 0 mirrors dz < 0
                    sel = (iz_of_pair == iz).nonzero().squeeze(1)
                    pairs[index] = (in_rows[sel], out_rows[sel])
                    if symmetric:  # offset -d: (in, out) of offset d swapped
                        pairs[n_kernel - 1 - index] = (pairs[index][1], pairs[index][0])
        if symmetric:  # implicit identity pairs (see KernelMap.identity)
            empty = torch.empty(0, dtype=torch.long, device=self.device)
            pairs[centre] = (empty, empty)
        in_rows = torch.cat([pairs[i][0] for i in range(n_kernel)])
        out_rows = torch.cat([pairs[i][1] for i in range(n_kernel)])
        bounds = [0]
        for i in range(n_kernel):
            bounds.append(bounds[-1] + int(pairs[i][0].numel()))
        kmap = KernelMap(in_rows.contiguous(), out_rows.contiguous(), tuple(bounds), len(src), len(dst),
                         identity=centre if symmetric else None)
        self._maps[key] = kmap
        return kmap

    def transposed_conv_map(self, in_stride: int, out_stride: int, kernel_size: int) -> KernelMap:
        """Kernel map of a transposed convolution from stride ``in_stride`` onto the existing finer set."""
        key = ("tconv", in_stride, out_stride, kernel_size)
        cached = self._maps.get(key)
        if cached is None:
            if not self.has_stride(out_stride):
                raise ValueError(
                    f"transposed convolution onto stride {out_stride}: no such coordinate set "
                    f"(have {sorted(self._sets)}); it only maps onto an existing finer set"
                )
            cached = self.conv_map(out_stride, in_stride, kernel_size).transposed()
            self._maps[key] = cached
        return cached


# ---------------------------------------------------------------------------------------------------------
# Sparse tensor
# ---------------------------------------------------------------------------------------------------------
class SparseVoxels:
    """Features of the voxels of one coordinate set.

    Attributes:
        features: Tensor (N, C), row i belongs to ``manager.coordinate_set(stride).coords[i]``.
        stride: tensor stride.
        manager: the batch's :class:`CoordinateManager`.
    """

    __slots__ = ("features", "stride", "manager")

    def __init__(self, features: Tensor, stride: int, manager: CoordinateManager) -> None:
        n = len(manager.coordinate_set(stride))
        if features.dim() != 2 or features.shape[0] != n:
            raise ValueError(f"features must be ({n}, C) for stride {stride}, got {tuple(features.shape)}")
        self.features = features
        self.stride = stride
        self.manager = manager

    @property
    def F(self) -> Tensor:  # noqa: N802 - MinkowskiEngine's name
        return self.features

    @property
    def coordinates(self) -> Tensor:
        """LongTensor (N, 4) ``[batch, x, y, z]``."""
        return self.manager.coordinate_set(self.stride).coords

    @property
    def batch_index(self) -> Tensor:
        """LongTensor (N,) cloud index of each row."""
        return self.manager.coordinate_set(self.stride).batch_index

    def replace_features(self, features: Tensor) -> "SparseVoxels":
        return SparseVoxels(features, self.stride, self.manager)

    def __add__(self, other: "SparseVoxels") -> "SparseVoxels":
        if other.manager is not self.manager or other.stride != self.stride:
            raise ValueError("can only add sparse tensors on the same coordinate set (same batch and stride)")
        return self.replace_features(self.features + other.features)

    def __repr__(self) -> str:
        return f"SparseVoxels(N={self.features.shape[0]}, C={self.features.shape[1]}, stride={self.stride})"


def sparse_input(coords: Tensor, features: Tensor, num_batches: int | None = None) -> SparseVoxels:
    """Build the stride-1 sparse tensor of a batch.

    Args:
        coords: Int/LongTensor (N, 4) ``[batch, x, y, z]``.
        features: Tensor (N, C); duplicates of a coordinate are averaged.
        num_batches: number of clouds (default ``max(batch) + 1``).

    Returns:
        SparseVoxels at stride 1 with rows sorted by coordinate key (see ``manager.input_inverse`` for the
        row of each input point).
    """
    if features.shape[0] != coords.shape[0]:
        raise ValueError(f"{coords.shape[0]} coordinates but {features.shape[0]} feature rows")
    manager = CoordinateManager(coords.to(features.device), num_batches)
    inverse = manager.input_inverse
    n = len(manager.coordinate_set(1))
    if n == coords.shape[0]:
        perm = torch.empty_like(inverse)
        perm[inverse] = torch.arange(n, device=inverse.device)
        feats = features[perm]
    else:
        counts = torch.bincount(inverse, minlength=n).to(features.dtype).unsqueeze(1)
        feats = features.new_zeros(n, features.shape[1]).index_add_(0, inverse, features) / counts
    return SparseVoxels(feats, 1, manager)


# ---------------------------------------------------------------------------------------------------------
# Convolution kernel (autograd)
# ---------------------------------------------------------------------------------------------------------
class _SingleChannelConvFunction(torch.autograd.Function):
    """Convolution of a 1-channel input: a dense (n_out, K) neighbour matrix times the (K, C_out) kernel.

    (K tiny matrix products with inner dimension 1 would be slow; this is one GEMM each way.)
    """

    @staticmethod
    def forward(ctx, feats: Tensor, kernel: Tensor, in_idx: Tensor, flat_idx: Tensor,  # type: ignore[override]
                n_out: int, identity: int | None) -> Tensor:
        n_kernel = kernel.shape[0]
        neighbours = feats.new_zeros(n_out * n_kernel)
        neighbours[flat_idx] = feats[:, 0].index_select(0, in_idx)
        neighbours = neighbours.view(n_out, n_kernel)
        if identity is not None:
            neighbours[:, identity] = feats[:, 0]
        ctx.save_for_backward(neighbours, kernel, in_idx, flat_idx)
        ctx.n_in = feats.shape[0]
        ctx.identity = identity
        return neighbours @ kernel[:, 0, :]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        neighbours, kernel, in_idx, flat_idx = ctx.saved_tensors
        grad_feats = grad_kernel = None
        if ctx.needs_input_grad[1]:
            grad_kernel = (neighbours.t() @ grad_out).unsqueeze(1)
        if ctx.needs_input_grad[0]:
            grad_neighbours = grad_out @ kernel[:, 0, :].t()  # (n_out, K)
            if ctx.identity is not None:
                grad_feats = grad_neighbours[:, ctx.identity].clone()
            else:
                grad_feats = neighbours.new_zeros(ctx.n_in)
            grad_feats.index_add_(0, in_idx, grad_neighbours.reshape(-1)[flat_idx])
            grad_feats = grad_feats.unsqueeze(1)
        return grad_feats, grad_kernel, None, None, None, None


class _SparseConvFunction(torch.autograd.Function):
    """out = scatter_add(out_idx, gather(feats, in_idx) @ W[k]) with the gather recomputed in backward."""

    @staticmethod
    def forward(ctx, feats: Tensor, kernel: Tensor, in_idx: Tensor, out_idx: Tensor,  # type: ignore[override]
                bounds: tuple[int, ...], n_out: int, identity: int | None) -> Tensor:
        gathered = feats.index_select(0, in_idx)
        products = feats.new_empty(gathered.shape[0], kernel.shape[2])
        for k in range(kernel.shape[0]):
            start, stop = bounds[k], bounds[k + 1]
            if stop > start:
                torch.mm(gathered[start:stop], kernel[k], out=products[start:stop])
        if identity is not None:
            out = feats @ kernel[identity]
        else:
            out = feats.new_zeros(n_out, kernel.shape[2])
        out.index_add_(0, out_idx, products)
        ctx.save_for_backward(feats, kernel, in_idx, out_idx)
        ctx.bounds = bounds
        ctx.identity = identity
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        feats, kernel, in_idx, out_idx = ctx.saved_tensors
        bounds, identity = ctx.bounds, ctx.identity
        grad_feats = grad_kernel = None
        grad_out = grad_out.contiguous()
        grad_rows = grad_out.index_select(0, out_idx)  # (P, C_out)
        if ctx.needs_input_grad[1]:
            gathered = feats.index_select(0, in_idx)
            grad_kernel = torch.zeros_like(kernel)
            for k in range(kernel.shape[0]):
                start, stop = bounds[k], bounds[k + 1]
                if stop > start:
                    torch.mm(gathered[start:stop].t(), grad_rows[start:stop], out=grad_kernel[k])
            if identity is not None:
                torch.mm(feats.t(), grad_out, out=grad_kernel[identity])
        if ctx.needs_input_grad[0]:
            grad_gathered = feats.new_empty(grad_rows.shape[0], kernel.shape[1])
            for k in range(kernel.shape[0]):
                start, stop = bounds[k], bounds[k + 1]
                if stop > start:
                    torch.mm(grad_rows[start:stop], kernel[k].t(), out=grad_gathered[start:stop])
            if identity is not None:
                grad_feats = grad_out @ kernel[identity].t()
            else:
                grad_feats = torch.zeros_like(feats)
            grad_feats.index_add_(0, in_idx, grad_gathered)
        return grad_feats, grad_kernel, None, None, None, None, None


def sparse_conv(feats: Tensor, kernel: Tensor, kmap: KernelMap) -> Tensor:
    """Apply a kernel ``(K, C_in, C_out)`` along a kernel map: (n_in, C_in) -> (n_out, C_out)."""
    if kernel.dim() == 2:
        kernel = kernel.unsqueeze(0)
    if len(kmap.bounds) - 1 != kernel.shape[0]:
        raise ValueError(f"kernel has {kernel.shape[0]} offsets but the kernel map {len(kmap.bounds) - 1}")
    if feats.dtype != kernel.dtype:
        feats = feats.to(kernel.dtype)
    if kernel.shape[1] == 1 and kernel.shape[0] > 1:
        return _SingleChannelConvFunction.apply(feats, kernel, kmap.in_idx, kmap.flat_out_offset_index, kmap.n_out,
                                                kmap.identity)
    return _SparseConvFunction.apply(feats, kernel, kmap.in_idx, kmap.out_idx, kmap.bounds, kmap.n_out,
                                     kmap.identity)


# ---------------------------------------------------------------------------------------------------------
# Layers (parameter names and shapes as MinkowskiEngine's)
# ---------------------------------------------------------------------------------------------------------
class _ConvBase(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dimension: int,
                 transpose: bool) -> None:
        super().__init__()
        if dimension != 3:
            raise ValueError(f"the torch sparse backend supports dimension 3 only, got {dimension}")
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size}, {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.is_transpose = transpose
        volume = kernel_size**dimension
        shape = (volume, in_channels, out_channels) if volume > 1 else (in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MinkowskiEngine's default: uniform(+-1/sqrt(n)), n = (out if transposed else in) * volume."""
        volume = self.kernel_size**3
        n = (self.out_channels if self.is_transpose else self.in_channels) * volume
        bound = 1.0 / math.sqrt(n)
        with torch.no_grad():
            self.kernel.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")


class SparseConvolution(_ConvBase):
    """Sparse convolution; output at stride ``input.stride * stride`` (coordinates floored, like ME)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dimension: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, dimension, transpose=False)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        """(N_in, C_in) at stride t -> (N_out, C_out) at stride t * stride."""
        out_stride = x.stride * self.stride
        if self.kernel_size == 1 and self.stride == 1:
            feats = x.features.to(self.kernel.dtype) @ self.kernel
            return SparseVoxels(feats, out_stride, x.manager)
        kmap = x.manager.conv_map(x.stride, out_stride, self.kernel_size)
        return SparseVoxels(sparse_conv(x.features, self.kernel, kmap), out_stride, x.manager)


class SparseConvolutionTranspose(_ConvBase):
    """Transposed sparse convolution onto the existing coordinate set at stride ``input.stride / stride``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2,
                 dimension: int = 3) -> None:
        if kernel_size != stride:
            raise ValueError(
                f"transposed convolution supports kernel_size == stride only (got {kernel_size}, {stride})"
            )
        super().__init__(in_channels, out_channels, kernel_size, stride, dimension, transpose=True)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        """(N_coarse, C_in) at stride T -> (N_fine, C_out) at stride T / stride."""
        if x.stride % self.stride != 0:
            raise ValueError(f"cannot upsample a stride-{x.stride} tensor by {self.stride}")
        out_stride = x.stride // self.stride
        if self.stride == 1:
            kmap = x.manager.conv_map(x.stride, out_stride, self.kernel_size)
        else:
            kmap = x.manager.transposed_conv_map(x.stride, out_stride, self.kernel_size)
        return SparseVoxels(sparse_conv(x.features, self.kernel, kmap), out_stride, x.manager)


class SparseBatchNorm(nn.Module):
    """Batch norm over voxels (``self.bn`` is an ``nn.BatchNorm1d``, as in ``MinkowskiBatchNorm``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        return x.replace_features(self.bn(x.features))


class SparseReLU(nn.Module):
    """ReLU on the voxel features."""

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        return x.replace_features(F.relu(x.features))


# ---------------------------------------------------------------------------------------------------------
# Backend object
# ---------------------------------------------------------------------------------------------------------
class TorchSparseBackend(SparseBackend):
    """Pure-PyTorch backend (always available)."""

    name = "torch"

    def sparse_input(self, coords: Tensor, features: Tensor, num_batches: int | None = None) -> SparseVoxels:
        return sparse_input(coords, features, num_batches)

    def features(self, x: SparseVoxels) -> Tensor:
        return x.features

    def batch_index(self, x: SparseVoxels) -> Tensor:
        return x.batch_index

    def coordinates(self, x: SparseVoxels) -> Tensor:
        return x.coordinates

    def tensor_stride(self, x: SparseVoxels) -> int:
        return x.stride

    def replace_features(self, x: SparseVoxels, features: Tensor) -> SparseVoxels:
        return x.replace_features(features)

    def add(self, x: SparseVoxels, y: SparseVoxels) -> SparseVoxels:
        return x + y

    def convolution(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
        return SparseConvolution(in_channels, out_channels, kernel_size, stride)

    def convolution_transpose(self, in_channels: int, out_channels: int, kernel_size: int,
                              stride: int) -> nn.Module:
        return SparseConvolutionTranspose(in_channels, out_channels, kernel_size, stride)

    def batch_norm(self, num_features: int, momentum: float = 0.1) -> nn.Module:
        return SparseBatchNorm(num_features, momentum=momentum)

    def relu(self) -> nn.Module:
        return SparseReLU()

    def is_convolution(self, module: nn.Module) -> bool:
        return isinstance(module, SparseConvolution)
