"""Every run is what its name says (issue 25, items 2-4): a teacher cache keyed by everything it depends on, the
same command giving the same weights whether it builds a cache or finds it (one ``distill`` after another, or
runs of a 2-worker batch against the same runs one at a time), and a resume (or re-run) refused, field by field,
when it asks for another run than the folder holds.

The library-level tests build a teacher with random weights (no training) at the smoke profile; the CLI tests
run the real ``distilvpr`` process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.data.files import write_json
from distilvpr_lib.engine.runs.run_folder import RunConfigMismatchError, check_resumable
from distilvpr_lib.engine.runs.teacher_cache import TeacherCache

REPO = Path(__file__).resolve().parents[1]


def _cfg(dataset, **overrides):
    return apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(dataset), "train.device": "cpu",
                                                     **overrides})


def _random_teacher(dataset: Path, folder: Path) -> Path:
    """A teacher folder (``config.json``, ``teacher.pt``) with seeded random weights: no training needed."""
    from distilvpr_lib.engine.train.checkpoint import save_weights
    from distilvpr_lib.models import build_teacher

    cfg = _cfg(dataset)
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    save_weights(folder / "teacher.pt", build_teacher(cfg.model).state_dict())
    write_json(folder / "config.json", cfg.to_dict())
    return folder


def _resized_copy(dataset: Path, out: Path, factor: float = 1.5) -> Path:
    """The dataset with every image resized (same pickles, same clouds): another dataset for the student."""
    from PIL import Image

    shutil.copytree(dataset, out)
    for path in (out / "images").rglob("*.png"):
        with Image.open(path) as image:
            image.resize((round(image.width * factor), round(image.height * factor))).save(path)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rng_state() -> tuple:
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


def _same_rng_state(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ---------------------------------------------------------------------------
# The teacher cache: keyed by its inputs, never overwritten, never touching the random stream
# ---------------------------------------------------------------------------
def test_teacher_cache_knows_its_images_and_never_overwrites_the_teachers(smoke_dataset, tmp_path, monkeypatch):
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.runs import student_cache
    from distilvpr_lib.engine.runs.student_cache import get_teacher_cache

    teacher = _random_teacher(smoke_dataset, tmp_path / "teacher")
    cpu = torch.device("cpu")
    own = get_teacher_cache(teacher, _cfg(smoke_dataset), Benchmark.load(smoke_dataset), cpu, progress=False,
                            out_dir=tmp_path / "run0")
    assert own.metadata["path"] == str(teacher / "teacher_cache.pt")  # the teacher's own dataset: its own file
    before = _files(teacher)

    resized = _resized_copy(smoke_dataset, tmp_path / "resized")
    other = get_teacher_cache(teacher, _cfg(resized), Benchmark.load(resized), cpu, progress=False,
                              out_dir=tmp_path / "run1")
    assert Path(other.metadata["path"]).parent == tmp_path / "run1"  # another dataset: in the student's folder
    assert Path(other.metadata["path"]).name.startswith("teacher_cache-")
    assert other.metadata["key_fields"]["image_size"] == [72, 96] != own.metadata["key_fields"]["image_size"]
    assert (other.embeddings - own.embeddings).abs().max() > 1e-3  # the other images' targets
    assert _files(teacher) == before  # the teacher folder is byte-for-byte unchanged

    # --image-dir pointing at the resized images: not the teacher's dataset either, the resized images' targets
    via_image_dir = _cfg(smoke_dataset, **{"data.image_dir": str(resized / "images")})
    benchmark = Benchmark.load(smoke_dataset, image_dir=resized / "images")
    third = get_teacher_cache(teacher, via_image_dir, benchmark, cpu, progress=False, out_dir=tmp_path / "run2")
    assert Path(third.metadata["path"]).parent == tmp_path / "run2"
    assert torch.allclose(third.embeddings, other.embeddings, atol=1e-5)
    assert _files(teacher) == before

    # each is current now: read, not rebuilt
    monkeypatch.setattr(student_cache, "build_teacher_cache", lambda *a, **k: pytest.fail("rebuilt a current cache"))
    again = get_teacher_cache(teacher, _cfg(resized), Benchmark.load(resized), cpu, progress=False,
                              out_dir=tmp_path / "run1")
    assert again.metadata["path"] == other.metadata["path"] and torch.equal(again.embeddings, other.embeddings)
    assert get_teacher_cache(teacher, _cfg(smoke_dataset), Benchmark.load(smoke_dataset), cpu,
                             progress=False).metadata["path"] == own.metadata["path"]


def test_a_cache_saved_by_another_run_meanwhile_is_used_not_overwritten_or_duplicated(smoke_dataset, tmp_path,
                                                                                      monkeypatch):
    """Two runs of a batch on one teacher both find no cache and both build it: the one that saves second uses the
    first one's file (same key) instead of writing a copy beside it or replacing a file the other run reads."""
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.runs import student_cache
    from distilvpr_lib.engine.runs.student_cache import get_teacher_cache

    teacher = _random_teacher(smoke_dataset, tmp_path / "teacher")
    cpu = torch.device("cpu")
    build = student_cache.build_teacher_cache

    def build_while_another_run_saves(*args, **kwargs):
        cache = build(*args, **kwargs)
        monkeypatch.setattr(student_cache, "build_teacher_cache", build)  # the other run: an ordinary build
        get_teacher_cache(teacher, _cfg(smoke_dataset), Benchmark.load(smoke_dataset), cpu, progress=False)
        return cache

    monkeypatch.setattr(student_cache, "build_teacher_cache", build_while_another_run_saves)
    saved = teacher / "teacher_cache.pt"
    cache = get_teacher_cache(teacher, _cfg(smoke_dataset), Benchmark.load(smoke_dataset), cpu, progress=False)
    assert cache.metadata["path"] == str(saved)
    assert sorted(p.name for p in teacher.glob("teacher_cache*")) == ["teacher_cache.pt"]  # no copy beside it
    assert torch.equal(cache.embeddings, student_cache.TeacherCache.load(saved).embeddings)


