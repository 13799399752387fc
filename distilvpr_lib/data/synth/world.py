"""Procedural 3D world of the generator: street grid, route loop and static primitives.

Everything is built from one integer seed through explicit :class:`numpy.random.Generator`
objects (never global state), so the same seed gives the same world on every machine.

Frames
------
* **Local frame** (metres, float64): ``x`` and ``y`` along the street grid, ``z`` up, ground at
  ``z = 0``. All primitives live here; streets run along constant ``x`` ("x-lines") or constant
  ``y`` ("y-lines").
* **UTM**: ``[easting, northing] = utm_origin + R(rotation) @ [x, y]``. The origin and rotation are
  chosen so that part of the route lies inside the PointNetVLAD test squares P1..P4 and the rest in
  the training region (where :mod:`distilvpr_lib.data.splits` carves its validation square).

Primitives (closed-form ray intersections, see :mod:`.raycast`)
---------------------------------------------------------------
* axis-aligned boxes: buildings, roof storeys, cars, shelters, kiosks, sign panels, hedges, walls;
* vertical finite cylinders: poles, trunks, bins, bollards, pedestrians;
* spheroids (equal x/y radii): tree crowns, bushes, heads, lamp globes.

Each primitive carries a material id (:data:`MATERIALS`), an albedo, a second colour, four
material parameters and a 32-bit seed; the camera evaluates facade patterns procedurally from the
hit point with them.

The route is the boundary of a random polyomino of grid blocks (a simple loop along streets),
traversed counter-clockwise on the left-hand lane (UK traffic) with rounded corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from distilvpr_lib.config import OXFORD_TEST_SQUARE_CENTRES, OXFORD_TEST_SQUARE_HALF_WIDTH_M

#: Material name -> id stored per primitive (0 and 1 are the ground and the sky, never primitives).
MATERIALS: dict[str, int] = {
    "ground": 0,
    "sky": 1,
    "building": 2,
    "roof_storey": 3,
    "car_body": 4,
    "car_cabin": 5,
    "pole": 6,
    "trunk": 7,
    "crown": 8,
    "sign": 9,
    "pedestrian": 10,
    "head": 11,
    "shelter": 12,
    "hedge": 13,
    "wall": 14,
    "bin": 15,
    "lamp": 16,
    "kiosk": 17,
    "barrier": 18,
}

#: Width of the parking strip along each kerb (m); the driving lane lies inside it.
PARKING_STRIP_M = 2.1
#: Radius of the rounded route corners (m).
CORNER_RADIUS_M = 7.0
#: Route samples per metre (dense polyline used for poses).
ROUTE_SAMPLES_PER_M = 4


def srgb_to_linear(rgb: Any) -> np.ndarray:
    """0..255 sRGB triplets -> linear albedo in [0, 1] (float32, gamma 2.2 approximation)."""
    return (np.asarray(rgb, dtype=np.float64) / 255.0) ** 2.2


FACADE_PALETTE = np.array([
    (205, 185, 145), (215, 195, 150), (190, 170, 130),  # Cotswold / sandstone (Oxford)
    (150, 72, 52), (125, 78, 58), (165, 95, 70),  # brick
    (226, 222, 212), (235, 228, 205),  # white / cream render
    (150, 150, 148), (120, 118, 115),  # concrete, dark stone
    (175, 195, 205), (205, 185, 195), (190, 205, 170),  # pastel
], dtype=np.float64)
CAR_PALETTE = np.array([
    (200, 200, 205), (30, 30, 35), (140, 140, 145), (170, 20, 25), (20, 45, 120), (235, 235, 235),
    (60, 90, 60), (190, 150, 40), (90, 30, 60), (100, 110, 120),
], dtype=np.float64)
CLOTHES_PALETTE = np.array([
    (30, 30, 40), (60, 60, 70), (120, 30, 30), (30, 60, 120), (200, 190, 170), (90, 70, 50),
    (180, 60, 30), (40, 90, 60), (220, 220, 220), (150, 110, 160),
], dtype=np.float64)


# ---------------------------------------------------------------------------
# Primitive arrays
# ---------------------------------------------------------------------------
@dataclass
class Primitives:
    """Primitive arrays in the local frame (metres).

    Boxes (Nb): ``box_lo``/``box_hi`` (Nb, 3) float64 corners before the box is turned by
    ``box_yaw`` (Nb,) radians about the vertical axis through its centre (0 for grid-aligned boxes).
    Cylinders (Nc): ``cyl_xy`` (Nc, 2),
    ``cyl_radius`` (Nc,), ``cyl_z`` (Nc, 2) = [bottom, top]. Spheroids (Ns): ``sph_center`` (Ns, 3),
    ``sph_radius`` (Ns, 2) = [horizontal, vertical], ``sph_porosity`` (Ns,) probability that a ray
    passes through (foliage). Per kind: ``*_mat`` int16 material ids, ``*_color``/``*_color2``
    (N, 3) float32 linear albedos, ``*_params`` (N, 4) float32 material parameters, ``*_seed`` uint32.
    """

    box_lo: np.ndarray
    box_hi: np.ndarray
    box_mat: np.ndarray
    box_color: np.ndarray
    box_color2: np.ndarray
    box_params: np.ndarray
    box_seed: np.ndarray
    box_yaw: np.ndarray
    cyl_xy: np.ndarray
    cyl_radius: np.ndarray
    cyl_z: np.ndarray
    cyl_mat: np.ndarray
    cyl_color: np.ndarray
    cyl_seed: np.ndarray
    sph_center: np.ndarray
    sph_radius: np.ndarray
    sph_porosity: np.ndarray
    sph_mat: np.ndarray
    sph_color: np.ndarray
    sph_seed: np.ndarray

    @property
    def counts(self) -> dict[str, int]:
        """Number of boxes, cylinders and spheroids."""
        return {"boxes": len(self.box_lo), "cylinders": len(self.cyl_xy), "spheroids": len(self.sph_center)}

    def concat(self, other: "Primitives") -> "Primitives":
        """A new set holding the primitives of ``self`` followed by those of ``other``."""
        return Primitives(**{f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                             for f in fields(self)})

    def box_centres(self) -> np.ndarray:
        """(Nb, 2) xy centres of the boxes."""
        return 0.5 * (self.box_lo[:, :2] + self.box_hi[:, :2])

    def box_radii(self) -> np.ndarray:
        """(Nb,) xy bounding-circle radii of the boxes."""
        return 0.5 * np.hypot(self.box_hi[:, 0] - self.box_lo[:, 0], self.box_hi[:, 1] - self.box_lo[:, 1])


class PrimitiveBuilder:
    """Collects primitives one at a time and packs them into :class:`Primitives`."""

    def __init__(self) -> None:
        self.boxes: list[tuple] = []
        self.cylinders: list[tuple] = []
        self.spheroids: list[tuple] = []

    def box(self, lo: Any, hi: Any, mat: str, color: Any, color2: Any = (0, 0, 0), params: Any = (0, 0, 0, 0),
            seed: int = 0, yaw: float = 0.0) -> None:
        """An axis-aligned box ``lo``..``hi``, turned by ``yaw`` radians about its vertical centre axis."""
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        self.boxes.append((np.minimum(lo, hi), np.maximum(lo, hi), MATERIALS[mat], color, color2, params, seed,
                           float(yaw)))

    def cylinder(self, xy: Any, radius: float, z0: float, z1: float, mat: str, color: Any, seed: int = 0) -> None:
        self.cylinders.append((xy, radius, (z0, z1), MATERIALS[mat], color, seed))

    def spheroid(self, center: Any, r_xy: float, r_z: float, mat: str, color: Any, porosity: float = 0.0,
                 seed: int = 0) -> None:
        self.spheroids.append((center, (r_xy, r_z), porosity, MATERIALS[mat], color, seed))

    def build(self) -> Primitives:
        def col(items: list[tuple], k: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            if not items:
                return np.zeros((0, *shape), dtype=dtype)
            return np.asarray([it[k] for it in items], dtype=dtype).reshape(len(items), *shape)

        b, c, s = self.boxes, self.cylinders, self.spheroids
        return Primitives(
            box_lo=col(b, 0, (3,), np.float64), box_hi=col(b, 1, (3,), np.float64),
            box_mat=col(b, 2, (), np.int16), box_color=col(b, 3, (3,), np.float32),
            box_color2=col(b, 4, (3,), np.float32), box_params=col(b, 5, (4,), np.float32),
            box_seed=col(b, 6, (), np.uint32), box_yaw=col(b, 7, (), np.float64),
            cyl_xy=col(c, 0, (2,), np.float64), cyl_radius=col(c, 1, (), np.float64),
            cyl_z=col(c, 2, (2,), np.float64), cyl_mat=col(c, 3, (), np.int16),
            cyl_color=col(c, 4, (3,), np.float32), cyl_seed=col(c, 5, (), np.uint32),
            sph_center=col(s, 0, (3,), np.float64), sph_radius=col(s, 1, (2,), np.float64),
            sph_porosity=col(s, 2, (), np.float32), sph_mat=col(s, 3, (), np.int16),
            sph_color=col(s, 4, (3,), np.float32), sph_seed=col(s, 5, (), np.uint32),
        )


# ---------------------------------------------------------------------------
# Street grid and route
# ---------------------------------------------------------------------------
@dataclass
class StreetGrid:
    """Streets along grid lines.

    ``x_lines`` (nx,) are the centre lines of streets running along ``y`` (at constant ``x``);
    ``y_lines`` (ny,) those running along ``x``. ``*_half_width`` is the carriageway half-width and
    ``*_pavement`` the pavement width on each side (m). Block ``(i, j)`` lies between
    ``x_lines[i], x_lines[i+1]`` and ``y_lines[j], y_lines[j+1]``.
    """

    x_lines: np.ndarray
    y_lines: np.ndarray
    x_half_width: np.ndarray
    y_half_width: np.ndarray
    x_pavement: np.ndarray
    y_pavement: np.ndarray

    def block_rect(self, i: int, j: int) -> tuple[float, float, float, float]:
        """Buildable rectangle ``(x0, x1, y0, y1)`` of block (i, j), inside the pavements."""
        x0 = self.x_lines[i] + self.x_half_width[i] + self.x_pavement[i]
        x1 = self.x_lines[i + 1] - self.x_half_width[i + 1] - self.x_pavement[i + 1]
        y0 = self.y_lines[j] + self.y_half_width[j] + self.y_pavement[j]
        y1 = self.y_lines[j + 1] - self.y_half_width[j + 1] - self.y_pavement[j + 1]
        return float(x0), float(x1), float(y0), float(y1)


def _nearest_line(values: np.ndarray, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest line and the signed offset ``value - line`` for each value."""
    k = np.clip(np.searchsorted(lines, values), 1, len(lines) - 1)
    left = values - lines[k - 1]
    right = values - lines[k]
    use_left = np.abs(left) <= np.abs(right)
    return np.where(use_left, k - 1, k), np.where(use_left, left, right)


