"""The training engine on a toy benchmark with a tiny image model: exact resume, atomic
checkpoints, validation-only selection, skipped batches, objectives, optimiser groups."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from distilvpr_lib.config import profile_config
from distilvpr_lib.engine.train import checkpoint as checkpoint_module
from distilvpr_lib.engine.train.checkpoint import load_checkpoint, load_weights
from distilvpr_lib.engine.train.seeding import capture_rng_state, configure_determinism, restore_rng_state, seed_everything
from distilvpr_lib.engine.runs.teacher_cache import TeacherCache
from distilvpr_lib.engine.train.devices import resolve_device
from distilvpr_lib.errors import OptionError
from distilvpr_lib.engine.train.loop import Trainer
from distilvpr_lib.engine.train.objectives import StudentObjective, TeacherObjective
from distilvpr_lib.engine.train.optim import (
    build_optimizer,
    build_scheduler,
    student_parameter_groups,
    teacher_parameter_groups,
)


@pytest.fixture(scope="module")
def toy_benchmark(smoke_dataset):
    from distilvpr_lib.data.benchmark import Benchmark

    return Benchmark.load(smoke_dataset)


class TinyImageModel(nn.Module):
    """Images (B,3,H,W) -> (B,16); dropout + batch norm so RNG and running statistics matter."""

    def __init__(self) -> None:
        super().__init__()
        self.image_net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(0.2), nn.Linear(8, 16))

    def forward(self, batch):
        return {"embedding": self.image_net(batch["images"])}


def _cfg(epochs: int = 2, **train):
    cfg = profile_config("smoke")
    cfg.train = dataclasses.replace(cfg.train, epochs=epochs, batch_size=8, deterministic=True, **train)
    return cfg


def _loader(benchmark, cfg):
    from torch.utils.data import DataLoader

    from distilvpr_lib.data.collate import make_collate_fn
    from distilvpr_lib.data.datasets import TrainingDataset
    from distilvpr_lib.data.sampler import PositivePairBatchSampler

    dataset = TrainingDataset(benchmark, cfg.data, augment=True)
    sampler = PositivePairBatchSampler(benchmark.training_tuples, cfg.train.batch_size, seed=cfg.train.seed)
    return DataLoader(dataset, batch_sampler=sampler,
                      collate_fn=make_collate_fn(benchmark.training_tuples, cfg.data.quantization_size))


def _trainer(benchmark, cfg, out_dir, validate=None, model_seed=0):
    torch.manual_seed(model_seed)
    model = TinyImageModel()
    optimizer = build_optimizer(student_parameter_groups(model, cfg.train), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    return Trainer(model, StudentObjective(cfg.train, None), optimizer, scheduler, _loader(benchmark, cfg),
                   cfg.train, out_dir, validate=validate, progress=False, fingerprint="fp")


class FakeResults:
    """Just what the trainer reads from a RetrievalResults."""

    def __init__(self, ar1: float) -> None:
        self.ar1 = ar1
        self.run_names = ["a", "b"]
        self.per_database_recall_at_1 = pd.Series({0: ar1, 1: ar1})

    def summary(self):
        return {"AR@1": self.ar1, "AR@5": 100.0, "AR@10": 100.0, "AR@1%": 100.0}


@pytest.fixture(autouse=True)
def _determinism():
    configure_determinism(True)
    yield
    configure_determinism(False)


def test_exact_resume_matches_uninterrupted_run(toy_benchmark, tmp_path):
    seed_everything(3)
    full = _trainer(toy_benchmark, _cfg(epochs=2), tmp_path / "full")
    full_history = full.fit(resume=False)
    assert [e["epoch"] for e in full_history.epochs] == [1, 2]

    seed_everything(3)
    first = _trainer(toy_benchmark, _cfg(epochs=1), tmp_path / "resumed")
    first.fit(resume=False)
    # Disturb every generator and build the model from another seed: resume must restore all of it.
    torch.rand(1000), np.random.rand(1000), __import__("random").random()
    second = _trainer(toy_benchmark, _cfg(epochs=2), tmp_path / "resumed", model_seed=99)
    history = second.fit(resume=True)
    assert history.resumed_from == 1
    assert [e["epoch"] for e in history.epochs] == [1, 2]

    a, b = full.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert full_history.global_step == history.global_step
    assert full_history.epochs[1]["losses"] == history.epochs[1]["losses"]
    # the optimiser states agree too
    sa, sb = full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"])

    # a different seed gives different weights (the comparison above can fail)
    seed_everything(4)
    other = _trainer(toy_benchmark, _cfg(epochs=2), tmp_path / "other", model_seed=4)
    other.fit(resume=False)
    assert any(not torch.equal(a[k], other.model.state_dict()[k]) for k in a if a[k].is_floating_point())


def test_checkpoint_contents_and_scheduler_once_per_epoch(toy_benchmark, tmp_path):
    cfg = _cfg(epochs=2)  # smoke milestones (1,): lr drops after epoch 1
    seed_everything(0)
    trainer = _trainer(toy_benchmark, cfg, tmp_path)
    history = trainer.fit(resume=False)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "rng", "sampler", "epoch", "best_epoch", "history", "global_step"):
        assert key in state, key
    assert state["epoch"] == 2
    assert state["sampler"]["seed"] == cfg.train.seed
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    lrs = [e["lr"]["student"] for e in history.epochs]
    assert lrs == pytest.approx([cfg.train.image_lr, cfg.train.image_lr * cfg.train.gamma])
    assert history.epochs[0]["losses"]["total"] == pytest.approx(history.epochs[0]["losses"]["triplet"])
    assert 0.0 <= history.epochs[0]["stats"]["active_fraction"] <= 1.0
    assert history.epochs[0]["stats"]["student_norm_max"] >= history.epochs[0]["stats"]["student_norm_mean"]
    # no validation: the last epoch is selected
    assert history.best_epoch == 2
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


def test_crash_while_writing_checkpoint_keeps_previous(toy_benchmark, tmp_path, monkeypatch):
    seed_everything(0)
    _trainer(toy_benchmark, _cfg(epochs=1), tmp_path).fit(resume=False)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    real_save = torch.save

    def crashing_save(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == checkpoint_module.CHECKPOINT_FORMAT:
            handle.write(b"partial garbage")
            raise OSError("disk full (simulated)")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        _trainer(toy_benchmark, _cfg(epochs=2), tmp_path).fit(resume=True)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_selection_on_validation_ties_go_to_later_epoch(toy_benchmark, tmp_path):
    scores = iter([50.0, 70.0, 70.0, 60.0])
    calls = []

    def validate(model):
        calls.append(model.training)
        return FakeResults(next(scores))

    seed_everything(0)
    trainer = _trainer(toy_benchmark, _cfg(epochs=4), tmp_path, validate=validate)
    history = trainer.fit(resume=False)
    assert len(calls) == 4
    assert history.best_epoch == 3 and history.best_metric == 70.0
    assert [e["validation"]["AR@1"] for e in history.epochs] == [50.0, 70.0, 70.0, 60.0]
    assert history.epochs[0]["validation"]["per_run_AR@1"] == {"a": 50.0, "b": 50.0}
    # best.pt holds epoch 3's weights, not the last epoch's
    best = load_weights(tmp_path / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(best[k], last[k]) for k in best if best[k].is_floating_point())


def test_eval_every_and_validation_does_not_shift_training(toy_benchmark, tmp_path):
    def validate(model):
        torch.rand(50), np.random.rand(3)  # an evaluation that draws random numbers
        return FakeResults(10.0)

    seed_everything(1)
    a = _trainer(toy_benchmark, _cfg(epochs=3, eval_every=2), tmp_path / "a", validate=validate)
    ha = a.fit(resume=False)
    assert [e["validation"] is not None for e in ha.epochs] == [False, True, True]  # every 2nd and the last
    seed_everything(1)
    b = _trainer(toy_benchmark, _cfg(epochs=3), tmp_path / "b", validate=None)
    b.fit(resume=False)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_batches_without_positive_or_negative_are_skipped(tmp_path):
    cfg = _cfg(epochs=1)
    images = torch.randn(4, 3, 8, 8)
    eye = torch.eye(4, dtype=torch.bool)
    good = {"images": images, "positives_mask": torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]],
                                                             dtype=torch.bool),
            "negatives_mask": ~eye & ~torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]],
                                                   dtype=torch.bool), "rel_paths": list("abcd")}
    no_neg = dict(good, negatives_mask=torch.zeros(4, 4, dtype=torch.bool))
    no_pos = dict(good, positives_mask=torch.zeros(4, 4, dtype=torch.bool))
    flagged = dict(good, skip=True)
    torch.manual_seed(0)
    model = TinyImageModel()
    optimizer = build_optimizer(student_parameter_groups(model, cfg.train), cfg.train)
    trainer = Trainer(model, StudentObjective(cfg.train, None), optimizer, build_scheduler(optimizer, cfg.train),
                      [no_neg, good, no_pos, flagged], cfg.train, tmp_path, progress=False, tensorboard=False)
    history = trainer.fit(resume=False)
    assert history.epochs[0]["batches"] == 1 and history.epochs[0]["skipped_batches"] == 3

    trainer = Trainer(model, StudentObjective(cfg.train, None), optimizer, build_scheduler(optimizer, cfg.train),
                      [no_neg], cfg.train, tmp_path / "all_skipped", progress=False, tensorboard=False)
    with pytest.raises(RuntimeError, match="every batch was skipped"):
        trainer.fit(resume=False)


def test_resume_refuses_other_configuration(toy_benchmark, tmp_path):
    seed_everything(0)
    _trainer(toy_benchmark, _cfg(epochs=1), tmp_path).fit(resume=False)
    trainer = _trainer(toy_benchmark, _cfg(epochs=2), tmp_path)
    trainer.fingerprint = "another"
    with pytest.raises(ValueError, match="another configuration"):
        trainer.fit(resume=True)


# ---------------------------------------------------------------------------
# objectives and optimiser
# ---------------------------------------------------------------------------
def _pair_masks(batch: int):
    labels = torch.arange(batch) // 2
    positives = (labels[:, None] == labels[None, :]) & ~torch.eye(batch, dtype=torch.bool)
    negatives = labels[:, None] != labels[None, :]
    return positives, negatives


def test_teacher_objective_weights_heads():
    cfg = profile_config("smoke")
    torch.manual_seed(0)
    positives, negatives = _pair_masks(8)
    outputs = {"embedding": torch.randn(8, 12, requires_grad=True), "cloud_embedding": torch.randn(8, 4),
               "image_embedding": torch.randn(8, 8)}
    result = TeacherObjective(cfg.train)(outputs, {"positives_mask": positives, "negatives_mask": negatives})
    assert set(result.terms) == {"triplet_embedding", "triplet_cloud_embedding"}  # image weight 0
    assert float(result.total.detach()) == pytest.approx(sum(float(v.detach()) for v in result.terms.values()))
    from distilvpr_lib.losses.triplet import BatchHardTripletLoss

    full, _ = BatchHardTripletLoss(0.2)(outputs["embedding"], positives, negatives)
    assert float(result.terms["triplet_embedding"].detach()) == pytest.approx(0.5 * float(full.detach()))
    assert "active_fraction" in result.stats and "teacher_norm_max" in result.stats


def test_student_objective_adds_distiller_terms_and_looks_up_cache():
    cfg = profile_config("smoke")
    positives, negatives = _pair_masks(4)
    cache = TeacherCache(["w", "x", "y", "z"], torch.arange(24, dtype=torch.float32).reshape(4, 6))
    seen = {}

    def distiller(student, teacher, p, n):
        seen["teacher"] = teacher
        return {"mse": ((student - teacher) ** 2).mean()}

    objective = StudentObjective(cfg.train, cache, distiller)
    student = torch.zeros(4, 6, requires_grad=True)
    result = objective({"embedding": student}, {"positives_mask": positives, "negatives_mask": negatives,
                                                "rel_paths": ["z", "x", "w", "y"]})
    assert torch.equal(seen["teacher"], cache.embeddings[[3, 1, 0, 2]])
    assert set(result.terms) == {"triplet", "mse"}
    assert float(result.total.detach()) == pytest.approx(float((result.terms["triplet"] + result.terms["mse"]).detach()))
    result.total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert result.stats["teacher_norm_max"] == pytest.approx(float(cache.embeddings.norm(dim=1).max()))
    with pytest.raises(KeyError, match="not in the teacher cache"):
        objective({"embedding": student}, {"positives_mask": positives, "negatives_mask": negatives,
                                           "rel_paths": ["q", "x", "w", "y"]})


def test_student_objective_distils_until_the_given_epoch_only():
    cfg = profile_config("smoke")
    positives, negatives = _pair_masks(4)
    cache = TeacherCache(["w", "x", "y", "z"], torch.arange(24, dtype=torch.float32).reshape(4, 6))
    calls = []

    def distiller(student, teacher, p, n):
        calls.append(1)
        return {"mse": ((student - teacher) ** 2).mean()}

    objective = StudentObjective(cfg.train, cache, distiller, distill_until=2)
    batch = {"positives_mask": positives, "negatives_mask": negatives, "rel_paths": ["w", "x", "y", "z"]}
    seen = {}
    for epoch in (1, 2, 3, 4):
        objective.set_epoch(epoch)
        student = torch.randn(4, 6, generator=torch.Generator().manual_seed(epoch), requires_grad=True)
        result = objective({"embedding": student}, batch)
        seen[epoch] = (set(result.terms), result.stats["distill_active"])
        if epoch > 2:  # the task term alone: the total is the triplet term, its gradient the triplet's
            assert float(result.total.detach()) == pytest.approx(float(result.terms["triplet"].detach()))
            assert "grad_norm/mse" not in result.stats
    assert seen == {1: ({"triplet", "mse"}, 1.0), 2: ({"triplet", "mse"}, 1.0),
                    3: ({"triplet"}, 0.0), 4: ({"triplet"}, 0.0)}
    assert len(calls) == 2
    always = StudentObjective(cfg.train, cache, distiller)  # 0 = every epoch (the paper)
    always.set_epoch(1000)
    assert "mse" in always({"embedding": torch.zeros(4, 6, requires_grad=True)}, batch).terms
    with pytest.raises(ValueError, match="until_epoch must be >= 0"):
        StudentObjective(cfg.train, cache, distiller, distill_until=-1)


def test_student_objective_distils_from_the_given_epoch_on():
    cfg = profile_config("smoke")
    positives, negatives = _pair_masks(4)
    cache = TeacherCache(["w", "x", "y", "z"], torch.arange(24, dtype=torch.float32).reshape(4, 6))

    def distiller(student, teacher, p, n):
        return {"mse": ((student - teacher) ** 2).mean()}

    batch = {"positives_mask": positives, "negatives_mask": negatives, "rel_paths": ["w", "x", "y", "z"]}
    window = StudentObjective(cfg.train, cache, distiller, distill_from=3, distill_until=4)
    seen = {}
    for epoch in range(1, 7):
        window.set_epoch(epoch)
        result = window({"embedding": torch.zeros(4, 6, requires_grad=True)}, batch)
        seen[epoch] = result.stats["distill_active"]
        assert ("mse" in result.terms) == (3 <= epoch <= 4)
    assert seen == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0, 5: 0.0, 6: 0.0}
    late = StudentObjective(cfg.train, cache, distiller, distill_from=5)  # until 0: to the end
    late.set_epoch(4)
    assert set(late({"embedding": torch.zeros(4, 6, requires_grad=True)}, batch).terms) == {"triplet"}
    late.set_epoch(500)
    assert "mse" in late({"embedding": torch.zeros(4, 6, requires_grad=True)}, batch).terms
    with pytest.raises(ValueError, match="from_epoch must be >= 1"):
        StudentObjective(cfg.train, cache, distiller, distill_from=0)
    with pytest.raises(ValueError, match="from_epoch .* after until_epoch"):
        StudentObjective(cfg.train, cache, distiller, distill_from=5, distill_until=4)


def test_parameter_groups_and_adam():
    cfg = profile_config("smoke")

    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.image_fe = nn.Linear(2, 2)
            self.cloud_fe = nn.Linear(2, 2)
            self.cloud_fe.bias.requires_grad_(False)

    groups = teacher_parameter_groups(Teacher(), cfg.train)
    assert [g["name"] for g in groups] == ["image", "cloud"]
    assert [g["lr"] for g in groups] == [cfg.train.image_lr, cfg.train.cloud_lr]
    assert [len(g["params"]) for g in groups] == [2, 1]
    optimizer = build_optimizer(groups, cfg.train)
    assert type(optimizer) is torch.optim.Adam  # Adam with L2 decay, not AdamW
    assert all(g["weight_decay"] == cfg.train.weight_decay for g in optimizer.param_groups)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="neither the image nor the cloud"):
        teacher_parameter_groups(Odd(), cfg.train)


def test_rng_capture_restore_roundtrip():
    seed_everything(5)
    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.rand(10)
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_cuda_exact_resume_and_amp(toy_benchmark, tmp_path, mixed_precision):
    def make(epochs, out, model_seed=0):
        cfg = _cfg(epochs=epochs, device="cuda", mixed_precision=mixed_precision)
        torch.manual_seed(model_seed)
        model = TinyImageModel()
        optimizer = build_optimizer(student_parameter_groups(model, cfg.train), cfg.train)
        return Trainer(model, StudentObjective(cfg.train, None), optimizer, build_scheduler(optimizer, cfg.train),
                       _loader(toy_benchmark, cfg), cfg.train, out, device="cuda", progress=False)

    seed_everything(3)
    full = make(2, tmp_path / "full")
    full.fit(resume=False)
    assert next(full.model.parameters()).is_cuda and full.use_amp == mixed_precision
    seed_everything(3)
    make(1, tmp_path / "resumed").fit(resume=False)
    torch.rand(100, device="cuda")
    second = make(2, tmp_path / "resumed", model_seed=9)
    second.fit(resume=True)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
