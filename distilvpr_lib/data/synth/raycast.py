"""Vectorised first-hit ray casting against boxes, vertical cylinders, spheroids and the ground.

All rays of one call share one origin (a camera or one LiDAR sweep). Rays are grouped into
*azimuth sectors* (camera column strips, LiDAR azimuth ranges); a primitive is only tested
against the sectors that its bounding circle can reach, so each ray meets a few dozen primitives
instead of every one in range. The work is ``(sectors, rays per sector, primitives per sector)``
numpy float32 arrays, processed a few sectors at a time so temporaries stay in cache.

Coordinates passed to the kernels are relative to the ray origin (float32): the world stays in
float64 and is shifted once per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distilvpr_lib.data.synth.world import Primitives

#: Kinds of hit.
HIT_NONE, HIT_BOX, HIT_CYLINDER, HIT_SPHEROID, HIT_GROUND = 0, 1, 2, 3, 4
#: Target number of elements of the (sectors, rays, primitives) temporaries per chunk.
_CHUNK_ELEMENTS = 160_000
_FAR = np.float32(1e6)


@dataclass
class LocalPrimitives:
    """Primitives near a ray origin, in origin-relative float32 coordinates.

    ``*_index`` maps back into the full :class:`Primitives` arrays. Each kind also holds
    ``*_bearing`` (azimuth of the xy centre, radians) and ``*_spread`` (half the azimuth range its
    bounding circle covers; pi when the origin is inside the circle).
    """

    origin: np.ndarray  # (3,) float64
    box_index: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    box_bearing: np.ndarray
    box_spread: np.ndarray
    cyl_index: np.ndarray
    cyl_xy: np.ndarray
    cyl_r: np.ndarray
    cyl_z: np.ndarray
    cyl_bearing: np.ndarray
    cyl_spread: np.ndarray
    sph_index: np.ndarray
    sph_center: np.ndarray
    sph_radius: np.ndarray
    sph_porosity: np.ndarray
    sph_seed: np.ndarray
    sph_bearing: np.ndarray
    sph_spread: np.ndarray


def _bearing_spread(dxy: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = np.hypot(dxy[:, 0], dxy[:, 1])
    bearing = np.arctan2(dxy[:, 1], dxy[:, 0])
    ratio = np.clip(radius / np.maximum(dist, 1e-9), 0.0, 1.0)
    spread = np.where(dist > radius + 1e-6, np.arcsin(ratio), np.pi)
    return bearing.astype(np.float32), spread.astype(np.float32)


def select_primitives(prims: Primitives, origin: np.ndarray, max_range: float,
                      forward: float | None = None, half_fov: float | None = None) -> LocalPrimitives:
    """Primitives whose bounding circle comes within ``max_range`` (xy) of ``origin``.

    Args:
        prims: all primitives (local frame).
        origin: (3,) ray origin, float64.
        max_range: metres.
        forward, half_fov: optional azimuth (radians) and half-width of a view cone; primitives
            entirely outside it are dropped (camera frustum culling).
    """
    origin = np.asarray(origin, dtype=np.float64)

    def keep(dxy: np.ndarray, radius: np.ndarray) -> np.ndarray:
        dist = np.hypot(dxy[:, 0], dxy[:, 1])
        ok = dist - radius <= max_range
        if forward is not None and half_fov is not None:
            bearing = np.arctan2(dxy[:, 1], dxy[:, 0])
            off = np.abs(np.angle(np.exp(1j * (bearing - forward))))
            spread = np.where(dist > radius, np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0, 1)), np.pi)
            ok &= off <= half_fov + spread
        return ok

    bc = prims.box_centres() - origin[:2]
    br = prims.box_radii()
    bi = np.flatnonzero(keep(bc, br))
    cc = prims.cyl_xy - origin[:2]
    ci = np.flatnonzero(keep(cc, prims.cyl_radius))
    sc = prims.sph_center[:, :2] - origin[:2]
    si = np.flatnonzero(keep(sc, prims.sph_radius[:, 0]))
    box_bearing, box_spread = _bearing_spread(bc[bi], br[bi])
    cyl_bearing, cyl_spread = _bearing_spread(cc[ci], prims.cyl_radius[ci])
    sph_bearing, sph_spread = _bearing_spread(sc[si], prims.sph_radius[si, 0])
    return LocalPrimitives(
        origin=origin,
        box_index=bi, box_lo=(prims.box_lo[bi] - origin).astype(np.float32),
        box_hi=(prims.box_hi[bi] - origin).astype(np.float32), box_bearing=box_bearing, box_spread=box_spread,
        cyl_index=ci, cyl_xy=(prims.cyl_xy[ci] - origin[:2]).astype(np.float32),
        cyl_r=prims.cyl_radius[ci].astype(np.float32), cyl_z=(prims.cyl_z[ci] - origin[2]).astype(np.float32),
        cyl_bearing=cyl_bearing, cyl_spread=cyl_spread,
        sph_index=si, sph_center=(prims.sph_center[si] - origin).astype(np.float32),
        sph_radius=prims.sph_radius[si].astype(np.float32), sph_porosity=prims.sph_porosity[si].astype(np.float32),
        sph_seed=prims.sph_seed[si].astype(np.uint32), sph_bearing=sph_bearing, sph_spread=sph_spread,
    )


def _sector_table(bearing: np.ndarray, spread: np.ndarray, sector_mid: np.ndarray, sector_half: np.ndarray
                  ) -> np.ndarray:
    """(S, K) table of primitive indices per sector, padded with ``len(bearing)`` (a null primitive)."""
    n = len(bearing)
    S = len(sector_mid)
    if n == 0:
        return np.full((S, 1), 0, dtype=np.int64)
    diff = np.abs(np.angle(np.exp(1j * (bearing[None, :].astype(np.float64) - sector_mid[:, None]))))
    member = diff <= (spread[None, :] + sector_half[:, None] + 2e-3)
    counts = member.sum(axis=1)
    k = max(int(counts.max()), 1)
    table = np.full((S, k), n, dtype=np.int64)
    rows, cols = np.nonzero(member)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    table[rows, np.arange(len(rows)) - starts[rows]] = cols
    return table


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


def cast_rays(local: LocalPrimitives, directions: np.ndarray, sector_mid: np.ndarray, sector_half: np.ndarray,
              ray_ids: np.ndarray, salt: int, max_range: float, ground: bool = True) -> Hits:
    """First hit of every ray.

    Args:
        local: primitives near the origin (:func:`select_primitives`).
        directions: (S, R, 3) float32 unit ray directions, grouped by azimuth sector.
        sector_mid, sector_half: (S,) float64 azimuth centre and half-width (radians) of each sector.
        ray_ids: (S, R) integer ids of the rays (foliage pass-through hashing).
        salt: integer mixed into the foliage hash (per frame).
        max_range: hits farther than this are dropped (metres).
        ground: also intersect the ground plane ``z = 0`` (``local.origin[2]`` above it).

    Returns:
        :class:`Hits` of shape (S, R).
    """
    S, R, _ = directions.shape
    d = directions.astype(np.float32, copy=False)
    dx, dy, dz = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    tiny = np.float32(1e-12)
    safe = np.where(np.abs(d) < tiny, np.where(d < 0, -tiny, tiny), d)
    inv = (np.float32(1.0) / safe).astype(np.float32)
    best_t = np.full((S, R), np.inf, dtype=np.float32)
    best_kind = np.zeros((S, R), dtype=np.uint8)
    best_index = np.zeros((S, R), dtype=np.int64)
    limit = np.float32(max_range)

    # --- boxes ---
    nb = len(local.box_lo)
    if nb:
        table = _sector_table(local.box_bearing, local.box_spread, sector_mid, sector_half)
        lo = np.vstack([local.box_lo, np.full((1, 3), _FAR, np.float32)])[table]  # (S, K, 3)
        hi = np.vstack([local.box_hi, np.full((1, 3), _FAR, np.float32)])[table]
        K = table.shape[1]
        step = max(1, _CHUNK_ELEMENTS // max(R * K, 1))
        for s0 in range(0, S, step):
            sl = slice(s0, s0 + step)
            t_near = None
            t_far = None
            for axis in range(3):
                iv = inv[sl, :, axis:axis + 1]
                a = lo[sl, None, :, axis] * iv
                b = hi[sl, None, :, axis] * iv
                if t_near is None:
                    t_near = np.minimum(a, b)
                    t_far = np.maximum(a, b)
                else:
                    np.maximum(t_near, np.minimum(a, b), out=t_near)
                    np.minimum(t_far, np.maximum(a, b), out=t_far)
            assert t_near is not None and t_far is not None
            miss = (t_near > t_far) | (t_near <= np.float32(0.0)) | (t_near > limit)
            t_near[miss] = np.inf
            arg = t_near.argmin(axis=2)
            tmin = np.take_along_axis(t_near, arg[..., None], axis=2)[..., 0]
            better = tmin < best_t[sl]
            best_t[sl] = np.where(better, tmin, best_t[sl])
            best_kind[sl] = np.where(better, HIT_BOX, best_kind[sl])
            best_index[sl] = np.where(better, np.take_along_axis(table[sl], arg, axis=1), best_index[sl])

    # --- vertical cylinders ---
    nc = len(local.cyl_xy)
    if nc:
        table = _sector_table(local.cyl_bearing, local.cyl_spread, sector_mid, sector_half)
        cx = np.append(local.cyl_xy[:, 0], _FAR)[table][:, None, :]
        cy = np.append(local.cyl_xy[:, 1], _FAR)[table][:, None, :]
        r = np.append(local.cyl_r, np.float32(0.0))[table][:, None, :]
        z0 = np.append(local.cyl_z[:, 0], _FAR)[table][:, None, :]
        z1 = np.append(local.cyl_z[:, 1], _FAR)[table][:, None, :]
        c0 = cx * cx + cy * cy - r * r
        a_all = np.maximum(dx * dx + dy * dy, np.float32(1e-12))
        K = table.shape[1]
        step = max(1, _CHUNK_ELEMENTS // max(R * K, 1))
        for s0 in range(0, S, step):
            sl = slice(s0, s0 + step)
            a = a_all[sl]
            bp = dx[sl] * cx[sl] + dy[sl] * cy[sl]
            disc = bp * bp - a * c0[sl]
            ok = disc >= 0
            np.sqrt(np.maximum(disc, 0, out=disc), out=disc)
            t = (bp - disc) / a
            z = t * dz[sl]
            ok &= (t > np.float32(0.0)) & (t <= limit) & (z >= z0[sl]) & (z <= z1[sl]) & (c0[sl] > 0)
            t[~ok] = np.inf
            arg = t.argmin(axis=2)
            tmin = np.take_along_axis(t, arg[..., None], axis=2)[..., 0]
            better = tmin < best_t[sl]
            best_t[sl] = np.where(better, tmin, best_t[sl])
            best_kind[sl] = np.where(better, HIT_CYLINDER, best_kind[sl])
            best_index[sl] = np.where(better, np.take_along_axis(table[sl], arg, axis=1), best_index[sl])

    # --- spheroids (equal horizontal radii), porous foliage ---
    ns = len(local.sph_center)
    if ns:
        table = _sector_table(local.sph_bearing, local.sph_spread, sector_mid, sector_half)
        c = np.vstack([local.sph_center, np.full((1, 3), _FAR, np.float32)])[table]  # (S, K, 3)
        rad = np.vstack([local.sph_radius, np.ones((1, 2), np.float32)])[table]
        q = (np.float32(1.0) / (rad[..., 0] * rad[..., 0]))[:, None, :]
        w = (np.float32(1.0) / (rad[..., 1] * rad[..., 1]))[:, None, :]
        pcx = c[:, None, :, 0] * q
        pcy = c[:, None, :, 1] * q
        pcz = c[:, None, :, 2] * w
        c0 = (c[:, None, :, 0] ** 2 + c[:, None, :, 1] ** 2) * q + c[:, None, :, 2] ** 2 * w - np.float32(1.0)
        porosity = np.append(local.sph_porosity, np.float32(0.0))[table][:, None, :]
        threshold = (np.clip(porosity, 0.0, 1.0).astype(np.float64) * 4294967295.0).astype(np.uint32)
        seeds = (np.append(local.sph_seed, np.uint32(0))[table][:, None, :] ^ np.uint32(salt & 0xFFFFFFFF))
        ray_h = (np.asarray(ray_ids).astype(np.uint32) * np.uint32(0x9E3779B1))[..., None]
        axy = dx * dx + dy * dy
        azz = dz * dz
        any_porous = bool(np.any(porosity > 0))
        K = table.shape[1]
        step = max(1, _CHUNK_ELEMENTS // max(R * K, 1))
        for s0 in range(0, S, step):
            sl = slice(s0, s0 + step)
            a = axy[sl] * q[sl] + azz[sl] * w[sl]
            bp = dx[sl] * pcx[sl] + dy[sl] * pcy[sl] + dz[sl] * pcz[sl]
            disc = bp * bp - a * c0[sl]
            ok = disc >= 0
            np.sqrt(np.maximum(disc, 0, out=disc), out=disc)
            t = (bp - disc) / a
            ok &= (t > np.float32(0.0)) & (t <= limit) & (c0[sl] > 0)
            if any_porous:
                h = ray_h[sl] ^ seeds[sl]
                _mix32(h)
                ok &= h >= threshold[sl]
            t[~ok] = np.inf
            arg = t.argmin(axis=2)
            tmin = np.take_along_axis(t, arg[..., None], axis=2)[..., 0]
            better = tmin < best_t[sl]
            best_t[sl] = np.where(better, tmin, best_t[sl])
            best_kind[sl] = np.where(better, HIT_SPHEROID, best_kind[sl])
            best_index[sl] = np.where(better, np.take_along_axis(table[sl], arg, axis=1), best_index[sl])

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


def sectors_from_directions(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth centre and half-width (radians) of each sector of (S, R, 3) directions."""
    az = np.arctan2(directions[..., 1].astype(np.float64), directions[..., 0].astype(np.float64))
    ref = az[:, :1]
    rel = np.angle(np.exp(1j * (az - ref)))
    lo = rel.min(axis=1)
    hi = rel.max(axis=1)
    mid = ref[:, 0] + 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    return np.angle(np.exp(1j * mid)), half
