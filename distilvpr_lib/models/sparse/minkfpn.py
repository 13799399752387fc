"""The teacher's cloud branch (MinkLoc++ ``MinkLoc``): MinkFPN with ECA basic blocks + per-cloud GeM.

Written once against :class:`~distilvpr_lib.models.sparse.base.SparseBackend` (docs/METHOD.md §3.1):

* ``conv0``: conv k (5) stride 1, 1 -> planes[0], BN, ReLU.
* bottom-up level i = 0..L-1: conv k2 stride 2 (inplanes -> inplanes), BN, ReLU, then ``layers[i]``
  ECABasicBlocks inplanes -> planes[i] (the first with a 1x1 conv + BN downsample when channels change).
* top-down (``num_top_down`` levels): ``conv1x1s[0]`` on the deepest map to ``out_channels``, then per level
  a transposed conv k2 stride 2 onto the next finer bottom-up map, plus ``conv1x1s[j+1]`` of that map.
* ``MinkGeM``: ``(mean_v clamp(x_v, eps)^p)^(1/p)`` per cloud, pooled by batch index with ``index_add_``.

Module and parameter names follow the reference checkpoints (``backbone.convs.0.kernel``,
``backbone.blocks.1.0.downsample.1.bn.weight``, ``pooling.pooling.p``, ...).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import SparseBackend


def per_cloud_mean(features: Tensor, batch_index: Tensor, num_clouds: int) -> Tensor:
    """Mean of the rows of each cloud.

    Args:
        features: (N, C).
        batch_index: LongTensor (N,) in ``[0, num_clouds)``.
        num_clouds: B.

    Returns:
        (B, C); a cloud without rows gets zeros.
    """
    sums = features.new_zeros(num_clouds, features.shape[1]).index_add_(0, batch_index, features)
    counts = torch.bincount(batch_index, minlength=num_clouds).clamp_(min=1).to(features.dtype)
    return sums / counts.unsqueeze(1)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive 1-D kernel size: t = int(|(log2 C + b) / gamma|), made odd (3 for C = 32 or 64)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECALayer(nn.Module):
    """Efficient channel attention on a sparse tensor: per-cloud mean -> Conv1d over channels -> sigmoid -> scale."""

    def __init__(self, backend: SparseBackend, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        self.backend = backend
        k = eca_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: Any) -> Any:
        feats = self.backend.features(x)
        batch = self.backend.batch_index(x)
        num_clouds = int(batch.max()) + 1
        descriptor = per_cloud_mean(feats, batch, num_clouds)  # (B, C)
        weights = torch.sigmoid(self.conv(descriptor.unsqueeze(1)).squeeze(1))  # (B, C)
        return self.backend.replace_features(x, feats * weights.index_select(0, batch))


class ECABasicBlock(nn.Module):
    """Residual block: conv3-BN-ReLU-conv3-BN-ECA (+ identity or 1x1-conv+BN downsample) - ReLU."""

    expansion = 1

    def __init__(self, backend: SparseBackend, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.backend = backend
        self.conv1 = backend.convolution(inplanes, planes, kernel_size=3, stride=stride)
        self.norm1 = backend.batch_norm(planes, momentum=bn_momentum)
        self.conv2 = backend.convolution(planes, planes, kernel_size=3, stride=1)
        self.norm2 = backend.batch_norm(planes, momentum=bn_momentum)
        self.relu = backend.relu()
        self.downsample = downsample
        self.eca = ECALayer(backend, planes)

    def forward(self, x: Any) -> Any:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.eca(self.norm2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        out = self.backend.add(out, residual)
        return self.relu(out)


class MinkFPN(nn.Module):
    """Sparse FPN (MinkLoc++): (N, in_channels) voxels at stride 1 -> (N', out_channels) at stride 2**(L - T)."""

    def __init__(self, backend: SparseBackend, in_channels: int = 1, out_channels: int = 128,
                 num_top_down: int = 1, conv0_kernel_size: int = 5, planes: Sequence[int] = (32, 64, 64),
                 layers: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        if len(planes) != len(layers) or not planes:
            raise ValueError(f"planes {tuple(planes)} and layers {tuple(layers)} must be non-empty, same length")
        if not 0 <= num_top_down <= len(planes):
            raise ValueError(f"num_top_down must be in [0, {len(planes)}], got {num_top_down}")
        self.backend = backend
        self.num_bottom_up = len(planes)
        self.num_top_down = num_top_down
        self.out_channels = out_channels
        self.inplanes = planes[0]
        self.conv0 = backend.convolution(in_channels, self.inplanes, kernel_size=conv0_kernel_size, stride=1)
        self.bn0 = backend.batch_norm(self.inplanes)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        self.blocks = nn.ModuleList()
        level_channels = [self.inplanes]  # channels of conv0's output and of each bottom-up level
        for plane, n_blocks in zip(planes, layers):
            self.convs.append(backend.convolution(self.inplanes, self.inplanes, kernel_size=2, stride=2))
            self.bns.append(backend.batch_norm(self.inplanes))
            self.blocks.append(self._make_layer(plane, n_blocks))
            level_channels.append(self.inplanes)
        self.conv1x1s = nn.ModuleList()
        self.tconvs = nn.ModuleList()
        self.conv1x1s.append(backend.convolution(level_channels[-1], out_channels, kernel_size=1, stride=1))
        for j in range(num_top_down):
            lateral = level_channels[self.num_bottom_up - 1 - j]
            self.conv1x1s.append(backend.convolution(lateral, out_channels, kernel_size=1, stride=1))
            self.tconvs.append(backend.convolution_transpose(out_channels, out_channels, kernel_size=2, stride=2))
        self.relu = backend.relu()
        self.reset_parameters()

    def _make_layer(self, planes: int, n_blocks: int) -> nn.Sequential:
        blocks = []
        for i in range(n_blocks):
            downsample = None
            if self.inplanes != planes * ECABasicBlock.expansion:
                downsample = nn.Sequential(
                    self.backend.convolution(self.inplanes, planes, kernel_size=1, stride=1),
                    self.backend.batch_norm(planes),
                )
            blocks.append(ECABasicBlock(self.backend, self.inplanes, planes, downsample=downsample))
            self.inplanes = planes * ECABasicBlock.expansion
        return nn.Sequential(*blocks)

    def reset_parameters(self) -> None:
        """Reference initialisation: sparse conv kernels Kaiming-normal (fan_out, relu), BN weight 1 bias 0.

        Transposed convolutions keep MinkowskiEngine's default uniform initialisation (the reference's
        initialiser only matches ``MinkowskiConvolution``). The fan follows ``ME.utils.kaiming_normal_``:
        ``K * C_out`` for a (K, C_in, C_out) kernel, and ``C_in`` (its first dimension) for a 2-D (C_in, C_out)
        kernel of a 1x1 convolution.
        """
        for module in self.modules():
            if self.backend.is_convolution(module):
                kaiming_normal_me_(module.kernel)
            bn = getattr(module, "bn", None)
            if isinstance(bn, nn.BatchNorm1d):
                nn.init.ones_(bn.weight)
                nn.init.zeros_(bn.bias)

    def forward(self, x: Any) -> Any:
        feature_maps = []
        x = self.relu(self.bn0(self.conv0(x)))
        if self.num_top_down == self.num_bottom_up:
            feature_maps.append(x)
        for ndx, (conv, bn, block) in enumerate(zip(self.convs, self.bns, self.blocks)):
            x = block(self.relu(bn(conv(x))))
            if self.num_bottom_up - 1 - self.num_top_down <= ndx < self.num_bottom_up - 1:
                feature_maps.append(x)
        x = self.conv1x1s[0](x)
        for ndx, tconv in enumerate(self.tconvs):
            x = tconv(x)
            lateral = self.conv1x1s[ndx + 1](feature_maps[-ndx - 1])
            x = self.backend.add(x, lateral)
        return x


def kaiming_normal_me_(kernel: Tensor) -> Tensor:
    """Kaiming-normal (fan_out, relu) with MinkowskiEngine's fan convention (see ``MinkFPN.reset_parameters``)."""
    fan_out = kernel.shape[0] if kernel.dim() == 2 else kernel.shape[0] * kernel.shape[2]
    std = math.sqrt(2.0) / math.sqrt(fan_out)
    with torch.no_grad():
        return kernel.normal_(0.0, std)


class MinkGeM(nn.Module):
    """Generalised-mean pooling per cloud: (N, C) voxels -> (B, C); learnable exponent ``p`` (shape (1,))."""

    def __init__(self, backend: SparseBackend, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.backend = backend
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Any, num_clouds: int | None = None) -> Tensor:
        feats = self.backend.features(x)
        batch = self.backend.batch_index(x)
        if num_clouds is None:
            num_clouds = int(batch.max()) + 1
        pooled = per_cloud_mean(feats.clamp(min=self.eps).pow(self.p), batch, num_clouds)
        return pooled.pow(1.0 / self.p)


class PoolingWrapper(nn.Module):
    """Holds the pooling as ``.pooling`` (so the parameter is ``pooling.pooling.p`` as in the reference)."""

    def __init__(self, pooling: nn.Module) -> None:
        super().__init__()
        self.pooling = pooling

    def forward(self, x: Any, num_clouds: int | None = None) -> Tensor:
        return self.pooling(x, num_clouds)


class CloudBranch(nn.Module):
    """MinkLoc cloud branch: batched voxel coordinates -> (B, cloud_dim) GeM descriptor.

    Args:
        backend: a sparse backend instance.
        cloud_dim: output channels of the FPN = descriptor size (128).
        planes, layers, num_top_down, conv0_kernel_size: MinkFPN shape (§3.1).
        gem_p: initial GeM exponent.
    """

    def __init__(self, backend: SparseBackend, cloud_dim: int = 128, planes: Sequence[int] = (32, 64, 64),
                 layers: Sequence[int] = (1, 1, 1), num_top_down: int = 1, conv0_kernel_size: int = 5,
                 gem_p: float = 3.0) -> None:
        super().__init__()
        self.backend = backend
        self.output_dim = cloud_dim
        self.backbone = MinkFPN(backend, in_channels=1, out_channels=cloud_dim, num_top_down=num_top_down,
                                conv0_kernel_size=conv0_kernel_size, planes=planes, layers=layers)
        self.pooling = PoolingWrapper(MinkGeM(backend, p=gem_p))

    def forward(self, coords: Tensor, num_clouds: int | None = None) -> Tensor:
        """IntTensor (N, 4) ``[batch, x, y, z]`` -> (B, cloud_dim); input features are constant ones."""
        device = self.pooling.pooling.p.device
        if num_clouds is None:
            num_clouds = int(coords[:, 0].max()) + 1
        feats = torch.ones(coords.shape[0], 1, device=device, dtype=self.pooling.pooling.p.dtype)
        x = self.backend.sparse_input(coords.to(device), feats, num_clouds)
        x = self.backbone(x)
        return self.pooling(x, num_clouds)
