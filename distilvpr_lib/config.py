"""Configuration: dataclasses and the named profiles (``smoke``, ``cpu``, ``paper``).

This module is the **one source of defaults** of the workbook. Every other module
takes a config object (or plain arguments filled from one); notebooks pass flat
papermill parameters through :func:`apply_overrides`.

Profiles
--------
``smoke``  seconds; used by the tests.
``cpu``    the default demo: meaningful results on 2 CPU cores in tens of minutes.
``study``  the distillation study: >= 3,000 training tuples at 60x80, a visual prior, converged runs of
           <= 10 min each on 2 CPU cores (docs/study/LOG.md).
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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilvpr_lib.config_types import ConfigValueError, update_section
from distilvpr_lib.errors import DataFormatError, OptionError, UnknownNameError, UnknownProfileError
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

    #: Benchmark folder (relative paths: to the project root in notebooks).
    dataset_dir: str = "data/cpu"
    #: Folder of images (+ ``lidar2image_ndx.pickle`` for Oxford); ``None`` = ``<dataset_dir>/images``.
    image_dir: str | None = None
    layout: str = Layout.OXFORD.value  # a Layout value: "oxford" | "boreas"
    #: Voxel size used to quantise clouds (normalised units for Oxford, metres for Boreas).
    quantization_size: float = 0.01
    #: Number of nearest images to draw from during training (1 = nearest only, as DistilVPR).
    image_lidar_k: int = 1
    #: Training cloud augmentation (rotation, flip, jitter, point and block removal, translation; docs/METHOD.md §2.5).
    augment_clouds: bool = True
    #: Training image augmentation (ColorJitter, see bcs_aug_rate and hue_aug_rate).
    augment_images: bool = True
    #: ColorJitter strength for brightness, contrast and saturation.
    bcs_aug_rate: float = 0.2
    #: ColorJitter strength for hue.
    hue_aug_rate: float = 0.1
    #: DataLoader worker processes (0 = in the main process).
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
    #: (``engine.runs.cache_dirs.resolve_image_cache_dir``).
    image_cache_dir: str | None = None


@dataclass
class ModelConfig:
    """Teacher (MinkLoc++ ``minklocmmcat``) and student (ResNet + GeM) architecture."""

    sparse_backend: str = "torch"  # "torch" | "minkowski"
    #: Channels of the MinkFPN stages of the teacher's cloud branch.
    cloud_planes: tuple[int, ...] = (32, 64, 64)
    #: Residual blocks per MinkFPN stage.
    cloud_layers: tuple[int, ...] = (1, 1, 1)
    #: Top-down (FPN) stages of the cloud branch.
    cloud_topdown: int = 1
    #: Kernel size of the first sparse convolution.
    cloud_conv0_kernel_size: int = 5
    #: Dimension of the teacher's cloud embedding.
    cloud_dim: int = 128
    #: Dimension of the teacher's image embedding (fused = cloud_dim + image_dim).
    image_dim: int = 256
    #: ResNet of the teacher's image branch.
    image_backbone: str = "resnet18"
    #: ResNet of the image-only student (cut after layer3).
    student_backbone: str = "resnet18"
    #: Dimension of the student embedding (the teacher's fused dimension for cross-agent terms).
    student_dim: int = 384
    #: Initial exponent p of the GeM pooling layers.
    gem_p: float = 3.0
    #: Local file with ImageNet ResNet weights (never downloaded); ``None`` = train from scratch.
    pretrained_image_weights: str | None = None


@dataclass
class OptimisationConfig:
    """How the networks are optimised: epochs, batch, Adam's learning rates and decay, the LR schedule, the seed.

    A part of :class:`TrainConfig` (its fields are ``train.<field>`` keys).
    """
    #: Training epochs (the epoch is selected on validation).
    epochs: int = 60
    #: Training tuples per batch.
    batch_size: int = 128
    #: Adam learning rate of image networks.
    image_lr: float = 1e-4
    #: Adam learning rate of the sparse cloud branch.
    cloud_lr: float = 1e-3
    #: Adam weight decay.
    weight_decay: float = 1e-4
    #: Learning-rate schedule, stepped once per epoch: "step" (MultiStepLR: the rates times ``gamma`` after each
    #: of ``milestones``; the reference) or "cosine" (linear warm-up over ``warmup_epochs``, then cosine
    #: annealing that reaches 0 one epoch after the last of ``epochs``; needs ``milestones=[]``, ignores
    #: ``gamma``; a cosine run depends on ``epochs``, so it is resumed only with its own). docs/METHOD.md §5.1.
    lr_schedule: str = "step"
    #: Linear warm-up epochs of the "cosine" schedule: epoch e <= W trains at rate·e/(W+1). 0 = none.
    warmup_epochs: int = 0
    #: Epochs after which MultiStepLR multiplies the learning rates by gamma.
    milestones: tuple[int, ...] = (40,)
    #: MultiStepLR factor.
    gamma: float = 0.1
    #: Seed of initialisation, batch order and augmentation (same seed -> same run).
    seed: int = 7

@dataclass
class ObjectiveConfig:
    """What is optimised: the triplet margin and weights, the student's task term, the ring control, the teacher's
    cache targets, and the per-term diagnostics.

    A part of :class:`TrainConfig` (its fields are ``train.<field>`` keys).
    """
    #: Margin of the batch-hard triplet loss.
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
    #: control for the scale that distillation terms hold (docs/study/LOG.md).
    ring_weight: float = 0.0
    #: Target norm R of the ring loss.
    ring_radius: float = 1.0
    #: Teacher embedding cache from clean (un-augmented) inputs; ``False`` = the reference's one augmented view.
    clean_teacher_cache: bool = True
    #: Log, per epoch, the norm of each loss term's gradient on the student embedding (cheap: the
    #: gradient stops at the embedding) and the share of hyperbolic relation entries at the artanh clamp.
    loss_diagnostics: bool = True

@dataclass
class EvaluationConfig:
    """How the epoch is selected and the splits are embedded: the validation split, its cadence, the metric space.

    A part of :class:`TrainConfig` (its fields are ``train.<field>`` keys).
    """
    #: Use a held-out validation split for model selection (``False`` = the reference: none).
    use_validation_split: bool = True
    #: Evaluate on validation every N epochs (and always at the last one).
    eval_every: int = 1
    #: Batch size of embedding passes at evaluation.
    eval_batch_size: int = 64
    #: Evaluate with cosine on L2-normalised embeddings (reference) or Euclidean on raw ones.
    eval_normalize: bool = True
    #: Embed the validation and test splits under the training autocast (``mixed_precision``, ``amp_dtype``;
    #: bfloat16 on the CPU) instead of float32: cheaper, but the recalls that select the epoch move within bf16
    #: rounding (engine.runs.run_evaluation.evaluation_kernels).
    eval_mixed_precision: bool = False

@dataclass
class RuntimeConfig:
    """Where and how the computation runs: device, determinism, autocast, memory format, Adam's kernel, distributed
    options, checkpoints kept. (Of these, only the fields in ``engine.runs.run_folder.RUNTIME_FIELDS`` leave the
    run's fingerprint; ``mixed_precision``, ``channels_last_cpu`` and ``fused_adam`` change its floats.)

    A part of :class:`TrainConfig` (its fields are ``train.<field>`` keys).
    """
    #: "auto" = CUDA when available, else CPU; or an explicit torch device string.
    device: str = "auto"
    #: torch deterministic algorithms (slower; bit-identical reruns on GPUs).
    deterministic: bool = False
    #: Autocast the forward passes (see amp_dtype).
    mixed_precision: bool = False
    #: Autocast dtype when ``mixed_precision`` is on: "float16" (CUDA only, with a GradScaler),
    #: "bfloat16" (CUDA or CPU, no scaler), or "auto" = bfloat16 on the CPU and where the GPU supports it.
    amp_dtype: str = "float16"
    #: Channels-last memory format for the image branch on CUDA (on the CPU only with ``channels_last_cpu``).
    channels_last: bool = True
    #: Channels-last on the CPU too (oneDNN NHWC convolutions; training, validation and test of the run). Faster,
    #: but the sums round differently from the NCHW path, so it is a setting of the run (in its fingerprint).
    channels_last_cpu: bool = False
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
    #: Keep ``checkpoints/last.pt`` (the full training state) when a run completes, so that it can later be
    #: extended with more epochs; ``False`` removes it (and ``checkpoints/best.pt``, a copy of the weights file).
    keep_checkpoints: bool = False

@dataclass
class TrainConfig(RuntimeConfig, EvaluationConfig, ObjectiveConfig, OptimisationConfig):
    """Training settings shared by teacher and student: the ``train`` section, one flat set of ``train.<field>``
    keys (in profiles, ``--set``, grids and ``config.json``), declared in four parts by concern:
    :class:`OptimisationConfig`, :class:`ObjectiveConfig`, :class:`EvaluationConfig` and :class:`RuntimeConfig`.
    """


@dataclass
class DistillConfig:
    """The distillation objective: a preset name plus per-term weights (see losses.registry)."""

    #: Preset of term weights (distilvpr list presets); nokd = no distillation.
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
    #: Curvature c of the Poincare ball of the hyperbolic terms.
    curvature: float = 0.1
    #: Internal weights of the self-agent RKD-G term (distance, angle, geodesic).
    rkdg_distance_weight: float = 1.0
    #: Internal weight of the RKD-G angle relation.
    rkdg_angle_weight: float = 1.0
    #: Internal weight of the RKD-G geodesic relation.
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
    #: Softmax temperature of the KD baseline.
    kd_temperature: float = 1.0
    #: Epsilon of the PKT baseline's conditional probabilities.
    pkt_eps: float = 1e-7
    #: Kernel gamma of the CC (correlation congruence) baseline.
    cc_gamma: float = 0.4
    #: Taylor order of the CC kernel.
    cc_order: int = 2
    #: CSD baseline: add its KD term.
    csd_use_kd: bool = False
    #: AFD: reproduce the reference's (s_i, t_j) vs (t_i, s_j) index mismatch.
    afd_faithful_index_mismatch: bool = False
    epcnet_loss_type: str = "mse"  # "mse" | "l1" | "smoothl1" | "kldiv"
    #: Normalisation of the EPCNet baseline's logits.
    epcnet_norm_fn: str = "l2"
    lsdnet_loss_type: str = "mse"  # "mse" | "l1" | "smoothl1"


@dataclass
class SynthConfig:
    """Procedural generator sizes (see data.synth)."""

    #: Runs (traversals) of the generated world.
    n_runs: int = 6
    #: Route length in metres (a loop through the street grid).
    route_length_m: float = 1200.0
    #: Camera image height in pixels.
    image_height: int = 120
    #: Camera image width in pixels.
    image_width: int = 160
    #: LiDAR beams (rings).
    lidar_beams: int = 32
    #: LiDAR azimuth steps per revolution.
    lidar_azimuth_steps: int = 360
    #: Poses fired along each 20 m submap window.
    lidar_poses_per_submap: int = 4
    #: Runs in the evaluation sets (evenly spread over the sorted runs); ``None`` = all runs.
    n_eval_runs: int | None = None
    #: Seed of the world, the runs' conditions and every sensor draw (same seed -> same bytes).
    seed: int = 0
    #: Nearest images listed (and rendered) per LiDAR timestamp in ``lidar2image_ndx.pickle``.
    images_per_submap: int = 3
    #: Horizontal field of view of the camera (degrees).
    camera_hfov_deg: float = 66.0
    #: Cast sun shadows in the camera images.
    camera_shadows: bool = True
    #: LiDAR beam elevations (degrees) and range (m); tuned so the submaps match the real Oxford
    #: statistics (``data.synth.stats.realism_table``).
    lidar_min_elevation_deg: float = -25.0
    #: Highest LiDAR beam elevation (degrees).
    lidar_max_elevation_deg: float = 35.0
    #: LiDAR range (m).
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
    #: Runs of the prior world.
    n_runs: int = 6
    #: Route length of the prior world (m).
    route_length_m: float = 4000.0
    #: Epochs of the prior's no-KD training.
    epochs: int = 12
    #: LR milestones of the prior's training.
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
                update_section(getattr(cfg, section), d[section], section, strict=strict)
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
        path, hint = Path(path), "restore it from the run, or re-create the folder"
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise DataFormatError(f"unreadable JSON ({exc})", path=path, hint=hint) from exc
        try:
            return cls.from_dict(data, strict=True)
        except (KeyError, ValueError) as exc:  # ConfigValueError: its message names the field
            raise DataFormatError(f"not a workbench configuration: {exc.args[0] if exc.args else exc}", path=path,
                                  hint=hint) from exc


#: The config sections (fields of :class:`ExperimentConfig` holding a dataclass), in order.
SECTIONS: tuple[str, ...] = ("data", "model", "train", "distill", "synth", "prior")
#: Sections a saved ``config.json`` must hold (:meth:`ExperimentConfig.load`); the others default.
REQUIRED_SECTIONS: tuple[str, ...] = ("data", "model", "train")


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
    # The study of the distillation effect (docs/study/LOG.md): ≥ 3,000 training tuples, 60x80 images, a visual
    # prior for both image networks, a teacher trained with losses on all three heads, bfloat16 autocast on
    # the CPU; sized so that one converged student run takes ≤ 10 min on 2 cores.
    "study": {
        # 0.02 (not 0.01) voxels: the sparse branch costs 3.1x less on 2 cores (measured, docs/study/LOG.md)
        "data": {"dataset_dir": "data/study", "image_cache": True, "quantization_size": 0.02},
        "model": {"pretrained_image_weights": "teacher_weights/study-prior/image_prior.pth"},
        # 16 student epochs, LR step after 12: two runs side by side, one core each, take
        # ≈ 15 min a pair here (docs/study/LOG.md). At 6 epochs every student still selected its last epoch
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

#: What ``make demo`` (:mod:`distilvpr_lib.demo`) changes of a profile, per profile, as ``section.field`` overrides
#: (a profile not listed runs the demo with its own settings):
#:
#: * ``synth.*``: the demo's own world, generated into ``data/<profile>-demo`` (its teacher in
#:   ``teacher_weights/<profile>-demo``), apart from the profile's own;
#: * ``train.*``: notebook 02's teacher (``train.epochs`` as its ``epochs`` parameter, the rest as its
#:   ``overrides``); the students of ``ablations/demo.yaml`` keep the profile's;
#: * ``students.seeds``: how many of ``ablations/demo.yaml``'s seeds the students run (all when absent).
#:
#: ``smoke``: the profile's own world (3 runs x 300 m, the last run not trained on) leaves 18 training tuples once
#: the test squares and the validation square with its 50 m guard band are cut out: one optimiser step per epoch
#: at batch 16, and the LR step after epoch 1, so the 2-epoch teacher took 2 steps and sat at chance (test AR@1
#: 11.90 vs chance 13.03; 7 test queries per run, 42 query evaluations in all). More epochs on that world did not
#: help reliably (30-60 epochs, 4 seeds: 16.7-31.0). Its validation split (2 queries per run) cannot select an
#: epoch. 5 runs give 35 tuples (2 steps per epoch) and 140 test query evaluations (chance 14.70): after 30 epochs
#: the fused teacher's test AR@1 is 40.71 (seed 7; seeds 1, 2, 3: 30.00, 31.43, 38.57), so the demo test can
#: require it to beat chance. The teacher trains without an LR step and is validated at its last epoch only, so
#: that epoch is the one kept.
DEMO_CHANGES: dict[str, dict[str, Any]] = {
    "smoke": {"synth.n_runs": 5, "train.epochs": 30, "train.milestones": [], "train.eval_every": 30,
              "students.seeds": 2},
}


def profile_config(profile: str = "cpu") -> ExperimentConfig:
    """Return a fresh :class:`ExperimentConfig` for a named profile.

    Raises:
        UnknownProfileError: (an ``OptionError`` and a ``KeyError``) unknown profile; the one-line message
            lists the known ones.
    """
    if profile not in PROFILES:
        raise UnknownProfileError(f"unknown profile {profile!r}; known profiles: {', '.join(sorted(PROFILES))}")
    cfg = ExperimentConfig(profile=profile)
    for section, values in PROFILES[profile].items():
        update_section(getattr(cfg, section), copy.deepcopy(values), section)
    return cfg


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """Apply flat ``section.field`` (or unique bare ``field``) overrides, e.g. from papermill.

    ``{"train.epochs": 3, "curvature": 0.01}`` sets ``cfg.train.epochs`` and
    ``cfg.distill.curvature``. Values are coerced to the type of the default (tuples from lists or
    ``_``-strings).

    Raises:
        UnknownNameError: (an ``OptionError`` and a ``KeyError``) an unknown or ambiguous name; the message
            lists the known ones.
        ConfigValueError: (an ``OptionError`` and a ``ValueError``) a value of the wrong type (the field
            named), a malformed method name, or an override that contradicts the method name.
    """
    cfg = copy.deepcopy(cfg)
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if dataclasses.is_dataclass(getattr(cfg, f.name))}
    for key, value in overrides.items():
        if value is None and "." not in key:
            continue
        if "." in key:
            section_name, name = key.split(".", 1)
            if section_name not in sections:
                raise UnknownNameError(f"unknown config section {section_name!r} in {key!r}; "
                                       f"known: {sorted(sections)}")
            targets = [section_name]
        else:
            name = key
            targets = [s for s, obj in sections.items() if name in {f.name for f in dataclasses.fields(obj)}]
            if len(targets) != 1:
                known = sorted(f"{s}.{f.name}" for s, o in sections.items() for f in dataclasses.fields(o))
                what = "ambiguous" if targets else "unknown"
                raise UnknownNameError(f"{what} config field {key!r}; use one of: {known}")
        update_section(sections[targets[0]], {name: value}, targets[0])
    method_key = next((k for k in ("distill.method", "method") if overrides.get(k) is not None), None)
    if method_key is not None:
        cfg = _apply_method_name(cfg, overrides)
    return cfg


# ---------------------------------------------------------------------------
# Method names: <preset>[_x<alpha>][_lr<beta>][_norm] (docs/benchmark/PROTOCOL.md §3)
# ---------------------------------------------------------------------------
_METHOD_NAME = re.compile(r"^(?P<base>[A-Za-z][A-Za-z0-9_]*?)(?:_x(?P<weight>[0-9]+(?:\.[0-9]+)?))?"
                          r"(?:_lr(?P<lr>[0-9]+(?:\.[0-9]+)?))?(?P<norm>_norm)?$")


@dataclass(frozen=True)
class MethodName:
    """A student configuration named by ``<preset>[_x<α>][_lr<β>][_norm]``.

    Attributes:
        base: the distillation preset (``losses.distiller.PRESETS``: ``nokd``, ``distilvpr``, ``rkd``, ...).
        weight_scale: α, multiplies every distillation weight of the preset (``_x10``).
        lr_scale: β, multiplies the profile's student learning rate ``train.image_lr`` (``_lr0.5``).
        task_normalize: ``_norm``: the task triplet on L2-normalised embeddings (``train.task_normalize``).
    """

    base: str
    weight_scale: float = 1.0
    lr_scale: float = 1.0
    task_normalize: bool = False

    @property
    def name(self) -> str:
        """The canonical name (``rkd_x10_norm``; α = 1 and β = 1 are left out)."""
        out = self.base
        if self.weight_scale != 1.0:
            out += f"_x{self.weight_scale:g}"
        if self.lr_scale != 1.0:
            out += f"_lr{self.lr_scale:g}"
        return out + ("_norm" if self.task_normalize else "")


def parse_method_name(name: str) -> MethodName:
    """Split a method name into its preset and modifiers (the grammar above; the preset itself is checked
    against the presets by ``losses.distiller.resolve_term_weights``).

    Raises:
        ConfigValueError: (a ValueError) the name does not follow the grammar, or a scale is 0.
    """
    match = _METHOD_NAME.match(str(name))
    if not match:
        raise ConfigValueError(f"method name {name!r} does not read as "
                               "<preset>[_x<weight scale>][_lr<lr scale>][_norm]")
    if re.search(r"_(?:x|lr)[0-9]|_norm(?:_|$)", match["base"]):
        raise ConfigValueError(f"method name {name!r}: the modifiers come once each, in the order "
                               "_x<weight scale>, _lr<lr scale>, _norm")
    weight = float(match["weight"]) if match["weight"] else 1.0
    lr = float(match["lr"]) if match["lr"] else 1.0
    if weight <= 0 or lr <= 0:
        raise ConfigValueError(f"method name {name!r}: a scale must be > 0")
    return MethodName(match["base"], weight, lr, bool(match["norm"]))


def _apply_method_name(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Set the fields a method name implies (``_norm`` → ``train.task_normalize``, ``_lr<β>`` →
    ``train.image_lr`` = the profile's × β); an override that contradicts the name is refused."""
    parsed = parse_method_name(cfg.distill.method)
    given = {("train." + k if "." not in k else k): v for k, v in overrides.items() if v is not None}
    if parsed.task_normalize:
        if "train.task_normalize" in given and not cfg.train.task_normalize:
            raise ConfigValueError(f"method {cfg.distill.method!r} trains the task on normalised embeddings "
                                   "(_norm) but train.task_normalize is set to false")
        cfg.train.task_normalize = True
    if parsed.lr_scale != 1.0:
        if "train.image_lr" in given:
            raise ConfigValueError(f"method {cfg.distill.method!r} sets the learning rate "
                                   f"(_lr{parsed.lr_scale:g}); drop train.image_lr or the _lr suffix")
        cfg.train.image_lr = profile_config(cfg.profile).train.image_lr * parsed.lr_scale
    return cfg


def method_name_problem(cfg: ExperimentConfig) -> str | None:
    """Why ``cfg`` does not run what its method name says (``None`` when it does): ``_norm`` without
    ``train.task_normalize``, or ``_lr<β>`` with a learning rate other than the profile's × β."""
    try:
        parsed = parse_method_name(cfg.distill.method)
    except ValueError as exc:
        return str(exc)
    if parsed.task_normalize and not cfg.train.task_normalize:
        return f"method {cfg.distill.method!r} says _norm but train.task_normalize is false"
    if parsed.lr_scale != 1.0 and cfg.profile in PROFILES:
        want = profile_config(cfg.profile).train.image_lr * parsed.lr_scale
        if abs(cfg.train.image_lr - want) > 1e-12 * max(1.0, want):
            return (f"method {cfg.distill.method!r} says a learning rate of {want:g} (the {cfg.profile} profile's × "
                    f"{parsed.lr_scale:g}) but train.image_lr is {cfg.train.image_lr:g}")
    return None


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

    Raises:
        UnknownProfileError: an unknown profile.
        UnknownNameError / ConfigValueError: (``OptionError``s: one line in a notebook, exit 2 in a batch) a
            parameter naming an unknown config field, a value of the wrong type, a malformed method name, or
            ``overrides`` that is not a mapping. The line starts with the notebook parameter that holds it,
            read from the source of the calling ``notebook_config(...)`` call (``parameter 'overrides': unknown
            field 'no_such' in config section 'train'; known: [...]``); the config field where that source
            cannot be read.
    """
    cfg = profile_config(profile)
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigValueError(f"{_parameter_label(None, 'overrides', 2)}: expected a mapping of config fields "
                               f"to values (e.g. {{'train.batch_size': 64}}), got {overrides!r}")
    extra = dict(overrides or {})
    for values, is_overrides in ((given, False), (extra, True)):
        try:
            cfg = apply_overrides(cfg, values)
        except (KeyError, ValueError, TypeError) as exc:
            raise _parameter_error(exc, cfg, values, is_overrides) from None
    for name in PATH_FIELDS:
        section, field_name = name.split(".")
        value = getattr(getattr(cfg, section), field_name)
        if value is not None and value != HUB_WEIGHTS:
            setattr(getattr(cfg, section), field_name, str(project_path(value)))
    return cfg


def _parameter_error(exc: BaseException, cfg: ExperimentConfig, values: Mapping[str, Any],
                     is_overrides: bool) -> OptionError:
    """``exc`` (raised applying ``values`` to ``cfg`` in :func:`notebook_config`) as one line naming the notebook
    parameter: the first key that fails alone; for ``overrides`` the parameter holding them."""
    message = exc.message if isinstance(exc, OptionError) else str(exc.args[0] if exc.args else exc)
    if is_overrides:
        label = _parameter_label(None, "overrides", 3)
    else:  # the settings key that fails alone (none: only their combination fails, and the message says why)
        culprit = None
        for key, value in values.items():
            try:
                apply_overrides(cfg, {key: value})
            except (KeyError, ValueError, TypeError):
                culprit = key
                break
        label = _parameter_label(culprit, None, 3) if culprit is not None else None
    line = f"{label}: {message}" if label else message
    return UnknownNameError(line) if isinstance(exc, KeyError) else ConfigValueError(line)


def _parameter_label(field_name: str | None, fallback: str | None, depth: int) -> str | None:
    """``parameter 'epochs'`` for the notebook parameter passed as ``field_name`` (a settings key) or as the
    overrides (``field_name=None``) in the ``notebook_config(...)`` call ``depth`` frames up; its source is read
    through ``linecache`` (IPython keeps each cell's there). ``fallback`` (or ``None``) when it cannot be read."""
    import ast
    import linecache
    import sys

    try:
        frame = sys._getframe(depth)
        tree = ast.parse("".join(linecache.getlines(frame.f_code.co_filename)))
        line = frame.f_lineno
    except (ValueError, SyntaxError):
        tree, line = None, 0
    for node in ast.walk(tree) if tree is not None else ():
        name = getattr(node, "func", None)
        name = getattr(name, "id", getattr(name, "attr", None))
        if not (isinstance(node, ast.Call) and name == "notebook_config"
                and node.lineno <= line <= (node.end_lineno or node.lineno)):
            continue
        args = {**dict(zip(("profile", "settings", "overrides"), node.args)),
                **{kw.arg: kw.value for kw in node.keywords if kw.arg}}
        settings = args.get("settings")
        if field_name is None:
            target = args.get("overrides")
        elif isinstance(settings, ast.Dict):
            target = next((v for k, v in zip(settings.keys, settings.values)
                           if isinstance(k, ast.Constant) and k.value == field_name), None)
        else:
            target = None
        if isinstance(target, ast.Name):
            return f"parameter {target.id!r}"
    return f"parameter {fallback!r}" if fallback else None


# ---------------------------------------------------------------------------
# Default folders of a profile (notebooks and commands): one source
# ---------------------------------------------------------------------------
#: The grid file (relative to the project root) whose batch is a profile's default batch folder (notebook 04).
PROFILE_GRIDS: dict[str, str] = {
    "smoke": "ablations/smoke.yaml",
    "cpu": "ablations/distilvpr.yaml",
    "study": "ablations/study.yaml",
}
#: Root folder of run folders and batches (relative to the project root).
RUNS_ROOT: str = "runs"
#: Root folder of teacher folders (relative to the project root).
TEACHERS_ROOT: str = "teacher_weights"


@dataclass(frozen=True)
class ProfileFolders:
    """The folders a profile's notebooks and commands use when none is given (relative to the project root).

    Attributes:
        dataset: the profile's ``data.dataset_dir``.
        teacher: the teacher folder (``teacher_weights/<profile>``), written by notebook 02 / ``train-teacher``.
        teacher_run: notebook 02's figures and metrics (``runs/teacher-<profile>``).
        distill_run: notebook 03's student run (``runs/distill-<profile>``).
        batch: the batch folder of the profile's grid (:data:`PROFILE_GRIDS`, ``runs/<grid name>``), read by
            notebook 04; ``None`` when the profile has no grid.
        grid: that grid file, or ``None``.
        browser: notebook 05's pictures (``runs/browser-<profile>``).
    """

    dataset: str
    teacher: str
    teacher_run: str
    distill_run: str
    batch: str | None
    grid: str | None
    browser: str


def profile_folders(profile: str) -> ProfileFolders:
    """The default folders of ``profile`` (see :class:`ProfileFolders`); reads the grid file for its name.

    Raises:
        KeyError: unknown profile (the message lists the known ones).
    """
    cfg = profile_config(profile)
    grid = PROFILE_GRIDS.get(profile)
    batch = None
    if grid is not None:
        import yaml

        path = project_path(grid)
        raw = yaml.safe_load(path.read_text()) if path.is_file() else {}
        batch = f"{RUNS_ROOT}/{(raw or {}).get('name') or Path(grid).stem}"
    return ProfileFolders(dataset=cfg.data.dataset_dir, teacher=f"{TEACHERS_ROOT}/{profile}",
                          teacher_run=f"{RUNS_ROOT}/teacher-{profile}", distill_run=f"{RUNS_ROOT}/distill-{profile}",
                          batch=batch, grid=grid, browser=f"{RUNS_ROOT}/browser-{profile}")


def profile_path(profile: str, kind: str, given: str | os.PathLike[str] | None = None,
                 existing: bool = False) -> Path | None:
    """A notebook's folder parameter: ``given`` when set, else the profile's folder ``kind`` (a field of
    :class:`ProfileFolders`); resolved against the project root (:func:`distilvpr_lib.paths.project_path`).

    Args:
        profile: a profile name.
        kind: ``teacher`` | ``teacher_run`` | ``distill_run`` | ``batch`` | ``browser`` | ``dataset`` | ``grid``.
        given: the parameter; ``None`` means "the profile's", ``""`` means "none" (``None`` is returned).
        existing: the profile's folder only when it exists (else ``None``); a given path is returned as is.

    Raises:
        ValueError: the profile has no such folder (``batch`` of a profile without a grid).

    >>> profile_path("smoke", "teacher") == project_path("teacher_weights/smoke")
    True
    """
    if given is not None:
        return project_path(given)
    folders = profile_folders(profile)
    if kind not in {f.name for f in dataclasses.fields(folders)}:
        raise KeyError(f"unknown folder kind {kind!r}; known: {[f.name for f in dataclasses.fields(folders)]}")
    path = project_path(getattr(folders, kind))
    if path is None and not existing:
        raise ValueError(f"profile {profile!r} has no default {kind} folder (config.PROFILE_GRIDS names the grids "
                         f"of {sorted(PROFILE_GRIDS)}): give the folder")
    if existing and path is not None and not path.exists():
        return None
    return path


def config_changes(cfg: ExperimentConfig, profile: str | None = None) -> dict[str, tuple[Any, Any]]:
    """What ``cfg`` sets differently from its profile: ``{"section.field": (profile value, value)}``, sorted.

    Path fields (:data:`PATH_FIELDS`) are compared resolved against the project root, so an absolute path that
    names the profile's folder is not a change.

    Args:
        cfg: the config of a run.
        profile: the profile to compare with (default ``cfg.profile``).
    """
    base = profile_config(profile or cfg.profile).to_dict()
    this = cfg.to_dict()
    changes: dict[str, tuple[Any, Any]] = {}
    for section in sorted(k for k, v in this.items() if isinstance(v, dict)):
        for name in sorted(this[section]):
            old, new = base.get(section, {}).get(name), this[section][name]
            key = f"{section}.{name}"
            if key in PATH_FIELDS and old is not None and new is not None and old != HUB_WEIGHTS:
                if project_path(old) == project_path(new):
                    continue
            if old != new:
                changes[key] = (old, new)
    return changes


# ---------------------------------------------------------------------------
# The config keys, their defaults and help (``distilvpr list config``): read from this module's dataclasses
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigField:
    """One ``section.field`` of :class:`ExperimentConfig`: its type, default (the dataclass's, or a profile's)
    and help (the ``#:`` comment above the field, or the comment after it)."""

    key: str
    type: str
    default: Any
    help: str


def _field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the source of a config dataclass and of the parts it is declared in
    (:class:`TrainConfig`'s bases): ``#:`` lines above a field, else the trailing ``# ...`` on its line."""
    import inspect

    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            comments.update(_field_comments(base))
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        if ":" in text and not text.startswith(("#", '"', "def ", "@")) and text.split(":")[0].isidentifier():
            name = text.split(":")[0]
            trailing = text.split("#", 1)[1].strip() if "#" in text and "#:" not in text else ""
            comments[name] = " ".join(pending) or trailing
        if not text.startswith("#"):
            pending = []
    return comments


def config_fields(profile: str | None = None) -> list[ConfigField]:
    """Every ``section.field`` of :class:`ExperimentConfig`, in declaration order, with its default (the
    dataclass default, or ``profile``'s value) and its help text from the source comments."""
    cfg = profile_config(profile) if profile else ExperimentConfig()
    fields: list[ConfigField] = []
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(obj):
            continue
        comments = _field_comments(type(obj))
        for f in dataclasses.fields(obj):
            type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            fields.append(ConfigField(f"{section.name}.{f.name}", type_name, getattr(obj, f.name),
                                      comments.get(f.name, "")))
    return fields
