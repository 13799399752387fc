"""The pure-PyTorch and MinkowskiEngine backends: same kernel-offset order, same embeddings and gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("MinkowskiEngine", reason="MinkowskiEngine not built (python scripts/build_minkowski.py)")
pytestmark = pytest.mark.minkowski

from distilvpr_lib.config import ModelConfig  # noqa: E402
from distilvpr_lib.models import build_cloud_branch, build_teacher  # noqa: E402
from distilvpr_lib.models.sparse import ME_OFFSETS_2, ME_OFFSETS_3, kernel_offsets  # noqa: E402
from distilvpr_lib.models.sparse.minkowski_backend import minkowski_kernel_offsets  # noqa: E402


def surface_cloud(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) points on a ground plane, a facade and a box, scaled into [-1, 1] like the benchmark submaps."""
    k = n // 3
    ground = np.c_[rng.uniform(-1, 1, k), rng.uniform(-1, 1, k), rng.normal(-0.3, 0.004, k)]
    facade = np.c_[rng.uniform(-1, 1, k), rng.normal(0.5, 0.004, k), rng.uniform(-0.3, 0.5, k)]
    m = n - 2 * k
    box = np.c_[rng.uniform(-0.2, 0.1, m), rng.uniform(-0.3, 0.0, m), rng.uniform(-0.3, -0.1, m)]
    return np.concatenate([ground, facade, box]) + rng.normal(0, 0.003, (n, 3))


def batch_coords(sizes, quantization=0.01, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rows = []
    for b, n in enumerate(sizes):
        vox = torch.unique(torch.floor(torch.from_numpy(surface_cloud(rng, n)) / quantization).long(), dim=0)
        rows.append(torch.cat([torch.full((len(vox), 1), b), vox], 1))
    return torch.cat(rows).int()


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_kernel_offset_order_matches_minkowski(kernel_size):
    """Re-derive ME's kernel-offset order from the library and compare with our constant/function."""
    derived = minkowski_kernel_offsets(kernel_size)
    assert torch.equal(derived, kernel_offsets(kernel_size))
    if kernel_size == 3:
        assert [tuple(r) for r in derived.tolist()] == list(ME_OFFSETS_3)
    if kernel_size == 2:
        assert [tuple(r) for r in derived.tolist()] == list(ME_OFFSETS_2)
        assert torch.equal(minkowski_kernel_offsets(2, transpose=True), kernel_offsets(2))


def _pair(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    ours = build_cloud_branch(dataclasses.replace(cfg, sparse_backend="torch")).to(dtype)
    theirs = build_cloud_branch(dataclasses.replace(cfg, sparse_backend="minkowski")).to(dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.shape == b.shape, name
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """max |a - b| <= tol * max(1, max |a|)."""
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(a.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"{what}: max abs difference {err:.3g} (scale {scale:.3g})"


# float32: embeddings to 1e-5 (relative to their scale); gradients to 1e-4 because BN over the constant-input
# conv0 makes them ill-conditioned (both float32 backends differ from a float64 run by up to ~10% on conv0's
# kernel gradient, while agreeing with each other to ~5e-5). float64: everything to 1e-9.
@pytest.mark.parametrize("train,dtype,emb_tol,grad_tol", [
    (True, torch.float32, 1e-5, 1e-4),
    (False, torch.float32, 1e-5, 1e-4),
    (True, torch.float64, 1e-9, 1e-9),
])
def test_same_weights_same_embeddings_and_gradients(train, dtype, emb_tol, grad_tol):
    cfg = ModelConfig()  # the reference cloud branch: planes 32/64/64, layers 1/1/1, top-down 1, 128-d
    ours, theirs = _pair(cfg, dtype)
    ours.train(train)
    theirs.train(train)
    coords = batch_coords([1500, 400, 900, 1200])
    target = torch.randn(4, cfg.cloud_dim, generator=torch.Generator().manual_seed(1), dtype=dtype)
    out_ours = ours(coords, 4)
    out_theirs = theirs(coords, 4)
    assert out_ours.shape == (4, cfg.cloud_dim) and out_ours.dtype == dtype
    _assert_close(out_ours, out_theirs, "embeddings", emb_tol)
    (out_ours * target).sum().backward()
    (out_theirs * target).sum().backward()
    grads_theirs = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        q = grads_theirs[name]
        assert p.grad is not None and q.grad is not None, name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
        _assert_close(p.grad, q.grad, f"gradient of {name}", grad_tol)
    if train:
        buffers_theirs = dict(theirs.named_buffers())
        for name, buf in ours.named_buffers():
            if buf.is_floating_point():
                _assert_close(buf, buffers_theirs[name], f"buffer {name}", emb_tol)


def test_teacher_on_both_backends_agrees():
    cfg = dataclasses.replace(ModelConfig(), cloud_planes=(8, 16, 16), cloud_dim=32, image_dim=64, student_dim=96)
    torch.manual_seed(0)
    a = build_teacher(dataclasses.replace(cfg, sparse_backend="torch")).eval()
    b = build_teacher(dataclasses.replace(cfg, sparse_backend="minkowski")).eval()
    b.load_state_dict(a.state_dict())
    batch = {"coords": batch_coords([300, 500], seed=3), "images": torch.randn(2, 3, 48, 64)}
    with torch.no_grad():
        out_a, out_b = a(batch), b(batch)
    for key in ("embedding", "cloud_embedding", "image_embedding"):
        _assert_close(out_a[key], out_b[key], key)
