"""Models on the pure-PyTorch sparse backend: kernel maths against dense conv3d, shapes, pooling, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from distilvpr_lib.config import ModelConfig, profile_config
from distilvpr_lib.models import (
    SPARSE_BACKENDS,
    build_cloud_branch,
    build_student,
    build_teacher,
    get_sparse_backend,
    load_image_backbone_weights,
    load_reference_teacher_state_dict,
    resolve_image_weights,
)
from distilvpr_lib.models.sparse import kernel_offsets, per_cloud_mean
from distilvpr_lib.models.sparse.minkfpn import eca_kernel_size
from distilvpr_lib.models.sparse.torch_backend import (
    CoordinateManager,
    SparseConvolution,
    SparseConvolutionTranspose,
    sparse_conv,
    sparse_input,
)

GRID = 8  # dense test grid edge (voxels), coordinates in [-GRID/2, GRID/2)


def smoke_model_cfg(**overrides) -> ModelConfig:
    cfg = profile_config("smoke").model
    return dataclasses.replace(cfg, **overrides)


def random_cloud_coords(sizes, span=40, seed=0) -> torch.Tensor:
    """IntTensor (N, 4) of distinct voxels per cloud, one cloud per entry of ``sizes``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(sizes):
        pts = torch.randint(-span, span, (n * 3, 3), generator=g)
        pts = torch.unique(pts, dim=0)
        pts = pts[torch.randperm(len(pts), generator=g)[:n]]
        rows.append(torch.cat([torch.full((len(pts), 1), b), pts], 1))
    return torch.cat(rows).int()


def grid_case(num_clouds=2, channels=3, density=0.35, seed=0):
    """Random occupied voxels in a GRID^3 box per cloud, with features; also the dense (B, C, G, G, G) tensor."""
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(num_clouds, GRID, GRID, GRID, generator=g) < density
    idx = occ.nonzero()  # (N, 4) [b, i, j, k] dense indices
    feats = torch.randn(len(idx), channels, generator=g, dtype=torch.float64)
    dense = torch.zeros(num_clouds, channels, GRID, GRID, GRID, dtype=torch.float64)
    dense[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]] = feats
    coords = idx.clone()
    coords[:, 1:] -= GRID // 2  # negative coordinates too (checks floor semantics)
    return coords.int(), feats, dense