def test_a_cache_without_a_key_is_rebuilt_beside_it(smoke_dataset, tmp_path):
    """A cache written before caches were keyed (or by hand) is not trusted, and not overwritten."""
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.runs.student_cache import get_teacher_cache

    teacher = _random_teacher(smoke_dataset, tmp_path / "teacher")
    benchmark = Benchmark.load(smoke_dataset)
    rel_paths = [t.rel_scan_filepath for t in benchmark.training_tuples.values()]
    TeacherCache(rel_paths, torch.zeros(len(rel_paths), 96)).save(teacher / "teacher_cache.pt")
    old = (teacher / "teacher_cache.pt").read_bytes()
    cache = get_teacher_cache(teacher, _cfg(smoke_dataset), benchmark, torch.device("cpu"), progress=False)
    assert Path(cache.metadata["path"]).name.startswith("teacher_cache-") and cache.embeddings.abs().sum() > 0
    assert (teacher / "teacher_cache.pt").read_bytes() == old


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "augmented-per-seed"])
def test_building_a_teacher_cache_leaves_the_random_stream_alone(smoke_dataset, tmp_path, clean):
    """The cause of 'same command, different weights': building the teacher (random initialisation before
    its weights are loaded) drew from the global generators the student's training then used."""
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.runs.student_cache import get_teacher_cache

    teacher = _random_teacher(smoke_dataset, tmp_path / "teacher")
    cfg = _cfg(smoke_dataset, **{"train.clean_teacher_cache": clean})
    benchmark = Benchmark.load(smoke_dataset)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = _rng_state()
    get_teacher_cache(teacher, cfg, benchmark, torch.device("cpu"), progress=False)
    assert _same_rng_state(before, _rng_state())


def test_building_the_image_cache_leaves_the_random_stream_alone(smoke_dataset, tmp_path):
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.data.image_cache import open_training_image_cache

    before = _rng_state()
    open_training_image_cache(Benchmark.load(smoke_dataset), tmp_path / "cache", progress=False)
    assert _same_rng_state(before, _rng_state())


# ---------------------------------------------------------------------------
# The resume check, field by field (library level: fake run folders)
# ---------------------------------------------------------------------------
def _fake_run(folder: Path, cfg, epochs_done: int, fingerprint: str | None, checkpoint: bool = True) -> Path:
    from distilvpr_lib.engine.train.checkpoint import CHECKPOINT_FORMAT

    folder.mkdir(parents=True)
    write_json(folder / "config.json", cfg.to_dict())
    if checkpoint:
        (folder / "checkpoints").mkdir()
        state = {"format": CHECKPOINT_FORMAT, "epoch": epochs_done}
        if fingerprint is not None:
            state["run"] = {"dataset_fingerprint": fingerprint}
        torch.save(state, folder / "checkpoints" / "last.pt")
    else:  # a finished run whose checkpoints were removed
        (folder / "student.pt").write_bytes(b"weights")
        write_json(folder / "metrics.json", {"status": "complete", "dataset_fingerprint": fingerprint,
                                             "epochs": [{"epoch": e + 1} for e in range(epochs_done)]})
    return folder


