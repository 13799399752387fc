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
import functools
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilvpr_lib.errors import DataFormatError, OptionError
from distilvpr_lib.paths import project_path

# ---------------------------------------------------------------------------
# Dataset layouts
# ---------------------------------------------------------------------------
class Layout(str, enum.Enum):
    """The on-disk dataset layouts (a ``str`` enum: ``Layout.BOREAS == "boreas"``; configs store the value)."""

    OXFORD = "oxford"
    BOREAS = "boreas"


#: Default folder of the training-image cache inside a dataset folder (``data.image_cache_dir`` unset).
IMAGE_CACHE_FOLDER: str = ".cache"

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
    #: Folder of the image cache; ``None`` = ``$DISTILVPR_CACHE_DIR/<dataset>-<hash>`` when that variable is set,
    #: else ``<dataset_dir>/.cache`` when the dataset folder is writable, else the run folder's ``image_cache/``
    #: (``engine.runs.preflight.resolve_image_cache_dir``).
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
    #: Channels-last memory format for the image branch on CUDA (ignored on CPU).
    channels_last: bool = True
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
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> "ExperimentConfig":
        """A config from a dict of sections (as :meth:`to_dict` writes), every value type-checked.

        Args:
            strict: a saved config (``config.json``): it must be a mapping holding at least the sections
                :data:`REQUIRED_SECTIONS` (an empty ``{}`` is refused, never read as the defaults), each a
                mapping, and a ``null`` is accepted only for fields that may be ``None``.

        Raises:
            ConfigValueError: (a ValueError) a section that is not a mapping, a missing section (``strict``),
                a value of the wrong type; the message names the field (``model.cloud_dim``).
            KeyError: an unknown section field.
        """
        if not isinstance(d, Mapping):
            raise ConfigValueError(f"expected a JSON object of config sections, got {type(d).__name__}")
        if strict:
            missing = [name for name in REQUIRED_SECTIONS if name not in d]
            if missing:
                what = "empty" if not d else f"missing the section(s) {', '.join(missing)}"
                raise ConfigValueError(f"{what}: a run's config.json holds every section "
                                       f"({', '.join(SECTIONS)}) as written by the workbench")
        cfg = cls()
        for section in SECTIONS:
            if section in d:
                _update_dataclass(getattr(cfg, section), d[section], section, strict=strict)
        if "profile" in d:
            if not isinstance(d["profile"], str):
                raise ConfigValueError(f"profile: expected a string, got {d['profile']!r}")
            cfg.profile = d["profile"]
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        """Read a ``config.json`` written by the workbench (strict: see :meth:`from_dict`).

        Raises:
            DataFormatError: unreadable JSON, an empty config, a missing section, a wrong-typed or unknown
                field; the message names the file and the field.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise DataFormatError(f"unreadable JSON ({exc})", path=path,
                                  hint="restore it from the run, or re-create the folder") from exc
        try:
            return cls.from_dict(data, strict=True)
        except KeyError as exc:
            raise DataFormatError(f"not a workbench configuration: {exc.args[0] if exc.args else exc}", path=path,
                                  hint="restore it from the run, or re-create the folder") from exc
        except ValueError as exc:
            raise DataFormatError(f"not a workbench configuration: {exc}", path=path,
                                  hint="restore it from the run, or re-create the folder") from exc


#: The config sections (fields of :class:`ExperimentConfig` holding a dataclass), in order.
SECTIONS: tuple[str, ...] = ("data", "model", "train", "distill", "synth", "prior")
#: Sections a saved ``config.json`` must hold (:meth:`ExperimentConfig.load`); the others default.
REQUIRED_SECTIONS: tuple[str, ...] = ("data", "model", "train")


class ConfigValueError(OptionError):
    """A config value of the wrong type or out of range; the message names the field (``train.epochs``).

    An :class:`~distilvpr_lib.errors.OptionError` (exit status 2, also a ``ValueError``) when it comes from
    options or notebook parameters; :meth:`ExperimentConfig.load` turns it into a ``DataFormatError``
    naming the ``config.json``.
    """


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


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotations of a config dataclass (``int``, ``str | None``, ``tuple[int, ...]``...)."""
    return typing.get_type_hints(cls)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce_to(value: Any, hint: Any, where: str, current: Any) -> Any:
    """``value`` as the type ``hint`` of field ``where``, or :class:`ConfigValueError` naming the field.

    Accepted conversions: an integral float (``32.0``) or a decimal string for an ``int``; an int or a
    number string for a ``float``; ``true/false/1/0/yes/no`` strings for a ``bool``; lists, and ``_``- or
    ``,``-separated strings, for tuples; ``None`` only where the field may be ``None``.
    """
    if isinstance(value, os.PathLike):  # a resolved path parameter (distilvpr_lib.paths.project_path)
        value = os.fspath(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce_to(value, options[0], where, current)
        return value
    if value is None:
        raise ConfigValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got None")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", "0", "no"}:
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigValueError(f"{where}: expected a boolean (true/false), got {_describe(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigValueError(f"{where}: expected an integer, got {_describe(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
        raise ConfigValueError(f"{where}: expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigValueError(f"{where}: expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigValueError(f"{where}: expected a string, got {_describe(value)}")
    if origin is tuple:
        if isinstance(value, str):
            value = [p for p in value.replace(",", "_").split("_") if p.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigValueError(f"{where}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            element_types = [args[0]] * len(value)
        else:
            element_types = list(args)
            if len(value) != len(element_types):
                raise ConfigValueError(f"{where}: expected {len(element_types)} values, got {len(value)} "
                                       f"({list(value)!r})")
        return tuple(_coerce_to(v, t, f"{where}[{i}]", None) for i, (v, t) in enumerate(zip(value, element_types)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigValueError(f"{where}: expected a mapping of names to values, got {_describe(value)}")
        key_type, value_type = args if len(args) == 2 else (str, Any)
        return {_coerce_to(k, key_type, f"{where} key", None): _coerce_to(v, value_type, f"{where}[{k!r}]", None)
                for k, v in value.items()}
    return value


def _update_dataclass(obj: Any, values: Any, section: str, strict: bool = False) -> None:
    """Set the fields ``values`` of one section, each coerced to its annotated type.

    ``None`` for a field that may not be ``None`` keeps its value, except with ``strict`` (a saved config),
    where it is an error.

    Raises:
        ConfigValueError: ``values`` is not a mapping, or a value of the wrong type (the field named).
        KeyError: an unknown field.
    """
    if not isinstance(values, Mapping):
        raise ConfigValueError(f"{section}: expected a section (a mapping of field names to values), "
                               f"got {_describe(values)}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    hints = _field_types(type(obj))
    for name, value in values.items():
        if name not in names:
            raise KeyError(f"unknown field {name!r} in config section {section!r}; known: {sorted(names)}")
        hint = hints[name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
        if value is None and not optional and not strict:
            continue
        setattr(obj, name, _coerce_to(value, hint, f"{section}.{name}", getattr(obj, name)))


# ---------------------------------------------------------------------------
# Value ranges: checked before a run writes anything (engine.runs.preflight)
# ---------------------------------------------------------------------------
#: ``section.field`` -> (smallest allowed value, inclusive?) for numeric fields that have a lower bound.
LOWER_BOUNDS: dict[str, tuple[float, bool]] = {
    "train.epochs": (1, True),
    "train.batch_size": (2, True),
    "train.eval_batch_size": (1, True),
    "train.eval_every": (1, True),
    "train.image_lr": (0, False),
    "train.cloud_lr": (0, False),
    "train.weight_decay": (0, True),
    "train.gamma": (0, False),
    "train.margin": (0, True),
    "train.distributed_timeout_s": (1, True),
    "data.quantization_size": (0, False),
    "data.image_lidar_k": (1, True),
    "data.num_workers": (0, True),
    "data.bcs_aug_rate": (0, True),
    "data.hue_aug_rate": (0, True),
    "model.cloud_dim": (1, True),
    "model.image_dim": (1, True),
    "model.student_dim": (1, True),
    "model.cloud_topdown": (0, True),
    "model.cloud_conv0_kernel_size": (1, True),
    "model.gem_p": (0, False),
    "distill.curvature": (0, False),
    "distill.until_epoch": (0, True),
    "distill.from_epoch": (1, True),
}
#: ``section.field`` -> the allowed values of fields with a closed set of choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.layout": (AUTO_LAYOUT, *LAYOUTS),
    "model.sparse_backend": ("torch", "minkowski"),
    "train.amp_dtype": ("float16", "bfloat16", "auto"),
    "train.distributed_backend": ("auto", "gloo", "nccl"),
}
#: Tuple fields whose every element must be >= 1.
POSITIVE_TUPLES: tuple[str, ...] = ("model.cloud_planes", "model.cloud_layers")
#: How to set a field on the command line, where an option exists for it.
_OPTION_OF: dict[str, str] = {"train.epochs": "--epochs", "train.seed": "--seed", "train.device": "--device"}


def _value_problem(dotted: str, value: Any) -> str | None:
    if dotted in LOWER_BOUNDS:
        low, inclusive = LOWER_BOUNDS[dotted]
        if not (value >= low if inclusive else value > low):
            return f"must be {'>=' if inclusive else '>'} {low:g}, got {value!r}"
    if dotted in CHOICES and value not in CHOICES[dotted]:
        return f"must be one of {', '.join(CHOICES[dotted])}, got {value!r}"
    if dotted in POSITIVE_TUPLES and (not value or any(v < 1 for v in value)):
        return f"must be a non-empty list of values >= 1, got {list(value)!r}"
    return None


def check_device_name(name: str, where: str = "train.device") -> None:
    """``auto``, ``cpu``, ``cuda`` / ``cuda:N`` (CUDA present, N a visible device) or ``mps``.

    torch is imported only for a CUDA or MPS name (checking it needs the runtime).

    Raises:
        ConfigValueError: an unknown device name, or a CUDA / MPS device this machine does not have.
    """
    option = _OPTION_OF.get(where)
    how = f" ({option} or --set {where}=...)" if option else ""
    if not isinstance(name, str):
        raise ConfigValueError(f"{where}: expected a device name, got {_describe(name)}")
    if name in {"auto", "cpu"}:
        return
    kind, _, index = name.partition(":")
    if kind not in {"cuda", "mps"} or (index and not index.isdigit()) or (kind == "mps" and index):
        raise ConfigValueError(f"{where}: unknown device {name!r}; use auto, cpu, cuda or cuda:N{how}")
    import torch

    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigValueError(f"{where}={name!r}: MPS is not available on this machine; use cpu or auto{how}")
        return
    if not torch.cuda.is_available():
        raise ConfigValueError(f"{where}={name!r}: CUDA is not available on this machine (no GPU, or a torch "
                               f"built without CUDA); use cpu or auto{how}")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigValueError(f"{where}={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                               f"(cuda:0..cuda:{torch.cuda.device_count() - 1}){how}")


def check_config_values(cfg: ExperimentConfig, check_device: bool = True) -> None:
    """Range- and choice-check a resolved config before a run writes anything.

    Checks :data:`LOWER_BOUNDS` (epochs >= 1, batch size >= 2 — a batch needs a positive pair —, learning
    rates > 0, ...), :data:`CHOICES`, :data:`POSITIVE_TUPLES`, ``train.milestones`` >= 1,
    ``data.validation_fraction`` in [0, 1), and with ``check_device`` the device (:func:`check_device_name`).

    Raises:
        ConfigValueError: (exit status 2) the first bad value, naming the field (and its option).
    """
    for section in SECTIONS:
        if section in ("synth", "prior"):
            continue
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            dotted = f"{section}.{f.name}"
            problem = _value_problem(dotted, getattr(obj, f.name))
            if problem:
                option = _OPTION_OF.get(dotted)
                how = f" ({option} N or --set {dotted}=N)" if option else f" (--set {dotted}=...)"
                raise ConfigValueError(f"{dotted}: {problem}{how}")
    if any(m < 1 for m in cfg.train.milestones):
        raise ConfigValueError(f"train.milestones: epochs >= 1, got {list(cfg.train.milestones)!r}")
    if not 0.0 <= cfg.data.validation_fraction < 1.0:
        raise ConfigValueError(f"data.validation_fraction: must lie in [0, 1), got {cfg.data.validation_fraction!r}")
    if check_device:
        check_device_name(cfg.train.device)


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