@dataclass
class Route:
    """The driven loop: a dense closed polyline on the left-hand lane, parameterised by arc length.

    ``points`` (M, 2) local xy every ``1 / ROUTE_SAMPLES_PER_M`` m (approximately), ``s`` (M,)
    cumulative arc length from ``points[0]``, ``heading`` (M,) radians (atan2 of the tangent),
    ``length`` the loop length (m). ``corners`` (C, 2) are the grid nodes of the loop.
    """

    points: np.ndarray
    s: np.ndarray
    heading: np.ndarray
    length: float
    corners: np.ndarray

    def pose(self, s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Position, heading and left normal at arc length(s) ``s`` (wrapped modulo the length).

        Returns:
            ``xy`` (..., 2), ``heading`` (...,), ``left_normal`` (..., 2).
        """
        s = np.mod(np.asarray(s, dtype=np.float64), self.length)
        k = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2)
        w = ((s - self.s[k]) / np.maximum(self.s[k + 1] - self.s[k], 1e-9))[..., None]
        xy = self.points[k] * (1 - w) + self.points[k + 1] * w
        h0 = self.heading[k]
        dh = np.angle(np.exp(1j * (self.heading[k + 1] - h0)))
        heading = h0 + dh * w[..., 0]
        normal = np.stack([-np.sin(heading), np.cos(heading)], axis=-1)
        return xy, heading, normal


def _polyomino_ok(filled: np.ndarray, i: int, j: int) -> bool:
    """Whether adding cell (i, j) keeps the polyomino simply connected with a simple boundary loop.

    The 8 neighbours in circular order must hold exactly one run of filled cells, and no filled
    diagonal neighbour may have both flanking orthogonal neighbours empty (a pinch vertex).
    """
    ring = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
    status = [bool(filled[i + di, j + dj]) for di, dj in ring]
    for k in (1, 3, 5, 7):  # diagonals
        if status[k] and not status[k - 1] and not status[(k + 1) % 8]:
            return False
    runs = sum(1 for k in range(8) if status[k] and not status[k - 1])
    return runs == 1 and any(status[k] for k in (0, 2, 4, 6))


def _grow_polyomino(rng: np.random.Generator, x_sizes: np.ndarray, y_sizes: np.ndarray,
                    start: tuple[int, int], target_perimeter: float) -> np.ndarray:
    """Random simply connected polyomino whose perimeter (m) first reaches ``target_perimeter``.

    Growth prefers cells that lengthen the boundary (snake-like shapes rather than blobs).
    """
    nx, ny = len(x_sizes), len(y_sizes)
    filled = np.zeros((nx + 2, ny + 2), dtype=bool)  # one-cell empty border
    filled[start[0] + 1, start[1] + 1] = True

    def perimeter() -> float:
        p = 0.0
        core = filled[1:-1, 1:-1]
        for i, j in zip(*np.nonzero(core)):
            I, J = i + 1, j + 1
            if not filled[I - 1, J]:
                p += y_sizes[j]
            if not filled[I + 1, J]:
                p += y_sizes[j]
            if not filled[I, J - 1]:
                p += x_sizes[i]
            if not filled[I, J + 1]:
                p += x_sizes[i]
        return p

    current = perimeter()
    while current < 0.92 * target_perimeter:
        candidates: list[tuple[int, int, int]] = []
        for I, J in zip(*np.nonzero(filled)):
            for dI, dJ in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                a, b = I + dI, J + dJ
                if 1 <= a <= nx and 1 <= b <= ny and not filled[a, b] and _polyomino_ok(filled, a, b):
                    n_orth = int(filled[a + 1, b]) + int(filled[a - 1, b]) + int(filled[a, b + 1]) + int(filled[a, b - 1])
                    candidates.append((a, b, n_orth))
        if not candidates:
            break
        candidates = sorted(set(candidates))
        lengthening = [c for c in candidates if c[2] == 1]
        pool = lengthening if (lengthening and rng.random() < 0.75) else candidates
        a, b, _ = pool[int(rng.integers(len(pool)))]
        filled[a, b] = True
        current = perimeter()
    return filled[1:-1, 1:-1]


def _boundary_loop(filled: np.ndarray) -> list[tuple[int, int]]:
    """Grid nodes of the polyomino boundary, counter-clockwise (interior on the left), corners only."""
    nxt: dict[tuple[int, int], tuple[int, int]] = {}
    nx, ny = filled.shape

    def cell(i: int, j: int) -> bool:
        return 0 <= i < nx and 0 <= j < ny and bool(filled[i, j])

    for i, j in zip(*np.nonzero(filled)):
        i, j = int(i), int(j)
        if not cell(i, j - 1):  # bottom edge, going +x
            nxt[(i, j)] = (i + 1, j)
        if not cell(i + 1, j):  # right edge, going +y
            nxt[(i + 1, j)] = (i + 1, j + 1)
        if not cell(i, j + 1):  # top edge, going -x
            nxt[(i + 1, j + 1)] = (i, j + 1)
        if not cell(i - 1, j):  # left edge, going -y
            nxt[(i, j + 1)] = (i, j)
    start = min(nxt)
    loop = [start]
    node = nxt[start]
    while node != start:
        loop.append(node)
        node = nxt[node]
    if len(loop) != len(nxt):
        raise RuntimeError("route polyomino boundary is not a single loop")
    corners = []
    n = len(loop)
    for k in range(n):
        a, b, c = loop[k - 1], loop[k], loop[(k + 1) % n]
        if (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1]):
            corners.append(b)
    return corners


def _lane_offset(half_width: float) -> float:
    """Distance from the street centre line to the centre of the left-hand driving lane (m)."""
    return 0.5 * (half_width - PARKING_STRIP_M)


def _build_route(grid: StreetGrid, corner_nodes: list[tuple[int, int]]) -> Route:
    """Dense rounded polyline of the left-hand lane along the loop through ``corner_nodes``."""
    nodes = np.array([[grid.x_lines[i], grid.y_lines[j]] for i, j in corner_nodes], dtype=np.float64)
    n = len(nodes)
    directions = []
    offsets = []
    for k in range(n):
        a, b = corner_nodes[k], corner_nodes[(k + 1) % n]
        d = nodes[(k + 1) % n] - nodes[k]
        d /= np.linalg.norm(d)
        directions.append(d)
        if a[0] == b[0]:  # along an x-line
            offsets.append(_lane_offset(grid.x_half_width[a[0]]))
        else:
            offsets.append(_lane_offset(grid.y_half_width[a[1]]))
    # Offset polygon corners: corner k joins segment k-1 (incoming) and segment k (outgoing).
    lane_corners = []
    for k in range(n):
        d_in, d_out = directions[k - 1], directions[k]
        n_in = np.array([-d_in[1], d_in[0]])
        n_out = np.array([-d_out[1], d_out[0]])
        lane_corners.append(nodes[k] + offsets[k - 1] * n_in + offsets[k] * n_out)
    lane_corners = np.array(lane_corners)
    # Start in the middle of segment 0, go round, rounding each corner with a quadratic Bezier.
    pieces = []
    step = 1.0 / ROUTE_SAMPLES_PER_M
    r = CORNER_RADIUS_M
    for k in range(n):
        c0, c1 = lane_corners[k], lane_corners[(k + 1) % n]
        d = directions[k]
        seg_len = float(np.linalg.norm(c1 - c0))
        a = c0 + r * d
        b = c1 - r * d
        m = max(int(math.ceil((seg_len - 2 * r) / step)), 1)
        pieces.append(a + np.outer(np.arange(m) / m, b - a))
        d_next = directions[(k + 1) % n]
        p0, p1, p2 = b, c1, c1 + r * d_next
        m = max(int(math.ceil(1.6 * r / step)), 4)
        u = (np.arange(m) / m)[:, None]
        pieces.append((1 - u) ** 2 * p0 + 2 * u * (1 - u) * p1 + u ** 2 * p2)
    points = np.concatenate(pieces)
    # rotate so that the loop starts mid segment 0
    mid = 0.5 * (lane_corners[0] + lane_corners[1 % n])
    k0 = int(np.argmin(np.linalg.norm(points - mid, axis=1)))
    points = np.roll(points, -k0, axis=0)
    closed = np.vstack([points, points[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    tangent = np.diff(closed, axis=0)
    heading = np.arctan2(tangent[:, 1], tangent[:, 0])
    heading = np.concatenate([heading, heading[:1]])
    return Route(points=closed, s=s, heading=heading, length=float(s[-1]), corners=nodes)


# ---------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------
@dataclass
class World:
    """A generated world (static part).

    Attributes:
        seed: the world seed.
        grid: the :class:`StreetGrid`.
        route: the driven :class:`Route` (local frame).
        prims: static :class:`Primitives` (buildings, street furniture, trees).
        utm_origin: ``(easting, northing)`` of the local origin.
        rotation: radians; UTM = origin + R(rotation) @ local.
        region: ``(x0, x1, y0, y1)`` local extent that holds geometry.
        lamps: (L, 3) positions of street-lamp heads (night lighting).
        kerb_slots: (K, 4) parking slots ``[x, y, heading, street_index]`` for per-run parked cars.
        pavement_slots: (P, 2) points on pavements for per-run pedestrians.
        park_blocks: list of ``(x0, x1, y0, y1)`` rectangles that are parks (grass ground).
        summary: counts for reports.
    """

    seed: int
    grid: StreetGrid
    route: Route
    prims: Primitives
    utm_origin: tuple[float, float]
    rotation: float
    region: tuple[float, float, float, float]
    lamps: np.ndarray
    kerb_slots: np.ndarray
    pavement_slots: np.ndarray
    park_blocks: list[tuple[float, float, float, float]]
    summary: dict[str, Any] = field(default_factory=dict)
    #: Road along a polyline instead of a street grid (worlds built around real trajectories).
    road: "PolylineRoad | None" = None
    #: Colour (linear RGB) of the centre-line dashes (white in the UK, yellow in Canada).
    marking_rgb: tuple[float, float, float] = (0.55, 0.55, 0.55)

    def local_to_utm(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local ``(..., 2)`` xy -> ``(northing, easting)`` arrays (float64)."""
        xy = np.asarray(xy, dtype=np.float64)
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        east = self.utm_origin[0] + c * xy[..., 0] - s * xy[..., 1]
        north = self.utm_origin[1] + s * xy[..., 0] + c * xy[..., 1]
        return north, east

    def ground_class(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Classify ground points (local xy arrays of equal shape).

        Returns:
            dict of arrays: ``road`` bool, ``pavement`` bool, ``park`` bool, ``marking`` bool
            (dashed centre line), ``kerb_dist`` float distance to the nearest kerb (m).
        """
        if self.road is not None:
            return self.road.ground_class(x, y)
        g = self.grid
        ix, ox = _nearest_line(x, g.x_lines)
        iy, oy = _nearest_line(y, g.y_lines)
        hx, hy = g.x_half_width[ix], g.y_half_width[iy]
        px, py = g.x_pavement[ix], g.y_pavement[iy]
        ax, ay = np.abs(ox), np.abs(oy)
        road = (ax <= hx) | (ay <= hy)
        pavement = ~road & ((ax <= hx + px) | (ay <= hy + py))
        in_x_street = (ax <= hx) & (ay > hy + py)
        in_y_street = (ay <= hy) & (ax > hx + px)
        dash_y = np.mod(y, 9.0) < 4.5
        dash_x = np.mod(x, 9.0) < 4.5
        marking = (in_x_street & (ax < 0.08) & dash_y) | (in_y_street & (ay < 0.08) & dash_x)
        # edge lines along the kerb-side of the parking strip are not painted in Oxford's old town; skip.
        park = np.zeros_like(road)
        for x0, x1, y0, y1 in self.park_blocks:
            park |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        kerb_dist = np.minimum(np.abs(ax - hx), np.abs(ay - hy))
        return {"road": road, "pavement": pavement, "park": park & ~road & ~pavement, "marking": marking,
                "kerb_dist": kerb_dist}


@dataclass
class PolylineRoad:
    """A road along a dense centre-line polyline: ``samples`` (M, 2) local xy every ~0.25 m with
    arc lengths ``s`` (M,); carriageway half-width and pavement width in metres. Everything beyond
    the pavement is grass verge / lawn."""

    samples: np.ndarray
    s: np.ndarray
    half_width: float
    pavement: float

    def __post_init__(self) -> None:
        from scipy.spatial import cKDTree

        self._tree = cKDTree(self.samples)

    def distance(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance (m) of (N, 2) points to the centre line and the arc length of the nearest sample."""
        dist, k = self._tree.query(np.asarray(xy, dtype=np.float64).reshape(-1, 2), k=1)
        return dist, self.s[k]

    def ground_class(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        shape = np.shape(x)
        dist, s = self.distance(np.stack([np.ravel(x), np.ravel(y)], axis=1))
        road = dist <= self.half_width
        pavement = ~road & (dist <= self.half_width + self.pavement)
        marking = road & (dist < 0.1) & (np.mod(s, 9.0) < 4.5)
        return {"road": road.reshape(shape), "pavement": pavement.reshape(shape),
                "park": (~road & ~pavement).reshape(shape), "marking": marking.reshape(shape),
                "kerb_dist": np.abs(dist - self.half_width).reshape(shape)}


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(t) for t in tags]]))


