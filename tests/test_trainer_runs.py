"""End-to-end teacher and student runs at smoke size (engine.runs.teacher_run, engine.runs.student_run): files written, metrics,
validation-only selection, every named term logged, cache reuse, resume."""

from __future__ import annotations

import json

import pytest
import torch

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.engine.evaluation import embed
from distilvpr_lib.engine.train.checkpoint import load_checkpoint, load_weights
from distilvpr_lib.engine.runs.run_evaluation import evaluate_run
from distilvpr_lib.engine.runs.run_folder import RunConfigMismatchError
from distilvpr_lib.engine.runs.student_run import distill_student
from distilvpr_lib.engine.runs.student_cache import get_teacher_cache
from distilvpr_lib.engine.runs.teacher_run import train_teacher
from distilvpr_lib.engine.runs.teacher_cache import TeacherCache
from distilvpr_lib.errors import OptionError
from distilvpr_lib.losses.distiller import Distiller

TEACHER_FILES = ("config.json", "teacher.pt", "metrics.json", "test_results.npz", "teacher_cache.pt", "run.log",
                 "summary.json", "tensorboard")
STUDENT_FILES = ("config.json", "student.pt", "metrics.json", "test_results.npz", "run.log", "summary.json",
                 "tensorboard")
#: What a complete run does not keep: the checkpoints only a resume needs, the writer's lock.
NOT_KEPT = ("checkpoints", ".distilvpr.lock")


def _cfg(dataset, **overrides):
    return apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(dataset), **overrides})


def _fake_teacher_dir(dataset, path, dim=96):
    """A teacher folder holding only a cache (random embeddings) — no teacher weights at all."""
    from distilvpr_lib.data.benchmark import Benchmark

    benchmark = Benchmark.load(dataset)
    rel_paths = [t.rel_scan_filepath for t in benchmark.training_tuples.values()]
    generator = torch.Generator().manual_seed(0)
    TeacherCache(rel_paths, torch.randn(len(rel_paths), dim, generator=generator) * 2.0).save(path / "teacher_cache.pt")
    return path


def _spy_evaluations(monkeypatch):
    calls = []
    real = embed.evaluate_model

    def spy(model, benchmark, split="test", *args, **kwargs):
        calls.append(split)
        return real(model, benchmark, split, *args, **kwargs)

    monkeypatch.setattr(embed, "evaluate_model", spy)
    return calls


def _tensorboard_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_nokd_student_selects_on_validation_only(smoke_dataset, tmp_path, monkeypatch):
    calls = _spy_evaluations(monkeypatch)
    monkeypatch.setattr("distilvpr_lib.models.build_teacher",
                        lambda *a, **k: pytest.fail("nokd must not build a teacher"))
    metrics = distill_student(_cfg(smoke_dataset), None, tmp_path / "run", method="nokd", progress=False)
    # training evaluates only the validation split; the test split is read once, after training
    assert calls == ["validation", "validation", "test"]
    for name in STUDENT_FILES:
        assert (tmp_path / "run" / name).exists(), name
    assert not [name for name in NOT_KEPT if (tmp_path / "run" / name).exists()]
    assert metrics["kind"] == "student" and metrics["method"] == "nokd"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert set(metrics["final_losses"]) == {"triplet", "total"}
    assert metrics["best_epoch"] in (1, 2)
    best = metrics["epochs"][metrics["best_epoch"] - 1]["validation"]["AR@1"]
    assert best == max(e["validation"]["AR@1"] for e in metrics["epochs"])
    assert set(metrics["test"]) >= {"AR@1", "AR@5", "AR@10", "AR@1%", "per_run_AR@1"}
    assert len(metrics["test"]["per_run_AR@1"]) == 3
    assert metrics["embedding_norms"]["student"]["max"] >= metrics["embedding_norms"]["student"]["mean"] > 0
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["test"]["AR@1"] == pytest.approx(metrics["test"]["AR@1"])
    # summary.json: one screen of the run
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] == metrics["best_epoch"] and summary["test"]["AR@1"] == metrics["test"]["AR@1"]
    assert summary["config_changes"] == {"data.dataset_dir": {"profile": "data/smoke", "run": str(smoke_dataset)},
                                         "distill.method": {"profile": "distilvpr", "run": "nokd"}}
    assert summary["skipped_batches"] == sum(e["skipped_batches"] for e in metrics["epochs"])
    log = (tmp_path / "run" / "run.log").read_text()
    assert log.count("student (nokd): selected epoch") == 1 and "epoch   2" in log
    # re-run complete: nothing trained or evaluated; with more epochs (no last.pt to continue from): refused
    # before anything is written, the complete record kept
    calls.clear()
    assert distill_student(_cfg(smoke_dataset), None, tmp_path / "run", method="nokd", progress=False) == on_disk
    assert calls == []
    with pytest.raises(RunConfigMismatchError, match="complete run of 2 epochs"):
        distill_student(_cfg(smoke_dataset, **{"train.epochs": 3}), None, tmp_path / "run", method="nokd",
                        progress=False)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == on_disk
    # evaluate_run reproduces the test summary from the folder
    summary, _ = evaluate_run(tmp_path / "run", device="cpu", progress=False)
    assert summary["kind"] == "student" and summary["AR@1"] == pytest.approx(metrics["test"]["AR@1"])


