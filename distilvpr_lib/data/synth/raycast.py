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

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from distilvpr_lib.data.synth.world import MATERIALS, Primitives

#: Kinds of hit.
HIT_NONE, HIT_BOX, HIT_CYLINDER, HIT_SPHEROID, HIT_GROUND = 0, 1, 2, 3, 4
#: Target number of elements of the (sectors, rays, primitives) temporaries per chunk.
_CHUNK_ELEMENTS = 160_000
_FAR = np.float32(1e6)


@dataclass
class LocalPrimitives:
    """Primitives near a ray origin, in origin-relative float32 coordinates.

    ``*_index`` maps back into the full :class:`Primitives` arrays. Each kind also holds the
    angular box its bounding volume covers as seen from the origin: ``*_bearing`` (azimuth of the xy
    centre), ``*_spread`` (half the azimuth range; pi when the origin is inside the bounding circle),
    ``*_el_lo`` / ``*_el_hi`` (elevation range), all radians.
    """

    origin: np.ndarray  # (3,) float64
    box_index: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    box_angles: np.ndarray  # (Nb, 4) bearing, spread, el_lo, el_hi
    box_cos: np.ndarray  # (Nb,) cos / sin of the box yaw
    box_sin: np.ndarray
    cyl_index: np.ndarray
    cyl_xy: np.ndarray
    cyl_r: np.ndarray
    cyl_z: np.ndarray
    cyl_angles: np.ndarray
    sph_index: np.ndarray
    sph_center: np.ndarray
    sph_radius: np.ndarray
    sph_porosity: np.ndarray
    sph_seed: np.ndarray
    sph_angles: np.ndarray


def _angular_box(dxy: np.ndarray, radius: np.ndarray, z_lo: np.ndarray, z_hi: np.ndarray) -> np.ndarray:
    """(N, 4) [bearing, spread, el_lo, el_hi] of vertical extents seen from the origin (conservative)."""
    dist = np.hypot(dxy[:, 0], dxy[:, 1])
    bearing = np.arctan2(dxy[:, 1], dxy[:, 0])
    ratio = np.clip(radius / np.maximum(dist, 1e-9), 0.0, 1.0)
    spread = np.where(dist > radius + 1e-6, np.arcsin(ratio), np.pi)
    d_min = np.maximum(dist - radius, 0.0)
    d_max = dist + radius
    el_lo = np.arctan2(z_lo, np.where(z_lo < 0, d_min, d_max))
    el_hi = np.arctan2(z_hi, np.where(z_hi > 0, d_min, d_max))
    return np.stack([bearing, spread, el_lo, el_hi], axis=1).astype(np.float64)


@dataclass
class PrimitiveBounds:
    """Per-set constants of a :class:`Primitives`' bounding circles (computed once, see :func:`bounds`).

    ``box_centres`` (Nb, 2) and ``box_radii`` (Nb,) are exactly ``prims.box_centres()`` and
    ``prims.box_radii()``; ``crowns`` the indices of the crown spheroids. ``sources`` are the arrays they
    were computed from (a set whose arrays were replaced gets new bounds).
    """

    sources: tuple[np.ndarray, ...]
    box_centres: np.ndarray
    box_radii: np.ndarray
    crowns: np.ndarray


def bounds(prims: Primitives) -> PrimitiveBounds:
    """The :class:`PrimitiveBounds` of ``prims``, cached on the object (its arrays are never changed in place)."""
    sources = (prims.box_lo, prims.box_hi, prims.sph_mat)
    cached = prims.__dict__.get("_raycast_bounds")
    if cached is not None and all(a is b for a, b in zip(cached.sources, sources)):
        return cached
    out = PrimitiveBounds(sources, prims.box_centres(), prims.box_radii(),
                          np.flatnonzero(prims.sph_mat == MATERIALS["crown"]))
    prims.__dict__["_raycast_bounds"] = out
    return out


