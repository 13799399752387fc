"""Vectorised first-hit ray casting against boxes, vertical cylinders, spheroids and the ground.

All rays of one call share one origin (a camera or one LiDAR sweep). Rays are grouped into
angular *tiles* and each tile meets only the primitives its angular box can reach
(:mod:`.tiling`). The work is ``(tiles, rays per tile, primitives per tile)`` numpy float32 arrays,
processed a group of tiles at a time so temporaries stay in cache.

Coordinates passed to the kernels are relative to the ray origin (float32): the world stays in
float64 and is shifted once per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distilvpr_lib.data.synth.tiling import (
    LocalPrimitives,
    Tiles,
    grid_tiles,
    membership,
    select_primitives,
    split_padded,
    tile_chunks,
)

#: Kinds of hit.
HIT_NONE, HIT_BOX, HIT_CYLINDER, HIT_SPHEROID, HIT_GROUND = 0, 1, 2, 3, 4
_FAR = np.float32(1e6)


def _mix32(h: np.ndarray) -> np.ndarray:
    """In-place avalanche of a uint32 array (lowbias32)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h


def hash_uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Deterministic uniform [0, 1) float32 from integer keys (broadcast together)."""
    arrays = [np.asarray(k).astype(np.uint32) for k in keys]
    shape = np.broadcast_shapes(*[a.shape for a in arrays])
    h = np.full(shape, 0x9E3779B9, dtype=np.uint32)
    for a in arrays:
        h ^= a
        h *= np.uint32(0x85EBCA6B)
        _mix32(h)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


@dataclass
class Hits:
    """First hits of a ray batch; arrays of the rays' shape (S, R).

    ``t`` float32 distance along the (unit) ray (``inf`` for none), ``kind`` uint8 (HIT_*),
    ``index`` int64 into the *local* primitive arrays of that kind.
    """

    t: np.ndarray
    kind: np.ndarray
    index: np.ndarray


def _keep_best(best_t: np.ndarray, best_kind: np.ndarray, best_index: np.ndarray, tiles: np.ndarray,
               t: np.ndarray, table: np.ndarray, kind: int) -> None:
    """Fold a chunk's (c, R, K) distances into the running first hits of its tiles."""
    arg = t.argmin(axis=2)
    tmin = np.take_along_axis(t, arg[..., None], axis=2)[..., 0]
    current = best_t[tiles]
    better = tmin < current
    if not better.any():  # nothing nearer in this chunk: every array stays as it is
        return
    np.copyto(current, tmin, where=better)
    best_t[tiles] = current
    cur_kind = best_kind[tiles]
    np.copyto(cur_kind, np.uint8(kind), where=better)
    best_kind[tiles] = cur_kind
    cur_index = best_index[tiles]
    np.copyto(cur_index, np.take_along_axis(table, arg, axis=1), where=better)
    best_index[tiles] = cur_index


