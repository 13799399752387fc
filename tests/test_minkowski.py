"""MinkowskiEngine as built by scripts/build_minkowski.py: import, a sparse conv, and our pooling patch."""

from __future__ import annotations

import pytest
import torch

ME = pytest.importorskip("MinkowskiEngine", reason="MinkowskiEngine not built (python scripts/build_minkowski.py)")
pytestmark = pytest.mark.minkowski


def test_version_and_sparse_conv_forward_backward():
    assert ME.__version__ == "0.5.4"
    torch.manual_seed(0)
    coords = ME.utils.batched_coordinates([torch.randint(0, 8, (40, 3)), torch.randint(0, 8, (25, 3))])
    feats = torch.randn(len(coords), 3, requires_grad=True)
    x = ME.SparseTensor(feats, coordinates=coords)
    conv = ME.MinkowskiConvolution(3, 5, kernel_size=3, stride=2, dimension=3)
    y = conv(x)
    assert y.F.shape[1] == 5 and y.tensor_stride == [2, 2, 2]
    y.F.square().sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert conv.kernel.grad.shape == (27, 3, 5)


@pytest.mark.parametrize("pool_cls,reduce", [("MinkowskiGlobalAvgPooling", "mean"),
                                             ("MinkowskiGlobalSumPooling", "sum")])
def test_global_pooling_rows_match_their_clouds(pool_cls, reduce):
    """Batches listed out of order: each output row must pool the cloud named by its own batch coordinate.

    Unpatched 0.5.4 wrote cloud b's result into row ``batch_index[b]`` on CPU, permuting the rows.
    """
    torch.manual_seed(1)
    clouds = {b: torch.unique(torch.randint(0, 30, (n, 3)), dim=0) for b, n in ((0, 40), (1, 9), (2, 70))}
    order = [2, 0, 1]
    coords = torch.cat([torch.cat([torch.full((len(clouds[b]), 1), b), clouds[b]], 1) for b in order]).int()
    feats = torch.randn(len(coords), 4, requires_grad=True)
    pooled = getattr(ME, pool_cls)()(ME.SparseTensor(feats, coordinates=coords))
    rows = pooled.C[:, 0].tolist()
    assert sorted(rows) == [0, 1, 2]
    assert rows != sorted(rows), "origin map came out in batch order: this case no longer exercises the patch"
    for row, b in enumerate(rows):
        member = coords[:, 0] == b
        expected = feats[member].mean(0) if reduce == "mean" else feats[member].sum(0)
        torch.testing.assert_close(pooled.F[row], expected, rtol=1e-5, atol=1e-5)
    # the backward pass routes each row's gradient to its own cloud
    weights = torch.randn(3, 4)
    (pooled.F * weights).sum().backward()
    for row, b in enumerate(rows):
        member = coords[:, 0] == b
        scale = 1.0 / int(member.sum()) if reduce == "mean" else 1.0
        torch.testing.assert_close(feats.grad[member], (weights[row] * scale).expand(int(member.sum()), 4))