def test_distilvpr_student_logs_every_named_term_without_teacher_forward(smoke_dataset, tmp_path, monkeypatch):
    teacher_dir = _fake_teacher_dir(smoke_dataset, tmp_path / "teacher")
    monkeypatch.setattr("distilvpr_lib.models.build_teacher",
                        lambda *a, **k: pytest.fail("student training must not run the teacher"))
    cfg = _cfg(smoke_dataset, **{"train.epochs": 1})
    metrics = distill_student(cfg, teacher_dir, tmp_path / "run", progress=False)
    expected = set(Distiller(cfg.distill).term_names)
    assert {"rkdg_distance", "rkdg_angle", "rkdg_geodesic", "cross_euclidean_st2ss"} <= expected
    assert set(metrics["final_losses"]) == expected | {"triplet", "total"}
    assert set(metrics["epochs"][0]["losses"]) == expected | {"triplet", "total"}
    assert metrics["final_losses"]["total"] == pytest.approx(
        sum(v for k, v in metrics["final_losses"].items() if k != "total"), rel=1e-5)
    assert set(metrics["loss_weights"]) == expected | {"triplet"}
    assert metrics["loss_weights"]["rkdg_distance"] == pytest.approx(10.0)
    assert metrics["embedding_norms"]["teacher"]["mean"] > 0
    tags = _tensorboard_tags(tmp_path / "run" / "tensorboard")
    for term in expected | {"triplet", "total"}:
        assert f"train/loss/{term}" in tags and f"epoch/loss/{term}" in tags
    assert {"lr/student", "val/AR@1", "train/active_fraction", "epoch/student_norm_max"} <= tags


