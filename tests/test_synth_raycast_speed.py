"""The generator's speed-ups (issue 26 item 5) give the same bits as the expressions they replace.

Each test runs the current code and the previous formulation (copied here as the reference) on random
scenes chosen to hit the edge cases (azimuth wrap-around, turned boxes, primitives hidden behind walls)
and asserts *exact* equality. The smoke world's committed fingerprint (tests/test_dataset_fingerprint.py)
checks the whole generator end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

from distilvpr_lib.data.synth import camera, raycast
from distilvpr_lib.data.synth.raycast import cast_rays
from distilvpr_lib.data.synth.tiling import Tiles, bounds, grid_tiles, membership, select_primitives
from distilvpr_lib.data.synth.world import PrimitiveBuilder


def _reference_membership(angles: np.ndarray, tiles: Tiles) -> np.ndarray:
    eps = 2e-3
    diff = np.abs(np.angle(np.exp(1j * (angles[None, :, 0] - tiles.az_mid[:, None]))))
    return ((diff <= angles[None, :, 1] + tiles.az_half[:, None] + eps)
            & (angles[None, :, 3] >= tiles.el_lo[:, None] - eps)
            & (angles[None, :, 2] <= tiles.el_hi[:, None] + eps))


def _random_scene(seed: int, n: int = 300, extent: float = 80.0):
    """Boxes (some turned), cylinders and spheroids (some porous) scattered around the origin."""
    rng = np.random.default_rng(seed)
    b = PrimitiveBuilder()
    for _ in range(n):
        x, y = rng.uniform(-extent, extent, 2)
        w, d, h = rng.uniform(0.3, 12.0, 3)
        yaw = float(rng.choice([0.0, rng.uniform(-np.pi, np.pi)]))
        b.box((x, y, rng.uniform(-0.5, 1.0)), (x + w, y + d, h), "building", (0.5, 0.5, 0.5), yaw=yaw)
        cx, cy = rng.uniform(-extent, extent, 2)
        b.cylinder((cx, cy), rng.uniform(0.05, 1.5), 0.0, rng.uniform(0.5, 8.0), "pole", (0.3, 0.3, 0.3))
        sx, sy = rng.uniform(-extent, extent, 2)
        b.spheroid((sx, sy, rng.uniform(0.5, 8.0)), rng.uniform(0.3, 4.0), rng.uniform(0.3, 4.0), "crown",
                   (0.1, 0.4, 0.1), porosity=float(rng.choice([0.0, 0.3])), seed=int(rng.integers(1 << 31)))
    return b.build()


def _sweep(yaw: float, beams: int = 16, steps: int = 120) -> np.ndarray:
    el = np.radians(np.linspace(-25, 35, beams))
    az = np.arange(steps) * (2 * np.pi / steps) - np.pi + yaw
    aa, ee = np.meshgrid(az, el, indexing="ij")
    return np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], axis=-1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_membership_equals_the_full_expression(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tiles, _ = grid_tiles(_sweep(float(rng.uniform(-np.pi, np.pi))), (10, 8))
    n = 2000
    spread = np.where(rng.random(n) < 0.05, np.pi, rng.uniform(0, 0.3, n))  # pi: origin inside the circle
    angles = np.stack([rng.uniform(-np.pi, np.pi, n), spread, rng.uniform(-0.6, 0.3, n), rng.uniform(-0.3, 0.8, n)],
                      axis=1)
    # pairs exactly at the wrap-around and at the tolerance edge
    angles[:20, 0] = np.pi
    angles[20:40, 0] = -np.pi
    angles[40:60, 0] = tiles.az_mid[:20] + tiles.az_half[:20] + 2e-3 + angles[40:60, 1]
    got = membership(angles, tiles)
    assert got.dtype == bool and np.array_equal(got, _reference_membership(angles, tiles))
    assert 0 < got.sum() < got.size


@pytest.mark.parametrize("seed", [0, 1])
def test_select_primitives_selects_what_the_all_primitive_test_selects(seed: int) -> None:
    prims = _random_scene(seed, extent=150.0)
    origin = np.array([3.0, -7.0, 1.6])
    for max_range, forward, half_fov in ((60.0, None, None), (140.0, 0.7, 0.63), (140.0, -3.1, 0.63)):
        local = select_primitives(prims, origin, max_range, forward=forward, half_fov=half_fov)
        for centres, radius, got in ((prims.box_centres(), prims.box_radii(), local.box_index),
                                     (prims.cyl_xy, prims.cyl_radius, local.cyl_index),
                                     (prims.sph_center[:, :2], prims.sph_radius[:, 0], local.sph_index)):
            dxy = centres - origin[:2]
            dist = np.hypot(dxy[:, 0], dxy[:, 1])
            ok = dist - radius <= max_range
            if forward is not None:
                bearing = np.arctan2(dxy[:, 1], dxy[:, 0])
                off = np.abs(np.angle(np.exp(1j * (bearing - forward))))
                spread = np.where(dist > radius, np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0, 1)), np.pi)
                ok &= off <= half_fov + spread
            assert np.array_equal(got, np.flatnonzero(ok))


def test_bounds_are_cached_and_follow_replaced_arrays() -> None:
    prims = _random_scene(3, n=20)
    first = bounds(prims)
    assert bounds(prims) is first
    assert np.array_equal(first.box_centres, prims.box_centres()) and np.array_equal(first.box_radii, prims.box_radii())
    prims.box_hi = prims.box_hi + 1.0
    again = bounds(prims)
    assert again is not first and np.array_equal(again.box_radii, prims.box_radii())


def _reference_turned_box_hits(lo, hi, cos, sin, d):
    centre = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    cs = cos[:, None, :]
    sn = sin[:, None, :]
    ox, oy, oz = -centre[:, None, :, 0], -centre[:, None, :, 1], -centre[:, None, :, 2]
    lox = cs * ox + sn * oy
    loy = -sn * ox + cs * oy
    dx, dy = d[..., 0:1], d[..., 1:2]
    ldx = cs * dx + sn * dy
    ldy = -sn * dx + cs * dy
    ldz = np.broadcast_to(d[..., 2:3], ldx.shape)
    tiny = np.float32(1e-12)
    t_near = t_far = None
    for o, dd, h in ((lox, ldx, half[:, None, :, 0]), (loy, ldy, half[:, None, :, 1]), (oz, ldz, half[:, None, :, 2])):
        iv = np.float32(1.0) / np.where(np.abs(dd) < tiny, tiny, dd)
        a, b = (-h - o) * iv, (h - o) * iv
        if t_near is None:
            t_near, t_far = np.minimum(a, b), np.maximum(a, b)
        else:
            np.maximum(t_near, np.minimum(a, b), out=t_near)
            np.minimum(t_far, np.maximum(a, b), out=t_far)
    t_near = np.array(t_near, dtype=np.float32)
    t_near[t_near > t_far] = np.inf
    return t_near


def _reference_turned_box_hits_far(lo, hi, cos, sin, d, origins):
    centre = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    cs = cos[:, None, :]
    sn = sin[:, None, :]
    ox = origins[:, :, None, 0] - centre[:, None, :, 0]
    oy = origins[:, :, None, 1] - centre[:, None, :, 1]
    oz = origins[:, :, None, 2] - centre[:, None, :, 2]
    lox, loy = cs * ox + sn * oy, -sn * ox + cs * oy
    ldx = cs * d[..., 0:1] + sn * d[..., 1:2]
    ldy = -sn * d[..., 0:1] + cs * d[..., 1:2]
    ldz = np.broadcast_to(d[..., 2:3], ldx.shape)
    t_near = t_far = None
    for o, dd, h in ((lox, ldx, half[:, None, :, 0]), (loy, ldy, half[:, None, :, 1]), (oz, ldz, half[:, None, :, 2])):
        iv = np.float32(1.0) / np.where(np.abs(dd) < 1e-9, np.float32(1e-9), dd)
        a, b = (-h - o) * iv, (h - o) * iv
        if t_near is None:
            t_near, t_far = np.minimum(a, b), np.maximum(a, b)
        else:
            t_near, t_far = np.maximum(t_near, np.minimum(a, b)), np.minimum(t_far, np.maximum(a, b))
    return np.where(t_near <= t_far, t_far, -np.inf).astype(np.float32)


def test_turned_box_distances_are_bit_identical_to_the_reference() -> None:
    rng = np.random.default_rng(5)
    c, R, K = 6, 40, 25
    lo = rng.uniform(-30, 30, (c, K, 3)).astype(np.float32)
    hi = lo + rng.uniform(0.2, 10, (c, K, 3)).astype(np.float32)
    yaw = np.where(rng.random((c, K)) < 0.5, 0.0, rng.uniform(-np.pi, np.pi, (c, K)))
    cos, sin = np.cos(yaw).astype(np.float32), np.sin(yaw).astype(np.float32)
    d = rng.normal(size=(c, R, 3))
    d[:, :4, 2] = 0.0  # horizontal rays: the division guard
    d[:, 4:8, :2] = 0.0  # vertical rays
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)
    got = raycast._turned_box_hits(lo, hi, cos, sin, d)
    assert got.dtype == np.float32 and np.isfinite(got).any() and np.isinf(got).any()
    assert np.array_equal(got, _reference_turned_box_hits(lo, hi, cos, sin, d))
    origins = rng.uniform(-20, 20, (c, R, 3)).astype(np.float32)
    sun = np.broadcast_to(np.array([0.3, -0.5, 0.81], np.float32), (c, R, 3))
    got = camera._turned_box_hits_far(lo, hi, cos, sin, sun, origins)
    assert got.dtype == np.float32 and np.isfinite(got).any()
    assert np.array_equal(got, _reference_turned_box_hits_far(lo, hi, cos, sin, sun, origins))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_culling_behind_first_hits_changes_no_hit(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    prims = _random_scene(seed, n=400, extent=60.0)
    origin = np.array([0.5, 0.25, 2.0])
    tiles, ids = grid_tiles(_sweep(0.1 * seed, beams=32, steps=180), (10, 8))
    local = select_primitives(prims, origin, 60.0)
    culled = cast_rays(local, tiles, ids, 77, 60.0)
    calls = []

    def no_culling(member, best_t, nearest):
        calls.append(int((member & (nearest[None, :] > best_t.max(axis=1)[:, None] + 1.0)).sum()))
        return member

    monkeypatch.setattr(raycast, "_cull_behind", no_culling)
    full = cast_rays(local, tiles, ids, 77, 60.0)
    assert sum(calls) > 0  # the scene does hide primitives behind first hits
    for name in ("t", "kind", "index"):
        assert np.array_equal(getattr(culled, name), getattr(full, name)), name
