"""Distributed data-parallel training (engine.train.distributed, DistributedPositivePairBatchSampler, torchrun).

Unit tests run in-process. The ``distributed`` tests start 2 gloo processes on the CPU:
* one DDP step of the smoke student (DistilVPR objective) and teacher equals the single-process step on the
  same global batch — loss, DDP-averaged gradients and batch-norm running statistics;
* a 2-process ``train_teacher`` run: rank 0 alone writes, its first-step loss equals the single-process
  one, its checkpoint resumes a single-process run;
* ``torchrun --standalone --nproc-per-node 2 -m distilvpr_lib.cli distill ...`` end to end.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from distributed_helpers import gradient_worker, synthetic_tuples, teacher_run_worker

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.data.sampler import DistributedPositivePairBatchSampler, PositivePairBatchSampler, split_pairs
from distilvpr_lib.engine.train import distributed as dist_engine
from distilvpr_lib.engine.train.distributed import DistributedBatchNorm, convert_batchnorm, spawn_local

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    from distilvpr_lib.data.toy import write_toy_oxford_dataset

    return write_toy_oxford_dataset(tmp_path_factory.mktemp("toy") / "ds", n_runs=3, route_length_m=300.0)


def _cfg(dataset, **overrides):
    return apply_overrides(profile_config("smoke"), {
        "data.dataset_dir": str(dataset), "train.device": "cpu",
        "data.augment_clouds": False, "data.augment_images": False, **overrides})


# ---------------------------------------------------------------------------------------------------------
# The distributed sampler
# ---------------------------------------------------------------------------------------------------------
def test_split_pairs_keeps_pairs_and_order():
    batch = list(range(100, 114))  # 7 pairs
    parts = split_pairs(batch, 3)
    assert [len(p) for p in parts] == [4, 4, 6]
    assert sum(parts, []) == batch
    assert all(len(p) % 2 == 0 for p in parts)
    assert split_pairs(batch, 1) == [batch]
    with pytest.raises(ValueError, match="even"):
        split_pairs(batch[:-1], 2)
    with pytest.raises(ValueError, match="world_size"):
        split_pairs(batch, 0)


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_distributed_sampler_slices_the_single_process_batches(world_size):
    tuples = synthetic_tuples(n_places=23, per_place=3)  # 69 sub-maps: a last batch of 6 pairs
    single = PositivePairBatchSampler(tuples, 16, seed=5)
    ranks = [DistributedPositivePairBatchSampler(tuples, 16, seed=5, rank=r, world_size=world_size)
             for r in range(world_size)]
    for epoch in (1, 2, 7):
        single.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        expected = single.batches()
        local = [list(sampler) for sampler in ranks]
        assert len({len(batches) for batches in local}) == 1  # every rank takes the same number of steps
        assert all(len(sampler) == len(local[0]) for sampler in ranks)
        trained = [sum((local[r][step] for r in range(world_size)), []) for step in range(len(local[0]))]
        kept = [b for b in expected if len(b) // 2 >= world_size]
        # the union of the ranks' slices, in rank order, is the single-process batch
        assert trained == kept
        # only the last (partial) batch may be dropped, and only when it has fewer pairs than ranks
        assert expected[:len(kept)] == kept and all(len(b) // 2 < world_size for b in expected[len(kept):])
        assert len(expected) - len(kept) == (1 if world_size == 7 else 0)
        for step in range(len(local[0])):
            slices = [local[r][step] for r in range(world_size)]
            # ranks hold disjoint positions of the batch; any repeat is one the single-process sampler made
            assert Counter(sum(slices, [])) == Counter(trained[step])
            for part in slices:
                assert part and len(part) % 2 == 0  # whole pairs, never empty
                for a, b in zip(part[0::2], part[1::2]):
                    assert b in tuples[a].positives  # pairs stay together
        # across the epoch: every sample appears no more often than in single-process training
        assert Counter(i for batches in local for b in batches for i in b) == Counter(i for b in kept for i in b)


def test_distributed_sampler_with_toy_tuples_and_errors(toy_dataset):
    from distilvpr_lib.data.benchmark import Benchmark

    tuples = Benchmark.load(toy_dataset).training_tuples
    a = DistributedPositivePairBatchSampler(tuples, 16, seed=7, rank=0, world_size=2)
    b = DistributedPositivePairBatchSampler(tuples, 16, seed=7, rank=1, world_size=2)
    single = PositivePairBatchSampler(tuples, 16, seed=7)
    for epoch in (1, 2):
        for s in (a, b, single):
            s.set_epoch(epoch)
        assert [x + y for x, y in zip(a, b)] == single.batches()
    assert a.tuples is tuples and a.dropped_batches() == []
    with pytest.raises(ValueError, match="fewer than"):
        DistributedPositivePairBatchSampler(tuples, 8, seed=7, rank=0, world_size=5)
    with pytest.raises(ValueError, match="rank"):
        DistributedPositivePairBatchSampler(tuples, 16, seed=7, rank=2, world_size=2)
    # without a process group: rank 0 of 1, i.e. the single-process batches
    alone = DistributedPositivePairBatchSampler(tuples, 16, seed=7)
    alone.set_epoch(3)
    single.set_epoch(3)
    assert (alone.rank, alone.world_size) == (0, 1) and list(alone) == single.batches()


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(50, 6), (8, 6, 5, 7)])
def test_distributed_batchnorm_is_plain_batchnorm_without_process_group(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    plain = torch.nn.BatchNorm1d(6) if len(shape) == 2 else torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    converted = convert_batchnorm(copy.deepcopy(plain))
    assert isinstance(converted, DistributedBatchNorm)
    assert list(converted.state_dict()) == list(plain.state_dict())
    for mode in ("train", "eval"):
        getattr(plain, mode)()
        getattr(converted, mode)()
        assert torch.equal(plain(x), converted(x))
    for key, value in plain.state_dict().items():
        assert torch.equal(value, converted.state_dict()[key]), key


def test_global_batchnorm_formula_matches_float64(monkeypatch):
    """The global-statistics path (here with one rank) gives the exact batch norm and running statistics."""
    monkeypatch.setattr(dist_engine, "_sync_active", lambda group: True)
    monkeypatch.setattr(dist_engine, "_all_gather_with_grad", lambda row, group: row.unsqueeze(0))
    torch.manual_seed(1)
    x = (torch.randn(4000, 5) * torch.tensor([0.01, 1, 5, 0.3, 2]) + torch.tensor([3.0, -1, 0, 40, 2]))
    x.requires_grad_(True)
    bn = DistributedBatchNorm(5)
    y = bn(x)
    xd = x.detach().double()
    expected = (xd - xd.mean(0)) / torch.sqrt(xd.var(0, unbiased=False) + 1e-5)
    assert float((y.detach().double() - expected).abs().max()) < 1e-4
    assert torch.allclose(bn.running_mean.double(), 0.1 * xd.mean(0), rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var.double(), 0.9 + 0.1 * xd.var(0, unbiased=True), rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1
    # gradient through the statistics equals autograd through F.batch_norm (float64)
    weights = torch.randn(4000, 5, generator=torch.Generator().manual_seed(2))
    (y * weights).sum().backward()
    x2 = xd.clone().requires_grad_(True)
    (torch.nn.functional.batch_norm(x2, None, None, training=True) * weights.double()).sum().backward()
    scale = x2.grad.abs().max(0).values
    assert float(((x.grad.double() - x2.grad).abs().max(0).values / scale).max()) < 1e-3


def test_convert_batchnorm_keeps_parameters_and_state_dict_keys():
    from distilvpr_lib.models import build_teacher

    model = build_teacher(profile_config("smoke").model)
    keys = list(model.state_dict())
    params = {id(p) for p in model.parameters()}
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convert_batchnorm(model)
    assert list(model.state_dict()) == keys
    assert {id(p) for p in model.parameters()} == params  # an optimiser built before keeps working
    assert sum(isinstance(m, DistributedBatchNorm) for m in model.modules()) == n_bn > 10


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = dist_engine.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed, ctx.backend) == (0, 1, True, False, None)
    assert not torch.distributed.is_initialized()
    assert ctx.broadcast_object({"a": 1}) == {"a": 1} and ctx.all_gather_objects(3) == [3]
    ctx.barrier()
    x = torch.randn(3, 2)
    assert dist_engine.gather_rows_with_grad(ctx, x, [3]) is x
    with pytest.raises(KeyError, match="backend"):
        dist_engine.init_distributed("cpu", backend="mpi")
    assert dist_engine.rank_epoch_seed(7, 1, 0) != dist_engine.rank_epoch_seed(7, 1, 1)
    assert dist_engine.rank_epoch_seed(7, 1, 0) == dist_engine.rank_epoch_seed(7, 1, 0)


def test_runtime_fields_leave_the_fingerprint_alone():
    from distilvpr_lib.engine.runs.run_folder import RUNTIME_FIELDS, config_fingerprint

    base = profile_config("smoke")
    changed = apply_overrides(base, {"train.amp_dtype": "bfloat16", "train.channels_last": False,
                                     "train.sync_batchnorm": False, "train.distributed_backend": "gloo",
                                     "train.distributed_timeout_s": 60, "data.persistent_workers": True,
                                     "data.image_cache": True, "data.image_cache_dir": "/tmp/c",
                                     "train.loss_diagnostics": False})
    assert len(RUNTIME_FIELDS) == 10  # and train.keep_checkpoints (whether last.pt stays), checked below
    kept = apply_overrides(base, {"train.keep_checkpoints": True})
    assert config_fingerprint(kept) == config_fingerprint(base)
    assert config_fingerprint(changed) == config_fingerprint(base)
    assert config_fingerprint(apply_overrides(base, {"train.batch_size": 32})) != config_fingerprint(base)


def test_fingerprint_ignores_fields_at_their_default():
    """A field added in a later version (at its default) leaves older run folders resumable."""
    from distilvpr_lib.config import DistillConfig
    from distilvpr_lib.engine.runs.run_folder import config_fingerprint

    base = profile_config("smoke")
    assert config_fingerprint(apply_overrides(base, {"distill.teacher_head": DistillConfig().teacher_head})) == \
        config_fingerprint(base)
    assert config_fingerprint(apply_overrides(base, {"distill.teacher_head": "cloud_embedding"})) != \
        config_fingerprint(base)


def test_paper_profile_has_the_reference_settings():
    cfg = profile_config("paper")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.milestones, cfg.train.gamma) == (60, 128, (40,), 0.1)
    assert (cfg.train.image_lr, cfg.train.cloud_lr, cfg.train.weight_decay) == (1e-4, 1e-3, 1e-4)
    assert cfg.model.pretrained_image_weights == "hub"
    assert cfg.train.mixed_precision and cfg.train.amp_dtype == "auto" and cfg.train.channels_last
    assert cfg.data.num_workers == 8 and cfg.data.persistent_workers
    assert cfg.train.device == "auto" and cfg.train.sync_batchnorm


def test_amp_dtype_resolution():
    from distilvpr_lib.engine.train.devices import resolve_amp_dtype

    assert resolve_amp_dtype("float16", "cpu") is torch.float16
    assert resolve_amp_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_amp_dtype("auto", "cpu") is torch.bfloat16  # CPU autocast runs bfloat16 (AVX-512 BF16 / AMX)
    with pytest.raises(KeyError, match="amp_dtype"):
        resolve_amp_dtype("float8", "cpu")


def test_cpu_autocast_only_in_bfloat16():
    """Mixed precision on the CPU means bfloat16 autocast; float16 autocast is left off there."""
    from distilvpr_lib.config import TrainConfig
    from distilvpr_lib.engine.train.loop import Trainer

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)

    def trainer(**train):
        return Trainer(model, None, optimizer, scheduler, [], TrainConfig(**train), "unused", device="cpu",
                       tensorboard=False, progress=False)

    assert trainer(mixed_precision=True, amp_dtype="bfloat16").use_amp
    assert trainer(mixed_precision=True, amp_dtype="auto").use_amp
    assert not trainer(mixed_precision=True, amp_dtype="float16").use_amp
    assert not trainer(mixed_precision=False, amp_dtype="bfloat16").use_amp


def test_loader_settings(toy_dataset):
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.runs.run_setup import make_training_loader

    benchmark = Benchmark.load(toy_dataset)
    cpu = dist_engine.single_process_context("cpu")
    cfg = _cfg(toy_dataset)
    loader = make_training_loader(benchmark, cfg, cpu)
    assert type(loader.batch_sampler) is PositivePairBatchSampler
    assert not loader.pin_memory and not loader.persistent_workers
    workers = apply_overrides(cfg, {"data.num_workers": 1, "data.persistent_workers": True})
    assert make_training_loader(benchmark, workers, cpu).persistent_workers
    two = dist_engine.DistributedContext(rank=1, world_size=2, device=torch.device("cpu"), backend="gloo")
    sampler = make_training_loader(benchmark, cfg, two).batch_sampler
    assert isinstance(sampler, DistributedPositivePairBatchSampler) and (sampler.rank, sampler.world_size) == (1, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cloud_branch_stays_float32_under_autocast(dtype):
    """The sparse backend cannot run under autocast; mixed precision keeps the cloud branch in float32."""
    from distilvpr_lib.data.collate import batch_coordinates, quantize
    from distilvpr_lib.engine.train.devices import keep_float32_under_autocast
    from distilvpr_lib.models import build_student, build_teacher

    generator = torch.Generator().manual_seed(0)
    clouds = [torch.rand(600, 3, generator=generator) * 2 - 1 for _ in range(4)]
    batch = {"coords": batch_coordinates([quantize(c, 0.05) for c in clouds]),
             "images": torch.randn(4, 3, 32, 48, generator=generator)}
    torch.manual_seed(0)
    teacher = build_teacher(profile_config("smoke").model)
    reference = teacher(batch)
    keys = list(teacher.state_dict())
    assert keep_float32_under_autocast(teacher) == ["cloud_fe"] == keep_float32_under_autocast(teacher)
    assert keep_float32_under_autocast(build_student(profile_config("smoke").model)) == []
    assert list(teacher.state_dict()) == keys
    with torch.autocast("cpu", dtype=dtype):
        out = teacher(batch)
    assert torch.equal(out["cloud_embedding"], reference["cloud_embedding"])  # float32, untouched
    assert not torch.equal(out["image_embedding"], reference["image_embedding"])  # autocast did act
    out["embedding"].float().square().sum().backward()
    assert teacher.cloud_fe.backbone.conv0.kernel.grad is not None
    assert torch.equal(copy.deepcopy(teacher)(batch)["embedding"], teacher(batch)["embedding"])


def test_saved_model_loads_without_its_pretrained_file(tmp_path):
    from distilvpr_lib.engine.train.checkpoint import save_weights
    from distilvpr_lib.data.files import write_json
    from distilvpr_lib.engine.runs.run_folder import load_model_from_dir
    from distilvpr_lib.models import build_student

    cfg = apply_overrides(profile_config("smoke"), {"model.pretrained_image_weights": str(tmp_path / "gone.pth")})
    student = build_student(profile_config("smoke").model)
    save_weights(tmp_path / "student.pt", student.state_dict())
    write_json(tmp_path / "config.json", cfg.to_dict())
    model, loaded_cfg, kind = load_model_from_dir(tmp_path)
    assert kind == "student" and loaded_cfg.model.pretrained_image_weights.endswith("gone.pth")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in student.state_dict().items())


# ---------------------------------------------------------------------------------------------------------
# Two gloo processes
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.distributed
def test_ddp_step_equals_the_single_process_step(tmp_path):
    spawn_local(gradient_worker, 2, str(tmp_path), 2)
    reports = [json.loads((tmp_path / f"gradients_rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0] == reports[1]  # every rank computed the same global loss
    for kind in ("student", "teacher"):
        report = reports[0][kind]
        assert report["ddp"] == "DistributedDataParallel" and report["keys_unchanged"]
        assert report["loss_rel"] < 1e-5, report
        # DDP averages over ranks: without the world_size factor this would be 0.5
        assert report["grad_rel"] < 1e-3, report
        assert report["buffer_max_abs"] < 1e-5, report
    student = reports[0]["student"]
    assert abs(student["unsynced_loss"] - student["reference_loss"]) > 1e-3  # the control sees per-rank BN


def _first_step_loss(tensorboard_dir: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tensorboard_dir))
    accumulator.Reload()
    events = accumulator.Scalars("train/loss/total")
    assert events[0].step == 1
    return float(events[0].value)


@pytest.fixture(scope="module")
def ddp_teacher(toy_dataset, tmp_path_factory):
    """A 2-process (gloo) train_teacher run of 1 epoch, every file write logged with its rank."""
    out = tmp_path_factory.mktemp("ddp")
    spawn_local(teacher_run_worker, 2, str(out), str(toy_dataset), 1)
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_teacher_run_then_single_process_resume(ddp_teacher, toy_dataset, tmp_path):
    from distilvpr_lib.engine.train.checkpoint import load_checkpoint
    from distilvpr_lib.engine.runs.teacher_run import train_teacher

    teacher = ddp_teacher / "teacher"
    # rank 0 alone wrote: config, checkpoints, weights, cache, metrics; rank 1 wrote nothing
    assert not (ddp_teacher / "writes_rank1.txt").exists()
    writes = (ddp_teacher / "writes_rank0.txt").read_text().split("\n")
    assert {"save_checkpoint last.pt", "save_weights best.pt", "save_weights teacher.pt", "cache teacher_cache.pt",
            "write_json metrics.json"} <= set(writes)
    assert sorted(p.name for p in (teacher / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list((teacher / "tensorboard").iterdir())) == 1
    metrics = [json.loads((ddp_teacher / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert metrics[0] == metrics[1] and metrics[0]["world_size"] == 2 and metrics[0]["status"] == "complete"

    # the single-process run on the same global batches: same first-step loss, same checkpoint format
    single = train_teacher(_cfg(toy_dataset, **{"train.epochs": 1, "train.keep_checkpoints": True}),
                           tmp_path / "single", progress=False)
    assert "world_size" not in single
    ddp_loss, single_loss = _first_step_loss(teacher / "tensorboard"), _first_step_loss(tmp_path / "single" / "tensorboard")
    # tolerance: ATen's CPU batch norm of (N, C) voxel features is itself off by ~1e-4 relative
    assert ddp_loss == pytest.approx(single_loss, rel=1e-3)
    ddp_state = load_checkpoint(teacher / "checkpoints" / "last.pt")
    single_state = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    assert sorted(ddp_state) == sorted(single_state)
    assert list(ddp_state["model"]) == list(single_state["model"])  # the unwrapped module: no "module." prefix
    assert ddp_state["fingerprint"] == single_state["fingerprint"] and ddp_state["sampler"] == single_state["sampler"]
    cache = torch.load(teacher / "teacher_cache.pt", weights_only=True)
    assert list(cache["embeddings"]) == list(torch.load(tmp_path / "single" / "teacher_cache.pt",
                                                        weights_only=True)["embeddings"])

    # single-process resume from the distributed checkpoint
    resumed = train_teacher(_cfg(toy_dataset, **{"train.epochs": 2, "train.keep_checkpoints": True}), teacher,
                            progress=False)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["epochs"][0]["losses"] == metrics[0]["epochs"][0]["losses"]  # epoch 1 kept, not retrained
    assert load_checkpoint(teacher / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_cli_distill(ddp_teacher, toy_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "student"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "distilvpr_lib.cli", "distill", "--dataset", str(toy_dataset), "--teacher",
               str(ddp_teacher / "teacher"), "--profile", "smoke", "--device", "cpu", "--epochs", "1",
               "--out", str(out), "--quiet"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("student (distilvpr): selected epoch 1") == 1  # printed by rank 0 only
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["method"] == "distilvpr"
    assert {"rkdg_distance", "cross_euclidean_st2ss", "triplet"} <= set(metrics["final_losses"])
    assert not (out / "checkpoints").exists()  # a complete run keeps its weights once, no resume state
    assert (out / "student.pt").is_file() and (out / "test_results.npz").is_file()