def _refusal(cfg, folder, fingerprint) -> str:
    with pytest.raises(RunConfigMismatchError) as info:
        check_resumable(cfg, folder, True, dataset_fingerprint=fingerprint)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{folder}: holds a run of another configuration")
    assert info.value.exit_code == 1
    return message


@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "finished-without-checkpoint"])
def test_resume_check_names_every_field_that_differs(tmp_path, checkpoint):
    base = _cfg("data/a")
    run = _fake_run(tmp_path / "run", base, 2, "a" * 64, checkpoint=checkpoint)
    fp = "a" * 64
    check_resumable(base, run, True, dataset_fingerprint=fp)  # the same run: resumes
    check_resumable(apply_overrides(base, {"train.epochs": 3}), run, True, dataset_fingerprint=fp)  # extended
    # a moved dataset (same content) and execution settings may change
    check_resumable(apply_overrides(base, {"data.dataset_dir": "/elsewhere/a", "train.eval_batch_size": 8,
                                           "data.num_workers": 2, "train.device": "auto"}), run, True,
                    dataset_fingerprint=fp)
    check_resumable(apply_overrides(base, {"train.batch_size": 8}), run, False, dataset_fingerprint=fp)  # --no-resume

    message = _refusal(apply_overrides(base, {"train.epochs": 1}), run, fp)
    assert "train.epochs 2 → 1 (2 epochs already trained)" in message
    assert "train.batch_size 16 → 8" in _refusal(apply_overrides(base, {"train.batch_size": 8}), run, fp)
    message = _refusal(apply_overrides(base, {"data.dataset_dir": "data/b"}), run, "b" * 64)
    assert f"dataset data/a (fingerprint {'a' * 12}) → data/b (fingerprint {'b' * 12})" in message
    message = _refusal(apply_overrides(base, {"train.seed": 8, "distill.method": "nokd", "train.eval_every": 2}),
                       run, fp)
    assert "distill.method distilvpr → nokd; train.eval_every 1 → 2; train.seed 7 → 8" in message


def test_resume_check_of_a_folder_without_a_fingerprint_compares_the_paths(tmp_path):
    base = _cfg(tmp_path / "a")
    run = _fake_run(tmp_path / "run", base, 1, None)
    check_resumable(base, run, True, dataset_fingerprint="c" * 64)
    message = _refusal(_cfg(tmp_path / "b"), run, "c" * 64)
    assert f"data.dataset_dir {tmp_path / 'a'} → {tmp_path / 'b'}" in message


