"""One run's drive along the route loop: speed profile, lateral offset and heading jitter.

Arc length ``s`` runs from ``-LEAD_IN_M`` to ``route.length + LEAD_IN_M`` (the loop is driven a
little more than once so every window of the loop has data); time ``t`` (seconds since the run
start) increases with ``s``. Positions wrap around the loop (``Route.pose`` works modulo length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distilvpr_lib.data.synth.conditions import RunCondition
from distilvpr_lib.data.synth.world import Route

#: Distance driven before s = 0 and after s = length (m).
LEAD_IN_M = 30.0
#: Largest lateral deviation from the lane centre (m), so the vehicle never touches parked cars.
MAX_LATERAL_M = 0.8
_STEP_M = 0.5


@dataclass
class Trajectory:
    """Arc-length <-> time mapping and poses of one run."""

    route: Route
    s_grid: np.ndarray
    t_grid: np.ndarray
    lateral_params: np.ndarray  # (4, 3) amplitude, wavelength, phase of lateral sinusoids
    heading_params: np.ndarray  # (2, 3) of heading sinusoids (radians)
    lateral_bias: float

    @classmethod
    def create(cls, route: Route, cond: RunCondition, rng: np.random.Generator) -> "Trajectory":
        """Draw the run's speed profile, lateral offsets and heading jitter from ``rng``."""
        s_grid = np.arange(-LEAD_IN_M, route.length + LEAD_IN_M + _STEP_M, _STEP_M)
        # curvature -> slow down in corners
        heading = route.heading
        dh = np.abs(np.angle(np.exp(1j * np.diff(heading))))
        ds = np.maximum(np.diff(route.s), 1e-9)
        curvature = dh / ds
        corner_s = route.s[:-1][curvature > 0.03]
        if len(corner_s):
            rel = np.mod(s_grid[:, None] - corner_s[None, :] + route.length / 2, route.length) - route.length / 2
            dist = np.abs(rel).min(axis=1)
        else:
            dist = np.full_like(s_grid, 1e9)
        corner_factor = 0.4 + 0.6 * np.clip(dist / 25.0, 0.0, 1.0)
        lam = rng.uniform([120.0, 35.0], [300.0, 90.0])
        phi = rng.uniform(0, 2 * np.pi, 2)
        wave = 1 + 0.15 * np.sin(2 * np.pi * s_grid / lam[0] + phi[0]) + 0.08 * np.sin(2 * np.pi * s_grid / lam[1] + phi[1])
        speed = np.maximum(cond.speed_mps * wave * corner_factor, 1.5)
        dt = np.diff(s_grid) / (0.5 * (speed[1:] + speed[:-1]))
        t_grid = np.concatenate([[0.0], np.cumsum(dt)])
        lateral = np.array([
            [cond.lateral_amplitude * 0.65, rng.uniform(80.0, 220.0), rng.uniform(0, 2 * np.pi)],
            [cond.lateral_amplitude * 0.35, rng.uniform(25.0, 60.0), rng.uniform(0, 2 * np.pi)],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
        ])
        jitter = math.radians(cond.heading_jitter_deg)
        heading_p = np.array([
            [jitter * 0.7, rng.uniform(15.0, 45.0), rng.uniform(0, 2 * np.pi)],
            [jitter * 0.3, rng.uniform(6.0, 14.0), rng.uniform(0, 2 * np.pi)],
        ])
        return cls(route, s_grid, t_grid, lateral, heading_p, cond.lateral_bias)

    @property
    def duration_s(self) -> float:
        return float(self.t_grid[-1])

    def time_at(self, s: np.ndarray | float) -> np.ndarray:
        """Seconds since the run start at arc length(s) ``s``."""
        return np.interp(s, self.s_grid, self.t_grid)

    def arc_at(self, t: np.ndarray | float) -> np.ndarray:
        """Arc length at time(s) ``t``."""
        return np.interp(t, self.t_grid, self.s_grid)

    def _lateral(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        off = np.full_like(s, self.lateral_bias, dtype=np.float64)
        slope = np.zeros_like(s, dtype=np.float64)
        for amp, lam, phase in self.lateral_params:
            off = off + amp * np.sin(2 * np.pi * s / lam + phase)
            slope = slope + amp * 2 * np.pi / lam * np.cos(2 * np.pi * s / lam + phase)
        return np.clip(off, -MAX_LATERAL_M, MAX_LATERAL_M), slope

    def pose(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Vehicle position (..., 2) local xy and heading (...,) radians at arc length(s) ``s``."""
        s = np.asarray(s, dtype=np.float64)
        xy, heading, normal = self.route.pose(s)
        off, slope = self._lateral(s)
        jitter = np.zeros_like(s)
        for amp, lam, phase in self.heading_params:
            jitter = jitter + amp * np.sin(2 * np.pi * s / lam + phase)
        return xy + normal * off[..., None], heading + np.arctan(slope) + jitter
