"""Inputs that used to end in "unexpected … (a bug)" are checked errors naming the file or the parameter (issue 25).

Through the real ``distilvpr`` process at the smoke profile (helpers from ``test_fault_injection``): each case
exits 1 (bad data) or 2 (bad option) with exactly one stderr line ``error: …`` naming the file or the
parameter, no traceback, and — where the check comes before the run — no ``--out`` folder afterwards.
Cases: an image of another size, a full disk during a checkpoint write (fault hook ``enospc:``), a teacher's
``config.json`` with wrong-typed fields or empty, out-of-range options and a CUDA device without CUDA, a
symlink loop in a dataset, a read-only dataset with the image cache on (hook ``readonly:`` when the tests
run as root, where ``chmod -R a-w`` stops no write), and a Boreas-layout dataset end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from test_fault_injection import assert_one_line_error, distilvpr

SMOKE = ("--profile", "smoke", "--quiet", "--device", "cpu")


def _copy(smoke_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(smoke_dataset, root)
    return root


# ---------------------------------------------------------------------------
# Config values: types (config.json) and ranges (options), no process needed
# ---------------------------------------------------------------------------
def test_config_json_fields_are_type_checked(tmp_path: Path) -> None:
    from distilvpr_lib.config import ExperimentConfig, profile_config
    from distilvpr_lib.errors import DataFormatError

    saved = json.loads(profile_config("smoke").to_json())
    saved["model"]["cloud_dim"] = 32.0  # an integral float: accepted as the int
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    assert ExperimentConfig.load(path).model.cloud_dim == 32 and type(ExperimentConfig.load(path).model.cloud_dim) is int
    for section, name, value, words in [("model", "cloud_dim", 32.5, "expected an integer"),
                                        ("model", "sparse_backend", 3, "expected a string"),
                                        ("train", "milestones", ["x"], "expected an integer"),
                                        ("train", "epochs", None, "got None")]:
        bad = json.loads(json.dumps(saved))
        bad[section][name] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(DataFormatError, match=f"{section}.{name}") as caught:
            ExperimentConfig.load(path)
        assert str(path) in str(caught.value) and words in str(caught.value)
    for content, words in [({}, "empty"), ({**saved, "train": "fast"}, "train: expected a section"),
                           ({"model": saved["model"]}, "missing the section(s) data, train"), ([1], "JSON object")]:
        path.write_text(json.dumps(content))
        with pytest.raises(DataFormatError, match="not a workbench configuration") as caught:
            ExperimentConfig.load(path)
        assert words in str(caught.value)


def test_option_ranges_name_the_field() -> None:
    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.config_checks import check_config_values
    from distilvpr_lib.config_types import ConfigValueError

    cfg = profile_config("smoke")
    check_config_values(cfg)
    for overrides, field in [({"train.epochs": 0}, "train.epochs"), ({"train.batch_size": 1}, "train.batch_size"),
                             ({"train.image_lr": 0.0}, "train.image_lr"), ({"data.layout": "kitti"}, "data.layout"),
                             ({"train.device": "gpu"}, "train.device"), ({"model.cloud_planes": "8_0"}, "cloud_planes")]:
        with pytest.raises(ConfigValueError, match=field):
            check_config_values(apply_overrides(cfg, overrides))
    with pytest.raises(ConfigValueError, match="train.epochs: expected an integer"):
        apply_overrides(cfg, {"train.epochs": "ten"})


# ---------------------------------------------------------------------------
# Through the CLI
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("options, names", [
    (("--epochs", "0"), "train.epochs"),
    (("--set", "train.batch_size=0"), "train.batch_size"),
    (("--set", "train.epochs=ten"), "train.epochs"),
    (("--set", "model.sparse_backend=sparse"), "model.sparse_backend"),
], ids=["epochs-0", "batch-size-0", "epochs-ten", "unknown-backend"])
def test_bad_option_values_exit_2_before_anything_is_written(smoke_dataset: Path, tmp_path: Path,
                                                             options: tuple[str, ...], names: str) -> None:
    out = tmp_path / "out" / "teacher"
    proc = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(out), *SMOKE, *options)
    assert_one_line_error(proc, names, code=2)
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_is_an_option_error(smoke_dataset: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out" / "student"
    proc = distilvpr("distill", "--dataset", str(smoke_dataset), "--method", "nokd", "--profile", "smoke", "--quiet",
                     "--device", "cuda", "--out", str(out))
    line = assert_one_line_error(proc, "train.device", code=2)
    assert "CUDA is not available" in line and "--device" in line
    assert not (tmp_path / "out").exists()


def _resize_one_image(root: Path) -> Path:
    from PIL import Image

    from distilvpr_lib.data.benchmark import Benchmark

    benchmark = Benchmark.load(root)
    victim = benchmark.image_path(benchmark.training_tuples[3].rel_scan_filepath, 0)
    with Image.open(victim) as image:
        image.convert("RGB").resize((image.width * 2, image.height * 2)).save(victim)
    return victim


@pytest.mark.parametrize("command", ["train-teacher", "check-data"])
def test_an_image_of_another_size_is_named(smoke_dataset: Path, tmp_path: Path, command: str) -> None:
    root = _copy(smoke_dataset, tmp_path)
    victim = _resize_one_image(root)
    out = tmp_path / "out" / "teacher"
    if command == "train-teacher":
        proc = distilvpr("train-teacher", "--dataset", str(root), "--out", str(out), *SMOKE)
    else:
        proc = distilvpr("check-data", str(root))
    line = assert_one_line_error(proc, victim)
    assert "image of size 128x96" in line and "are 64x48" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train-teacher", "check-data"])
def test_a_symlink_loop_is_named(smoke_dataset: Path, tmp_path: Path, command: str) -> None:
    from distilvpr_lib.data.pickles import load_training_tuples

    root = _copy(smoke_dataset, tmp_path)
    victim = root / load_training_tuples(root / "training_queries_baseline.pickle")[0].rel_scan_filepath
    victim.unlink()
    victim.symlink_to(victim.name)  # points at itself
    out = tmp_path / "out" / "teacher"
    if command == "train-teacher":
        proc = distilvpr("train-teacher", "--dataset", str(root), "--out", str(out), *SMOKE)
    else:
        proc = distilvpr("check-data", str(root))
    assert "symlink loop" in assert_one_line_error(proc, victim)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# A trained teacher: its config.json, a full disk
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(smoke_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train-teacher`` at the smoke profile, 1 epoch."""
    out = tmp_path_factory.mktemp("checked") / "teacher"
    proc = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(out), *SMOKE, "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("change, words", [
    (lambda c: c["model"].__setitem__("sparse_backend", 3), "model.sparse_backend: expected a string"),
    (lambda c: c.__setitem__("train", "fast"), "train: expected a section"),
    (lambda c: c["model"].__setitem__("cloud_dim", 32.5), "model.cloud_dim: expected an integer"),
    (lambda c: c.clear(), "empty"),
], ids=["backend-int", "section-string", "cloud-dim-fraction", "empty"])
def test_a_bad_teacher_config_names_config_json(teacher: Path, smoke_dataset: Path, tmp_path: Path, change,
                                                words: str) -> None:
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy)
    for cache in copy.glob("teacher_cache*.pt"):
        cache.unlink()  # the run then reads config.json and teacher.pt
    config = json.loads((copy / "config.json").read_text())
    change(config)
    (copy / "config.json").write_text(json.dumps(config))
    proc = distilvpr("distill", "--dataset", str(smoke_dataset), "--teacher", str(copy), "--method", "distilvpr",
                     *SMOKE, "--epochs", "1", "--out", str(tmp_path / "out" / "student"))
    line = assert_one_line_error(proc, copy / "config.json")
    assert words in line and "teacher.pt" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_integral_float_in_config_json_is_accepted(teacher: Path, smoke_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["cloud_dim"] = float(config["model"]["cloud_dim"])
    (copy / "config.json").write_text(json.dumps(config))
    proc = distilvpr("evaluate", "--model", str(copy), "--dataset", str(smoke_dataset), "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["kind"] == "teacher"


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write_names_the_file(smoke_dataset: Path, tmp_path: Path) -> None:
    import torch

    from distilvpr_lib.data.files import is_temp_file

    out = tmp_path / "teacher"
    proc = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(out), *SMOKE, "--epochs", "2",
                     fault="enospc:last.pt:2")
    last = out / "checkpoints" / "last.pt"
    line = assert_one_line_error(proc, last)
    assert "disk full: writing it needs" in line and "bytes" in line
    state = torch.load(last, weights_only=True)  # the epoch-1 checkpoint survived, whole
    assert state["epoch"] == 1
    assert not [p for p in out.rglob("*") if is_temp_file(p)]


# ---------------------------------------------------------------------------
# Read-only datasets and the image cache
# ---------------------------------------------------------------------------
def _read_only(root: Path) -> str | None:
    """Make ``root`` read-only: ``chmod -R a-w`` for an ordinary user; as root (who writes anyway) the
    fault hook ``readonly:`` (EROFS for every write under ``root`` inside the process). Returns the fault spec."""
    if os.geteuid() != 0:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return None
    return f"readonly:{root}"


def _writable_again(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.mark.slow
def test_a_read_only_dataset_trains_with_the_image_cache(smoke_dataset: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTILVPR_CACHE_DIR", raising=False)
    root = _copy(smoke_dataset, tmp_path)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    fault = _read_only(root)
    out = tmp_path / "run"
    try:
        proc = distilvpr("distill", "--dataset", str(root), "--method", "nokd", *SMOKE, "--epochs", "1",
                              "--set", "data.image_cache=true", "--out", str(out), fault=fault)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert list((out / "image_cache").glob("train_images_*.npy")), "the cache belongs in the run folder"
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before  # nothing written in the dataset
        # an explicit cache folder that cannot be written: exit 2 naming data.image_cache_dir, nothing written
        blocked = tmp_path / "blocked"
        blocked.write_text("a file where the cache folder should be")
        proc = distilvpr("distill", "--dataset", str(root), "--method", "nokd", *SMOKE, "--epochs", "1",
                              "--set", "data.image_cache=true", "--cache-dir", str(blocked / "cache"),
                              "--out", str(tmp_path / "out" / "run"), fault=fault)
        assert_one_line_error(proc, "data.image_cache_dir", code=2)
        assert not (tmp_path / "out").exists()
    finally:
        _writable_again(root)


def test_the_cache_folder_resolution(smoke_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.engine.runs.cache_dirs import CACHE_DIR_ENV, resolve_image_cache_dir
    from distilvpr_lib.errors import OptionError

    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(smoke_dataset), "data.image_cache": True})
    assert resolve_image_cache_dir(cfg, tmp_path / "run") == smoke_dataset / ".cache"  # writable: shared
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "caches"))
    chosen = resolve_image_cache_dir(cfg, tmp_path / "run")
    assert chosen.parent == tmp_path / "caches" and chosen.name.startswith(smoke_dataset.name + "-")
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "file"))
    with pytest.raises(OptionError, match=CACHE_DIR_ENV):
        resolve_image_cache_dir(cfg, tmp_path / "run")
    explicit = apply_overrides(cfg, {"data.image_cache_dir": str(tmp_path / "file" / "cache")})
    with pytest.raises(OptionError, match="data.image_cache_dir"):
        resolve_image_cache_dir(explicit, tmp_path / "run")


