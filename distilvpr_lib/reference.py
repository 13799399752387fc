"""The reference DistilVPR command line (``tools/options.py``, docs/METHOD.md §9.1) mapped onto our config.

``distilvpr train`` accepts the reference option names so that the commands in the
reference README run as written (with ``python train.py`` replaced by ``distilvpr train``). Options the
reference accepts but never uses are accepted with a one-line note; unknown options are an error.

Values not given on the command line come from the chosen ``--profile`` (default ``paper``,
whose values *are* the reference defaults), so ``--profile smoke`` makes a seed command run in
seconds on the smoke dataset while every option given explicitly still wins.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from distilvpr_lib.config import ExperimentConfig, Layout, apply_overrides, profile_config

#: Behaviours of the reference code that change numbers (docs/METHOD.md §8), as config overrides.
#: The project's defaults differ from them in ``clean_teacher_cache`` and ``use_validation_split``;
#: the other three are already the project's defaults and are listed so the preset is complete.
FAITHFUL_OVERRIDES: dict[str, Any] = {
    "train.clean_teacher_cache": False,   # teacher cache from one augmented view of each sample (§8.1)
    "train.use_validation_split": False,  # no validation split: epochs picked on the test split (§8.3)
    "train.student_task_weight": 0.5,     # the x0.5 on the student's triplet loss (§8.7)
    "train.eval_normalize": True,         # cosine on L2-normalised embeddings at evaluation (§8.9)
    "data.image_lidar_k": 1,              # nearest image only (§8.8)
}

#: Reference options that exist but have no effect in the released code (accepted with a note).
UNUSED_OPTIONS: tuple[str, ...] = (
    "save_weights", "save_epoch", "distil_layer1_weight", "distil_layer2_weight", "distil_layer3_weight",
    "task_layer1_weight", "task_layer2_weight", "task_layer3_weight", "cdistil_layer1_weight",
    "cdistil_layer2_weight", "cdistil_layer3_weight", "cdistil_logitsimloss_weight", "teacher_adaptor_dim",
    "train_step_type", "optimizer", "scheduler", "loss", "ap_tau1", "ap_similarity", "ap_positives_per_query",
    "config", "model_config", "resume_epoch", "logdir", "exp_name", "models_dir", "n_points_boreas",
    "student_minkloconly_planes", "student_minkloconly_layers", "student_minkloconly_topdown", "cuda",
)

_GEOMETRY_OPTIONS = {"crosslogitdistloss": "euclidean", "crosslogitsimloss": "spherical",
                     "crosslogitgeodistloss": "hyperbolic"}


#: Reference options that set one config key each (``section.field``), their value taken as is.
SIMPLE_OPTIONS: dict[str, str] = {
    "dataset_folder": "data.dataset_dir", "image_path": "data.image_dir", "num_workers": "data.num_workers",
    "image_lidar_k": "data.image_lidar_k", "bcs_aug_rate": "data.bcs_aug_rate",
    "hue_aug_rate": "data.hue_aug_rate", "epochs": "train.epochs", "train_batch_size": "train.batch_size",
    "val_batch_size": "train.eval_batch_size", "image_lr": "train.image_lr", "cloud_lr": "train.cloud_lr",
    "weight_decay": "train.weight_decay", "milestones": "train.milestones", "margin": "train.margin",
    "curvature": "distill.curvature", "minklocmm_image_fe": "model.image_backbone",
    "minklocmm_image_fe_dim": "model.image_dim", "minklocmm_cloud_fe_dim": "model.cloud_dim",
    "minklocmm_cloud_planes": "model.cloud_planes", "minklocmm_cloud_layers": "model.cloud_layers",
    "minklocmm_cloud_topdown": "model.cloud_topdown", "student_model": "model.student_backbone",
    "student_output_dim": "model.student_dim",
}

#: Help of the reference options that are not a plain config key (the others: "sets <key>").
REFERENCE_HELP: dict[str, str] = {
    "tryid": "run number appended to the experiment name (default 0)",
    "train_batch_split_size": "must equal --train_batch_size (no batch splitting here)",
    "oxford_quantization_size": "voxel size of Oxford clouds (data.quantization_size)",
    "boreas_quantization_size": "voxel size of Boreas clouds (data.quantization_size; default 1.0)",
    "distil_logit_weight": "factor on every cross-agent weight (default 1)",
    "task_logit_weight": "factor on the student's task weight (train.student_task_weight = weights[0] x this)",
    "rkdgloss_weight": "weight of the self-agent RKD-G term (distill.terms rkdg; with ours_rkdg / rkdg)",
    "dataset": "oxford | oxfordadafusion | boreas (data.layout; default oxford)",
    "teacher_weights_path": "teacher folder of this workbook or a reference .pth (imported into <out>/teacher)",
    "model": "minklocmmcat only (the reference train.py's model)",
    "minklocmm_image_useallstages": "False only (the ResNet stops after layer3)",
    "distil_method": "ours_rkdg | ours | rkdg | nokd (default ours_rkdg)",
    "train_mode": "train_student | train_teacher (default train_student)",
    "logit_mapping_fn": "identity | topoincare | id_topoin: cross-agent relations on Poincare-mapped inputs",
    "weights": "teacher triplet weights fused_cloud_image, '_'-separated (default 0.5_0.5_0)",
    "normalize_embeddings": "True | False: accepted; evaluation normalises anyway",
    "crosslogitsimloss_divide": "True | False: cosine relations divide by the norms (distill.cross_sim_divide)",
}


def _reference_help(name: str) -> str:
    if name in SIMPLE_OPTIONS:
        return f"sets {SIMPLE_OPTIONS[name]}"
    if name in REFERENCE_HELP:
        return REFERENCE_HELP[name]
    for prefix, geometry in _GEOMETRY_OPTIONS.items():
        if name == f"{prefix}_type":
            return f"MSE | L1: loss of the cross-agent {geometry} relations (distill.cross_loss_type)"
        if name == f"{prefix}_logit_norm_fn":
            return f"normalisation before the cross-agent {geometry} relations (distill.cross_norm_fn)"
        for direction in ("st2ss", "tt2st"):
            if name == f"{prefix}_weight_{direction}":
                return (f"weight of the cross-agent {geometry} {direction} term ('_'-separated pair with "
                        "--logit_mapping_fn id_topoin)")
    raise KeyError(f"reference option --{name} has no help")


class ReferenceOptionError(ValueError):
    """A reference option has a value the workbook cannot honour (the message says why)."""


def add_reference_options(parser: argparse.ArgumentParser) -> None:
    """Add every option of the reference ``tools/options.py`` (all default to ``None`` = not given)."""
    g = parser.add_argument_group("reference options (DistilVPR tools/options.py)")
    s = {"default": None}
    for name in ("tryid", "num_workers", "epochs", "train_batch_size", "train_batch_split_size", "val_batch_size",
                 "image_lidar_k", "student_output_dim", "minklocmm_image_fe_dim", "minklocmm_cloud_fe_dim",
                 "minklocmm_cloud_topdown"):
        g.add_argument(f"--{name}", type=int, help=_reference_help(name), **s)
    for name in ("oxford_quantization_size", "boreas_quantization_size", "distil_logit_weight", "task_logit_weight",
                 "rkdgloss_weight", "curvature", "image_lr", "cloud_lr", "weight_decay", "margin", "bcs_aug_rate",
                 "hue_aug_rate"):
        g.add_argument(f"--{name}", type=float, help=_reference_help(name), **s)
    for name in ("dataset", "dataset_folder", "image_path", "teacher_weights_path", "model", "minklocmm_image_fe",
                 "minklocmm_cloud_planes", "minklocmm_cloud_layers", "minklocmm_image_useallstages",
                 "student_model", "distil_method", "train_mode", "logit_mapping_fn", "milestones", "weights",
                 "normalize_embeddings", "crosslogitsimloss_divide"):
        g.add_argument(f"--{name}", type=str, help=_reference_help(name), **s)
    for prefix in _GEOMETRY_OPTIONS:
        g.add_argument(f"--{prefix}_type", type=str, help=_reference_help(f"{prefix}_type"), **s)
        g.add_argument(f"--{prefix}_logit_norm_fn", type=str, help=_reference_help(f"{prefix}_logit_norm_fn"), **s)
        g.add_argument(f"--{prefix}_weight_st2ss", type=str, help=_reference_help(f"{prefix}_weight_st2ss"), **s)
        g.add_argument(f"--{prefix}_weight_tt2st", type=str, help=_reference_help(f"{prefix}_weight_tt2st"), **s)
    u = parser.add_argument_group("reference options accepted but unused by the reference code")
    for name in UNUSED_OPTIONS:
        u.add_argument(f"--{name}", type=str, default=None, help=argparse.SUPPRESS)


@dataclass
class ReferenceRun:
    """What a reference command line resolves to."""

    config: ExperimentConfig
    train_mode: str  # "train_teacher" | "train_student"
    teacher_weights_path: str | None
    tryid: int = 0
    notes: list[str] = field(default_factory=list)


def _bool(value: str, option: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ReferenceOptionError(f"--{option}: expected True or False, got {value!r}")


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split("_") if v != ""]


def resolve_reference_options(args: argparse.Namespace, profile: str = "paper",
                              faithful: bool = False) -> ReferenceRun:
    """Map parsed reference options onto an :class:`ExperimentConfig` (see the module docstring)."""
    a = vars(args)
    given = {k: v for k, v in a.items() if v is not None}
    notes: list[str] = [f"--{name}: accepted for compatibility; the reference code does not use it"
                        for name in UNUSED_OPTIONS if name in given]
    o: dict[str, Any] = dict(FAITHFUL_OVERRIDES) if faithful else {}

    train_mode = given.get("train_mode", "train_student")
    if train_mode not in ("train_teacher", "train_student"):
        raise ReferenceOptionError(f"--train_mode: expected train_teacher or train_student, got {train_mode!r}")
    if given.get("model", "minklocmmcat") != "minklocmmcat":
        raise ReferenceOptionError(f"--model: only 'minklocmmcat' is supported (as in the reference train.py), "
                                   f"got {given['model']!r}")
    dataset = given.get("dataset", "oxford")
    if dataset not in ("oxford", "oxfordadafusion", "boreas"):
        raise ReferenceOptionError(f"--dataset: expected oxford, oxfordadafusion or boreas, got {dataset!r}")
    o["data.layout"] = (Layout.BOREAS if dataset == Layout.BOREAS else Layout.OXFORD).value
    quant_option = "boreas_quantization_size" if dataset == Layout.BOREAS else "oxford_quantization_size"
    if quant_option in given:
        o["data.quantization_size"] = given[quant_option]
    elif dataset == Layout.BOREAS:
        o["data.quantization_size"] = 1.0
    for option, key in SIMPLE_OPTIONS.items():
        if option in given:
            o[key] = given[option]
    if "train_batch_split_size" in given and given["train_batch_split_size"] != given.get(
            "train_batch_size", given["train_batch_split_size"]):
        raise ReferenceOptionError("--train_batch_split_size must equal --train_batch_size (asserted by the reference)")
    if _bool(given.get("minklocmm_image_useallstages", "False"), "minklocmm_image_useallstages"):
        raise ReferenceOptionError("--minklocmm_image_useallstages True is not supported (the reference default, "
                                   "False, stops the ResNet after layer3)")
    if "normalize_embeddings" in given and _bool(given["normalize_embeddings"], "normalize_embeddings"):
        notes.append("--normalize_embeddings True: evaluation normalises anyway (cosine); the triplet loss stays "
                     "on raw embeddings in this workbook")

    weights = _floats(given.get("weights", "0.5_0.5_0"))
    if len(weights) != 3:
        raise ReferenceOptionError(f"--weights: expected three '_'-separated numbers, got {given['weights']!r}")
    o["train.teacher_loss_weights"] = tuple(weights)
    o["train.student_task_weight"] = weights[0] * float(given.get("task_logit_weight", 1.0))

    # --- distillation objective -------------------------------------------------------------------
    method = given.get("distil_method", "ours_rkdg")
    if method not in ("ours_rkdg", "ours", "rkdg", "nokd"):
        raise ReferenceOptionError(f"--distil_method: expected ours_rkdg, ours, rkdg or nokd, got {method!r}")
    mapping = given.get("logit_mapping_fn", "identity")
    if mapping not in ("identity", "topoincare", "id_topoin"):
        raise ReferenceOptionError(f"--logit_mapping_fn: expected identity, topoincare or id_topoin, got {mapping!r}")
    n_mappings = 2 if mapping == "id_topoin" else 1
    terms: dict[str, float] = {}
    if method in ("ours_rkdg", "rkdg"):
        terms["rkdg"] = float(given.get("rkdgloss_weight", 0.0))
    cross_scale = float(given.get("distil_logit_weight", 1.0))
    types, norms = set(), set()
    for prefix, geometry in _GEOMETRY_OPTIONS.items():
        types.add(given.get(f"{prefix}_type", "MSE").lower())
        norms.add(given.get(f"{prefix}_logit_norm_fn", "l2"))
        for direction in ("st2ss", "tt2st"):
            raw = given.get(f"{prefix}_weight_{direction}", "0")
            values = _floats(raw)
            expected = 1 if geometry == "hyperbolic" else n_mappings
            if len(values) == 1 and expected == 2:
                values = values * 2
            if len(values) != expected:
                raise ReferenceOptionError(
                    f"--{prefix}_weight_{direction}: expected {expected} '_'-separated weight(s) for "
                    f"--logit_mapping_fn {mapping}, got {raw!r}")
            if method not in ("ours_rkdg", "ours"):
                continue
            names = [f"cross_{geometry}_{direction}"]
            if geometry != "hyperbolic":
                names = {"identity": names, "topoincare": [f"cross_{geometry}_poincare_{direction}"],
                         "id_topoin": [names[0], f"cross_{geometry}_poincare_{direction}"]}[mapping]
            for name, w in zip(names, values):
                terms[name] = cross_scale * w
    if len(types) > 1 or len(norms) > 1:
        raise ReferenceOptionError("the three cross-agent losses must share one --*_type and one --*_logit_norm_fn "
                                   f"in this workbook (got types {sorted(types)}, norms {sorted(norms)})")
    loss_type = types.pop()
    if loss_type not in ("mse", "l1"):
        raise ReferenceOptionError(f"--crosslogit*_type: expected MSE or L1, got {loss_type.upper()!r}")
    o["distill.cross_loss_type"] = loss_type
    o["distill.cross_norm_fn"] = norms.pop()
    if "crosslogitsimloss_divide" in given:
        o["distill.cross_sim_divide"] = _bool(given["crosslogitsimloss_divide"], "crosslogitsimloss_divide")
    o["distill.method"] = "nokd"  # the terms below are the whole objective, as in the reference
    o["distill.terms"] = {k: v for k, v in terms.items() if v != 0.0}

    cfg = apply_overrides(profile_config(profile), o)
    if cfg.model.student_dim != cfg.model.cloud_dim + cfg.model.image_dim:
        notes.append(f"--student_output_dim {cfg.model.student_dim} differs from the teacher dimension "
                     f"{cfg.model.cloud_dim + cfg.model.image_dim}; set it to match (the cross-agent losses need it)")
    teacher_path = given.get("teacher_weights_path")
    if teacher_path in ("None", ""):
        teacher_path = None
    return ReferenceRun(cfg, train_mode, teacher_path, int(given.get("tryid", 0)), notes)


def experiment_name(run: ReferenceRun) -> str:
    """The reference's experiment name (docs/METHOD.md §9.2) for this configuration."""
    c = run.config
    planes = "_".join(map(str, c.model.cloud_planes))
    layers = "_".join(map(str, c.model.cloud_layers))
    dataset = (Layout.BOREAS if c.data.layout == Layout.BOREAS else Layout.OXFORD).value
    name = (f"{run.tryid}{dataset}__T-minklocmmcat__{c.model.image_backbone}__img{c.model.image_dim}"
            f"__pc{c.model.cloud_dim}__{planes}__{layers}__{c.model.cloud_topdown}__allstgF")
    if run.train_mode == "train_teacher":
        return f"{name}__b{c.train.batch_size}__trainteacher"
    name += f"__S-{c.model.student_backbone}__{c.model.student_dim}__b{c.train.batch_size}"
    t = c.distill.terms
    if not t:
        return name + "__nokd"
    parts = []
    if "rkdg" in t:
        parts.append(f"+rkdg__w{t['rkdg']}")
    for key, short in (("cross_euclidean_st2ss", "crodist"), ("cross_spherical_st2ss", "crosim"),
                       ("cross_hyperbolic_st2ss", "crogdist")):
        if key in t:
            parts.append(f"+{short}_st2ss{t[key]}")
    return name + "__" + "__".join(parts)
