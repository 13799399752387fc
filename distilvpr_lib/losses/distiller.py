"""The distiller: a preset of weighted loss terms turned into one module (docs/METHOD.md §4.5, §7).

``Distiller(distill_cfg)(student (B, D), teacher (B, D), positives_mask, negatives_mask)``
returns a dict of WEIGHTED named terms; the engine logs each and adds them to the task loss
(``TrainConfig.student_task_weight · L_tri``). An empty dict (``nokd``) means no distillation.

Weights
-------
A *weight spec* maps names to floats. Names are either term names (``cross_euclidean_st2ss``,
``kd``, ...) or the group name of a grouped loss (``rkdg``, ``rkd``, ``rkdg2``, ``lsdnet``,
``mkd``). The effective weight of a term is

* grouped loss: ``W[group] × internal(term)``, where ``internal`` is ``W[term]`` if given,
  else the loss's default (``DistillConfig.rkdg_{distance,angle,geodesic}_weight`` for RKD-G,
  1 for the others). So ``{"rkdg": 10}`` = 10·(L_D + L_A + L_G);
* any other loss: ``W[term]`` (default 0).

The spec is ``PRESETS[cfg.method]``, then (for ``cfg.logit_mapping`` ≠ identity) the preset's
Euclidean/spherical cross weights are moved (``topoincare``) or copied (``id_topoin``) to the
``cross_*_poincare_*`` terms, then ``cfg.terms`` overrides by name. Unknown names raise
``KeyError`` listing the known ones. Terms whose effective weight is 0 are neither computed
nor returned. (The reference computes the tt2st terms even at weight 0 but never adds them,
and the image-head triplet likewise; omitting them changes nothing.)

The teacher embeddings are detached here: no gradient ever reaches the teacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distilvpr_lib.config import parse_method_name
from distilvpr_lib.errors import UnknownNameError

from .plugins import load_loss_plugins
from .registry import LOSSES
from .relations import GEOMETRIES

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import DistillConfig

_ST2SS = {f"cross_{g}_st2ss": 0.1 for g in GEOMETRIES}
_TT2ST = {f"cross_{g}_tt2st": 0.1 for g in GEOMETRIES}

#: Preset name -> weight spec (see the module docstring). docs/METHOD.md §4.5 and §7.
PRESETS: dict[str, dict[str, float]] = {
    # B0: student without distillation
    "nokd": {},
    # F: full DistilVPR, Oxford (the reference README, docs/METHOD.md §7): 10·RKD-G(1/1/1) + 0.1·(E + S + H) st2ss
    "distilvpr": {"rkdg": 10.0, **_ST2SS},
    # F on Boreas: RKD-G weight 1
    "distilvpr_boreas": {"rkdg": 1.0, **_ST2SS},
    # agent ablations
    "self_only": {"rkdg": 10.0},
    "cross_only": dict(_ST2SS),
    # manifold ablations, self-agent (internal D/A/G weights pinned)
    "self_E": {"rkdg": 10.0, "rkdg_distance": 1.0, "rkdg_angle": 0.0, "rkdg_geodesic": 0.0},
    "self_S": {"rkdg": 10.0, "rkdg_distance": 0.0, "rkdg_angle": 1.0, "rkdg_geodesic": 0.0},
    "self_H": {"rkdg": 10.0, "rkdg_distance": 0.0, "rkdg_angle": 0.0, "rkdg_geodesic": 1.0},
    # manifold ablations, cross-agent
    "cross_E": {"cross_euclidean_st2ss": 0.1},
    "cross_S": {"cross_spherical_st2ss": 0.1},
    "cross_H": {"cross_hyperbolic_st2ss": 0.1},
    # Euclidean + spherical only
    "no_hyperbolic": {"rkdg": 10.0, "rkdg_geodesic": 0.0, "cross_euclidean_st2ss": 0.1, "cross_spherical_st2ss": 0.1},
    # direction ablation: tt2st instead of st2ss
    "tt2st": {"rkdg": 10.0, **_TT2ST},
    # baselines, weight 1 each on top of the task loss [weights UNVERIFIED in the spec]
    "kd": {"kd": 1.0},
    "rkd": {"rkd": 1.0},
    "pkt": {"pkt": 1.0},
    "sp": {"sp": 1.0},
    "cc": {"cc": 1.0},
    "csd": {"csd": 1.0},
    "afd": {"afd": 1.0},
    "epcnet": {"epcnet": 1.0},
    "lsdnet": {"lsdnet": 1.0},
    "mkd": {"mkd": 1.0},
    "rkdg2": {"rkdg2": 1.0},
}


def register_preset(name: str, spec: dict[str, float]) -> None:
    """Add a preset (a weight spec, module docstring) under ``name`` — what a loss plugin calls
    (``losses.plugins``); the name then takes the method-name modifiers like every preset.

    Raises:
        ValueError: ``name`` is not a plain preset name (no ``_x`` / ``_lr`` / ``_norm`` modifiers), or it is taken
            by another spec.
        KeyError: a weight name no registered loss knows.
    """
    if parse_method_name(name).name != name or parse_method_name(name).base != name:
        raise ValueError(f"preset name {name!r} must not end in a method-name modifier (_x, _lr, _norm)")
    spec = {str(k): float(v) for k, v in spec.items()}
    _check_names(spec, f"preset {name!r}")
    if name in PRESETS and PRESETS[name] != spec:
        raise ValueError(f"preset {name!r} exists with other weights: {PRESETS[name]}")
    PRESETS[name] = spec


def known_weight_names() -> list[str]:
    """Every name a weight spec may use: all term names plus the group names of grouped losses."""
    load_loss_plugins()
    names: set[str] = set()
    for name, cls in LOSSES.items():
        names.update(cls.term_names())
        if cls.grouped:
            names.add(name)
    return sorted(names)


def _check_names(spec: dict[str, float], where: str) -> None:
    known = set(known_weight_names())
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UnknownNameError(f"{where}: unknown loss term(s) {unknown}; known: {sorted(known)}")


def _apply_logit_mapping(spec: dict[str, float], logit_mapping: str) -> dict[str, float]:
    if logit_mapping == "identity":
        return spec
    if logit_mapping not in ("topoincare", "id_topoin"):
        raise UnknownNameError(f"distill.logit_mapping: unknown logit_mapping {logit_mapping!r}; "
                               "known: ['id_topoin', 'identity', 'topoincare']")
    out = dict(spec)
    for geometry in ("euclidean", "spherical"):
        for direction in ("st2ss", "tt2st"):
            source = f"cross_{geometry}_{direction}"
            if source in spec:
                out[f"cross_{geometry}_poincare_{direction}"] = spec[source]
                if logit_mapping == "topoincare":
                    del out[source]
    return out


def _scaled(spec: dict[str, float], scale: float) -> dict[str, float]:
    """``spec`` with every weight multiplied by ``scale`` except the internal weights of grouped losses (the
    distance/angle/geodesic mix of RKD-G stays; its group weight is scaled)."""
    internal = {t for cls in LOSSES.values() if cls.grouped for t in cls.term_names()}
    return {k: (v if k in internal else v * scale) for k, v in spec.items()}


def resolve_term_weights(cfg: "DistillConfig") -> dict[str, float]:
    """Effective weight of every term of every registered loss (zeros included) for ``cfg``.

    ``cfg.method`` is a preset name with optional modifiers (``config.parse_method_name``): ``_x<α>`` multiplies
    every weight of the preset by α (grouped losses: the group weight), before ``cfg.terms`` overrides by name.

    Raises:
        UnknownNameError: (a KeyError) unknown ``cfg.method`` (lists the presets) or unknown names in ``cfg.terms``.
    """
    load_loss_plugins()
    try:
        parsed = parse_method_name(cfg.method)
    except ValueError as exc:
        raise UnknownNameError(f"distill.method: {exc}; known presets: {sorted(PRESETS)}") from None
    if parsed.base not in PRESETS:
        raise UnknownNameError(f"distill.method: unknown distillation method {cfg.method!r}; "
                               f"known presets: {sorted(PRESETS)} "
                       "(each may carry _x<weight scale>, _lr<lr scale>, _norm)")
    if parsed.weight_scale != 1.0 and not PRESETS[parsed.base]:
        raise UnknownNameError(f"distill.method: method {cfg.method!r}: {parsed.base!r} has no distillation "
                               "weight to scale (_x)")
    spec = _apply_logit_mapping(_scaled(PRESETS[parsed.base], parsed.weight_scale), cfg.logit_mapping)
    overrides = {str(k): float(v) for k, v in dict(cfg.terms).items()}
    _check_names(overrides, "distill.terms")
    spec.update(overrides)
    _check_names(spec, f"preset {cfg.method!r}")
    weights: dict[str, float] = {}
    for name, cls in LOSSES.items():
        if cls.grouped:
            group = float(spec.get(name, 0.0))
            internal = dict(cls.internal_weight_defaults(cfg))
            for term in cls.term_names():
                weights[term] = group * float(spec.get(term, internal[term]))
        else:
            for term in cls.term_names():
                weights[term] = float(spec.get(term, 0.0))
    return weights




class Distiller(nn.Module):
    """Weighted distillation terms of one preset (see the module docstring).

    Attributes:
        weights: the non-zero effective weights, term name -> weight.
        losses: ``nn.ModuleDict`` of the loss modules that have at least one active term.
    """

    def __init__(self, distill_cfg: "DistillConfig"):
        super().__init__()
        self.cfg = distill_cfg
        all_weights = resolve_term_weights(distill_cfg)
        self.weights: dict[str, float] = {t: w for t, w in all_weights.items() if w != 0.0}
        self.losses = nn.ModuleDict()
        self._active_terms: dict[str, list[str]] = {}
        for name, cls in LOSSES.items():
            active = [t for t in cls.term_names() if t in self.weights]
            if active:
                self.losses[name] = cls.from_config(distill_cfg)
                self._active_terms[name] = active

    @property
    def term_names(self) -> list[str]:
        """Keys the forward returns, in order."""
        return [t for terms in self._active_terms.values() for t in terms]

    @property
    def dimension_free(self) -> bool:
        """Whether every active loss compares only each agent's own relations (any teacher dimension)."""
        return all(type(loss).dimension_free for loss in self.losses.values())

    @property
    def requires_masks(self) -> bool:
        """Whether an active loss needs ``positives_mask``/``negatives_mask``."""
        return any(type(loss).requires_masks for loss in self.losses.values())

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        positives_mask: torch.Tensor | None = None,
        negatives_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted terms ``{term: weight · loss}`` (scalars) for student (B, D) and teacher (B, D)
        (teacher (B, D') with D' ≠ D when :attr:`dimension_free`).

        Masks are (B, B) bool; only mask-based losses (LSDNet) need them. Half-precision inputs
        are promoted to float32 and autocast is disabled inside (the Gram-based relations run
        in float64 anyway); the teacher is cast to the student's dtype.
        """
        mismatch = student.shape != teacher.shape
        if mismatch and self.dimension_free and student.dim() == teacher.dim() == 2:
            mismatch = student.shape[0] != teacher.shape[0]
        if mismatch:
            raise ValueError(
                f"Distiller: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ"
            )
        teacher = teacher.detach()
        out: dict[str, torch.Tensor] = {}
        # the relations are computed in (at least) float32, outside any autocast region
        with torch.autocast(device_type=student.device.type, enabled=False):
            if student.dtype in (torch.float16, torch.bfloat16):
                student = student.float()
            if teacher.dtype != student.dtype:
                teacher = teacher.to(student.dtype)
            for name, loss in self.losses.items():
                terms = self._active_terms[name]
                values = loss(student, teacher, positives_mask, negatives_mask, terms=terms)
                for term in terms:
                    out[term] = self.weights[term] * values[term]
        return out

    def extra_repr(self) -> str:
        return f"method={self.cfg.method!r}, weights={self.weights}"
