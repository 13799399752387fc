"""Configuration: dataclasses and the named profiles (``smoke``, ``cpu``, ``paper``).

This module is the **one source of defaults** of the workbook. Every other module
takes a config object (or plain arguments filled from one); notebooks pass flat
papermill parameters through :func:`apply_overrides`.

Profiles
--------
``smoke``  seconds; used by the tests.
``cpu``    the default demo: meaningful results on 2 CPU cores in tens of minutes.
``study``  the distillation study: >= 3,000 training tuples at 60x80, a visual prior, converged runs of
           <= 10 min each on 2 CPU cores (README "Study").
``paper``  the reference settings of DistilVPR (240x320 images, batch 128, 60 epochs, Adam lrs 1e-4 image /
           1e-3 cloud, MultiStepLR at 40), ImageNet ResNet weights from the torch hub cache file
           (``model.pretrained_image_weights="hub"``, never downloaded), mixed precision on GPUs,
           8 persistent DataLoader workers per process.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilvpr_lib.paths import project_path

# ---------------------------------------------------------------------------
# Dataset layouts
# ---------------------------------------------------------------------------
class Layout(str, enum.Enum):
    """The on-disk dataset layouts (a ``str`` enum: ``Layout.BOREAS == "boreas"``; configs store the value)."""

    OXFORD = "oxford"
    BOREAS = "boreas"


#: Every layout name, in order (command-line choices, error messages).
LAYOUTS: tuple[str, ...] = tuple(layout.value for layout in Layout)
#: ``layout=`` value that detects the layout from the folder's files.
AUTO_LAYOUT: str = "auto"


# ---------------------------------------------------------------------------
# Oxford benchmark constants (PointNetVLAD rules, docs/METHOD.md §2.3)
# ---------------------------------------------------------------------------
#: Centres (northing, easting) of the four Oxford test squares P1..P4.
OXFORD_TEST_SQUARE_CENTRES: tuple[tuple[float, float], ...] = (
    (5735712.768124, 620084.402381),
    (5735611.299219, 620540.270327),
    (5735237.358209, 620543.094379),
    (5734749.303802, 619932.693364),
)
#: Half-width in metres of each test square.
OXFORD_TEST_SQUARE_HALF_WIDTH_M: float = 150.0
POSITIVE_RADIUS_M: float = 10.0
NON_NEGATIVE_RADIUS_M: float = 50.0
TRUE_NEIGHBOUR_RADIUS_M: float = 25.0
POINTS_PER_CLOUD: int = 4096
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    """Where the benchmark lies and how samples are read and augmented."""

    dataset_dir: str = "data/cpu"
    #: Folder of images (+ ``lidar2image_ndx.pickle`` for Oxford); ``None`` = ``<dataset_dir>/images``.
    image_dir: str | None = None
    layout: str = Layout.OXFORD.value  # a Layout value: "oxford" | "boreas"
    #: Voxel size used to quantise clouds (normalised units for Oxford, metres for Boreas).
    quantization_size: float = 0.01
    #: Number of nearest images to draw from during training (1 = nearest only, as DistilVPR).
    image_lidar_k: int = 1
    augment_clouds: bool = True
    augment_images: bool = True
    #: ColorJitter strength for brightness/contrast/saturation and for hue.
    bcs_aug_rate: float = 0.2
    hue_aug_rate: float = 0.1
    num_workers: int = 0
    #: Keep DataLoader worker processes alive across epochs (only with ``num_workers > 0``). Faster
    #: epochs, but the workers' random streams then span epochs, so a resumed run is no longer
    #: bit-identical to an uninterrupted one.
    persistent_workers: bool = False
    #: Hold-out validation fraction of the training region (by position, see data.splits).
    validation_fraction: float = 0.15
    #: Student training reads its images from a decoded uint8 cache and augments them in batches
    #: (data.image_cache; single process only) instead of decoding PNGs per sample in a DataLoader.
    image_cache: bool = False
    #: Folder of the image cache; ``None`` = ``<dataset_dir>/.cache``.
    image_cache_dir: str | None = None


@dataclass
class ModelConfig:
    """Teacher (MinkLoc++ ``minklocmmcat``) and student (ResNet + GeM) architecture."""

    sparse_backend: str = "torch"  # "torch" | "minkowski"
    cloud_planes: tuple[int, ...] = (32, 64, 64)
    cloud_layers: tuple[int, ...] = (1, 1, 1)
    cloud_topdown: int = 1
    cloud_conv0_kernel_size: int = 5
    cloud_dim: int = 128
    image_dim: int = 256
    image_backbone: str = "resnet18"
    student_backbone: str = "resnet18"
    student_dim: int = 384
    gem_p: float = 3.0
    #: Local file with ImageNet ResNet weights (never downloaded); ``None`` = train from scratch.
    pretrained_image_weights: str | None = None


@dataclass
class TrainConfig:
    """Optimisation settings shared by teacher and student training."""

    epochs: int = 60
    batch_size: int = 128
    image_lr: float = 1e-4
    cloud_lr: float = 1e-3
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (40,)
    gamma: float = 0.1
    margin: float = 0.2
    #: Triplet weights on (fused embedding, cloud embedding, image embedding) of the teacher.
    teacher_loss_weights: tuple[float, float, float] = (0.5, 0.5, 0.0)
    #: Factor on the student triplet loss (the reference's x0.5, docs/METHOD.md §8.7).
    student_task_weight: float = 0.5
    #: Student task loss on L2-normalised embeddings (the margin then acts on the unit sphere, where
    #: evaluation ranks) instead of the raw ones (reference). Tests the norm-collapse lead of the study.
    task_normalize: bool = False
    #: Ring loss on the student embedding, ``ring_weight · mean_i (‖s_i‖ − ring_radius)²`` (Zheng et al., CVPR
    #: 2018; distilvpr_lib.losses.ring): holds the embedding's scale without a teacher. 0 = off. The study's
    #: control for the scale that distillation terms hold (README, "Study").
    ring_weight: float = 0.0
    ring_radius: float = 1.0
    #: Log, per epoch, the norm of each loss term's gradient on the student embedding (cheap: the
    #: gradient stops at the embedding) and the share of hyperbolic relation entries at the artanh clamp.
    loss_diagnostics: bool = True
    seed: int = 7
    deterministic: bool = False
    #: "auto" = CUDA when available, else CPU; or an explicit torch device string.
    device: str = "auto"
    eval_batch_size: int = 64
    #: Evaluate on validation every N epochs (and always at the last one).
    eval_every: int = 1
    #: Teacher embedding cache from clean (un-augmented) inputs; ``False`` = the reference's one augmented view.
    clean_teacher_cache: bool = True
    #: Evaluate with cosine on L2-normalised embeddings (reference) or Euclidean on raw ones.
    eval_normalize: bool = True
    mixed_precision: bool = False
    #: Autocast dtype when ``mixed_precision`` is on: "float16" (CUDA only, with a GradScaler),
    #: "bfloat16" (CUDA or CPU, no scaler), or "auto" = bfloat16 on the CPU and where the GPU supports it.
    amp_dtype: str = "float16"
    #: Channels-last memory format for the image branch on CUDA (on the CPU only with ``channels_last_cpu``).
    channels_last: bool = True
    #: Channels-last on the CPU too (oneDNN NHWC convolutions; training, validation and test of the run). Faster,
    #: but the sums round differently from the NCHW path, so it is a setting of the run (in its fingerprint).
    channels_last_cpu: bool = False
    #: Embed the validation and test splits under the training autocast (``mixed_precision``, ``amp_dtype``;
    #: bfloat16 on the CPU) instead of float32: cheaper, but the recalls that select the epoch move within bf16
    #: rounding (engine.runs.run_evaluation.evaluation_kernels).
    eval_mixed_precision: bool = False
    #: torch's fused Adam kernel instead of the multi-tensor (foreach) one; faster on the CPU, but its rounding
    #: differs from the foreach / per-parameter Adam in the last bits (engine.train.optim.build_optimizer).
    fused_adam: bool = False
    #: Distributed runs (torchrun): batch-norm statistics over the global batch, as single-process
    #: training (``False`` = per-rank statistics, plain DDP practice, slightly faster).
    sync_batchnorm: bool = True
    #: torch.distributed backend under torchrun: "auto" (nccl on CUDA, gloo on CPU), "gloo", "nccl".
    distributed_backend: str = "auto"
    #: Collective timeout in seconds (rank 0 validates and tests while the other ranks wait).
    distributed_timeout_s: int = 1800
    #: Use a held-out validation split for model selection (``False`` = the reference: none).
    use_validation_split: bool = True


@dataclass
class DistillConfig:
    """The distillation objective: a preset name plus per-term weights (see losses.registry)."""

    method: str = "distilvpr"
    #: Which teacher descriptor the student is distilled from: ``"embedding"`` (the fused one, as the paper),
    #: ``"cloud_embedding"`` or ``"image_embedding"`` (one head; its own cache file). Terms that compare
    #: student and teacher descriptors directly (cross-agent, KD, ...) need the head's dimension to equal
    #: ``model.student_dim``; the self-relational ones (RKD-G, RKD) do not.
    teacher_head: str = "embedding"
    #: Explicit term weights; override the preset's (``{"rkdg": 10.0, ...}``).
    terms: dict[str, float] = field(default_factory=dict)
    #: The distillation terms act in epochs 1..until_epoch only; later epochs train on the task term alone
    #: (distillation as a warm start). 0 = every epoch (the paper).
    until_epoch: int = 0
    #: The distillation terms start at this epoch (1-based); earlier epochs train on the task term alone
    #: (distillation as a late fine-tuning stage). 1 = from the start (the paper).
    from_epoch: int = 1
    curvature: float = 0.1
    #: Internal weights of the self-agent RKD-G term (distance, angle, geodesic).
    rkdg_distance_weight: float = 1.0
    rkdg_angle_weight: float = 1.0
    rkdg_geodesic_weight: float = 1.0
    cross_loss_type: str = "mse"  # "mse" | "l1"
    cross_norm_fn: str = "l2"  # "l2" | "softmax" | "log_softmax" | "identity"
    logit_mapping: str = "identity"  # "identity" | "topoincare" | "id_topoin"
    #: Cosine relations divide by the norms (``--crosslogitsimloss_divide``); False = raw dot products.
    cross_sim_divide: bool = True
    #: artanh backward: "straight_through" (reference, g/(1-z^2) at the clamped z) | "exact".
    artanh_backward: str = "straight_through"
    #: RKD angle computation: "gram" (O(B^2 D + B^3), default) | "broadcast" (reference's O(B^3 D)).
    angle_method: str = "gram"
    # --- baselines (docs/METHOD.md §4.6) ---
    kd_temperature: float = 1.0
    pkt_eps: float = 1e-7
    cc_gamma: float = 0.4
    cc_order: int = 2
    csd_use_kd: bool = False
    #: AFD: reproduce the reference's (s_i, t_j) vs (t_i, s_j) index mismatch.
    afd_faithful_index_mismatch: bool = False
    epcnet_loss_type: str = "mse"  # "mse" | "l1" | "smoothl1" | "kldiv"
    epcnet_norm_fn: str = "l2"
    lsdnet_loss_type: str = "mse"  # "mse" | "l1" | "smoothl1"


@dataclass
class SynthConfig:
    """Procedural generator sizes (see data.synth)."""

    n_runs: int = 6
    #: Route length in metres (a loop through the street grid).
    route_length_m: float = 1200.0
    image_height: int = 120
    image_width: int = 160
    lidar_beams: int = 32
    lidar_azimuth_steps: int = 360
    #: Poses fired along each 20 m submap window.
    lidar_poses_per_submap: int = 4
    #: Runs in the evaluation sets (evenly spread over the sorted runs); ``None`` = all runs.
    n_eval_runs: int | None = None
    #: Seed of the world, the runs' conditions and every sensor draw (same seed -> same bytes).
    seed: int = 0
    #: Nearest images listed (and rendered) per LiDAR timestamp in ``lidar2image_ndx.pickle``.
    images_per_submap: int = 3
    camera_hfov_deg: float = 66.0
    #: Cast sun shadows in the camera images.
    camera_shadows: bool = True
    #: LiDAR beam elevations (degrees) and range (m); tuned so the submaps match the real Oxford
    #: statistics (``data.synth.stats.realism_table``).
    lidar_min_elevation_deg: float = -25.0
    lidar_max_elevation_deg: float = 35.0
    lidar_max_range_m: float = 60.0
    #: Half extents (forward, lateral) of the submap crop box around the window centre (m).
    submap_crop_m: tuple[float, float] = (25.0, 18.0)
    #: Points higher than this above the ground are dropped (m).
    submap_max_height_m: float = 30.0
    #: Voxel size of the downsampling before sampling 4096 points (m; shrunk for sparse windows).
    submap_voxel_m: float = 0.3
    #: Share of the route inside the PointNetVLAD test squares.
    test_fraction: float = 0.35
    #: Worker processes rendering in parallel (1 = in-process).
    workers: int = 2


@dataclass
class PriorConfig:
    """The visual prior: an image backbone pretrained on a separately seeded generated world.

    It stands in for the ImageNet initialisation of the paper where no ImageNet file is at hand
    (``distilvpr pretrain-image``). The prior world is generated with the profile's ``synth`` settings
    except ``seed``, ``n_runs`` and ``route_length_m`` below, and trained as a no-distillation student.
    """

    #: World seed of the prior world; must differ from ``synth.seed`` (checked: no shared place).
    seed: int = 1000
    n_runs: int = 6
    route_length_m: float = 4000.0
    epochs: int = 12
    milestones: tuple[int, ...] = (9,)
    #: File name of the exported backbone inside the prior folder.
    weights_file: str = "image_prior.pth"


@dataclass
class ExperimentConfig:
    """Everything one run needs; written next to its results as ``config.json``."""

    profile: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        cfg = cls()
        for section in ("data", "model", "train", "distill", "synth", "prior"):
            if section in d:
                _update_dataclass(getattr(cfg, section), d[section], section)
        if "profile" in d:
            cfg.profile = d["profile"]
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------
# Profiles: only what differs from the dataclass defaults (the reference values)
# ---------------------------------------------------------------------------
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "data": {"dataset_dir": "data/smoke", "num_workers": 0},
        "model": {"cloud_planes": (8, 16, 16), "cloud_dim": 32, "image_dim": 64, "student_dim": 96},
        "train": {"epochs": 2, "batch_size": 16, "milestones": (1,), "eval_batch_size": 32},
        "synth": {
            "n_runs": 3,
            "route_length_m": 300.0,
            "image_height": 48,
            "image_width": 64,
            "lidar_beams": 16,
            "lidar_azimuth_steps": 180,
            "lidar_poses_per_submap": 2,
            "images_per_submap": 1,
            "workers": 1,
        },
        "prior": {"seed": 1000, "n_runs": 3, "route_length_m": 300.0, "epochs": 1, "milestones": (1,)},
    },
    "cpu": {
        "data": {"dataset_dir": "data/cpu"},
        "model": {},
        "train": {"epochs": 12, "batch_size": 32, "image_lr": 3e-4, "cloud_lr": 1e-3, "milestones": (9,)},
        "synth": {
            "n_runs": 8,
            "route_length_m": 1600.0,
            "image_height": 96,
            "image_width": 128,
            "lidar_beams": 32,
            "lidar_azimuth_steps": 360,
            "lidar_poses_per_submap": 4,
            "images_per_submap": 2,
        },
    },
    # The study of the distillation effect (README "Study"): ≥ 3,000 training tuples, 60x80 images, a visual
    # prior for both image networks, a teacher trained with losses on all three heads, bfloat16 autocast on
    # the CPU; sized so that one converged student run takes ≤ 10 min on 2 cores.
    "study": {
        # 0.02 (not 0.01) voxels: the sparse branch costs 3.1x less on 2 cores (measured, README "Study")
        "data": {"dataset_dir": "data/study", "image_cache": True, "quantization_size": 0.02},
        "model": {"pretrained_image_weights": "teacher_weights/study-prior/image_prior.pth"},
        # 16 student epochs, LR step after 12: two runs side by side, one core each (scripts/study.sh), take
        # ≈ 15 min a pair here (README "Study"). At 6 epochs every student still selected its last epoch
        # (ablations/study_short.yaml).
        "train": {"epochs": 16, "batch_size": 32, "image_lr": 3e-4, "cloud_lr": 1e-3, "milestones": (12,),
                  "teacher_loss_weights": (1.0, 0.5, 0.5), "mixed_precision": True, "amp_dtype": "bfloat16"},
        "synth": {
            "n_runs": 12,
            "route_length_m": 8000.0,
            "image_height": 60,
            "image_width": 80,
            "lidar_beams": 32,
            "lidar_azimuth_steps": 360,
            "lidar_poses_per_submap": 4,
            "images_per_submap": 2,
        },
        "prior": {"seed": 1000, "n_runs": 8, "route_length_m": 6000.0, "epochs": 15, "milestones": (12,)},
    },
    "paper": {
        "data": {"dataset_dir": "data/paper", "num_workers": 8, "persistent_workers": True},
        "model": {"pretrained_image_weights": "hub"},
        "train": {"epochs": 60, "batch_size": 128, "image_lr": 1e-4, "cloud_lr": 1e-3, "milestones": (40,),
                  "gamma": 0.1, "weight_decay": 1e-4, "eval_batch_size": 160, "mixed_precision": True,
                  "amp_dtype": "auto", "channels_last": True},
        "synth": {
            "n_runs": 44,
            "route_length_m": 10000.0,
            "image_height": 240,
            "image_width": 320,
            "lidar_beams": 32,
            "lidar_azimuth_steps": 720,
            "lidar_poses_per_submap": 6,
            "images_per_submap": 2,
            "n_eval_runs": 23,
        },
    },
}


def profile_config(profile: str = "cpu") -> ExperimentConfig:
    """Return a fresh :class:`ExperimentConfig` for a named profile.

    Raises:
        KeyError: unknown profile (the message lists the known ones).
    """
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; known profiles: {sorted(PROFILES)}")
    cfg = ExperimentConfig(profile=profile)
    for section, values in PROFILES[profile].items():
        _update_dataclass(getattr(cfg, section), copy.deepcopy(values), section)
    return cfg


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """Apply flat ``section.field`` (or unique bare ``field``) overrides, e.g. from papermill.

    ``{"train.epochs": 3, "curvature": 0.01}`` sets ``cfg.train.epochs`` and
    ``cfg.distill.curvature``. Unknown or ambiguous names raise ``KeyError``.
    Values are coerced to the type of the default (tuples from lists or ``_``-strings).
    """
    cfg = copy.deepcopy(cfg)
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}
    for key, value in overrides.items():
        if value is None and "." not in key:
            continue
        if "." in key:
            section_name, name = key.split(".", 1)
            if section_name not in sections:
                raise KeyError(f"unknown config section {section_name!r} in {key!r}; known: {sorted(sections)}")
            targets = [section_name]
        else:
            name = key
            targets = [s for s, obj in sections.items() if name in {f.name for f in dataclasses.fields(obj)}]
            if len(targets) != 1:
                known = sorted(f"{s}.{f.name}" for s, o in sections.items() for f in dataclasses.fields(o))
                what = "ambiguous" if targets else "unknown"
                raise KeyError(f"{what} config field {key!r}; use one of: {known}")
        _update_dataclass(sections[targets[0]], {name: value}, targets[0])
    return cfg


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(value, os.PathLike):  # a resolved path parameter (distilvpr_lib.paths.project_path)
        value = os.fspath(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            parts = [p for p in value.replace(",", "_").split("_") if p]
            elem_type = type(default[0]) if default else float
            return tuple(elem_type(p) for p in parts)
        return tuple(value)
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in {"true", "1", "yes"}:
                return True
            if value.lower() in {"false", "0", "no"}:
                return False
            raise ValueError(f"{where}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(default, float) and isinstance(value, (int, float, str)):
        return float(value)
    if isinstance(default, int) and isinstance(value, (int, str)) and not isinstance(value, bool):
        return int(value)
    return value


def _update_dataclass(obj: Any, values: dict[str, Any], section: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        if name not in names:
            raise KeyError(f"unknown field {name!r} in config section {section!r}; known: {sorted(names)}")
        setattr(obj, name, _coerce(value, getattr(obj, name), f"{section}.{name}"))


#: Config fields holding paths to files or folders: :func:`notebook_config` resolves them against the
#: project root (:func:`distilvpr_lib.paths.project_path`).
PATH_FIELDS: tuple[str, ...] = ("data.dataset_dir", "data.image_dir", "data.image_cache_dir",
                                 "model.pretrained_image_weights")
#: Value of ``ModelConfig.pretrained_image_weights`` meaning "the torch hub cache file" (not a path).
HUB_WEIGHTS: str = "hub"


def notebook_config(profile: str, settings: Mapping[str, Any] | None = None,
                    overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The config a notebook runs with: the profile's values, then its parameters, then free overrides.

    Args:
        profile: a profile name (``smoke`` / ``cpu`` / ``paper`` ...).
        settings: flat ``section.field`` names -> notebook parameters; a ``None`` value keeps the
            profile's value, so a notebook's parameter cell holds no second copy of a default.
        overrides: further flat overrides applied as given (``None`` values included), e.g. the
            ``overrides`` parameter of notebooks 02 and 03.

    Returns:
        The config with :data:`PATH_FIELDS` resolved against the project root (absolute paths), so the
        notebook runs the same from ``notebooks/`` (JupyterLab) and from the project root (papermill).
    """
    cfg = apply_overrides(profile_config(profile), {k: v for k, v in (settings or {}).items() if v is not None})
    cfg = apply_overrides(cfg, dict(overrides or {}))
    for name in PATH_FIELDS:
        section, field_name = name.split(".")
        value = getattr(getattr(cfg, section), field_name)
        if value is not None and value != HUB_WEIGHTS:
            setattr(getattr(cfg, section), field_name, str(project_path(value)))
    return cfg
