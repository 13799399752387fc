"""Worker functions for tests/test_distributed.py, run in spawned processes (importable by module name).

Each worker reads torchrun's environment (set by ``engine.train.distributed.spawn_local``), asserts what it
can on its own, and leaves JSON/tensor files in the test's folder for the parent to check.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def synthetic_tuples(n_places: int = 12, per_place: int = 3) -> dict[int, SimpleNamespace]:
    """Ids grouped in places of ``per_place`` sub-maps: positives = same place, non-negatives = same or next place."""
    tuples = {}
    for i in range(n_places * per_place):
        place = i // per_place
        same = [j for j in range(place * per_place, (place + 1) * per_place) if j != i]
        near = [j for j in range(max(0, place - 1) * per_place, min(n_places, place + 2) * per_place) if j != i]
        tuples[i] = SimpleNamespace(positives=np.array(same), non_negatives=np.array(sorted(set(near) | set(same))),
                                    rel_scan_filepath=f"run/{i:04d}.bin")
    return tuples


def gradient_worker(out_dir: str, world_size: int, device: str = "cpu", backend: str = "gloo") -> None:
    """One DDP step of the smoke student (DistilVPR objective) and teacher vs the single-process step.

    ``device="cuda"`` runs the same check on GPUs (benchmarks/gpu_check.py; several ranks may share one GPU
    with the gloo backend).

    Checks on every rank: the global loss equals the single-process loss; the DDP-averaged parameter
    gradients equal the single-process gradients (so the world_size scaling is right); the batch-norm
    running statistics equal the single-process ones; the checkpointed state_dict keys are unchanged.
    """
    torch.set_num_threads(1)
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.data.collate import make_masks
    from distilvpr_lib.data.sampler import DistributedPositivePairBatchSampler, PositivePairBatchSampler, split_pairs
    from distilvpr_lib.engine.train.distributed import assemble_global_batch, init_distributed, shutdown_distributed
    from distilvpr_lib.engine.runs.teacher_cache import TeacherCache
    from distilvpr_lib.engine.train.loop import Trainer
    from distilvpr_lib.engine.train.objectives import StudentObjective, TeacherObjective
    from distilvpr_lib.engine.train.optim import (
        build_optimizer,
        build_scheduler,
        student_parameter_groups,
        teacher_parameter_groups,
    )
    from distilvpr_lib.losses.distiller import Distiller
    from distilvpr_lib.models import build_student, build_teacher

    ctx = init_distributed(device, backend=backend)
    assert ctx.is_distributed and ctx.world_size == world_size and ctx.backend == backend
    device = ctx.device
    cfg = profile_config("smoke")
    tuples = synthetic_tuples()
    global_batch = PositivePairBatchSampler(tuples, 16, seed=3).batches(1)[0]
    local_ids = split_pairs(global_batch, world_size)[ctx.rank]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(len(tuples), 3, 24, 32, generator=generator)
    cache = TeacherCache([t.rel_scan_filepath for t in tuples.values()],
                         torch.randn(len(tuples), cfg.model.student_dim, generator=generator) * 2.0)
    clouds = [torch.unique(torch.randint(0, 12, (400, 3), generator=generator), dim=0) for _ in tuples]

    def batch_of(ids: list[int], on_device: bool = False) -> dict:
        coords = torch.cat([torch.cat([torch.full((len(clouds[i]), 1), b), clouds[i]], 1)
                            for b, i in enumerate(ids)]).int()
        positives, negatives = make_masks(np.array(ids), tuples)
        batch = {"images": images[ids], "coords": coords, "labels": torch.tensor(ids),
                 "rel_paths": [tuples[i].rel_scan_filepath for i in ids],
                 "positives_mask": positives, "negatives_mask": negatives, "skip": False}
        return {k: v.to(device) if on_device and torch.is_tensor(v) else v for k, v in batch.items()}

    sampler = DistributedPositivePairBatchSampler(tuples, 16, seed=3, rank=ctx.rank, world_size=world_size)
    loader = SimpleNamespace(batch_sampler=sampler)
    report = {}
    for kind in ("student", "teacher"):
        torch.manual_seed(11)
        if kind == "student":
            model = build_student(cfg.model)
            reference = copy.deepcopy(model)
            objective = StudentObjective(cfg.train, cache, Distiller(cfg.distill).to(device))
            groups = student_parameter_groups
        else:
            model = build_teacher(cfg.model)
            reference = copy.deepcopy(model)
            objective = TeacherObjective(cfg.train)
            groups = teacher_parameter_groups
        reference.to(device)
        keys_before = list(model.state_dict())
        optimizer = build_optimizer(groups(model, cfg.train), cfg.train)
        train_cfg = dataclasses.replace(cfg.train, mixed_precision=False)
        trainer = Trainer(model, objective, optimizer, build_scheduler(optimizer, cfg.train), loader, train_cfg,
                          Path(out_dir) / kind, device=device, progress=False, tensorboard=False, distributed=ctx)
        trainer.prepare()
        trainer.wrap_ddp()
        trainer.train_model.train()
        result = trainer.forward_backward(assemble_global_batch(ctx, batch_of(local_ids), tuples))
        # the single-process step on the whole global batch
        reference.train()
        ref_result = objective(reference(batch_of(global_batch, True)), batch_of(global_batch, True))
        ref_result.total.backward()
        rel = abs(float(result.total.detach()) - float(ref_result.total.detach())) / abs(float(ref_result.total.detach()))
        worst = 0.0
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert p.grad is not None, f"{kind}: no gradient for {name}"
            scale = float(q.grad.abs().max()) + 1e-12
            worst = max(worst, float((p.grad - q.grad).abs().max()) / scale)
        buffers = {k: float((v.float() - reference.state_dict()[k].float()).abs().max())
                   for k, v in model.state_dict().items() if "running" in k}
        unsynced = None
        if kind == "student":  # control: per-rank batch-norm statistics change the loss measurably
            plain = copy.deepcopy(reference)
            with torch.no_grad():
                from distilvpr_lib.engine.train.distributed import gather_outputs, gather_sizes

                local = plain(batch_of(local_ids, True))
                gathered = gather_outputs(ctx, local, gather_sizes(ctx, len(local_ids)))
                unsynced = float(objective(gathered, batch_of(global_batch, True)).total)
        report[kind] = {"unsynced_loss": unsynced, "loss": float(result.total), "reference_loss": float(ref_result.total), "loss_rel": rel,
                        "grad_rel": worst, "buffer_max_abs": max(buffers.values()),
                        "keys_unchanged": list(model.state_dict()) == keys_before,
                        "ddp": type(trainer.train_model).__name__}
    (Path(out_dir) / f"gradients_rank{ctx.rank}.json").write_text(json.dumps(report))
    shutdown_distributed(ctx)


def teacher_run_worker(out_dir: str, dataset: str, epochs: int) -> None:
    """``engine.runs.teacher_run.train_teacher`` on this rank, recording which rank writes which file."""
    torch.set_num_threads(1)
    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.engine.runs import run_setup, teacher_cache, teacher_run
    from distilvpr_lib.engine.train import checkpoint, loop

    rank = int(os.environ["RANK"])
    log_path = Path(out_dir) / f"writes_rank{rank}.txt"

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(path, *args, **kwargs):
            with open(log_path, "a") as handle:
                handle.write(f"{name} {Path(path).name}\n")
            return real(path, *args, **kwargs)

        setattr(module, name, wrapper)

    for module, name in ((loop, "save_checkpoint"), (loop, "save_weights"), (teacher_run, "save_weights"),
                         (run_setup, "write_json"), (checkpoint, "save_checkpoint")):
        spy(module, name)
    real_cache_save = teacher_cache.TeacherCache.save

    def cache_save(self, path):
        with open(log_path, "a") as handle:
            handle.write(f"cache {Path(path).name}\n")
        return real_cache_save(self, path)

    teacher_cache.TeacherCache.save = cache_save
    cfg = apply_overrides(profile_config("smoke"), {
        "data.dataset_dir": dataset, "train.epochs": epochs, "train.device": "cpu",
        "data.augment_clouds": False, "data.augment_images": False, "train.keep_checkpoints": True})
    metrics = teacher_run.train_teacher(cfg, Path(out_dir) / "teacher", progress=False)
    (Path(out_dir) / f"metrics_rank{rank}.json").write_text(json.dumps(metrics, default=str))
