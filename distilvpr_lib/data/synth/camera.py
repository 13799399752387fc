"""Forward pinhole camera: ray cast, procedural materials, per-run illumination and weather.

The camera looks along the vehicle heading (about 66 degrees horizontal field of view, 4:3),
1.6 m above the ground, pitched slightly down. Shading is evaluated at the hit point from the
primitive's material (facade window grids, shop fronts, roofs, car glass, foliage, road markings,
pavement slabs, grass), lit by a sun with ray-cast shadows and a sky ambient term, plus at night
lit windows, street lamps and headlights. Fog, wet roads, rain streaks, snow, exposure, white
balance, vignetting, blur and sensor noise follow the run's :class:`RunCondition`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distilvpr_lib.data.synth.conditions import RunCondition
from distilvpr_lib.data.synth.raycast import HIT_BOX, HIT_CYLINDER, HIT_GROUND, HIT_NONE, HIT_SPHEROID, cast_rays, hash_uniform
from distilvpr_lib.data.synth.tiling import (
    LocalPrimitives,
    bounds,
    grid_tiles,
    near_xy,
    select_primitives,
    split_padded,
    tile_chunks,
)
from distilvpr_lib.data.synth.world import MATERIALS, Primitives, World

#: Camera mounting (m, degrees).
CAMERA_HEIGHT_M = 1.6
CAMERA_PITCH_DEG = -4.0
#: Scene range rendered by the camera (m); beyond it: sky / far fog.
CAMERA_RANGE_M = 140.0
#: Rows x columns of the ray tiles (angular culling units).
_TILE_SHAPE = (16, 8)


@dataclass
class CameraModel:
    """Pinhole intrinsics and the per-pixel ray directions in the vehicle frame.

    ``rays`` (H, W, 3) float64 unit directions with x forward, y left, z up (pitch applied).
    """

    width: int
    height: int
    hfov_deg: float
    rays: np.ndarray

    @classmethod
    def create(cls, width: int, height: int, hfov_deg: float = 66.0, pitch_deg: float = CAMERA_PITCH_DEG
               ) -> "CameraModel":
        fx = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
        u = (np.arange(width) + 0.5 - width / 2) / fx
        v = (np.arange(height) + 0.5 - height / 2) / fx
        uu, vv = np.meshgrid(u, v)
        d = np.stack([np.ones_like(uu), -uu, -vv], axis=-1)  # forward, left, up
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        p = math.radians(pitch_deg)
        rot = np.array([[math.cos(p), 0, -math.sin(p)], [0, 1, 0], [math.sin(p), 0, math.cos(p)]])
        return cls(width, height, hfov_deg, d @ rot.T)


def _sky(directions: np.ndarray, cond: RunCondition, sun_dir: np.ndarray) -> np.ndarray:
    """Sky radiance (linear RGB) for (N, 3) directions."""
    el = np.clip(directions[:, 2], -0.2, 1.0)
    mix = np.sqrt(np.clip(el, 0.0, 1.0))[:, None]
    zen = np.asarray(cond.sky_zenith, dtype=np.float32)
    hor = np.asarray(cond.sky_horizon, dtype=np.float32)
    sky = hor * (1 - mix) + zen * mix
    if cond.sun_intensity > 0 and cond.sun_elevation > -2:
        cosang = np.clip(directions @ sun_dir.astype(np.float32), -1.0, 1.0)
        glow = np.exp((cosang - 1.0) * 60.0)[:, None] * 0.6 + (cosang > 0.9995)[:, None] * 6.0
        sky = sky + glow * np.asarray(cond.sun_color, dtype=np.float32) * (1.0 - 0.8 * cond.cloud_cover)
    if cond.cloud_cover > 0:
        up = np.maximum(directions[:, 2], 0.04)
        px = directions[:, 0] / up * 3.0
        py = directions[:, 1] / up * 3.0
        n = _value_noise(px, py, cond.cloud_seed) * 0.6 + _value_noise(px * 2.7, py * 2.7, cond.cloud_seed + 7) * 0.4
        cover = np.clip((n - (1.0 - cond.cloud_cover)) * 4.0, 0.0, 1.0)
        if cond.cloud_cover > 0.95:
            cover = np.maximum(cover, 0.85)
        cover *= np.clip(directions[:, 2] * 12.0, 0.0, 1.0)
        cloud = np.asarray(cond.cloud_color, dtype=np.float32) * (0.85 + 0.3 * n[:, None])
        sky = sky * (1 - cover[:, None]) + cloud * cover[:, None]
    return sky.astype(np.float32)


def _value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1) (hash lattice, smoothstep interpolation)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xi = np.floor(x)
    yi = np.floor(y)
    fx = (x - xi).astype(np.float32)
    fy = (y - yi).astype(np.float32)
    xi = xi.astype(np.int64)
    yi = yi.astype(np.int64)

    def h(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return hash_uniform(i & 0xFFFFFFFF, j & 0xFFFFFFFF, seed)

    sx = fx * fx * (3 - 2 * fx)
    sy = fy * fy * (3 - 2 * fy)
    a = h(xi, yi) * (1 - sx) + h(xi + 1, yi) * sx
    b = h(xi, yi + 1) * (1 - sx) + h(xi + 1, yi + 1) * sx
    return a * (1 - sy) + b * sy


def sun_direction(cond: RunCondition) -> np.ndarray:
    """Unit vector towards the sun in the local frame."""
    el = math.radians(cond.sun_elevation)
    az = math.radians(cond.sun_azimuth)
    return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


def _turned_box_hits_far(lo: np.ndarray, hi: np.ndarray, cos: np.ndarray, sin: np.ndarray, d: np.ndarray,
                         origins: np.ndarray) -> np.ndarray:
    """Exit distances (c, R, K) of rays from ``origins`` through turned boxes (-inf where missed)."""
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
    ldz = d[..., 2:3]  # (c, R, 1): the vertical axis is not turned; broadcast in the products below
    t_near = None
    t_far = None
    for o, dd, h in ((lox, ldx, half[:, None, :, 0]), (loy, ldy, half[:, None, :, 1]), (oz, ldz, half[:, None, :, 2])):
        iv = np.float32(1.0) / np.where(np.abs(dd) < 1e-9, np.float32(1e-9), dd)
        a, b = (-h - o) * iv, (h - o) * iv
        if t_near is None:
            t_near, t_far = np.minimum(a, b), np.maximum(a, b)
        else:
            np.maximum(t_near, np.minimum(a, b), out=t_near)
            np.minimum(t_far, np.maximum(a, b, out=a), out=t_far)
    assert t_near is not None and t_far is not None
    np.copyto(t_far, np.float32(-np.inf), where=~(t_near <= t_far))  # t_far: a fresh float32 array
    return t_far


def _shadow_mask(prims: Primitives, points: np.ndarray, sun: np.ndarray, max_range: float = 70.0,
                 max_shadow_m: float = 80.0) -> np.ndarray:
    """Sun visibility in [0, 1] of (N, 3) world points: 0 behind a box, partial behind a crown.

    Rays towards the sun are parallel, so points are grouped into rows: strips across the sun's
    horizontal direction (``bin`` metres wide), split into chunks of points sorted along it. A
    primitive is tested only against rows whose strip it overlaps and which lie within its
    shadow's reach (height / tan(sun elevation), at most ``max_shadow_m``) down-sun of it.
    """
    n = len(points)
    lit = np.ones(n, dtype=np.float32)
    if n == 0:
        return lit
    sun = np.asarray(sun, dtype=np.float64)
    horiz = np.hypot(sun[0], sun[1])
    along = np.array([sun[0], sun[1]]) / max(horiz, 1e-9)
    across = np.array([-along[1], along[0]])
    tan_el = sun[2] / max(horiz, 1e-9)
    origin = points.mean(axis=0)
    rel = points - origin
    u = rel[:, :2] @ across
    v = rel[:, :2] @ along
    bin_w, chunk = 3.0, 160
    bins = np.floor(u / bin_w).astype(np.int64)
    order = np.lexsort((v, bins))
    b_sorted = bins[order]
    uniq, start, counts = np.unique(b_sorted, return_index=True, return_counts=True)
    rows_per_bin = (counts + chunk - 1) // chunk
    row_offset = np.concatenate([[0], np.cumsum(rows_per_bin)[:-1]])
    within = np.arange(n) - np.repeat(start, counts)
    row_id = np.repeat(row_offset, counts) + within // chunk
    n_rows = int(rows_per_bin.sum())
    slot = np.full((n_rows, chunk), -1, dtype=np.int64)
    slot[row_id, within % chunk] = order
    valid = slot >= 0
    safe = np.maximum(slot, 0)
    row_bin = np.repeat(uniq, rows_per_bin)
    row_u_lo = row_bin * bin_w
    row_u_hi = row_u_lo + bin_w
    v_s = np.where(valid, v[safe], np.nan)
    z_s = np.where(valid, points[safe, 2], np.nan)
    row_v_lo = np.nanmin(v_s, axis=1)
    row_v_hi = np.nanmax(v_s, axis=1)
    row_z_lo = np.nanmin(z_s, axis=1)
    p = np.where(valid[..., None], rel[safe], 1e6).astype(np.float32)  # (rows, chunk, 3)
    d = sun.astype(np.float32)
    inv = np.float32(1.0) / np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)
    p_ax = np.ascontiguousarray(p.transpose(2, 0, 1))  # (3, rows, chunk): the same values, per axis
    blocked = np.zeros((n_rows, chunk), dtype=bool)
    extent = float(np.abs(rel[:, :2]).max())

    def rows_member(cu: np.ndarray, cv: np.ndarray, rad: np.ndarray, top: np.ndarray) -> np.ndarray:
        # casters that fail a test against every row (reach <= max_shadow_m; rounding is monotone) are left
        # out before the (rows, casters) tests: the same matrix
        cols = np.flatnonzero((cu + rad >= row_u_lo.min()) & (cu - rad <= row_u_hi.max()) & (cv + rad >= row_v_lo.min())
                              & (cv - rad <= (row_v_hi + max_shadow_m).max()) & (top > row_z_lo.min()))
        out = np.zeros((n_rows, len(cu)), dtype=bool)
        cu, cv, rad, top = cu[cols], cv[cols], rad[cols], top[cols]
        reach = np.minimum(np.maximum(top[None, :] - row_z_lo[:, None], 0.0) / max(tan_el, 1e-3), max_shadow_m)
        out[:, cols] = ((cu[None, :] + rad[None, :] >= row_u_lo[:, None]) & (cu[None, :] - rad[None, :] <= row_u_hi[:, None])
                        & (cv[None, :] + rad[None, :] >= row_v_lo[:, None])
                        & (cv[None, :] - rad[None, :] <= row_v_hi[:, None] + reach)
                        & (top[None, :] > row_z_lo[:, None]))
        return out

    bnd = bounds(prims)
    near = near_xy(bnd.box_centres, bnd.box_radii, origin, max_range + extent)  # a superset, then the exact test
    bc = bnd.box_centres[near] - origin[:2]
    br = bnd.box_radii[near]
    near_ok = np.hypot(bc[:, 0], bc[:, 1]) < max_range + br + extent
    near, bc, br = near[near_ok], bc[near_ok], br[near_ok]
    if len(near):
        lo_all = np.vstack([(prims.box_lo[near] - origin).astype(np.float32), np.full((1, 3), 1e6, np.float32)])
        hi_all = np.vstack([(prims.box_hi[near] - origin).astype(np.float32), np.full((1, 3), 1e6, np.float32)])
        member = rows_member(bc @ across, bc @ along, br, prims.box_hi[near, 2])
        sin_all = np.append(np.sin(prims.box_yaw[near]), 0.0).astype(np.float32)
        cos_all = np.append(np.cos(prims.box_yaw[near]), 1.0).astype(np.float32)
        lo_ax = np.ascontiguousarray(lo_all.T)
        hi_ax = np.ascontiguousarray(hi_all.T)
        groups = []  # (rows, table, turned): the test is chosen per chunk, as it always was; groups drop padding
        for chunk_rows, chunk_table in tile_chunks(member, chunk):
            turned = bool(sin_all[chunk_table].any())
            groups += [(r, t, turned) for r, t in split_padded(chunk_rows, chunk_table, len(near), chunk)]
        for rows, table, turned in groups:
            if turned:  # turned boxes
                dirs = np.broadcast_to(d, p[rows].shape)
                t_hit = _turned_box_hits_far(lo_all[table], hi_all[table], cos_all[table], sin_all[table], dirs,
                                             p[rows])
                blocked[rows] |= (t_hit > np.float32(0.05)).any(axis=2)
                continue
            t_near = None
            t_far = None
            for axis in range(3):
                pa = p_ax[axis][rows][:, :, None]
                a = lo_ax[axis][table][:, None, :] - pa
                a *= inv[axis]
                b = hi_ax[axis][table][:, None, :] - pa
                b *= inv[axis]
                # lo <= hi and one direction for all rays: rounding is monotone, so min(a, b) and max(a, b)
                # are a and b themselves (b and a when inv < 0) -- equal values, no min / max needed
                near, far = (a, b) if inv[axis] > 0 else (b, a)
                if t_near is None:
                    t_near, t_far = near, far
                else:
                    np.maximum(t_near, near, out=t_near)
                    np.minimum(t_far, far, out=t_far)
            hit = t_near <= t_far
            hit &= t_far > np.float32(0.05)
            blocked[rows] |= hit.any(axis=2)
    crowns = bnd.crowns
    crowns = crowns[near_xy(prims.sph_center[crowns, :2], np.zeros(len(crowns)), origin, max_range + extent)]
    if len(crowns):
        cc = prims.sph_center[crowns, :2] - origin[:2]
        keep = crowns[np.hypot(cc[:, 0], cc[:, 1]) < max_range + extent]
        if len(keep):
            c = prims.sph_center[keep] - origin
            r = prims.sph_radius[keep]
            member = rows_member(c[:, :2] @ across, c[:, :2] @ along, r[:, 0], prims.sph_center[keep, 2] + r[:, 1])
            # rows whose points are all in a box's shadow already: their lit values end at 0 whatever the crowns
            member[(blocked | ~valid).all(axis=1)] = False
            c_all = np.vstack([c.astype(np.float32), np.full((1, 3), 1e6, np.float32)])
            r_all = np.vstack([r.astype(np.float32), np.ones((1, 2), np.float32)])
            opacity_all = 1.0 - np.append(prims.sph_porosity[keep], 1.0).astype(np.float32)
            q_all = 1.0 / (r_all[:, 0] ** 2)
            w_all = 1.0 / (r_all[:, 1] ** 2)
            a_all = (d[0] ** 2 + d[1] ** 2) * q_all + d[2] ** 2 * w_all
            c_ax = np.ascontiguousarray(c_all.T)
            shade_amount = np.zeros((n_rows, chunk), np.float32)
            for rows, table in (g for c in tile_chunks(member, chunk) for g in split_padded(*c, len(keep), chunk)):
                qq = q_all[table][:, None, :]
                ww = w_all[table][:, None, :]
                aa = a_all[table][:, None, :]
                ox = p_ax[0][rows][:, :, None] - c_ax[0][table][:, None, :]
                oy = p_ax[1][rows][:, :, None] - c_ax[1][table][:, None, :]
                oz = p_ax[2][rows][:, :, None] - c_ax[2][table][:, None, :]
                bp = (ox * d[0] + oy * d[1]) * qq + oz * d[2] * ww
                c0 = (ox * ox + oy * oy) * qq + oz * oz * ww - 1
                disc = bp * bp - aa * c0
                t_far = (-bp + np.sqrt(np.maximum(disc, 0))) / aa
                hit = (disc > 0) & (t_far > 0.05) & (c0 > 0)
                shade_amount[rows] = (hit * opacity_all[table][:, None, :]).max(axis=2)
            np.minimum.at(lit, slot[valid], 1.0 - shade_amount[valid])
    rows = slot[blocked & valid]
    lit[rows] = 0.0
    return lit


def render_image(world: World, prims: Primitives, cond: RunCondition, camera: CameraModel, position: np.ndarray,
                 heading: float, frame_key: int, shadows: bool = True) -> np.ndarray:
    """Render one frame.

    Args:
        world: the static world (ground layout, lamps).
        prims: the run's primitives (static + transients + season).
        cond: the run's condition.
        camera: :class:`CameraModel`.
        position: (2,) local xy of the vehicle; heading: radians (camera yaw).
        frame_key: integer making the per-frame noise deterministic (e.g. the image timestamp).
        shadows: cast sun shadows (skipped automatically for overcast light and night).

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    H, W = camera.height, camera.width
    origin = np.array([position[0], position[1], CAMERA_HEIGHT_M], dtype=np.float64)
    c, s = math.cos(heading), math.sin(heading)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rays = (camera.rays @ rot.T).astype(np.float32)  # (H, W, 3) world directions
    tiles, pix = grid_tiles(rays, _TILE_SHAPE)
    half_fov = math.radians(camera.hfov_deg) / 2 + 0.05
    local = select_primitives(prims, origin, CAMERA_RANGE_M, forward=heading, half_fov=half_fov)
    salt = int(frame_key) & 0xFFFFFFFF
    hits = cast_rays(local, tiles, pix, salt, CAMERA_RANGE_M)
    # back to image order
    t = np.empty(H * W, np.float32)
    kind = np.empty(H * W, np.uint8)
    index = np.empty(H * W, np.int64)
    t[pix.ravel()] = hits.t.ravel()
    kind[pix.ravel()] = hits.kind.ravel()
    index[pix.ravel()] = hits.index.ravel()
    dirs = rays.reshape(-1, 3)
    rng = np.random.default_rng(np.random.SeedSequence([salt, 0xCA3]))
    color = shade(world, prims, local, cond, origin, dirs, t, kind, index, heading, salt, shadows)
    return finish_image(color.reshape(H, W, 3), cond, rng)