def random_u32(rng: np.random.Generator) -> int:
    """A uint32 drawn from ``rng`` (the per-primitive texture seed)."""
    return int(rng.integers(0, 2 ** 32, dtype=np.uint64))


_TAG_GRID, _TAG_ROUTE, _TAG_PLACE, _TAG_BLOCKS, _TAG_STREETS = 1, 2, 3, 4, 5


def _route_inside_fraction(world_xy: np.ndarray, origin: np.ndarray, rotation: float) -> float:
    c, s = math.cos(rotation), math.sin(rotation)
    east = origin[0] + c * world_xy[:, 0] - s * world_xy[:, 1]
    north = origin[1] + s * world_xy[:, 0] + c * world_xy[:, 1]
    inside = np.zeros(len(world_xy), dtype=bool)
    for n0, e0 in OXFORD_TEST_SQUARE_CENTRES:
        inside |= (np.abs(north - n0) < OXFORD_TEST_SQUARE_HALF_WIDTH_M) & (np.abs(east - e0) < OXFORD_TEST_SQUARE_HALF_WIDTH_M)
    return float(inside.mean())


def build_world(seed: int, route_length_m: float, test_fraction: float = 0.35,
                block_size_m: tuple[float, float] = (60.0, 110.0), margin_m: float = 90.0) -> World:
    """Build the static world and the route loop from a seed.

    Args:
        seed: world seed (every draw comes from generators seeded by it).
        route_length_m: approximate loop length (m); the loop is the boundary of a random
            polyomino of blocks, so the actual length (``world.route.length``) differs by up to a block.
        test_fraction: share of the route to place inside the Oxford test squares.
        block_size_m: range of block sizes (street spacing) in metres.
        margin_m: geometry is built up to this distance from the route (about the sensor range).

    Returns:
        :class:`World`.
    """
    if route_length_m < 150:
        raise ValueError(f"route_length_m must be at least 150 m, got {route_length_m}")
    rng = _rng(seed, _TAG_GRID)
    lo_b, hi_b = block_size_m
    hi_b = min(hi_b, max(route_length_m / 4.0, lo_b + 5.0))
    lo_b = min(lo_b, hi_b - 5.0)
    n_cells = int(math.ceil(route_length_m / (2 * lo_b))) + 2
    x_sizes = rng.uniform(lo_b, hi_b, n_cells)
    y_sizes = rng.uniform(lo_b, hi_b, n_cells)
    x_lines = np.concatenate([[0.0], np.cumsum(x_sizes)])
    y_lines = np.concatenate([[0.0], np.cumsum(y_sizes)])
    half_w = lambda n: rng.uniform(6.0, 7.6, n)  # noqa: E731
    pave = lambda n: rng.uniform(2.2, 4.2, n)  # noqa: E731
    grid = StreetGrid(x_lines, y_lines, half_w(len(x_lines)), half_w(len(y_lines)), pave(len(x_lines)),
                      pave(len(y_lines)))

    # Route: boundary of a polyomino of blocks, grown from the centre of the cell grid.
    route_rng = _rng(seed, _TAG_ROUTE)
    start = (n_cells // 2, n_cells // 2)
    filled = _grow_polyomino(route_rng, x_sizes, y_sizes, start, route_length_m)
    corner_nodes = _boundary_loop(filled)
    route = _build_route(grid, corner_nodes)

    # Placement in UTM: rotation and origin such that ~test_fraction of the route is in the test squares.
    place_rng = _rng(seed, _TAG_PLACE)
    rotation = math.radians(float(place_rng.uniform(-35.0, 35.0)))
    centre_local = route.points.mean(axis=0)
    samples = route.points[:: max(1, ROUTE_SAMPLES_PER_M * 5)]
    north_c = np.array([n for n, _ in OXFORD_TEST_SQUARE_CENTRES[:3]])
    east_c = np.array([e for _, e in OXFORD_TEST_SQUARE_CENTRES[:3]])
    best = None
    c, s = math.cos(rotation), math.sin(rotation)
    rot_centre = np.array([c * centre_local[0] - s * centre_local[1], s * centre_local[0] + c * centre_local[1]])
    extent = float(np.ptp(route.points, axis=0).max())
    for _ in range(600):
        k = int(place_rng.integers(3))
        target = np.array([east_c[k], north_c[k]]) + place_rng.uniform(-1, 1, 2) * (150.0 + 0.5 * extent)
        origin = target - rot_centre
        frac = _route_inside_fraction(samples, origin, rotation)
        score = abs(frac - test_fraction)
        if best is None or score < best[0] - 1e-9:
            best = (score, origin, frac)
    assert best is not None
    utm_origin = (float(best[1][0]), float(best[1][1]))

    # Region holding geometry.
    rx0, ry0 = route.points.min(axis=0) - margin_m
    rx1, ry1 = route.points.max(axis=0) + margin_m
    region = (float(rx0), float(rx1), float(ry0), float(ry1))

    builder = PrimitiveBuilder()
    lamps: list[tuple[float, float, float]] = []
    kerb_slots: list[tuple[float, float, float, int]] = []
    pavement_slots: list[tuple[float, float]] = []
    park_blocks: list[tuple[float, float, float, float]] = []
    route_samples = route.points[::ROUTE_SAMPLES_PER_M * 2]

    def near_route(x0: float, x1: float, y0: float, y1: float, margin: float) -> bool:
        dx = np.maximum(np.maximum(x0 - route_samples[:, 0], route_samples[:, 0] - x1), 0.0)
        dy = np.maximum(np.maximum(y0 - route_samples[:, 1], route_samples[:, 1] - y1), 0.0)
        return bool(np.min(np.hypot(dx, dy)) <= margin)

    block_rng = _rng(seed, _TAG_BLOCKS)
    n_buildings = 0
    for i in range(len(x_lines) - 1):
        for j in range(len(y_lines) - 1):
            x0, x1, y0, y1 = grid.block_rect(i, j)
            if not near_route(x0, x1, y0, y1, margin_m):
                continue
            brng = _rng(seed, _TAG_BLOCKS, i, j)
            kind = brng.random()
            if kind < 0.12:
                park_blocks.append((x0, x1, y0, y1))
                _build_park(builder, brng, (x0, x1, y0, y1))
            else:
                n_buildings += _build_block(builder, brng, (x0, x1, y0, y1), route_samples, margin_m)
    del block_rng

    # Street furniture and street trees, per street segment between crossings.
    for axis, lines, half, pavement, cross_lines, cross_half, cross_pave in (
        (0, grid.x_lines, grid.x_half_width, grid.x_pavement, grid.y_lines, grid.y_half_width, grid.y_pavement),
        (1, grid.y_lines, grid.y_half_width, grid.y_pavement, grid.x_lines, grid.x_half_width, grid.x_pavement),
    ):
        for li, line in enumerate(lines):
            for ci in range(len(cross_lines) - 1):
                a = cross_lines[ci] + cross_half[ci] + cross_pave[ci]
                b = cross_lines[ci + 1] - cross_half[ci + 1] - cross_pave[ci + 1]
                if axis == 0:
                    rect = (line - 20, line + 20, a, b)
                else:
                    rect = (a, b, line - 20, line + 20)
                if not near_route(*rect, margin_m):
                    continue
                srng = _rng(seed, _TAG_STREETS, axis, li, ci)
                _build_street(builder, srng, axis, float(line), float(half[li]), float(pavement[li]), float(a),
                              float(b), li, lamps, kerb_slots, pavement_slots)

    prims = builder.build()
    world = World(
        seed=seed, grid=grid, route=route, prims=prims, utm_origin=utm_origin, rotation=rotation, region=region,
        lamps=np.asarray(lamps, dtype=np.float64).reshape(-1, 3),
        kerb_slots=np.asarray(kerb_slots, dtype=np.float64).reshape(-1, 4),
        pavement_slots=np.asarray(pavement_slots, dtype=np.float64).reshape(-1, 2),
        park_blocks=park_blocks,
    )
    world.summary = {
        "route_length_m": route.length, "route_corners": len(route.corners), "blocks_in_loop": int(filled.sum()),
        "buildings": n_buildings, "parks": len(park_blocks), **prims.counts,
        "test_fraction": float(best[2]), "rotation_deg": math.degrees(rotation),
        "utm_origin_easting_northing": utm_origin,
    }
    return world


# ---------------------------------------------------------------------------
# Blocks, parks and streets
# ---------------------------------------------------------------------------
def _facade_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = FACADE_PALETTE[int(rng.integers(len(FACADE_PALETTE)))] * rng.uniform(0.85, 1.1, 3)
    glass = np.array([35, 45, 58]) * rng.uniform(0.7, 1.5) + rng.uniform(-10, 10, 3)
    return srgb_to_linear(np.clip(base, 0, 255)), srgb_to_linear(np.clip(glass, 0, 255)), base


def _build_block(b: PrimitiveBuilder, rng: np.random.Generator, rect: tuple[float, float, float, float],
                 route_samples: np.ndarray, margin: float) -> int:
    """Buildings along the four sides of a block; returns the number of buildings."""
    x0, x1, y0, y1 = rect
    district_height = rng.uniform(8.0, 18.0)
    count = 0
    depth_limit = 0.5 * min(x1 - x0, y1 - y0) - 1.0
    # sides: (start point, direction along the side, inward normal, length)
    sides = [
        (np.array([x0, y0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), x1 - x0),  # south side, facing -y
        (np.array([x1, y0]), np.array([0.0, 1.0]), np.array([-1.0, 0.0]), y1 - y0),  # east side
        (np.array([x1, y1]), np.array([-1.0, 0.0]), np.array([0.0, -1.0]), x1 - x0),  # north side
        (np.array([x0, y1]), np.array([0.0, -1.0]), np.array([1.0, 0.0]), y1 - y0),  # west side
    ]
    for origin, along, inward, length in sides:
        mid = origin + along * length / 2
        if np.min(np.hypot(*(route_samples - mid).T)) > margin + length / 2:
            continue
        pos = rng.uniform(0.0, 3.0)
        terrace_height = district_height * rng.uniform(0.7, 1.3)
        while pos < length - 4.0:
            if rng.random() < 0.15:  # gap / alley / driveway
                pos += rng.uniform(2.5, 9.0)
                continue
            width = min(rng.uniform(7.0, 24.0), length - pos)
            if width < 4.0:
                break
            setback = 0.0 if rng.random() < 0.6 else rng.uniform(0.5, 4.0)
            depth = min(rng.uniform(8.0, 18.0), max(depth_limit - setback, 4.0))
            if rng.random() < 0.35:
                terrace_height = district_height * rng.uniform(0.6, 1.4)
            height = max(4.5, terrace_height * rng.uniform(0.92, 1.08))
            p0 = origin + along * pos + inward * setback
            p1 = origin + along * (pos + width) + inward * (setback + depth)
            colour, glass, _ = _facade_colours(rng)
            floor_h = rng.uniform(2.9, 3.8)
            pitch = rng.uniform(2.4, 4.6)
            win_w = rng.uniform(0.35, 0.7)
            win_h = rng.uniform(0.4, 0.68)
            shop = 1.0 if rng.random() < 0.45 else 0.0
            shop_colour = srgb_to_linear(np.clip(rng.uniform(30, 230, 3), 0, 255))
            seed = random_u32(rng)
            # params: window pitch, floor height, window width frac, window height frac (+shop in sign bit)
            params = (pitch, floor_h, win_w, win_h * (1 if shop == 0 else -1))
            b.box((*p0, 0.0), (*p1, height), "building", colour, glass, params, seed)
            count += 1
            # colour2 of the roof storey and shop band: shop colour stored on a thin fascia box
            if shop:
                f0 = origin + along * (pos + 0.3) + inward * (setback - 0.25)
                f1 = origin + along * (pos + width - 0.3) + inward * setback
                b.box((*f0, 3.2), (*f1, 3.9), "sign", shop_colour, shop_colour, (0, 0, 0, 0), random_u32(rng))
            r = rng.random()
            if r < 0.25:  # roof storey set back
                inset = rng.uniform(1.0, 2.5)
                q0 = origin + along * (pos + inset) + inward * (setback + inset)
                q1 = origin + along * (pos + width - inset) + inward * (setback + depth - inset)
                if np.all(np.abs(q1 - q0) > 2.0):
                    b.box((*q0, height), (*q1, height + rng.uniform(2.5, 3.5)), "roof_storey",
                          colour * 0.8, glass, params, random_u32(rng))
            elif r < 0.4:  # gable-like stepped roof
                ridge_w = rng.uniform(0.3, 0.6) * depth
                q0 = origin + along * pos + inward * (setback + 0.5 * (depth - ridge_w))
                q1 = origin + along * (pos + width) + inward * (setback + 0.5 * (depth + ridge_w))
                b.box((*q0, height), (*q1, height + rng.uniform(1.5, 3.0)), "roof_storey",
                      srgb_to_linear(rng.choice([[90, 60, 50], [70, 70, 75], [120, 70, 55]])), glass,
                      (0, 0, 0, 0), random_u32(rng))
            if rng.random() < 0.12:  # hanging sign perpendicular to the facade
                sp = origin + along * (pos + rng.uniform(1.0, max(width - 1.0, 1.1))) + inward * (setback - 0.9)
                thick = along * 0.05
                b.box((*(sp - thick), 3.0), (*(sp + thick + inward * 0.85), 3.8), "sign",
                      srgb_to_linear(np.clip(rng.uniform(20, 240, 3), 0, 255)), (0, 0, 0), (0, 0, 0, 0), random_u32(rng))
            if rng.random() < 0.2:  # front garden wall / railing
                w0 = origin + along * pos - inward * 0.0
                w1 = origin + along * (pos + width) + inward * 0.3
                if setback > 1.5:
                    b.box((*w0, 0.0), (*w1, rng.uniform(0.6, 1.3)), "wall",
                          srgb_to_linear(np.clip(FACADE_PALETTE[int(rng.integers(3))] * 0.8, 0, 255)), (0, 0, 0),
                          (0, 0, 0, 0), random_u32(rng))
            pos += width
    return count


def add_tree(b: PrimitiveBuilder, rng: np.random.Generator, x: float, y: float, scale: float = 1.0) -> None:
    """A tree (trunk and crown, ``scale`` times the usual size) at ``(x, y)``."""
    trunk_h = rng.uniform(2.8, 4.2) * scale
    crown_r = rng.uniform(2.0, 4.0) * scale
    crown_rz = crown_r * rng.uniform(0.9, 1.5)
    trunk_r = rng.uniform(0.12, 0.28) * scale
    bark = srgb_to_linear(np.array([85, 70, 55]) * rng.uniform(0.8, 1.2))
    leaf = srgb_to_linear(np.array([60, 95, 45]) * rng.uniform(0.8, 1.2, 3))
    b.cylinder((x, y), trunk_r, 0.0, trunk_h + 0.5 * crown_rz, "trunk", bark, random_u32(rng))
    b.spheroid((x, y, trunk_h + crown_rz), crown_r, crown_rz, "crown", leaf, 0.12, random_u32(rng))


def _build_park(b: PrimitiveBuilder, rng: np.random.Generator, rect: tuple[float, float, float, float]) -> None:
    x0, x1, y0, y1 = rect
    area = (x1 - x0) * (y1 - y0)
    for _ in range(int(area / 140.0)):
        add_tree(b, rng, rng.uniform(x0 + 2, x1 - 2), rng.uniform(y0 + 2, y1 - 2), rng.uniform(0.9, 1.5))
    hedge = srgb_to_linear([55, 85, 45])
    stone = srgb_to_linear([170, 155, 125])
    h = rng.uniform(0.7, 1.6)
    kind = "hedge" if rng.random() < 0.5 else "wall"
    colour = hedge if kind == "hedge" else stone
    t = 0.6 if kind == "hedge" else 0.35
    gate = rng.uniform(0.3, 0.7)
    for lo, hi in (((x0, y0), (x1, y0 + t)), ((x0, y1 - t), (x1, y1)), ((x0, y0), (x0 + t, y1)), ((x1 - t, y0), (x1, y1))):
        lo = np.array(lo)
        hi = np.array(hi)
        span = hi - lo
        k = int(np.argmax(span))
        cut = lo[k] + gate * span[k]
        hi_a = hi.copy()
        hi_a[k] = cut - 2.0
        lo_b = lo.copy()
        lo_b[k] = cut + 2.0
        b.box((*lo, 0.0), (*hi_a, h), kind, colour, (0, 0, 0), (0, 0, 0, 0), random_u32(rng))
        b.box((*lo_b, 0.0), (*hi, h), kind, colour, (0, 0, 0), (0, 0, 0, 0), random_u32(rng))
    for _ in range(int(area / 900.0)):  # bushes
        bx, by = rng.uniform(x0 + 2, x1 - 2), rng.uniform(y0 + 2, y1 - 2)
        r = rng.uniform(0.8, 1.8)
        b.spheroid((bx, by, 0.6 * r), r, 0.8 * r, "crown", srgb_to_linear([50, 80, 40]), 0.05, random_u32(rng))


def _build_street(b: PrimitiveBuilder, rng: np.random.Generator, axis: int, line: float, half: float,
                  pavement: float, a: float, c: float, street_index: int, lamps: list, kerb_slots: list,
                  pavement_slots: list) -> None:
    """Furniture of one street segment between two crossings, along ``axis`` (0: along y, 1: along x).

    ``a``..``c`` is the segment's extent along the street, between the crossing pavements.
    """

    def pt(along: float, across: float) -> tuple[float, float]:
        return (line + across, along) if axis == 0 else (along, line + across)

    heading_pos = math.pi / 2 if axis == 0 else 0.0
    length = c - a
    if length < 8:
        return
    tree_lined = rng.random() < 0.45
    lamp_sides = [1, -1] if rng.random() < 0.5 else [int(rng.choice([1, -1]))]
    pole_colour = srgb_to_linear([45, 50, 48])
    for side in (1, -1):
        kerb = side * (half + 0.35)
        # lamps
        if side in lamp_sides:
            pos = a + rng.uniform(3, 12)
            while pos < c - 3:
                x, y = pt(pos, kerb)
                h = rng.uniform(6.0, 8.0)
                b.cylinder((x, y), 0.09, 0.0, h, "pole", pole_colour, random_u32(rng))
                hx, hy = pt(pos, kerb - side * 0.8)
                b.box((hx - 0.35, hy - 0.35, h - 0.25), (hx + 0.35, hy + 0.35, h), "lamp", srgb_to_linear([60, 60, 60]),
                      srgb_to_linear([255, 220, 150]), (0, 0, 0, 0), random_u32(rng))
                lamps.append((hx, hy, h - 0.3))
                pos += rng.uniform(24.0, 34.0)
        # street trees
        if tree_lined:
            pos = a + rng.uniform(4, 10)
            while pos < c - 4:
                x, y = pt(pos, side * (half + 0.5 * pavement + 0.3))
                add_tree(b, rng, x, y, rng.uniform(0.8, 1.15))
                pos += rng.uniform(8.0, 15.0)
        # other furniture on the pavement
        pos = a + rng.uniform(2, 15)
        while pos < c - 2:
            r = rng.random()
            x, y = pt(pos, side * (half + rng.uniform(0.5, 0.9)))
            if r < 0.3:  # bin
                b.cylinder((x, y), 0.28, 0.0, 1.0, "bin", srgb_to_linear([30, 50, 35]), random_u32(rng))
            elif r < 0.45:  # bollards
                for k in range(int(rng.integers(2, 5))):
                    bx, by = pt(pos + 1.2 * k, side * (half + 0.3))
                    b.cylinder((bx, by), 0.1, 0.0, 0.9, "pole", srgb_to_linear([25, 25, 25]), random_u32(rng))
            elif r < 0.6:  # bus shelter
                sx0, sy0 = pt(pos, side * (half + pavement - 1.6))
                sx1, sy1 = pt(pos + 3.8, side * (half + pavement - 0.2))
                b.box((sx0, sy0, 0.0), (sx1, sy1, 2.5), "shelter", srgb_to_linear([90, 110, 120]),
                      srgb_to_linear([200, 210, 220]), (0, 0, 0, 0), random_u32(rng))
            elif r < 0.72:  # red phone box / post box
                if rng.random() < 0.5:
                    kx, ky = pt(pos, side * (half + pavement * 0.6))
                    b.box((kx - 0.5, ky - 0.5, 0.0), (kx + 0.5, ky + 0.5, 2.5), "kiosk", srgb_to_linear([170, 20, 20]),
                          srgb_to_linear([220, 220, 200]), (0, 0, 0, 0), random_u32(rng))
                else:
                    b.cylinder((x, y), 0.25, 0.0, 1.5, "bin", srgb_to_linear([180, 15, 15]), random_u32(rng))
            else:  # traffic / street-name sign on a pole
                h = rng.uniform(2.3, 3.2)
                b.cylinder((x, y), 0.05, 0.0, h + 0.6, "pole", srgb_to_linear([120, 120, 120]), random_u32(rng))
                colour = srgb_to_linear([[20, 60, 160], [200, 30, 30], [235, 235, 235], [20, 110, 50]][int(rng.integers(4))])
                w = rng.uniform(0.4, 0.9)
                t0x, t0y = pt(pos - w / 2, side * (half + 0.6) - 0.03)
                t1x, t1y = pt(pos + w / 2, side * (half + 0.6) + 0.03)
                b.box((t0x, t0y, h), (t1x, t1y, h + rng.uniform(0.4, 0.8)), "sign", colour,
                      srgb_to_linear([240, 240, 240]), (0, 0, 0, 0), random_u32(rng))
            pos += rng.uniform(10.0, 30.0)
        # parking slots (kerb side of the carriageway) and pedestrian spots on the pavement
        pos = a + 8.0
        while pos < c - 8.0 - 4.5:
            x, y = pt(pos + 2.25, side * (half - 1.05))
            kerb_slots.append((x, y, heading_pos, street_index))
            pos += rng.uniform(5.2, 6.5)
        pos = a + 1.0
        while pos < c - 1.0:
            x, y = pt(pos, side * (half + rng.uniform(0.8, max(pavement - 0.5, 0.9))))
            pavement_slots.append((x, y))
            pos += rng.uniform(2.0, 5.0)


# ---------------------------------------------------------------------------
# Per-run transient objects and seasonal changes
# ---------------------------------------------------------------------------
def build_transients(world: World, rng: np.random.Generator, parked_fraction: float, pedestrian_count: int,
                     barrier_count: int = 0) -> Primitives:
    """Parked cars/vans, pedestrians and roadwork barriers of one run (the world is not modified).

    Args:
        world: the static world (kerb and pavement slots).
        rng: the run's generator.
        parked_fraction: probability that a parking slot is occupied.
        pedestrian_count: pedestrians placed on pavement slots near the route.
        barrier_count: temporary roadwork barriers on pavements.
    """
    b = PrimitiveBuilder()
    slots = world.kerb_slots
    occupied = rng.random(len(slots)) < parked_fraction
    for x, y, heading, _ in slots[occupied]:
        length = rng.uniform(3.8, 4.9)
        width = rng.uniform(1.7, 1.9)
        van = rng.random() < 0.12
        body_h = rng.uniform(1.6, 2.2) if van else rng.uniform(0.85, 1.05)
        colour = srgb_to_linear(CAR_PALETTE[int(rng.integers(len(CAR_PALETTE)))] * rng.uniform(0.85, 1.1))
        glass = srgb_to_linear([25, 30, 38])
        x += rng.uniform(-0.4, 0.4) * (1 if abs(math.cos(heading)) > 0.5 else 0)
        y += rng.uniform(-0.4, 0.4) * (1 if abs(math.sin(heading)) > 0.5 else 0)
        ex = length / 2 if abs(math.cos(heading)) > 0.5 else width / 2
        ey = width / 2 if abs(math.cos(heading)) > 0.5 else length / 2
        seed = random_u32(rng)
        b.box((x - ex, y - ey, 0.25), (x + ex, y + ey, 0.25 + body_h), "car_body", colour, glass, (0, 0, 0, 0), seed)
        if not van:
            cab = rng.uniform(0.5, 0.62)
            cx = ex * (cab if abs(math.cos(heading)) > 0.5 else 0.95)
            cy = ey * (cab if abs(math.sin(heading)) > 0.5 else 0.95)
            b.box((x - cx, y - cy, 0.25 + body_h), (x + cx, y + cy, 0.25 + body_h + rng.uniform(0.45, 0.6)),
                  "car_cabin", colour, glass, (0, 0, 0, 0), seed)
    if pedestrian_count and len(world.pavement_slots):
        near = _near_route_mask(world, world.pavement_slots, 60.0)
        candidates = np.flatnonzero(near)
        chosen = rng.choice(candidates, size=min(pedestrian_count, len(candidates)), replace=False) if len(candidates) else []
        for k in np.sort(np.asarray(chosen, dtype=np.int64)):
            x, y = world.pavement_slots[k] + rng.uniform(-0.3, 0.3, 2)
            h = rng.uniform(1.45, 1.8)
            shirt = srgb_to_linear(CLOTHES_PALETTE[int(rng.integers(len(CLOTHES_PALETTE)))])
            b.cylinder((x, y), rng.uniform(0.18, 0.26), 0.0, h - 0.22, "pedestrian", shirt, random_u32(rng))
            skin = srgb_to_linear(np.array([225, 185, 150]) * rng.uniform(0.45, 1.05))
            b.spheroid((x, y, h - 0.11), 0.11, 0.12, "head", skin, 0.0, random_u32(rng))
    if barrier_count and len(world.pavement_slots):
        for k in rng.choice(len(world.pavement_slots), size=min(barrier_count, len(world.pavement_slots)), replace=False):
            x, y = world.pavement_slots[k]
            w = rng.uniform(1.0, 2.2)
            b.box((x - w / 2, y - w / 2, 0.0), (x + w / 2, y + w / 2, 1.0), "barrier", srgb_to_linear([230, 110, 20]),
                  srgb_to_linear([240, 240, 240]), (0, 0, 0, 0), random_u32(rng))
    return b.build()


def _near_route_mask(world: World, xy: np.ndarray, radius: float) -> np.ndarray:
    """Which points lie within ``radius`` of the route (sampled every 5 m)."""
    from scipy.spatial import cKDTree

    if len(xy) == 0:
        return np.zeros(0, dtype=bool)
    samples = world.route.points[:: ROUTE_SAMPLES_PER_M * 5]
    dist, _ = cKDTree(samples).query(xy, k=1)
    return dist <= radius


def apply_season(prims: Primitives, crown_scale: float, porosity: float, leaf_rgb: Any) -> Primitives:
    """Copy of ``prims`` with tree crowns scaled, made porous and recoloured for a season.

    Args:
        crown_scale: factor on crown radii (bare winter trees are smaller and sparser).
        porosity: probability that a ray passes through a crown.
        leaf_rgb: linear albedo (3,) of the foliage (the per-tree variation is kept).
    """
    out = Primitives(**{f.name: getattr(prims, f.name).copy() for f in fields(prims)})
    crowns = out.sph_mat == MATERIALS["crown"]
    out.sph_radius[crowns] *= crown_scale
    # keep the crown bottom where it was (the trunk top): move the centre down by the vertical shrink
    out.sph_center[crowns, 2] -= prims.sph_radius[crowns, 1] * (1 - crown_scale)
    out.sph_porosity[crowns] = np.maximum(out.sph_porosity[crowns], porosity)
    base = srgb_to_linear([60, 95, 45])
    variation = out.sph_color[crowns] / base.astype(np.float32)
    out.sph_color[crowns] = (np.asarray(leaf_rgb, dtype=np.float32) * np.clip(variation, 0.6, 1.5)).astype(np.float32)
    return out