def _cull_behind(member: np.ndarray, best_t: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Drop from ``member`` (T, P) the primitives wholly beyond every ray's current first hit in a tile.

    ``nearest`` (P,) is a lower bound of any ray's distance to the primitive (the xy distance to its
    bounding circle; a unit ray travels at least that far to reach it). A dropped primitive's computed
    distance would exceed ``best_t`` by far more than its rounding error (margin 1 m + 1 %), so it could
    never replace a first hit: the hits stay the same, bit for bit. Tiles with a ray that has no hit yet
    (``inf``) keep all their primitives.
    """
    far = best_t.max(axis=1).astype(np.float64)
    far += 1.0 + 1e-2 * far
    member &= ~(nearest[None, :] > far[:, None])
    return member


def _turned_box_hits(lo: np.ndarray, hi: np.ndarray, cos: np.ndarray, sin: np.ndarray, d: np.ndarray,
                     origins: np.ndarray | None = None) -> np.ndarray:
    """Entry distances (c, R, K) of rays into boxes turned about their vertical centre axis.

    Args:
        lo, hi: (c, K, 3) box corners (origin-relative, before turning); cos, sin: (c, K) of the yaw.
        d: (c, R, 3) unit ray directions; origins: (c, R, 3) ray origins (default: all at 0).

    Returns:
        float32 distances, ``inf`` where the ray misses (exits behind the origin included).
    """
    centre = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    cs = cos[:, None, :]
    sn = sin[:, None, :]
    if origins is None:
        ox = -centre[:, None, :, 0]
        oy = -centre[:, None, :, 1]
        oz = -centre[:, None, :, 2]
    else:
        ox = origins[:, :, None, 0] - centre[:, None, :, 0]
        oy = origins[:, :, None, 1] - centre[:, None, :, 1]
        oz = origins[:, :, None, 2] - centre[:, None, :, 2]
    # into the box frame: rotate by -yaw
    lox = cs * ox + sn * oy
    loy = -sn * ox + cs * oy
    dx = d[..., 0:1]
    dy = d[..., 1:2]
    ldx = cs * dx + sn * dy
    ldy = -sn * dx + cs * dy
    ldz = d[..., 2:3]  # (c, R, 1): the vertical axis is not turned; broadcast in the products below
    tiny = np.float32(1e-12)
    t_near = None
    t_far = None
    for o, dd, h in ((lox, ldx, half[:, None, :, 0]), (loy, ldy, half[:, None, :, 1]), (oz, ldz, half[:, None, :, 2])):
        iv = np.float32(1.0) / np.where(np.abs(dd) < tiny, tiny, dd)
        a = (-h - o) * iv
        b = (h - o) * iv
        if t_near is None:
            t_near, t_far = np.minimum(a, b), np.maximum(a, b)
        else:
            np.maximum(t_near, np.minimum(a, b), out=t_near)
            np.minimum(t_far, np.maximum(a, b, out=a), out=t_far)
    assert t_near is not None and t_far is not None
    np.copyto(t_near, np.float32(np.inf), where=t_near > t_far)  # t_near: a fresh float32 array
    return t_near


def _slab_hits(lo_ax: np.ndarray, hi_ax: np.ndarray, inv_ax: np.ndarray, tl: np.ndarray, table: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit distances (c, R, K) float32 of rays from the origin through axis-aligned boxes.

    Args:
        lo_ax, hi_ax: (3, P+1) box corners per axis (origin-relative); inv_ax: (3, T, R) 1 / ray direction;
        tl: (c,) tile indices; table: (c, K) box indices.
    """
    t_near = None
    t_far = None
    for axis in range(3):
        iv = inv_ax[axis][tl][:, :, None]
        a = lo_ax[axis][table][:, None, :] * iv
        b = hi_ax[axis][table][:, None, :] * iv
        # lo <= hi, so a <= b wherever iv > 0 and a >= b wherever iv < 0 (rounding is monotone): where
        # every ray of the group agrees, min / max are a and b themselves (equal values)
        sign = 1 if (iv > 0).all() else -1 if (iv < 0).all() else 0
        if sign:
            near, far = (a, b) if sign > 0 else (b, a)
            if t_near is None:
                t_near, t_far = near, far
            else:
                np.maximum(t_near, near, out=t_near)
                np.minimum(t_far, far, out=t_far)
        elif t_near is None:
            t_near = np.minimum(a, b)
            t_far = np.maximum(a, b)
        else:
            np.maximum(t_near, np.minimum(a, b), out=t_near)
            np.minimum(t_far, np.maximum(a, b, out=a), out=t_far)
    assert t_near is not None and t_far is not None
    return t_near, t_far