def shade(world: World, prims: Primitives, local: LocalPrimitives, cond: RunCondition, origin: np.ndarray,
          dirs: np.ndarray, t: np.ndarray, kind: np.ndarray, index: np.ndarray, heading: float, salt: int,
          shadows: bool = True) -> np.ndarray:
    """Linear RGB radiance (N, 3) float32 of N primary rays given their first hits."""
    n = len(t)
    sun = sun_direction(cond)
    out = np.zeros((n, 3), dtype=np.float32)
    sky_mask = kind == HIT_NONE
    if sky_mask.any():
        out[sky_mask] = _sky(dirs[sky_mask], cond, sun)
    hit = ~sky_mask
    if not hit.any():
        return out
    hi = np.flatnonzero(hit)
    th = t[hi][:, None]
    d = dirs[hi]
    p_rel = d * th  # relative to the camera, float32
    p = p_rel.astype(np.float64) + origin  # world
    k = kind[hi]
    idx = index[hi]
    albedo = np.zeros((len(hi), 3), np.float32)
    normal = np.zeros((len(hi), 3), np.float32)
    emissive = np.zeros((len(hi), 3), np.float32)
    gloss = np.zeros(len(hi), np.float32)  # wet / glass reflection weight
    pixel_noise = hash_uniform(hi, salt, 17)

    # ---- boxes ----
    m = k == HIT_BOX
    if m.any():
        gi = local.box_index[idx[m]]
        lo = prims.box_lo[gi]
        hi_ = prims.box_hi[gi]
        centre = 0.5 * (lo + hi_)
        halfw = 0.5 * (hi_ - lo)
        pm = p[m]
        yaw = prims.box_yaw[gi]
        turned = yaw != 0
        if turned.any():  # hit points in the unturned box frame
            c_, s_ = np.cos(yaw[turned]), np.sin(yaw[turned])
            rx = pm[turned, 0] - centre[turned, 0]
            ry = pm[turned, 1] - centre[turned, 1]
            pm = pm.copy()
            pm[turned, 0] = centre[turned, 0] + c_ * rx + s_ * ry
            pm[turned, 1] = centre[turned, 1] - s_ * rx + c_ * ry
        q = (pm - centre) / np.maximum(halfw, 1e-6)
        axis = np.argmax(np.abs(q), axis=1)
        nrm = np.zeros((m.sum(), 3), np.float32)
        nrm[np.arange(len(axis)), axis] = np.sign(q[np.arange(len(axis)), axis])
        if turned.any():  # normals back to the world frame
            c_, s_ = np.cos(yaw[turned]).astype(np.float32), np.sin(yaw[turned]).astype(np.float32)
            nx, ny = nrm[turned, 0].copy(), nrm[turned, 1].copy()
            world_n = nrm.copy()
            world_n[turned, 0] = c_ * nx - s_ * ny
            world_n[turned, 1] = s_ * nx + c_ * ny
            normal[m] = world_n
        else:
            normal[m] = nrm
        a, e, gl = _box_material(prims, gi, pm, lo, hi_, axis, nrm, cond, salt, pixel_noise[m])
        albedo[m] = a
        emissive[m] = e
        gloss[m] = gl
    # ---- cylinders ----
    m = k == HIT_CYLINDER
    if m.any():
        gi = local.cyl_index[idx[m]]
        cxy = prims.cyl_xy[gi]
        nxy = (p[m, :2] - cxy) / prims.cyl_radius[gi][:, None]
        normal[m, 0:2] = nxy
        col = prims.cyl_color[gi].copy()
        mat = prims.cyl_mat[gi]
        ped = mat == MATERIALS["pedestrian"]
        if ped.any():  # trousers below the waist
            legs = ped & (p[m, 2] < 0.85)
            col[legs] = col[legs] * 0.45 + 0.02
        albedo[m] = col * (0.9 + 0.2 * pixel_noise[m][:, None])
    # ---- spheroids ----
    m = k == HIT_SPHEROID
    if m.any():
        gi = local.sph_index[idx[m]]
        cc = prims.sph_center[gi]
        rr = prims.sph_radius[gi]
        g = (p[m] - cc) / np.stack([rr[:, 0] ** 2, rr[:, 0] ** 2, rr[:, 1] ** 2], axis=1)
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
        mat = prims.sph_mat[gi]
        crown = mat == MATERIALS["crown"]
        # foliage: bumpy normals and speckled colour
        jitter = (hash_uniform(hi[m], salt, 3)[:, None] - 0.5) * np.where(crown, 1.2, 0.0)[:, None]
        g = g + jitter * np.array([0.6, -0.6, 0.3], np.float32)
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
        normal[m] = g
        col = prims.sph_color[gi] * (0.6 + 0.8 * pixel_noise[m][:, None] * np.where(crown, 1.0, 0.25)[:, None]
                                     + np.where(crown, 0.0, 0.3)[:, None])
        if cond.snow:
            col[crown] = col[crown] * 0.6 + 0.35 * (g[crown, 2:3] > 0.3)
        albedo[m] = col
    # ---- ground ----
    m = k == HIT_GROUND
    if m.any():
        normal[m, 2] = 1.0
        a, gl = _ground_material(world, p[m], cond, pixel_noise[m])
        albedo[m] = a
        gloss[m] = gl

    # ---- lighting ----
    amb_col = np.asarray(cond.sky_horizon, np.float32) * 0.5 + np.asarray(cond.sky_zenith, np.float32) * 0.5
    amb_col = amb_col / max(float(amb_col.mean()), 1e-3) * 0.5
    ambient = cond.ambient_intensity * amb_col * (0.75 + 0.25 * normal[:, 2:3])
    # near-ground occlusion on walls
    ambient = ambient * (1.0 - 0.35 * np.exp(-np.maximum(p[:, 2:3], 0.0) / 1.2)).astype(np.float32)
    light = ambient.astype(np.float32)
    if cond.sun_intensity > 0.05 and cond.sun_elevation > 0:
        ndl = np.clip(normal @ sun.astype(np.float32), 0.0, 1.0)
        lit = np.ones(len(hi), np.float32)
        if shadows:
            cand = np.flatnonzero(ndl > 0)
            if len(cand):
                lit[cand] = _shadow_mask(prims, p[cand] + normal[cand] * 0.02, sun)
        light = light + (cond.sun_intensity * ndl * lit)[:, None] * np.asarray(cond.sun_color, np.float32)
    if cond.lamp_intensity > 0 and len(world.lamps):
        lamps = world.lamps
        near = lamps[np.hypot(lamps[:, 0] - origin[0], lamps[:, 1] - origin[1]) < 90.0]
        if len(near):
            lamp_col = np.array([1.0, 0.75, 0.45], np.float32)
            acc = np.zeros(len(hi), np.float32)
            for lx, ly, lz in near:
                v = np.array([lx, ly, lz]) - p
                dist2 = np.einsum("ij,ij->i", v, v)
                ndl = np.clip(np.einsum("ij,ij->i", normal, v.astype(np.float32)) / np.sqrt(dist2 + 1e-6), 0, 1)
                acc += (ndl * 5.0 / (dist2 + 4.0)).astype(np.float32)
            light = light + cond.lamp_intensity * acc[:, None] * lamp_col
    if cond.headlight_intensity > 0:
        fwd = np.array([math.cos(heading), math.sin(heading), 0.0], np.float32)
        v = p_rel - np.array([0, 0, -0.9], np.float32)
        dist = np.linalg.norm(v, axis=1) + 1e-6
        cosang = (v @ fwd) / dist
        cone = np.clip((cosang - 0.88) / 0.1, 0.0, 1.0)
        ndl = np.clip(-(normal * v).sum(axis=1) / dist, 0.0, 1.0)
        light = light + (cond.headlight_intensity * cone * ndl * 25.0 / (dist ** 2 + 25.0))[:, None] * \
            np.array([1.0, 0.97, 0.9], np.float32)
    color = albedo * light + emissive
    # reflections: wet road and glass mirror the sky
    if gloss.any():
        refl = d.copy()
        refl[:, 2] = np.abs(refl[:, 2])
        g = gloss > 0
        fres = gloss[g] * (0.04 + 0.96 * (1.0 - np.abs(d[g, 2])) ** 5)
        sky_r = _sky(refl[g], cond, sun)
        color[g] = color[g] * (1 - fres[:, None]) + sky_r * fres[:, None]
    # fog
    if math.isfinite(cond.fog_visibility):
        f = np.exp(-th[:, 0] / cond.fog_visibility)[:, None].astype(np.float32)
        fog_col = np.asarray(cond.fog_color, np.float32) * (0.55 + 0.45 * min(cond.ambient_intensity, 1.0))
        color = color * f + fog_col * (1 - f)
    out[hi] = color
    if math.isfinite(cond.fog_visibility) and sky_mask.any():
        fog_col = np.asarray(cond.fog_color, np.float32) * (0.55 + 0.45 * min(cond.ambient_intensity, 1.0))
        out[sky_mask] = out[sky_mask] * 0.25 + fog_col * 0.75
    return out


