"""The visual prior: an image backbone pretrained on a separately seeded generated world.

The paper initialises both image networks (the teacher's image branch and the student) from ImageNet.
Where no ImageNet file is at hand, the workbook pretrains the same truncated ResNet on a *different*
generated world (``cfg.prior.seed`` ≠ ``cfg.synth.seed``: another street grid, other buildings, other
facades) as a no-distillation place-recognition student, and exports its backbone as a torchvision-style
state_dict. ``model.pretrained_image_weights`` then points at that file exactly as it would at
torchvision's ``resnet18-f37072fd.pth``; a real ImageNet file still works through the same option.

Folder written by :func:`pretrain_image_prior`::

    <out>/image_prior.pth   backbone weights (keys conv1.weight, bn1.*, layer1-3.*), torchvision layout
    <out>/prior.json        provenance: world seeds, disjointness check, recalls on the prior world, sha256
    <out>/student/          the no-KD run that produced it (config.json, metrics.json, checkpoints/ ...)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import ExperimentConfig, SynthConfig

PRIOR_METADATA_FILE = "prior.json"
PRIOR_RUN_FOLDER = "student"
#: Two buildings are "the same place" when their UTM footprint centres lie within this distance (m)
#: and their footprints and heights agree within ``_SIZE_TOLERANCE_M``.
_SAME_BUILDING_M = 2.0
_SIZE_TOLERANCE_M = 0.5


def prior_synth_config(cfg: ExperimentConfig) -> SynthConfig:
    """The generator settings of the prior world: ``cfg.synth`` with the prior's seed, runs and route length.

    Raises:
        ValueError: ``cfg.prior.seed == cfg.synth.seed`` (the prior would be trained on the study world).
    """
    if int(cfg.prior.seed) == int(cfg.synth.seed):
        raise ValueError(f"prior.seed={cfg.prior.seed} equals synth.seed: the visual prior must come from a "
                         "separately seeded world")
    return dataclasses.replace(cfg.synth, seed=int(cfg.prior.seed), n_runs=int(cfg.prior.n_runs),
                               route_length_m=float(cfg.prior.route_length_m))


def _building_table(synth: SynthConfig) -> np.ndarray:
    """(N, 5) UTM centre (northing, easting), footprint extents (2, sorted) and height of every building box."""
    from distilvpr_lib.data.synth.world import MATERIALS, build_world

    world = build_world(int(synth.seed), float(synth.route_length_m), test_fraction=float(synth.test_fraction))
    prims = world.prims
    keep = prims.box_mat == MATERIALS["building"]
    lo, hi = prims.box_lo[keep], prims.box_hi[keep]
    north, east = world.local_to_utm(0.5 * (lo[:, :2] + hi[:, :2]))
    extents = np.sort(hi[:, :2] - lo[:, :2], axis=1)
    return np.column_stack([north, east, extents, hi[:, 2] - lo[:, 2]])


def shared_buildings(synth_a: SynthConfig, synth_b: SynthConfig) -> dict[str, Any]:
    """Do two generated worlds share a place? Count buildings of ``b`` that coincide with one of ``a``.

    A building of one world coincides with one of the other when their footprint centres (UTM) are within
    2 m and their two footprint extents and heights agree within 0.5 m. Different seeds give different
    street grids, so the count is expected to be 0 even though both worlds are placed around the same
    PointNetVLAD test squares (their UTM extents overlap by construction).

    Returns:
        ``{"buildings_a": Na, "buildings_b": Nb, "shared": k}``.
    """
    from scipy.spatial import cKDTree

    a, b = _building_table(synth_a), _building_table(synth_b)
    shared = 0
    if len(a) and len(b):
        tree = cKDTree(a[:, :2])
        for i, candidates in enumerate(tree.query_ball_point(b[:, :2], r=_SAME_BUILDING_M)):
            if any(np.all(np.abs(a[j, 2:] - b[i, 2:]) <= _SIZE_TOLERANCE_M) for j in candidates):
                shared += 1
    return {"buildings_a": int(len(a)), "buildings_b": int(len(b)), "shared": int(shared)}


def dataset_locations(dataset_dir: str | Path) -> np.ndarray:
    """(N, 2) UTM ``[northing, easting]`` of every sub-map a benchmark folder lists: its training tuples and the
    database and query sets of its test and validation splits (duplicates kept)."""
    from distilvpr_lib.data.benchmark import Benchmark

    benchmark = Benchmark.load(dataset_dir)
    points = [tuple(t.position) for t in benchmark.training_tuples.values()]
    for split in ("test", "validation"):
        if benchmark.has_split(split):
            for sets in (benchmark.database_sets(split), benchmark.query_sets(split)):
                points += [(float(e["northing"]), float(e["easting"])) for s in sets for e in s.values()]
    return np.asarray(points, dtype=float).reshape(-1, 2)


def shared_places(world_dir: str | Path, prior_dir: str | Path, radius_m: float | None = None) -> dict[str, Any]:
    """The benchmark's "no shared place" check (docs/benchmark/PROTOCOL.md §2): is any location of the prior world
    within the positive radius of a location of a benchmark world?

    Args:
        world_dir: a benchmark world's dataset folder.
        prior_dir: the prior world's dataset folder.
        radius_m: the distance that makes two sub-maps the same place (default: the positive radius, 10 m).

    Returns:
        ``{"world_locations", "prior_locations", "radius_m", "min_distance_m", "shared"}``: ``shared`` is the number
        of prior-world locations within ``radius_m`` of some world location (0 = the check passes).
    """
    from scipy.spatial import cKDTree

    from distilvpr_lib.config import POSITIVE_RADIUS_M

    radius = float(POSITIVE_RADIUS_M if radius_m is None else radius_m)
    world, prior = dataset_locations(world_dir), dataset_locations(prior_dir)
    distances = cKDTree(world).query(prior)[0] if len(world) and len(prior) else np.empty(0)
    return {"world_locations": int(len(world)), "prior_locations": int(len(prior)), "radius_m": radius,
            "min_distance_m": float(distances.min()) if distances.size else None,
            "shared": int((distances <= radius).sum())}


def export_backbone(student: Any, path: str | Path) -> Path:
    """Write the truncated ResNet of an image network as a torchvision-style state_dict (atomic).

    Args:
        student: an :class:`~distilvpr_lib.models.image.ImageBranch` (or the student); its ``model`` is saved.
        path: the ``.pth`` file.
    """
    from distilvpr_lib.engine.train.checkpoint import save_weights

    state = {k: v.detach().cpu().clone() for k, v in student.model.state_dict().items()}
    return save_weights(path, state)


def pretrain_image_prior(cfg: ExperimentConfig, prior_dataset: str | Path, out_dir: str | Path,
                         resume: bool = True, progress: bool = True, workers: int | None = None) -> dict[str, Any]:
    """Generate the prior world (if needed), train the image network on it, export the backbone.

    Args:
        cfg: the profile whose image networks will use the prior (``cfg.prior`` sizes the prior world and its
            training; ``cfg.model`` the network; ``cfg.synth`` the study world it must not share a place with).
        prior_dataset: folder of the prior world's dataset (generated here if incomplete; resumable).
        out_dir: the prior folder (``image_prior.pth``, ``prior.json``, ``student/``).
        resume: resume the generation and the training where they stopped.
        progress: progress bars and lines.
        workers: rendering processes (default ``cfg.synth.workers``).

    Returns:
        The provenance record written to ``prior.json``.

    Raises:
        ValueError: the prior world shares a building with the study world, or the seeds are equal.
    """
    from distilvpr_lib.data.synth.generate import generate_dataset
    from distilvpr_lib.data.files import file_sha256, write_json
    from distilvpr_lib.engine.train.checkpoint import load_weights
    from distilvpr_lib.engine.runs.student_run import distill_student
    from distilvpr_lib.models import build_student

    started = time.time()
    synth = prior_synth_config(cfg)
    overlap = shared_buildings(cfg.synth, synth)
    if overlap["shared"]:
        raise ValueError(f"the prior world (seed {synth.seed}) shares {overlap['shared']} buildings with the study "
                         f"world (seed {cfg.synth.seed}); choose another prior.seed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = generate_dataset(prior_dataset, synth, workers=workers, progress=progress)
    # the prior has its own step schedule (prior.epochs, prior.milestones), whatever train.lr_schedule says
    train_cfg = dataclasses.replace(cfg.train, epochs=int(cfg.prior.epochs), milestones=tuple(cfg.prior.milestones),
                                    lr_schedule="step", warmup_epochs=0)
    prior_cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(prior_dataset), image_dir=None),
        model=dataclasses.replace(cfg.model, pretrained_image_weights=None), train=train_cfg,
        synth=synth, distill=dataclasses.replace(cfg.distill, method="nokd", terms={}))
    metrics = distill_student(prior_cfg, None, out_dir / PRIOR_RUN_FOLDER, resume=resume, method="nokd",
                              progress=progress)
    student = build_student(prior_cfg.model)
    student.load_state_dict(load_weights(out_dir / PRIOR_RUN_FOLDER / "student.pt"))
    weights = export_backbone(student, out_dir / cfg.prior.weights_file)
    record = {
        "kind": "image_prior",
        "backbone": cfg.model.student_backbone,
        "weights_file": cfg.prior.weights_file,
        "weights_sha256": file_sha256(weights),
        "prior_world_seed": int(synth.seed),
        "study_world_seed": int(cfg.synth.seed),
        "prior_dataset": str(prior_dataset),
        "prior_synth": dataclasses.asdict(synth),
        "shared_buildings_with_study_world": overlap,
        "prior_validation": metrics.get("validation"),
        "prior_test": metrics.get("test"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs": int(cfg.prior.epochs),
        "generation_seconds": round(float(report.total_seconds), 1),
        "wall_time_s": round(time.time() - started, 1),
    }
    write_json(out_dir / PRIOR_METADATA_FILE, record)
    return record