def near_xy(centres: np.ndarray, radius: np.ndarray, origin: np.ndarray, reach: float) -> np.ndarray:
    """Indices (ascending) of a superset of the circles with ``hypot(centre - origin) - radius <= reach``.

    A cheap axis-aligned test (``|dx|, |dy| <= reach + radius + 1 m``); callers apply their exact test
    to the survivors, so what they select does not change.
    """
    lim = radius + (reach + 1.0)
    return np.flatnonzero((np.abs(centres[:, 0] - origin[0]) <= lim) & (np.abs(centres[:, 1] - origin[1]) <= lim))


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

    def keep(centres: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices, their origin-relative xy centres); the exact tests run on a cheap superset only."""
        cand = near_xy(centres, radius, origin, max_range)
        dxy = centres[cand] - origin[:2]
        rad = radius[cand]
        dist = np.hypot(dxy[:, 0], dxy[:, 1])
        ok = dist - rad <= max_range
        if forward is not None and half_fov is not None:
            bearing = np.arctan2(dxy[:, 1], dxy[:, 0])
            off = np.abs(np.angle(np.exp(1j * (bearing - forward))))
            spread = np.where(dist > rad, np.arcsin(np.clip(rad / np.maximum(dist, 1e-9), 0, 1)), np.pi)
            ok &= off <= half_fov + spread
        return cand[ok], dxy[ok]

    b = bounds(prims)
    br = b.box_radii
    bi, bc = keep(b.box_centres, br)
    ci, cc = keep(prims.cyl_xy, prims.cyl_radius)
    si, sc = keep(prims.sph_center[:, :2], prims.sph_radius[:, 0])
    oz = origin[2]
    return LocalPrimitives(
        origin=origin,
        box_index=bi, box_lo=(prims.box_lo[bi] - origin).astype(np.float32),
        box_hi=(prims.box_hi[bi] - origin).astype(np.float32),
        box_angles=_angular_box(bc, br[bi], prims.box_lo[bi, 2] - oz, prims.box_hi[bi, 2] - oz),
        box_cos=np.cos(prims.box_yaw[bi]).astype(np.float32), box_sin=np.sin(prims.box_yaw[bi]).astype(np.float32),
        cyl_index=ci, cyl_xy=(prims.cyl_xy[ci] - origin[:2]).astype(np.float32),
        cyl_r=prims.cyl_radius[ci].astype(np.float32), cyl_z=(prims.cyl_z[ci] - oz).astype(np.float32),
        cyl_angles=_angular_box(cc, prims.cyl_radius[ci], prims.cyl_z[ci, 0] - oz, prims.cyl_z[ci, 1] - oz),
        sph_index=si, sph_center=(prims.sph_center[si] - origin).astype(np.float32),
        sph_radius=prims.sph_radius[si].astype(np.float32), sph_porosity=prims.sph_porosity[si].astype(np.float32),
        sph_seed=prims.sph_seed[si].astype(np.uint32),
        sph_angles=_angular_box(sc, prims.sph_radius[si, 0], prims.sph_center[si, 2] - prims.sph_radius[si, 1] - oz,
                                prims.sph_center[si, 2] + prims.sph_radius[si, 1] - oz),
    )


@dataclass
class Tiles:
    """Rays grouped into angular tiles: ``directions`` (T, R, 3) float32 unit vectors and, per tile,
    the azimuth centre ``az_mid`` and half-width ``az_half`` and the elevation range ``el_lo``..``el_hi``
    (radians, float64)."""

    directions: np.ndarray
    az_mid: np.ndarray
    az_half: np.ndarray
    el_lo: np.ndarray
    el_hi: np.ndarray

    @classmethod
    def from_directions(cls, directions: np.ndarray) -> "Tiles":
        """Tile bounds measured from the (T, R, 3) directions themselves."""
        d = directions.astype(np.float64)
        az = np.arctan2(d[..., 1], d[..., 0])
        ref = az[:, :1]
        rel = np.angle(np.exp(1j * (az - ref)))
        lo, hi = rel.min(axis=1), rel.max(axis=1)
        el = np.arcsin(np.clip(d[..., 2], -1.0, 1.0))
        return cls(directions.astype(np.float32), np.angle(np.exp(1j * (ref[:, 0] + 0.5 * (lo + hi)))),
                   0.5 * (hi - lo), el.min(axis=1), el.max(axis=1))


def membership(angles: np.ndarray, tiles: Tiles) -> np.ndarray:
    """(T, P) bool: which primitives' angular boxes overlap which tiles."""
    if len(angles) == 0:
        return np.zeros((len(tiles.az_mid), 0), dtype=bool)
    eps = 2e-3
    member = angles[None, :, 3] >= tiles.el_lo[:, None] - eps
    member &= angles[None, :, 2] <= tiles.el_hi[:, None] + eps
    # A cheap superset of the azimuth test (wrapped difference without exp/angle, 1e-6 rad looser), then
    # the exact test, with the same expressions, on the surviving pairs only.
    raw = np.abs(angles[None, :, 0] - tiles.az_mid[:, None])
    np.minimum(raw, 2 * np.pi - raw, out=raw)
    raw -= angles[None, :, 1]
    raw -= tiles.az_half[:, None]
    member &= raw <= eps + 1e-6
    ti, pi = np.nonzero(member)
    diff = np.abs(np.angle(np.exp(1j * (angles[pi, 0] - tiles.az_mid[ti]))))
    member[ti, pi] = diff <= angles[pi, 1] + tiles.az_half[ti] + eps
    return member