# ---------------------------------------------------------------------------
# Boreas end to end
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def boreas_poses() -> Path:
    from distilvpr_lib.data.synth.boreas_world import default_boreas_poses_dir

    path = default_boreas_poses_dir()
    if not path.is_dir():
        pytest.skip(f"real Boreas poses not found at {path} (set DISTILVPR_REAL_DATA)")
    return path


@pytest.mark.slow
@pytest.mark.real_data
def test_boreas_layout_end_to_end(boreas_poses: Path, tmp_path: Path) -> None:
    """synth (Boreas layout) -> check-data -> train-teacher -> distill -> evaluate, the layout detected; the
    smoke route (300 m) is refused up front with the step that fixes it."""
    small, data = tmp_path / "small", tmp_path / "boreas"
    for out, extra in ((small, ()), (data, ("--route-length", "500"))):
        proc = distilvpr("synth", "--profile", "smoke", "--layout", "boreas", "--boreas-poses", str(boreas_poses),
                         "--out", str(out), "--no-progress", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = distilvpr("train-teacher", "--dataset", str(small), "--out", str(tmp_path / "refused"), *SMOKE)
    line = assert_one_line_error(proc, small / "boreas_training_queries_baseline.pickle")
    assert "--route-length" in line and not (tmp_path / "refused").exists()

    check = distilvpr("check-data", str(data))
    assert check.returncode == 0 and "layout: boreas" in check.stdout, check.stderr[-3000:]
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    proc = distilvpr("train-teacher", "--dataset", str(data), "--out", str(teacher), *SMOKE, "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((teacher / "config.json").read_text())["data"]["layout"] == "boreas"
    proc = distilvpr("distill", "--dataset", str(data), "--teacher", str(teacher), "--method", "distilvpr", *SMOKE,
                     "--epochs", "1", "--out", str(student))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for folder, kind in ((student, "student"), (teacher, "teacher")):
        proc = distilvpr("evaluate", "--model", str(folder), "--dataset", str(data), "--quiet", "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert summary["kind"] == kind and set(summary["per_run_AR@1"]) <= {p.name for p in data.iterdir()}


def test_atomic_write_reports_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from distilvpr_lib.data import files
    from distilvpr_lib.errors import DiskFullError

    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(DiskFullError) as caught:
        with files.atomic_write(target, "wb", size_hint=12345) as handle:
            handle.write(b"x" * 12345)
    message = str(caught.value)
    assert message.startswith(f"{target}: disk full: writing it needs 12,345 bytes") and "bytes free" in message
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_layout_mismatch_names_the_layout(smoke_dataset: Path) -> None:
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.errors import DataFormatError

    with pytest.raises(DataFormatError, match="an oxford-layout dataset, read as boreas") as caught:
        Benchmark.load(smoke_dataset, layout="boreas")
    assert "--layout oxford" in str(caught.value)