def _box_material(prims: Primitives, gi: np.ndarray, p: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  axis: np.ndarray, nrm: np.ndarray, cond: RunCondition, salt: int, noise: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo, emission and gloss of box hits (facades with window grids, roofs, cars, signs ...)."""
    n = len(gi)
    mat = prims.box_mat[gi]
    base = prims.box_color[gi].astype(np.float32)
    second = prims.box_color2[gi].astype(np.float32)
    params = prims.box_params[gi]
    seed = prims.box_seed[gi]
    albedo = base.copy()
    emissive = np.zeros((n, 3), np.float32)
    gloss = np.zeros(n, np.float32)
    top = nrm[:, 2] > 0.5
    # facade coordinate along the face
    u = np.where(axis == 0, p[:, 1] - lo[:, 1], p[:, 0] - lo[:, 0]).astype(np.float32)
    z = p[:, 2].astype(np.float32)
    height = (hi[:, 2] - lo[:, 2]).astype(np.float32)
    facade = ((mat == MATERIALS["building"]) | (mat == MATERIALS["roof_storey"])) & ~top & (params[:, 0] > 0)
    if facade.any():
        f = facade
        pitch, floor_h, win_w = params[f, 0], params[f, 1], params[f, 2]
        win_h = np.abs(params[f, 3])
        shop = params[f, 3] < 0
        zz = z[f] - lo[f, 2].astype(np.float32)
        col_i = np.floor(u[f] / pitch)
        row_i = np.floor(zz / floor_h)
        fu = u[f] / pitch - col_i
        fv = zz / floor_h - row_i
        face_len = np.where(axis[f] == 0, hi[f, 1] - lo[f, 1], hi[f, 0] - lo[f, 0]).astype(np.float32)
        inside = (u[f] > 0.6) & (u[f] < face_len - 0.6) & (zz < height[f] - 0.6)
        window = inside & (np.abs(fu - 0.5) < win_w / 2) & (np.abs(fv - 0.55) < win_h / 2)
        ground_floor = row_i < 1
        shopfront = shop & ground_floor & inside & (zz > 0.35) & (zz < 2.9) & (np.abs(fu - 0.5) < 0.46)
        window = np.where(ground_floor & shop, shopfront, window)
        frame = window & ((np.abs(fu - 0.5) > win_w / 2 - 0.04) | (np.abs(fv - 0.55) > win_h / 2 - 0.04))
        band = (fv < 0.05) & ~ground_floor
        texture = 0.88 + 0.24 * hash_uniform(seed[f], np.floor(u[f] * 3.0).astype(np.int64) & 0xFFFF,
                                             np.floor(zz * 5.0).astype(np.int64) & 0xFFFF)
        col = base[f] * texture[:, None]
        col = np.where(band[:, None], col * 0.78, col)
        glass = second[f] * (0.8 + 0.4 * hash_uniform(seed[f], col_i.astype(np.int64) & 0xFFFF,
                                                    row_i.astype(np.int64) & 0xFFFF, 5))[:, None]
        col = np.where(window[:, None], glass, col)
        col = np.where(frame[:, None], np.float32(0.7), col)
        albedo[f] = col
        gloss[f] = np.where(window & ~frame, 0.6, 0.0)
        # lit windows at night / dusk
        if cond.lit_window_fraction > 0 and (cond.night or cond.lamp_intensity > 0):
            lit = window & ~frame & (hash_uniform(seed[f], col_i.astype(np.int64) & 0xFFFF,
                                                  row_i.astype(np.int64) & 0xFFFF,
                                                  cond.cloud_seed) < cond.lit_window_fraction)
            warm = np.array([1.0, 0.72, 0.38], np.float32) * (0.6 if cond.night else 0.25)
            shop_lit = lit | (shopfront & (cond.lit_window_fraction > 0.1))
            emissive[f] = np.where(shop_lit[:, None], warm * (1.0 + 1.5 * shopfront[:, None]), 0.0)
    roof = ((mat == MATERIALS["building"]) | (mat == MATERIALS["roof_storey"])) & top
    if roof.any():
        roof_col = np.array([[0.05, 0.05, 0.055], [0.12, 0.06, 0.04], [0.09, 0.09, 0.09]], np.float32)
        albedo[roof] = roof_col[seed[roof] % 3]
        if cond.snow:
            albedo[roof] = 0.8
    car = (mat == MATERIALS["car_body"]) | (mat == MATERIALS["car_cabin"])
    if car.any():
        cabin = (mat == MATERIALS["car_cabin"]) & ~top
        body_col = base[car] * (0.9 + 0.1 * noise[car][:, None])
        col = np.where(cabin[car][:, None], second[car], body_col)
        wheel = (mat[car] == MATERIALS["car_body"]) & (z[car] < 0.55) & ~top[car]
        col = np.where(wheel[:, None], np.float32(0.02), col)
        albedo[car] = col
        gloss[car] = np.where(cabin[car], 0.5, 0.25)
        if cond.snow:
            albedo[car & top] = 0.75
    shelter = mat == MATERIALS["shelter"]
    if shelter.any():
        albedo[shelter] = np.where((z[shelter] > 2.3)[:, None], base[shelter], second[shelter] * 0.4)
        gloss[shelter] = 0.4
    kiosk = mat == MATERIALS["kiosk"]
    if kiosk.any():
        pane = (np.mod(z[kiosk], 0.35) > 0.06) & (z[kiosk] > 0.9) & (z[kiosk] < 2.2)
        albedo[kiosk] = np.where(pane[:, None], second[kiosk] * 0.3, base[kiosk])
    barrier = mat == MATERIALS["barrier"]
    if barrier.any():
        stripe = np.mod(z[barrier] + u[barrier], 0.5) < 0.25
        albedo[barrier] = np.where(stripe[:, None], base[barrier], second[barrier])
    hedge = (mat == MATERIALS["hedge"]) | (mat == MATERIALS["wall"])
    if hedge.any():
        albedo[hedge] = base[hedge] * (0.7 + 0.6 * noise[hedge])[:, None]
    lamp = mat == MATERIALS["lamp"]
    if lamp.any() and cond.lamp_intensity > 0:
        bulb = lamp & (nrm[:, 2] < -0.5)
        emissive[bulb] = second[bulb] * 3.0 * cond.lamp_intensity
    sign = mat == MATERIALS["sign"]
    if sign.any():
        # simple glyph stripes on signs
        glyph = (np.mod(u[sign] * 7.0, 1.0) < 0.35) & (np.mod(z[sign] * 9.0, 1.0) < 0.5)
        albedo[sign] = np.where(glyph[:, None], np.maximum(second[sign], 0.6), base[sign])
        if cond.night and cond.lit_window_fraction > 0.1:
            emissive[sign] = base[sign] * 0.3
    return albedo, emissive, gloss


def _ground_material(world: World, p: np.ndarray, cond: RunCondition, noise: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Albedo and gloss of ground hits: asphalt, centre-line dashes, pavement slabs, grass."""
    x, y = p[:, 0], p[:, 1]
    cls = world.ground_class(x, y)
    n = len(x)
    albedo = np.empty((n, 3), np.float32)
    coarse = hash_uniform(np.floor(x * 0.7).astype(np.int64) & 0xFFFFFF, np.floor(y * 0.7).astype(np.int64) & 0xFFFFFF, 91)
    asphalt = (0.045 + 0.02 * coarse + 0.015 * noise)[:, None] * np.array([1.0, 1.0, 1.05], np.float32)
    slab_edge = (np.mod(x, 0.9) < 0.05) | (np.mod(y, 0.9) < 0.05)
    pave = (0.16 + 0.05 * noise - 0.06 * slab_edge)[:, None] * np.array([1.0, 0.97, 0.92], np.float32)
    grass = (0.5 + 0.6 * noise)[:, None] * np.array([0.05, 0.11, 0.03], np.float32)
    yard = (0.08 + 0.03 * noise)[:, None] * np.array([1.0, 1.0, 0.9], np.float32)
    albedo[:] = yard
    albedo[cls["park"]] = grass[cls["park"]]
    albedo[cls["pavement"]] = pave[cls["pavement"]]
    albedo[cls["road"]] = asphalt[cls["road"]]
    albedo[cls["marking"]] = np.asarray(world.marking_rgb, np.float32)
    gloss = np.zeros(n, np.float32)
    if cond.wetness > 0:
        wet = cls["road"] | cls["pavement"]
        albedo[wet] *= 1.0 - 0.45 * cond.wetness
        gloss[wet] = cond.wetness * (0.6 + 0.4 * coarse[wet])
    if cond.snow:
        snowy = ~cls["road"] | (cls["kerb_dist"] < 1.2)
        drift = _value_noise(x * 0.4, y * 0.4, 313)
        cover = np.where(snowy, 0.85, np.clip((drift - 0.45) * 3.0, 0.0, 0.7))
        albedo = albedo * (1 - cover[:, None]) + 0.85 * cover[:, None]
    return albedo, gloss


def finish_image(radiance: np.ndarray, cond: RunCondition, rng: np.random.Generator) -> np.ndarray:
    """Camera response: exposure, white balance, rain streaks, tone map, vignetting, blur, noise -> uint8."""
    H, W, _ = radiance.shape
    img = radiance.astype(np.float32)
    lum = float(np.mean(img @ np.array([0.2126, 0.7152, 0.0722], np.float32)))
    auto = (0.18 / max(lum, 1e-4)) ** 0.45  # partial auto-exposure
    img = img * np.float32(cond.exposure * min(max(auto, 0.5), 4.0))
    img = img * np.asarray(cond.white_balance, np.float32)
    if cond.rain_streaks:
        n = int(cond.rain_streaks * H * W / (96 * 128))
        xs = rng.uniform(0, W, n)
        ys = rng.uniform(0, H, n)
        lengths = rng.uniform(0.04, 0.12, n) * H
        slant = rng.uniform(-0.15, 0.15)
        for x0, y0, ln in zip(xs, ys, lengths):
            yy = np.arange(int(y0), min(int(y0 + ln), H))
            xx = np.clip((x0 + slant * (yy - y0)).astype(np.int64), 0, W - 1)
            img[yy, xx] = img[yy, xx] * 0.7 + 0.12
    # tone map (Reinhard with white point 4) and gamma
    img = img * (1.0 + img / 16.0) / (1.0 + img)
    img = np.power(np.clip(img, 0.0, 1.0), 1.0 / 2.2)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
    img = img * (1.0 - 0.18 * r2)[..., None]
    for _ in range(cond.blur_passes):
        img = _blur121(img)
    img = img + rng.normal(0.0, cond.noise_sigma, img.shape).astype(np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _blur121(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return (0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]).astype(np.float32)
