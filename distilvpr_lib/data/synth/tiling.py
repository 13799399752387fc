"""Rays grouped into angular tiles, and the primitives each tile can reach (culling for :mod:`.raycast`).

Rays are grouped into *tiles* (camera pixel blocks, LiDAR azimuth x beam blocks). A primitive is only
tested against the tiles its angular box (as seen from the ray origin) overlaps, so each ray meets a few
dozen primitives instead of every one in range. :func:`tile_chunks` batches tiles into chunks of a few
hundred thousand (ray, primitive) pairs and :func:`split_padded` cuts each chunk into groups of similar
primitive counts (less padding). Every cull here is conservative: the hits do not change, bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from distilvpr_lib.data.synth.world import MATERIALS, Primitives

#: Target number of elements of the (sectors, rays, primitives) temporaries per chunk.
_CHUNK_ELEMENTS = 160_000


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