# ---------------------------------------------------------------------------
# Through the real command line
# ---------------------------------------------------------------------------
def distilvpr(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``distilvpr`` (``python -m distilvpr_lib.cli``) with this checkout first on the path, 1 thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("DISTILVPR_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p])
    return subprocess.run([sys.executable, "-m", "distilvpr_lib.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])


def _one_line_refusal(proc: subprocess.CompletedProcess, out: Path) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: holds a run of another configuration"), lines
    return lines[0]


DISTILL = ("distill", "--profile", "smoke", "--quiet", "--device", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("faithful", [False, True], ids=["clean-cache", "per-seed-augmented-cache"])
def test_same_distill_command_same_weights_whether_it_builds_the_cache_or_finds_it(smoke_dataset, tmp_path,
                                                                                   faithful):
    teacher = _random_teacher(smoke_dataset, tmp_path / "teacher")
    extra = ("--set", "train.clean_teacher_cache=false") if faithful else ()
    command = (*DISTILL, "--dataset", str(smoke_dataset), "--teacher", str(teacher), "--method", "distilvpr",
               "--epochs", "1", *extra)
    _ok(distilvpr(*command, "--out", str(tmp_path / "builds")))
    caches = sorted(p.name for p in teacher.glob("teacher_cache*.pt"))
    assert caches == ["teacher_cache_augmented_seed7.pt" if faithful else "teacher_cache.pt"]  # built by run 1
    _ok(distilvpr(*command, "--out", str(tmp_path / "finds")))
    assert sorted(p.name for p in teacher.glob("teacher_cache*.pt")) == caches  # read by run 2, not rebuilt
    built = json.loads((tmp_path / "builds" / "metrics.json").read_text())
    found = json.loads((tmp_path / "finds" / "metrics.json").read_text())
    assert built["final_losses"] == found["final_losses"]
    assert (tmp_path / "builds" / "student.pt").read_bytes() == (tmp_path / "finds" / "student.pt").read_bytes()
    assert built["dataset_fingerprint"] == found["dataset_fingerprint"] and len(built["dataset_fingerprint"]) == 64


@pytest.mark.slow
def test_resume_or_rerun_with_other_options_is_refused_naming_the_field(smoke_dataset, tmp_path):
    out = tmp_path / "run"
    command = (*DISTILL, "--method", "nokd", "--out", str(out))
    _ok(distilvpr(*command, "--dataset", str(smoke_dataset), "--epochs", "2"))
    finished = _files(out)

    line = _one_line_refusal(distilvpr(*command, "--dataset", str(smoke_dataset), "--epochs", "1"), out)
    assert "train.epochs 2 → 1 (2 epochs already trained)" in line and "--no-resume" in line
    other = _resized_copy(smoke_dataset, tmp_path / "other")
    line = _one_line_refusal(distilvpr(*command, "--dataset", str(other), "--epochs", "2"), out)
    assert f"dataset {smoke_dataset} (fingerprint " in line and f"→ {other} (fingerprint " in line
    line = _one_line_refusal(distilvpr(*command, "--dataset", str(smoke_dataset), "--epochs", "2",
                                       "--set", "train.batch_size=8"), out)
    assert "train.batch_size 16 → 8" in line
    assert _files(out) == finished  # nothing written by a refusal

    # --no-resume starts over: config.json describes the weights beside it
    _ok(distilvpr(*command, "--dataset", str(smoke_dataset), "--epochs", "1", "--no-resume"))
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 1
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [1]


# ---------------------------------------------------------------------------
# A 2-worker batch gives the weights of the same runs made one at a time
# ---------------------------------------------------------------------------
def _notebook_teacher(dataset: Path, folder: Path) -> Path:
    """:func:`_random_teacher` with the ``metrics.json`` notebook 03's comparison table reads (no test results)."""
    _random_teacher(dataset, folder)
    write_json(folder / "metrics.json", {"kind": "teacher", "status": "complete", "test": {}})
    return folder


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_two_worker_batch_gives_the_weights_of_the_same_runs_one_at_a_time(smoke_dataset, tmp_path, monkeypatch):
    """Two distilled runs of notebook 03 sharing one teacher folder without a cache, at the smoke profile:
    ``--workers 1`` builds the cache in the first run and reads it in the second; ``--workers 2`` runs both at
    once (each builds it, or one reads what the other built). Every ``student.pt`` is byte-identical across the
    two batches: building the cache inside a run, concurrent or not, leaves the training's random stream alone."""
    from distilvpr_lib.batch import run_batch
    from distilvpr_lib.executors.claims import THREADS_ENV

    monkeypatch.setenv(THREADS_ENV, "1")  # the same threads per run in both batches (floats depend on them)
    teacher = _notebook_teacher(smoke_dataset, tmp_path / "teacher")
    names = ["distilvpr__seed0", "rkd__seed0"]
    weights: dict[int, dict[str, str]] = {}  # workers -> run -> SHA-256 of its student.pt
    for workers in (2, 1):
        own = shutil.copytree(teacher, tmp_path / f"teacher-w{workers}")  # a fresh copy: no teacher_cache.pt yet
        assert not list(own.glob("teacher_cache*.pt"))
        grid = tmp_path / f"grid-w{workers}.yaml"
        grid.write_text(yaml.safe_dump({
            "name": "same", "notebook": "notebooks/03_distillation.ipynb", "seeds": [0],
            "base": {"dataset": str(smoke_dataset), "teacher": str(own), "profile": "smoke", "epochs": 1},
            "variations": [{"name": "distilvpr", "method": "distilvpr"}, {"name": "rkd", "method": "rkd"}]}))
        summary = run_batch(grid, out_root=tmp_path / f"w{workers}", workers=workers, progress=False)
        assert [(o.name, o.status) for o in summary.outcomes] == [(n, "ok") for n in names], \
            [o.error for o in summary.outcomes]
        # built inside the batch (two runs building it at once: the second writes its copy beside the first)
        assert "teacher_cache.pt" in [p.name for p in own.glob("teacher_cache*.pt")]
        runs = [tmp_path / f"w{workers}" / "same" / name for name in names]
        caches = [json.loads((run / "metrics.json").read_text())["teacher_cache"] for run in runs]
        assert all(Path(c["file"]).parent == own for c in caches) and caches[0]["cache_key"] == caches[1]["cache_key"]
        assert {json.loads((run / "metrics.json").read_text())["cpu_threads"] for run in runs} == {1}
        weights[workers] = {run.name: hashlib.sha256((run / "student.pt").read_bytes()).hexdigest() for run in runs}
    assert len(set(weights[2].values())) == 2, "two methods, two sets of weights"
    assert weights[2] == weights[1]