def cast_rays(local: LocalPrimitives, tiles: Tiles, ray_ids: np.ndarray, salt: int, max_range: float,
              ground: bool = True) -> Hits:
    """First hit of every ray.

    Args:
        local: primitives near the origin (:func:`select_primitives`).
        tiles: the rays, (T, R, 3) unit directions grouped into angular tiles.
        ray_ids: (T, R) integer ids of the rays (foliage pass-through hashing).
        salt: integer mixed into the foliage hash (per frame).
        max_range: hits farther than this are dropped (metres).
        ground: also intersect the ground plane ``z = 0`` (``local.origin[2]`` above it).

    Returns:
        :class:`Hits` of shape (T, R).
    """
    d = tiles.directions
    T, R, _ = d.shape
    dx, dy, dz = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    tiny = np.float32(1e-12)
    safe = np.where(np.abs(d) < tiny, np.where(d < 0, -tiny, tiny), d)
    inv = (np.float32(1.0) / safe).astype(np.float32)
    best_t = np.full((T, R), np.inf, dtype=np.float32)
    best_kind = np.zeros((T, R), dtype=np.uint8)
    best_index = np.zeros((T, R), dtype=np.int64)
    limit = np.float32(max_range)
    zero = np.float32(0.0)

    # --- boxes: slab test ---
    if len(local.box_lo):
        lo_all = np.vstack([local.box_lo, np.full((1, 3), _FAR, np.float32)])
        hi_all = np.vstack([local.box_hi, np.full((1, 3), _FAR, np.float32)])
        sin_all = np.append(local.box_sin, np.float32(0.0))
        cos_all = np.append(local.box_cos, np.float32(1.0))
        # per-axis contiguous copies (the same values): the (c, R, K) products stream along K
        lo_ax = np.ascontiguousarray(lo_all.T)
        hi_ax = np.ascontiguousarray(hi_all.T)
        inv_ax = np.ascontiguousarray(inv.transpose(2, 0, 1))
        null = len(local.box_lo)
        for chunk_tl, chunk_table in tile_chunks(membership(local.box_angles, tiles), R):
            # the slab test (turned or not) is chosen per chunk, as it always was: every box of a chunk with
            # a turned box is tested in its own frame; the groups only drop padding
            turned = bool(sin_all[chunk_table].any())
            for tl, table in split_padded(chunk_tl, chunk_table, null, R):
                if turned:
                    t_near = _turned_box_hits(lo_all[table], hi_all[table], cos_all[table], sin_all[table], d[tl])
                    bad = t_near <= zero
                else:
                    t_near, t_far = _slab_hits(lo_ax, hi_ax, inv_ax, tl, table)
                    bad = t_near > t_far
                    bad |= t_near <= zero
                bad |= t_near > limit
                np.copyto(t_near, np.float32(np.inf), where=bad)
                _keep_best(best_t, best_kind, best_index, tl, t_near, table, HIT_BOX)

    # --- vertical cylinders ---
    if len(local.cyl_xy):
        cx_all = np.append(local.cyl_xy[:, 0], _FAR)
        cy_all = np.append(local.cyl_xy[:, 1], _FAR)
        r_all = np.append(local.cyl_r, np.float32(0.0))
        z0_all = np.append(local.cyl_z[:, 0], _FAR)
        z1_all = np.append(local.cyl_z[:, 1], _FAR)
        a_all = np.maximum(dx * dx + dy * dy, np.float32(1e-12))
        nearest = np.hypot(local.cyl_xy[:, 0].astype(np.float64), local.cyl_xy[:, 1]) - local.cyl_r
        member = _cull_behind(membership(local.cyl_angles, tiles), best_t, nearest)
        for tl, table in (g for c in tile_chunks(member, R) for g in split_padded(*c, len(local.cyl_xy), R)):
            cx = cx_all[table][:, None, :]
            cy = cy_all[table][:, None, :]
            r = r_all[table][:, None, :]
            c0 = cx * cx + cy * cy - r * r
            a = a_all[tl]
            bp = dx[tl] * cx + dy[tl] * cy
            disc = bp * bp - a * c0
            ok = disc >= 0
            np.sqrt(np.maximum(disc, 0, out=disc), out=disc)
            t = (bp - disc) / a
            z = t * dz[tl]
            ok &= t > zero
            ok &= t <= limit
            ok &= z >= z0_all[table][:, None, :]
            ok &= z <= z1_all[table][:, None, :]
            ok &= c0 > 0
            np.copyto(t, np.float32(np.inf), where=~ok)
            _keep_best(best_t, best_kind, best_index, tl, t, table, HIT_CYLINDER)

    # --- spheroids (equal horizontal radii), porous foliage ---
    if len(local.sph_center):
        c_all = np.vstack([local.sph_center, np.full((1, 3), _FAR, np.float32)])
        rad_all = np.vstack([local.sph_radius, np.ones((1, 2), np.float32)])
        q_all = np.float32(1.0) / (rad_all[:, 0] * rad_all[:, 0])
        w_all = np.float32(1.0) / (rad_all[:, 1] * rad_all[:, 1])
        c0_all = (c_all[:, 0] ** 2 + c_all[:, 1] ** 2) * q_all + c_all[:, 2] ** 2 * w_all - np.float32(1.0)
        por_all = np.append(local.sph_porosity, np.float32(0.0))
        thr_all = (np.clip(por_all, 0.0, 1.0).astype(np.float64) * 4294967295.0).astype(np.uint32)
        seed_all = np.append(local.sph_seed, np.uint32(0)) ^ np.uint32(salt & 0xFFFFFFFF)
        ray_h = (np.asarray(ray_ids).astype(np.uint32) * np.uint32(0x9E3779B1))[..., None]
        axy = dx * dx + dy * dy
        azz = dz * dz
        c_ax = np.ascontiguousarray(c_all.T)
        nearest = np.hypot(local.sph_center[:, 0].astype(np.float64), local.sph_center[:, 1]) - local.sph_radius[:, 0]
        member = _cull_behind(membership(local.sph_angles, tiles), best_t, nearest)
        for tl, table in (g for c in tile_chunks(member, R) for g in split_padded(*c, len(local.sph_center), R)):
            q = q_all[table][:, None, :]
            w = w_all[table][:, None, :]
            a = axy[tl] * q + azz[tl] * w
            bp = dx[tl] * (c_ax[0][table][:, None, :] * q) + dy[tl] * (c_ax[1][table][:, None, :] * q) \
                + dz[tl] * (c_ax[2][table][:, None, :] * w)
            c0 = c0_all[table][:, None, :]
            disc = bp * bp - a * c0
            ok = disc >= 0
            np.sqrt(np.maximum(disc, 0, out=disc), out=disc)
            t = (bp - disc) / a
            ok &= t > zero
            ok &= t <= limit
            ok &= c0 > 0
            thr = thr_all[table]
            if thr.any():
                h = ray_h[tl] ^ seed_all[table][:, None, :]
                _mix32(h)
                ok &= h >= thr[:, None, :]
            np.copyto(t, np.float32(np.inf), where=~ok)
            _keep_best(best_t, best_kind, best_index, tl, t, table, HIT_SPHEROID)

    # --- ground plane ---
    if ground:
        height = np.float32(local.origin[2])
        down = d[..., 2] < np.float32(-1e-6)
        tg = np.where(down, -height / np.where(down, d[..., 2], np.float32(-1.0)), np.inf).astype(np.float32)
        tg[tg > limit] = np.inf
        better = tg < best_t
        best_t = np.where(better, tg, best_t)
        best_kind = np.where(better, HIT_GROUND, best_kind).astype(np.uint8)
    return Hits(t=best_t, kind=best_kind, index=best_index)


#: The public names (``Tiles``, ``grid_tiles`` and ``select_primitives`` re-exported from :mod:`.tiling`).
__all__ = [
    "HIT_BOX", "HIT_CYLINDER", "HIT_GROUND", "HIT_NONE", "HIT_SPHEROID", "Hits", "LocalPrimitives", "Tiles",
    "cast_rays", "grid_tiles", "hash_uniform", "select_primitives",
]