def test_distillation_window_from_and_until_epoch(smoke_dataset, tmp_path):
    teacher_dir = _fake_teacher_dir(smoke_dataset, tmp_path / "teacher")
    bad = _cfg(smoke_dataset, **{"train.epochs": 2, "distill.until_epoch": -1})
    with pytest.raises(OptionError, match="until_epoch must be >= 0"):
        distill_student(bad, teacher_dir, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    cfg = _cfg(smoke_dataset, **{"train.epochs": 2, "distill.until_epoch": 1})
    metrics = distill_student(cfg, teacher_dir, tmp_path / "run", progress=False)
    first, second = (set(e["losses"]) for e in metrics["epochs"])
    assert {"rkdg_distance", "cross_euclidean_st2ss"} <= first
    assert second == {"triplet", "total"}
    window = _cfg(smoke_dataset, **{"train.epochs": 2, "distill.from_epoch": 3, "distill.until_epoch": 2})
    with pytest.raises(OptionError, match="from_epoch 3 is after until_epoch 2"):
        distill_student(window, teacher_dir, tmp_path / "bad2", progress=False)
    assert not (tmp_path / "bad2").exists()
    late = _cfg(smoke_dataset, **{"train.epochs": 2, "distill.from_epoch": 2})  # task alone first, then both
    metrics = distill_student(late, teacher_dir, tmp_path / "late", progress=False)
    first, second = (set(e["losses"]) for e in metrics["epochs"])
    assert first == {"triplet", "total"}
    assert {"rkdg_distance", "cross_euclidean_st2ss"} <= second


def test_term_override_and_dimension_mismatch(smoke_dataset, tmp_path):
    teacher_dir = _fake_teacher_dir(smoke_dataset, tmp_path / "teacher", dim=40)
    cfg = _cfg(smoke_dataset, **{"train.epochs": 1})
    with pytest.raises(ValueError, match="student_dim"):
        distill_student(cfg, teacher_dir, tmp_path / "run", progress=False)
    with pytest.raises(KeyError, match="unknown"):
        distill_student(_cfg(smoke_dataset, **{"distill.terms": {"not_a_term": 1.0}}), teacher_dir, tmp_path / "r2",
                        progress=False)


@pytest.mark.slow
def test_teacher_run_writes_everything_then_distils_and_resumes(smoke_dataset, tmp_path, monkeypatch):
    # keep_checkpoints: the complete runs stay extendable (the resume below continues a complete 1-epoch run)
    cfg = _cfg(smoke_dataset, **{"train.deterministic": True, "train.keep_checkpoints": True})
    calls = _spy_evaluations(monkeypatch)
    metrics = train_teacher(cfg, tmp_path / "teacher", progress=False)
    assert calls == ["validation", "validation", "test"]
    for name in TEACHER_FILES:
        assert (tmp_path / "teacher" / name).exists(), name
    # the selected weights are stored once: checkpoints/best.pt is a hard link to teacher.pt
    best, teacher_pt = tmp_path / "teacher" / "checkpoints" / "best.pt", tmp_path / "teacher" / "teacher.pt"
    assert best.stat().st_ino == teacher_pt.stat().st_ino
    assert not (tmp_path / "teacher" / ".distilvpr.lock").exists()
    assert metrics["kind"] == "teacher" and len(metrics["epochs"]) == 2
    assert set(metrics["final_losses"]) == {"triplet_embedding", "triplet_cloud_embedding", "total"}
    assert metrics["epochs"][0]["lr"] == {"image": cfg.train.image_lr, "cloud": cfg.train.cloud_lr}
    from distilvpr_lib.data.benchmark import Benchmark

    benchmark = Benchmark.load(smoke_dataset)
    cache = TeacherCache.load(tmp_path / "teacher" / "teacher_cache.pt")
    assert len(cache) == len(benchmark.training_tuples) == metrics["teacher_cache"]["count"]
    assert cache.dim == cfg.model.cloud_dim + cfg.model.image_dim
    tags = _tensorboard_tags(tmp_path / "teacher" / "tensorboard")
    assert {"train/loss/triplet_embedding", "train/loss/triplet_cloud_embedding", "lr/image", "lr/cloud",
            "val/AR@1"} <= tags

    # exact resume end to end: 1 epoch, then continue to 2 == the uninterrupted run
    train_teacher(apply_overrides(cfg, {"train.epochs": 1}), tmp_path / "resumed", progress=False)
    resumed = train_teacher(cfg, tmp_path / "resumed", progress=False)
    a = load_checkpoint(tmp_path / "teacher" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test"]["AR@1"] == pytest.approx(metrics["test"]["AR@1"])
    assert torch.equal(TeacherCache.load(tmp_path / "resumed" / "teacher_cache.pt").embeddings, cache.embeddings)

    # a complete run re-run: nothing to do, the recorded results
    calls.clear()
    again = train_teacher(cfg, tmp_path / "teacher", progress=False)
    assert calls == [] and again["epochs"] == metrics["epochs"]

    # the student reuses the cache; a changed teacher.pt makes it stale and it is rebuilt
    student = distill_student(apply_overrides(cfg, {"train.epochs": 1}), tmp_path / "teacher", tmp_path / "student",
                              progress=False)
    assert "rkdg_geodesic" in student["final_losses"]
    weights = load_weights(tmp_path / "teacher" / "teacher.pt")
    weights = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in weights.items()}
    torch.save(weights, tmp_path / "teacher" / "teacher.pt")
    own_cache = (tmp_path / "teacher" / "teacher_cache.pt").read_bytes()
    rebuilt = get_teacher_cache(tmp_path / "teacher", cfg, benchmark, torch.device("cpu"), progress=False)
    assert not torch.equal(rebuilt.embeddings, cache.embeddings)
    # built beside the old one (teacher_cache-<key16>.pt), which other runs may be reading: never overwritten
    assert (tmp_path / "teacher" / "teacher_cache.pt").read_bytes() == own_cache
    beside = TeacherCache.load(rebuilt.metadata["path"])
    assert beside.metadata["path"].startswith(str(tmp_path / "teacher" / "teacher_cache-"))
    assert beside.metadata["teacher_weights_sha256"] == rebuilt.metadata["teacher_weights_sha256"] != \
        cache.metadata["teacher_weights_sha256"]


def test_same_seed_same_threads_gives_identical_results(smoke_dataset, tmp_path):
    """Same seed and thread count -> bit-identical losses and recalls (what "same seeds -> same recalls" of
    `make demo` rests on); the thread count is recorded, since float sums split over threads round differently."""
    cfg = _cfg(smoke_dataset, **{"train.epochs": 3})
    runs = [distill_student(cfg, None, tmp_path / f"run{i}", method="nokd", progress=False) for i in range(2)]
    assert runs[0]["cpu_threads"] == runs[1]["cpu_threads"] == torch.get_num_threads()
    # and so is what the floats were computed in (the benchmark's machine fingerprint, PROTOCOL §5)
    precision = runs[0]["precision"]
    assert precision == runs[1]["precision"] and precision["device"] == str(runs[0]["device"]).split(":")[0]
    if precision["device"] == "cpu":
        assert precision["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert precision["machine"] == " ".join([
            "cpu", precision["cpu_capability"], *(["native-bf16"] if precision["native_bfloat16"] else []),
            f"autocast={'bfloat16' if cfg.train.mixed_precision else 'off'}"])
    assert runs[0]["final_losses"] == runs[1]["final_losses"]
    assert [e["losses"] for e in runs[0]["epochs"]] == [e["losses"] for e in runs[1]["epochs"]]
    assert runs[0]["test"] == runs[1]["test"]
    first = load_weights(tmp_path / "run0" / "student.pt")
    second = load_weights(tmp_path / "run1" / "student.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)
    # a different seed trains a different student (the test above could not pass by ignoring the seed)
    other = distill_student(apply_overrides(cfg, {"train.seed": cfg.train.seed + 1}), None, tmp_path / "run2",
                            method="nokd", progress=False)
    assert other["final_losses"] != runs[0]["final_losses"]
