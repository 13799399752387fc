"""Per-run conditions (time of day, weather, season, sensor settings) and Oxford-style run names.

A run's condition is drawn from its own generator. Conditions change the camera image strongly
(illumination, sky, fog, rain, foliage colour, exposure, white balance, noise) and the LiDAR only
mildly (foliage density, dropout, range noise, a different set of parked cars and pedestrians).
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Condition archetypes, in the order they are first assigned to runs (run 0 is a clear day).
ARCHETYPES: tuple[str, ...] = ("sunny", "overcast", "night", "dusk", "rain", "fog", "snow", "dawn")
SEASONS: tuple[str, ...] = ("spring", "summer", "autumn", "winter")
_SEASON_MONTHS = {"spring": (3, 4, 5), "summer": (6, 7, 8), "autumn": (9, 10, 11), "winter": (12, 1, 2)}
#: Foliage per season: crown scale, porosity (probability a ray passes), leaf sRGB.
_FOLIAGE = {
    "spring": (0.92, 0.28, (105, 150, 60)),
    "summer": (1.0, 0.12, (55, 95, 40)),
    "autumn": (0.96, 0.3, (170, 105, 35)),
    "winter": (0.85, 0.62, (95, 80, 65)),
}


@dataclass
class RunCondition:
    """Everything that differs between runs apart from the route itself.

    Angles in degrees, colours linear RGB (3 floats), distances in metres.
    """

    name: str
    archetype: str
    season: str
    # illumination
    sun_elevation: float
    sun_azimuth: float
    sun_intensity: float
    sun_color: tuple[float, float, float]
    ambient_intensity: float
    sky_zenith: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    cloud_cover: float
    cloud_color: tuple[float, float, float]
    cloud_seed: int
    night: bool
    lit_window_fraction: float
    lamp_intensity: float
    headlight_intensity: float
    # weather
    fog_visibility: float  # inf = no fog
    fog_color: tuple[float, float, float]
    wetness: float
    rain_streaks: int
    snow: bool
    # season
    crown_scale: float
    foliage_porosity: float
    leaf_color: tuple[float, float, float]
    # camera processing
    exposure: float
    white_balance: tuple[float, float, float]
    noise_sigma: float
    blur_passes: int
    # lidar
    lidar_dropout: float
    lidar_range_noise: float
    # transients
    parked_fraction: float
    pedestrian_count: int
    barrier_count: int
    # trajectory
    speed_mps: float
    lateral_bias: float
    lateral_amplitude: float
    heading_jitter_deg: float
    submap_phase_m: float
    camera_phase_s: float
    start_time_us: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``inf`` becomes ``None``)."""
        d = dataclasses.asdict(self)
        if not math.isfinite(self.fog_visibility):
            d["fog_visibility"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunCondition":
        d = dict(d)
        if d.get("fog_visibility") is None:
            d["fog_visibility"] = math.inf
        for key in ("sun_color", "sky_zenith", "sky_horizon", "cloud_color", "fog_color", "leaf_color",
                    "white_balance"):
            d[key] = tuple(d[key])
        return cls(**d)


def _lin(rgb: Any) -> tuple[float, float, float]:
    v = (np.asarray(rgb, dtype=np.float64) / 255.0) ** 2.2
    return (float(v[0]), float(v[1]), float(v[2]))


def run_name_from_datetime(when: dt.datetime) -> str:
    """Oxford run name ``YYYY-MM-DD-HH-MM-SS`` (19 characters)."""
    return when.strftime("%Y-%m-%d-%H-%M-%S")


def start_time_us(name: str) -> int:
    """Microseconds since the Unix epoch of a run name (read as UTC): 16 digits for 2001-2286."""
    when = dt.datetime.strptime(name, "%Y-%m-%d-%H-%M-%S")
    return calendar.timegm(when.timetuple()) * 1_000_000


def _archetype_hours(archetype: str, season: str, rng: np.random.Generator) -> float:
    dusk = {"winter": 16.2, "spring": 19.3, "summer": 20.8, "autumn": 17.8}[season]
    dawn = {"winter": 7.8, "spring": 6.3, "summer": 5.2, "autumn": 7.0}[season]
    if archetype == "dusk":
        return dusk + rng.uniform(-0.4, 0.2)
    if archetype == "dawn":
        return dawn + rng.uniform(-0.1, 0.5)
    if archetype == "night":
        return min(dusk + rng.uniform(1.5, 3.5), 23.4)
    return rng.uniform(9.0, 15.5)


def sample_condition(rng: np.random.Generator, archetype: str, used_names: set[str]) -> RunCondition:
    """Draw one run's condition of the given archetype; its run name avoids ``used_names``."""
    if archetype not in ARCHETYPES:
        raise KeyError(f"unknown condition archetype {archetype!r}; known: {list(ARCHETYPES)}")
    if archetype == "snow":
        season = "winter"
    elif archetype == "sunny":
        season = str(rng.choice(["spring", "summer", "summer", "autumn"]))
    else:
        season = SEASONS[int(rng.integers(4))]
    while True:
        year = int(rng.choice([2014, 2015]))
        month = int(rng.choice(_SEASON_MONTHS[season]))
        day = int(rng.integers(1, 29))
        hours = _archetype_hours(archetype, season, rng)
        hour = int(hours)
        minute = int((hours - hour) * 60)
        second = int(rng.integers(0, 60))
        name = run_name_from_datetime(dt.datetime(year, month, day, hour, minute, second))
        if name not in used_names:
            break
    crown_scale, porosity, leaf = _FOLIAGE[season]
    leaf_rgb = np.asarray(leaf, dtype=np.float64) * rng.uniform(0.9, 1.1, 3)

    u = rng.uniform
    sun_azimuth = u(0.0, 360.0)
    night = archetype == "night"
    fog_visibility = math.inf
    wetness = 0.0
    rain_streaks = 0
    snow = archetype == "snow"
    cloud_cover = u(0.0, 0.35)
    cloud_color = _lin((250, 250, 252))
    lit_windows = u(0.02, 0.08)
    lamp = 0.0
    headlight = 0.0
    noise = u(0.004, 0.012)
    blur = int(rng.integers(0, 2))
    exposure = u(0.85, 1.2)
    if archetype == "sunny":
        elevation, sun_i, amb = u(22, 55), u(2.6, 3.4), u(0.45, 0.6)
        sun_col = _lin((255, 245, 230))
        zenith, horizon = _lin((70 + u(-10, 10), 120 + u(-15, 15), 205)), _lin((185, 210, 235))
    elif archetype == "overcast":
        elevation, sun_i, amb = u(15, 45), u(0.0, 0.25), u(0.9, 1.15)
        sun_col = _lin((240, 240, 240))
        g = u(150, 200)
        zenith, horizon = _lin((g - 10, g - 5, g + 5)), _lin((g + 25, g + 25, g + 28))
        cloud_cover = u(0.85, 1.0)
        cloud_color = _lin((g + 20, g + 20, g + 22))
    elif archetype in ("dusk", "dawn"):
        elevation, sun_i, amb = u(0.5, 7.0), u(1.3, 2.2), u(0.18, 0.3)
        sun_col = _lin((255, 150 + u(-20, 20), 80 + u(-20, 20)))
        zenith = _lin((45, 60, 120)) if archetype == "dusk" else _lin((80, 110, 170))
        horizon = _lin((250, 160 + u(-25, 25), 110)) if archetype == "dusk" else _lin((245, 200, 170))
        cloud_cover = u(0.1, 0.6)
        cloud_color = _lin((240, 150, 120)) if archetype == "dusk" else _lin((250, 215, 200))
        lamp = u(0.3, 0.8) if archetype == "dusk" else 0.0
        lit_windows = u(0.1, 0.3) if archetype == "dusk" else u(0.02, 0.1)
        exposure = u(1.2, 1.7)
        noise = u(0.01, 0.02)
    elif archetype == "night":
        elevation, sun_i, amb = u(-25, -10), 0.0, u(0.015, 0.04)
        sun_col = _lin((0, 0, 0))
        zenith, horizon = _lin((5, 7, 16)), _lin((35, 28, 30))
        cloud_cover = u(0.0, 0.6)
        cloud_color = _lin((40, 32, 30))
        lamp = u(2.5, 4.0)
        headlight = u(1.5, 2.5)
        lit_windows = u(0.15, 0.45)
        exposure = u(0.7, 1.1)
        noise = u(0.025, 0.045)
        blur = 1
    elif archetype == "rain":
        elevation, sun_i, amb = u(10, 40), u(0.0, 0.15), u(0.55, 0.75)
        sun_col = _lin((230, 230, 235))
        g = u(110, 150)
        zenith, horizon = _lin((g - 15, g - 10, g)), _lin((g + 10, g + 12, g + 18))
        cloud_cover = 1.0
        cloud_color = _lin((g, g, g + 4))
        wetness = u(0.6, 1.0)
        rain_streaks = int(rng.integers(60, 180))
        fog_visibility = u(250, 500)
        exposure = u(1.2, 1.6)
        blur = int(rng.integers(1, 3))
        lamp = u(0.0, 0.4)
        headlight = u(0.0, 0.6)
    elif archetype == "fog":
        elevation, sun_i, amb = u(5, 30), u(0.0, 0.4), u(0.75, 0.95)
        sun_col = _lin((245, 240, 230))
        g = u(175, 215)
        zenith, horizon = _lin((g, g, g + 3)), _lin((g + 8, g + 8, g + 10))
        cloud_cover = 1.0
        cloud_color = _lin((g, g, g))
        fog_visibility = u(35, 90)
        wetness = u(0.1, 0.4)
        lamp = u(0.0, 0.5)
        headlight = u(0.3, 0.8)
    else:  # snow
        elevation, sun_i, amb = u(8, 22), u(0.5, 1.8), u(0.7, 0.95)
        sun_col = _lin((250, 248, 245))
        zenith, horizon = _lin((150, 170, 200)), _lin((215, 220, 228))
        cloud_cover = u(0.5, 1.0)
        cloud_color = _lin((225, 225, 230))
        exposure = u(0.65, 0.85)
        wetness = u(0.0, 0.3)
    fog_rgb = horizon if math.isfinite(fog_visibility) else zenith
    wb = tuple(float(x) for x in np.clip(1.0 + rng.normal(0.0, 0.07, 3), 0.8, 1.25))
    if night:
        wb = (1.12, 0.98, 0.82)  # sodium lamps and auto white balance drift
    start_us = start_time_us(name)
    return RunCondition(
        name=name, archetype=archetype, season=season,
        sun_elevation=float(elevation), sun_azimuth=float(sun_azimuth), sun_intensity=float(sun_i),
        sun_color=sun_col, ambient_intensity=float(amb), sky_zenith=zenith, sky_horizon=horizon,
        cloud_cover=float(cloud_cover), cloud_color=cloud_color, cloud_seed=int(rng.integers(0, 2 ** 31)),
        night=night, lit_window_fraction=float(lit_windows), lamp_intensity=float(lamp),
        headlight_intensity=float(headlight),
        fog_visibility=float(fog_visibility), fog_color=fog_rgb, wetness=float(wetness),
        rain_streaks=int(rain_streaks), snow=bool(snow),
        crown_scale=float(crown_scale), foliage_porosity=float(porosity), leaf_color=_lin(leaf_rgb),
        exposure=float(exposure), white_balance=wb, noise_sigma=float(noise), blur_passes=int(blur),
        lidar_dropout=float(u(0.03, 0.12) + (0.08 if archetype in ("rain", "snow") else 0.0)
                            + (0.04 if archetype == "fog" else 0.0)),
        lidar_range_noise=float(u(0.015, 0.03) + (0.01 if archetype in ("rain", "snow", "fog") else 0.0)),
        parked_fraction=float(u(0.2, 0.65) if not night else u(0.45, 0.8)),
        pedestrian_count=int(rng.integers(5, 25) if not night else rng.integers(0, 6)) * 4,
        barrier_count=int(rng.integers(0, 8)),
        speed_mps=float(u(6.5, 11.0)), lateral_bias=float(u(-0.35, 0.35)), lateral_amplitude=float(u(0.15, 0.45)),
        heading_jitter_deg=float(u(0.8, 3.0)), submap_phase_m=float(u(0.0, 10.0)),
        camera_phase_s=float(u(0.0, 1.0 / 16.0)), start_time_us=start_us,
    )


def sample_conditions(seed: int, n_runs: int) -> list[RunCondition]:
    """Conditions of ``n_runs`` runs from a seed; the archetypes cycle through :data:`ARCHETYPES`
    (run 0 sunny, then a seeded permutation), so every profile covers day, night, dusk and weather.

    Returns:
        conditions sorted by run name (the Oxford folder order).
    """
    order_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 100]))
    rest = list(ARCHETYPES[1:4])
    tail = list(ARCHETYPES[4:])
    order_rng.shuffle(rest)
    order_rng.shuffle(tail)
    cycle = ["sunny", *rest, *tail]
    used: set[str] = set()
    conditions = []
    for i in range(n_runs):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 101, i]))
        condition = sample_condition(rng, cycle[i % len(cycle)], used)
        used.add(condition.name)
        conditions.append(condition)
    return sorted(conditions, key=lambda c: c.name)