def tile_chunks(member: np.ndarray, rays_per_tile: int, budget: int = _CHUNK_ELEMENTS
                ) -> "Iterator[tuple[np.ndarray, np.ndarray]]":
    """Group tiles (sorted by primitive count) into chunks of about ``budget`` ray-primitive pairs.

    Yields:
        ``(tile_indices (c,), table (c, K))`` where ``table`` lists each tile's primitive indices,
        padded with ``P`` (the index of a null primitive that is never hit). Tiles without any
        primitive are skipped.
    """
    T, P = member.shape
    counts = member.sum(axis=1)
    order = np.argsort(counts, kind="stable")
    i = int(np.searchsorted(counts[order], 1))  # skip empty tiles
    while i < T:
        j = i + 1
        while j < T and (j - i + 1) * rays_per_tile * int(counts[order[j]]) <= budget:
            j += 1
        tiles = order[i:j]
        sub = member[tiles]
        c = counts[tiles]
        K = int(c.max())
        table = np.full((len(tiles), K), P, dtype=np.int64)
        rows, cols = np.nonzero(sub)
        starts = np.concatenate([[0], np.cumsum(c)[:-1]])
        table[rows, np.arange(len(rows)) - starts[rows]] = cols
        yield tiles, table
        i = j


#: A group of :func:`split_padded` is closed only once it holds this many (ray, primitive) pairs.
_GROUP_ELEMENTS = 12_000


def split_padded(tiles: np.ndarray, table: np.ndarray, null: int, rays_per_tile: int,
                 min_elements: int = _GROUP_ELEMENTS) -> "list[tuple[np.ndarray, np.ndarray]]":
    """Split a :func:`tile_chunks` chunk into groups of tiles with similar primitive counts.

    A chunk's table is padded to its largest count (its tiles are sorted by count), often to three
    times the real pairs. Each group's table keeps the same leading columns of the same rows, cut to the
    group's own largest count: the real pairs, in the same order, and less padding (``null`` entries, never
    hit). A new group starts where the count doubles, once the current one holds ``min_elements`` pairs.

    Returns:
        ``[(tile_indices (g,), table (g, K_g)), ...]`` covering the chunk's tiles in order.
    """
    counts = (table != null).sum(axis=1)
    groups = []
    start = 0
    for j in range(1, len(tiles)):
        if counts[j] > 2 * counts[start] and (j - start) * rays_per_tile * int(counts[j - 1]) >= min_elements:
            groups.append((start, j))
            start = j
    groups.append((start, len(tiles)))
    return [(tiles[a:b], table[a:b, :max(int(counts[b - 1]), 1)]) for a, b in groups]


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


@functools.lru_cache(maxsize=64)
def _divisor_near(n: int, target: int) -> int:
    """The divisor of ``n`` closest to ``target`` (ties: the smaller)."""
    best = 1
    for k in range(1, n + 1):
        if n % k == 0 and abs(k - target) < abs(best - target):
            best = k
    return best


def grid_tiles(directions: np.ndarray, tile_shape: tuple[int, int]) -> tuple[Tiles, np.ndarray]:
    """Group an (A, B, 3) grid of ray directions into tiles of about ``tile_shape`` rays.

    Returns:
        ``(tiles, ids)``: :class:`Tiles` of (T, a*b, 3) and the (T, a*b) flat indices of the rays in
        the (A, B) grid (row-major), to scatter results back.
    """
    A, B, _ = directions.shape
    a = _divisor_near(A, tile_shape[0])
    b = _divisor_near(B, tile_shape[1])
    grouped = directions.reshape(A // a, a, B // b, b, 3).transpose(0, 2, 1, 3, 4).reshape(-1, a * b, 3)
    ids = np.arange(A * B, dtype=np.int64).reshape(A // a, a, B // b, b).transpose(0, 2, 1, 3).reshape(-1, a * b)
    return Tiles.from_directions(grouped), ids