def dense_at(dense: torch.Tensor, coords: torch.Tensor, stride: int) -> torch.Tensor:
    """Rows of a dense (B, C, G/s, G/s, G/s) map at sparse coordinates (N, 4) of tensor stride ``stride``."""
    c = coords.long()
    ijk = torch.div(c[:, 1:] + GRID // 2, stride, rounding_mode="floor")
    return dense[c[:, 0], :, ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def dense_weight_to_sparse(w: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """conv3d weight (C_out, C_in, k, k, k) [or conv_transpose3d (C_in, C_out, k, k, k)] -> (K, C_in, C_out)."""
    k = w.shape[-1]
    offs = kernel_offsets(k)
    base = 0 if k % 2 == 0 else k // 2
    rows = []
    for dx, dy, dz in offs.tolist():
        tap = w[:, :, dx + base, dy + base, dz + base]
        rows.append(tap if transpose else tap.t())
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------------------
# kernel maths against dense references
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_size,channels", [(3, 3), (5, 1)])
def test_submanifold_conv_matches_dense_conv3d(kernel_size, channels):
    coords, feats, dense = grid_case(channels=channels)
    conv = SparseConvolution(channels, 4, kernel_size=kernel_size).double()
    w = torch.randn(4, channels, kernel_size, kernel_size, kernel_size, dtype=torch.float64)
    with torch.no_grad():
        conv.kernel.copy_(dense_weight_to_sparse(w))
    x = sparse_input(coords, feats)
    y = conv(x)
    ref = F.conv3d(dense, w, padding=kernel_size // 2)
    assert y.stride == 1
    torch.testing.assert_close(y.features, dense_at(ref, y.coordinates, 1), rtol=1e-10, atol=1e-10)


def test_strided_then_regular_convs_match_dense_chain():
    """k2/s2 -> k3 at stride 2 -> k2/s2 (stride 4): output coordinates and values as a dense conv3d chain."""
    coords, feats, dense = grid_case(seed=1)
    down1 = SparseConvolution(3, 4, kernel_size=2, stride=2).double()
    mid = SparseConvolution(4, 5, kernel_size=3, stride=1).double()
    down2 = SparseConvolution(5, 2, kernel_size=2, stride=2).double()
    w1 = torch.randn(4, 3, 2, 2, 2, dtype=torch.float64)
    w2 = torch.randn(5, 4, 3, 3, 3, dtype=torch.float64)
    w3 = torch.randn(2, 5, 2, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        down1.kernel.copy_(dense_weight_to_sparse(w1))
        mid.kernel.copy_(dense_weight_to_sparse(w2))
        down2.kernel.copy_(dense_weight_to_sparse(w3))
    x = sparse_input(coords, feats)
    y1 = down1(x)
    y2 = mid(y1)
    y3 = down2(y2)
    # expected coordinates: floors of the input coordinates to multiples of 2 / 4
    for y, s in ((y1, 2), (y3, 4)):
        expect = coords.long().clone()
        expect[:, 1:] = torch.div(expect[:, 1:], s, rounding_mode="floor") * s
        expect = torch.unique(expect, dim=0)
        got = torch.unique(y.coordinates, dim=0)
        assert torch.equal(got, expect)
        assert y.stride == s
    d1 = F.conv3d(dense, w1, stride=2)
    d2 = F.conv3d(d1, w2, padding=1)
    d2 = d2 * (d1.abs().sum(1, keepdim=True) > 0)  # only the occupied stride-2 voxels exist
    d3 = F.conv3d(d2, w3, stride=2)
    torch.testing.assert_close(y1.features, dense_at(d1, y1.coordinates, 2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y2.features, dense_at(d2, y2.coordinates, 2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y3.features, dense_at(d3, y3.coordinates, 4), rtol=1e-10, atol=1e-10)


def test_transposed_conv_matches_dense_conv_transpose3d():
    coords, feats, dense = grid_case(seed=2)
    down = SparseConvolution(3, 3, kernel_size=2, stride=2).double()
    up = SparseConvolutionTranspose(3, 4, kernel_size=2, stride=2).double()
    w_down = torch.randn(3, 3, 2, 2, 2, dtype=torch.float64)
    w_up = torch.randn(3, 4, 2, 2, 2, dtype=torch.float64)  # conv_transpose3d layout (C_in, C_out, k, k, k)
    with torch.no_grad():
        down.kernel.copy_(dense_weight_to_sparse(w_down))
        up.kernel.copy_(dense_weight_to_sparse(w_up, transpose=True))
    x = sparse_input(coords, feats)
    y = up(down(x))
    assert y.stride == 1 and torch.equal(y.coordinates, x.coordinates)  # onto the existing finer set
    ref = F.conv_transpose3d(F.conv3d(dense, w_down, stride=2), w_up, stride=2)
    torch.testing.assert_close(y.features, dense_at(ref, y.coordinates, 1), rtol=1e-10, atol=1e-10)


def test_sparse_conv_function_gradcheck():
    coords = random_cloud_coords([14, 10], span=3, seed=3)
    manager = CoordinateManager(coords)
    maps = (manager.conv_map(1, 1, 3), manager.conv_map(1, 2, 2), manager.conv_map(1, 2, 2).transposed())
    for kmap, channels in zip(maps + maps[:1], (2, 2, 2, 1)):  # channels == 1: the dense single-channel path
        x = torch.randn(kmap.n_in, channels, dtype=torch.float64, requires_grad=True)
        w = torch.randn(len(kmap.bounds) - 1, channels, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: sparse_conv(a, b, kmap), (x, w))


def test_kernel_maps_are_cached_and_reused():
    coords = random_cloud_coords([50, 80])
    manager = CoordinateManager(coords)
    a = manager.conv_map(1, 1, 3)
    assert manager.conv_map(1, 1, 3) is a
    down = manager.conv_map(1, 2, 2)
    up = manager.transposed_conv_map(2, 1, 2)
    assert up.in_idx is down.out_idx and up.out_idx is down.in_idx
    assert manager.coordinate_set(2) is manager.coordinate_set(2)


def test_kernel_offsets_order():
    offs = kernel_offsets(3)
    assert offs.shape == (27, 3)
    assert offs[0].tolist() == [-1, -1, -1] and offs[1].tolist() == [0, -1, -1] and offs[3].tolist() == [-1, 0, -1]
    assert offs[13].tolist() == [0, 0, 0]
    assert torch.equal(offs.flip(0), -offs)  # mirrored order (used by the symmetric kernel-map shortcut)
    assert kernel_offsets(2).tolist()[:3] == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert kernel_offsets(5).shape == (125, 3)


def test_clouds_do_not_interact_and_duplicates_merge():
    coords = random_cloud_coords([30, 30], span=4)
    coords[30:, 1:] = coords[:30, 1:]  # identical geometry in both clouds
    feats = torch.randn(60, 2, dtype=torch.float64)
    feats[30:] = feats[:30]
    conv = SparseConvolution(2, 3, kernel_size=3).double()
    y = conv(sparse_input(coords, feats))
    b = y.batch_index
    torch.testing.assert_close(y.features[b == 0], y.features[b == 1])
    dup = torch.cat([coords[:30], coords[:5]])
    x = sparse_input(dup, torch.cat([feats[:30], feats[:5] + 2.0]))
    assert x.features.shape[0] == 30  # duplicates merged (averaged)


def test_eca_kernel_size():
    assert eca_kernel_size(32) == 3 and eca_kernel_size(64) == 3 and eca_kernel_size(256) == 5


# ---------------------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------------------
def test_registry_and_unknown_backend():
    assert set(SPARSE_BACKENDS) == {"torch", "minkowski"}
    with pytest.raises(KeyError, match="torch"):
        get_sparse_backend("spconv")


def test_cloud_branch_shapes_variable_sizes_and_order_independence():
    torch.manual_seed(0)
    cfg = smoke_model_cfg()
    branch = build_cloud_branch(cfg).eval()
    coords = random_cloud_coords([120, 7, 300, 45], span=30)
    with torch.no_grad():
        out = branch(coords)
        assert out.shape == (4, cfg.cloud_dim)
        perm = torch.randperm(len(coords))
        torch.testing.assert_close(branch(coords[perm]), out, rtol=1e-5, atol=1e-6)
        # eval mode: each cloud's descriptor does not depend on the other clouds of the batch
        second = coords[coords[:, 0] == 2].clone()
        second[:, 0] = 0
        torch.testing.assert_close(branch(second)[0], out[2], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(out).all()


def test_per_cloud_mean_is_order_independent():
    feats = torch.randn(50, 4)
    batch = torch.randint(0, 3, (50,))
    perm = torch.randperm(50)
    torch.testing.assert_close(per_cloud_mean(feats, batch, 3), per_cloud_mean(feats[perm], batch[perm], 3))
    torch.testing.assert_close(per_cloud_mean(feats, batch, 3)[1], feats[batch == 1].mean(0))


def test_teacher_forward_shapes_and_gradients():
    torch.manual_seed(0)
    cfg = smoke_model_cfg()
    teacher = build_teacher(cfg)
    batch = {"coords": random_cloud_coords([60, 90, 30], span=25), "images": torch.randn(3, 3, 48, 64)}
    out = teacher(batch)
    assert out["embedding"].shape == (3, cfg.cloud_dim + cfg.image_dim)
    assert out["cloud_embedding"].shape == (3, cfg.cloud_dim)
    assert out["image_embedding"].shape == (3, cfg.image_dim)
    torch.testing.assert_close(out["embedding"][:, : cfg.cloud_dim], out["cloud_embedding"])
    torch.testing.assert_close(out["embedding"][:, cfg.cloud_dim:], out["image_embedding"])
    out["embedding"].square().sum().backward()
    no_grad = [n for n, p in teacher.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert teacher.cloud_fe.pooling.pooling.p.grad.abs() > 0
    assert teacher.cloud_fe.backbone.conv0.kernel.grad.abs().sum() > 0


def test_teacher_state_dict_matches_reference_names():
    teacher = build_teacher(ModelConfig())
    sd = teacher.state_dict()
    assert sd["cloud_fe.backbone.conv0.kernel"].shape == (125, 1, 32)
    assert sd["cloud_fe.backbone.convs.0.kernel"].shape == (8, 32, 32)
    assert sd["cloud_fe.backbone.blocks.1.0.downsample.0.kernel"].shape == (32, 64)
    assert sd["cloud_fe.backbone.tconvs.0.kernel"].shape == (8, 128, 128)
    assert sd["cloud_fe.backbone.conv1x1s.1.kernel"].shape == (64, 128)
    assert sd["cloud_fe.pooling.pooling.p"].shape == (1,)
    assert sd["image_fe.image_gem.p"].shape == (1,)
    # a reference-like checkpoint with the unused parts loads, dropping them
    extra = dict(sd)
    extra["image_fe.model.fc.weight"] = torch.zeros(1000, 512)
    extra["image_fe.imagenetvlad.centroids"] = torch.zeros(64, 256)
    dropped = load_reference_teacher_state_dict(teacher, extra)
    assert dropped == ["image_fe.imagenetvlad.centroids", "image_fe.model.fc.weight"]
    del extra["cloud_fe.pooling.pooling.p"]
    with pytest.raises(ValueError, match="missing"):
        load_reference_teacher_state_dict(teacher, extra)


def test_reference_initialisation():
    torch.manual_seed(0)
    fpn = build_cloud_branch(ModelConfig()).backbone
    k = fpn.blocks[1][0].conv1.kernel  # (27, 32, 64): fan_out = 27 * 64
    assert abs(k.std().item() - (2.0 / (27 * 64)) ** 0.5) < 0.1 * (2.0 / (27 * 64)) ** 0.5
    assert torch.equal(fpn.bns[0].bn.weight, torch.ones(32)) and torch.equal(fpn.bns[0].bn.bias, torch.zeros(32))
    t = fpn.tconvs[0].kernel  # ME default for transposed convs: uniform +-1/sqrt(out * K)
    assert t.abs().max().item() <= (1.0 / (128 * 8)) ** 0.5


def test_student_shapes_dim_check_and_weights(tmp_path):
    cfg = smoke_model_cfg()
    student = build_student(cfg)
    out = student({"images": torch.randn(2, 3, 48, 64)})
    assert out["embedding"].shape == (2, cfg.student_dim)
    out["embedding"].sum().backward()
    assert student.image_gem.p.grad is not None
    with pytest.raises(ValueError, match="teacher dimension"):
        build_student(dataclasses.replace(cfg, student_dim=cfg.student_dim + 1))
    # local weights: a full torchvision-style state_dict loads, unused layer4/fc are reported
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    unused = load_image_backbone_weights(student, path)
    assert any(k.startswith("layer4.") for k in unused) and "fc.weight" in unused
    torch.testing.assert_close(student.model.conv1.weight, full.conv1.weight)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_image_weights(str(tmp_path / "missing.pth"), "resnet18")
    assert resolve_image_weights(None, "resnet18") is None
    built = build_student(dataclasses.replace(cfg, pretrained_image_weights=str(path)))
    torch.testing.assert_close(built.model.layer3[0].conv1.weight, full.layer3[0].conv1.weight)
