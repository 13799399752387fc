"""Fault injection through the real ``distilvpr`` process (issue 14), at the smoke profile.

Each broken copy of the smoke dataset or of a trained teacher folder is given to the command that
reads it. The command must exit 1 (bad data / weights) with exactly one stderr line
``error: <file>: ...`` naming the broken file, print no traceback, never suggest ``weights_only=False``,
create no output folder, and never run a pickled payload (a sentinel file stays absent).

The kill -9 tests kill ``train-teacher`` during epoch 2, in the middle of a ``checkpoints/last.pt``
write and in the middle of a ``checkpoints/best.pt`` write (``tests/fault_hooks/sitecustomize.py``
does the killing inside the process, at exact points), rerun the same command and require
``teacher.pt`` byte-identical to an uninterrupted run, and no temporary file left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from grid_helpers import smoke_base, write_grid

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HOOKS = Path(__file__).resolve().parent / "fault_hooks"
#: train-teacher at the smoke profile, 2 epochs, quiet (the reference and every resume use exactly this).
TEACHER_ARGS = ("--profile", "smoke", "--epochs", "2", "--quiet", "--device", "cpu")


def distilvpr(*args: str, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``distilvpr`` console script (falling back to ``python -m distilvpr_lib.cli``)."""
    script = Path(sys.executable).parent / "distilvpr"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "distilvpr_lib.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("DISTILVPR_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([str(HOOKS)] if fault else [])
                                        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    if fault:
        env["DISTILVPR_TEST_FAULT"] = fault
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, names: str | Path, code: int = 1) -> str:
    """Exit ``code``; stderr is one ``error:`` line naming ``names``; no traceback; no weights_only advice."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and str(names) in line, line
    assert "Traceback" not in proc.stderr + proc.stdout and "weights_only" not in line, line
    return line


# ---------------------------------------------------------------------------
# Broken datasets
# ---------------------------------------------------------------------------
def _first_cloud(root: Path) -> Path:
    return sorted((root / "oxford").glob("*/pointcloud_20m/*.bin"))[0]


def _training_cloud(root: Path) -> Path:
    from distilvpr_lib.data.pickles import load_training_tuples

    tuples = load_training_tuples(root / "training_queries_baseline.pickle")
    return root / tuples[0].rel_scan_filepath


def _evaluation_cloud(root: Path, split: str) -> Path:
    from distilvpr_lib.data.pickles import load_evaluation_sets

    name = "oxford_evaluation_database.pickle" if split == "test" else "validation_evaluation_database.pickle"
    sets = load_evaluation_sets(root / name, "database")
    return root / next(s for s in sets if s)[0]["query"]


def _rewrite_training(root: Path, change: Callable) -> Path:
    from distilvpr_lib.data.pickles import load_pickle, save_pickle

    path = root / "training_queries_baseline.pickle"
    tuples = load_pickle(path)
    change(tuples[0])
    save_pickle(path, tuples)
    return path


def _rewrite_sets(root: Path, name: str, change: Callable) -> Path:
    from distilvpr_lib.data.pickles import load_pickle, save_pickle

    path = root / name
    sets = load_pickle(path)
    change(next(s for s in sets if s))
    save_pickle(path, sets)
    return path


class _Payload:
    """Pickles as a call to ``os.system`` that creates the sentinel: must never run."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _malicious_pickle(root: Path, sentinel: Path) -> Path:
    import pickle

    path = root / "training_queries_baseline.pickle"
    path.write_bytes(pickle.dumps({0: _Payload(sentinel)}))
    return path


def _missing_test_cloud(root: Path, sentinel: Path) -> Path:
    victim = _evaluation_cloud(root, "test")
    victim.unlink()
    return victim


def _broken_validation_entry(root: Path, sentinel: Path) -> Path:
    return _rewrite_sets(root, "validation_evaluation_database.pickle", lambda s: s[0].pop("northing"))


def _string_timestamp(root: Path, sentinel: Path) -> Path:
    return _rewrite_training(root, lambda t: setattr(t, "timestamp", "1400000000x"))


def _string_position(root: Path, sentinel: Path) -> Path:
    return _rewrite_training(root, lambda t: setattr(t, "position", np.array(["a", "b"])))


def _string_coordinate(root: Path, sentinel: Path) -> Path:
    return _rewrite_sets(root, "oxford_evaluation_query.pickle", lambda s: s[0].__setitem__("easting", "5735000"))


def _garbage_image(root: Path, sentinel: Path) -> Path:
    from distilvpr_lib.data.benchmark import Benchmark

    benchmark = Benchmark.load(root)
    victim = benchmark.image_path(benchmark.training_tuples[0].rel_scan_filepath, 0)
    victim.write_bytes(os.urandom(3000))
    return victim


def _empty_image(root: Path, sentinel: Path) -> Path:
    victim = _garbage_image(root, sentinel)
    victim.write_bytes(b"")
    return victim


def _half_bin(root: Path, sentinel: Path) -> Path:
    victim = _training_cloud(root)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


def _empty_bin(root: Path, sentinel: Path) -> Path:
    victim = _training_cloud(root)
    victim.write_bytes(b"")
    return victim


def _empty_pickle(root: Path, sentinel: Path) -> Path:
    path = root / "oxford_evaluation_query.pickle"
    path.write_bytes(b"")
    return path


def _nan_points(root: Path, sentinel: Path) -> Path:
    from distilvpr_lib.data.clouds import BIN_CLOUD_BYTES

    victim = _training_cloud(root)
    points = np.fromfile(victim, dtype="<f8").reshape(-1, 3)
    points[10] = [np.nan, np.inf, 0.0]
    victim.write_bytes(points.astype("<f8").tobytes())
    assert victim.stat().st_size == BIN_CLOUD_BYTES
    return victim


def _lidar2image_strings(root: Path, sentinel: Path) -> Path:
    from distilvpr_lib.data.pickles import load_pickle, save_pickle

    path = root / "images" / "lidar2image_ndx.pickle"
    index = load_pickle(path)
    key = next(iter(index))
    index[key] = ["12a"]
    save_pickle(path, index)
    return path


def _bad_csv(root: Path, sentinel: Path) -> Path:
    csv = sorted((root / "oxford").glob("*/pointcloud_locations_20m.csv"))[0]
    lines = csv.read_text().splitlines()
    lines[1] = "notanumber," + lines[1].split(",", 1)[1]
    csv.write_text("\n".join(lines) + "\n")
    return csv


def _dataset_is_a_file(root: Path, sentinel: Path) -> Path:
    shutil.rmtree(root)
    root.write_text("not a folder")
    return root


# (case id, how to break a copy of the smoke dataset, the command (train-teacher, or check-data for files it
# alone reads: CSVs, images it decodes)).
DATASET_FAULTS = [
    ("missing-test-cloud", _missing_test_cloud, "train-teacher"),
    ("broken-validation-entry", _broken_validation_entry, "train-teacher"),
    ("string-timestamp", _string_timestamp, "train-teacher"),
    ("string-position", _string_position, "train-teacher"),
    ("string-coordinate", _string_coordinate, "train-teacher"),
    ("garbage-image", _garbage_image, "train-teacher"),
    ("empty-image", _empty_image, "train-teacher"),
    ("bin-cut-to-half", _half_bin, "train-teacher"),
    ("empty-bin", _empty_bin, "train-teacher"),
    ("empty-pickle", _empty_pickle, "train-teacher"),
    ("nan-points", _nan_points, "check-data"),
    ("lidar2image-strings", _lidar2image_strings, "train-teacher"),
    ("bad-csv", _bad_csv, "check-data"),
    ("garbage-image-check-data", _garbage_image, "check-data"),
    ("dataset-is-a-file", _dataset_is_a_file, "train-teacher"),
    ("malicious-pickle", _malicious_pickle, "train-teacher"),
]


@pytest.mark.parametrize("case, breaker, command", DATASET_FAULTS, ids=[c[0] for c in DATASET_FAULTS])
def test_broken_dataset_gives_one_line_and_writes_nothing(smoke_dataset: Path, tmp_path: Path, case: str,
                                                          breaker: Callable, command: str) -> None:
    root = tmp_path / "data"
    shutil.copytree(smoke_dataset, root)
    sentinel = tmp_path / "payload-ran"
    victim = breaker(root, sentinel)
    out = tmp_path / "out" / "teacher"
    if command == "train-teacher":
        proc = distilvpr("train-teacher", "--dataset", str(root), "--out", str(out), *TEACHER_ARGS)
    else:
        proc = distilvpr("check-data", str(root))
    line = assert_one_line_error(proc, victim)
    assert not (tmp_path / "out").exists(), "the output folder was created before the check"
    assert not sentinel.exists(), "a pickled payload ran"
    if case == "bin-cut-to-half":
        assert "truncated" in line and "got 49152 bytes" in line and "expected 98304 bytes" in line
    if case == "malicious-pickle":
        assert "refusing to load global" in line and "system" in line


def test_check_data_deep_decodes_what_the_header_check_passes(smoke_dataset: Path, tmp_path: Path) -> None:
    from distilvpr_lib.data.benchmark import Benchmark

    root = tmp_path / "data"
    shutil.copytree(smoke_dataset, root)
    benchmark = Benchmark.load(root)
    victim = benchmark.image_path(benchmark.training_tuples[0].rel_scan_filepath, 0)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # header intact, pixels cut
    assert distilvpr("check-data", str(root)).returncode == 0
    assert_one_line_error(distilvpr("check-data", str(root), "--deep"), victim)


# ---------------------------------------------------------------------------
# A trained teacher: broken weights, bad run folders, kill -9 and resume
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_teacher(smoke_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted ``train-teacher`` run (2 epochs, smoke) through the CLI."""
    out = tmp_path_factory.mktemp("reference") / "teacher"
    proc = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(out), *TEACHER_ARGS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_reference_run_files_follow_the_umask_and_leave_no_temp_files(reference_teacher: Path) -> None:
    from distilvpr_lib.data.files import current_umask, is_temp_file

    expected = 0o666 & ~current_umask()
    files = [p for p in reference_teacher.rglob("*") if p.is_file()]
    assert not [p for p in files if is_temp_file(p)]
    for name in ("teacher.pt", "config.json", "metrics.json", "teacher_cache.pt", "test_results.npz", "run.log",
                 "summary.json"):
        assert (reference_teacher / name).stat().st_mode & 0o777 == expected, name
    assert json.loads((reference_teacher / "metrics.json").read_text())["status"] == "complete"


def test_a_complete_smoke_run_folder_is_lean(reference_teacher: Path) -> None:
    """The selected weights once, no resume state, no lock left: <= 20 MB at the smoke profile."""
    from distilvpr_lib.data.files import file_sha256

    files = [p for p in reference_teacher.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    assert not (reference_teacher / "checkpoints").exists() and not (reference_teacher / ".distilvpr.lock").exists()
    digests = [file_sha256(p) for p in files if p.suffix == ".pt"]
    assert len(digests) == len(set(digests)), "the same weights stored twice"


def _copy_teacher(reference: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "teacher"
    shutil.copytree(reference, copy)
    return copy


def _shrink_a_tensor(teacher: Path, sentinel: Path) -> Path:
    import torch

    path = teacher / "teacher.pt"
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.ndim >= 2)
    state[key] = state[key][:1]
    torch.save(state, path)
    return path


def _drop_keys(teacher: Path, sentinel: Path) -> Path:
    import torch

    path = teacher / "teacher.pt"
    state = torch.load(path, weights_only=True)
    for key in list(state)[:3]:
        del state[key]
    torch.save(state, path)
    return path


def _corrupt_weights(teacher: Path, sentinel: Path) -> Path:
    path = teacher / "teacher.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _malicious_weights(teacher: Path, sentinel: Path) -> Path:
    import torch

    path = teacher / "teacher.pt"
    torch.save({"cloud_fe.x": _Payload(sentinel)}, path)
    return path


WEIGHT_FAULTS = [("wrong-shape", _shrink_a_tensor), ("missing-keys", _drop_keys), ("corrupt", _corrupt_weights),
                 ("malicious-pth", _malicious_weights)]


@pytest.mark.parametrize("case, breaker", WEIGHT_FAULTS, ids=[c[0] for c in WEIGHT_FAULTS])
def test_broken_teacher_weights_give_one_line(reference_teacher: Path, smoke_dataset: Path, tmp_path: Path,
                                              case: str, breaker: Callable) -> None:
    teacher = _copy_teacher(reference_teacher, tmp_path)
    (teacher / "teacher_cache.pt").unlink()  # the student run would have to rebuild it from teacher.pt
    sentinel = tmp_path / "payload-ran"
    victim = breaker(teacher, sentinel)
    if case in ("corrupt", "malicious-pth"):  # evaluate reads teacher.pt alone
        proc = distilvpr("evaluate", "--model", str(teacher), "--dataset", str(smoke_dataset), "--quiet")
    else:
        proc = distilvpr("distill", "--dataset", str(smoke_dataset), "--teacher", str(teacher), "--profile", "smoke",
                         "--method", "distilvpr", "--quiet", "--out", str(tmp_path / "out" / "student"))
    line = assert_one_line_error(proc, victim)
    assert not (tmp_path / "out").exists() and not sentinel.exists()
    if case in ("wrong-shape", "missing-keys"):
        assert "mismatch" in line and ("has shape" in line if case == "wrong-shape" else "missing key" in line)


def test_evaluate_missing_cloud_exits_1_not_2(reference_teacher: Path, smoke_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(smoke_dataset, root)
    victim = _evaluation_cloud(root, "test")
    victim.unlink()
    proc = distilvpr("evaluate", "--model", str(reference_teacher), "--dataset", str(root), "--quiet")
    assert_one_line_error(proc, victim)


def test_out_that_is_a_file_or_unwritable(smoke_dataset: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    proc = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(blocker / "teacher"),
                     *TEACHER_ARGS)
    assert_one_line_error(proc, blocker)
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        proc = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(locked / "teacher"),
                         *TEACHER_ARGS)
        assert_one_line_error(proc, locked)
        assert list(locked.iterdir()) == []


def _resume_until_complete(dataset: Path, out: Path) -> None:
    proc = distilvpr("train-teacher", "--dataset", str(dataset), "--out", str(out), *TEACHER_ARGS)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("fault", ["epoch:2", "write:last.pt:1", "write:best.pt:1"],
                         ids=["during-epoch-2", "during-last.pt-write", "during-best.pt-write"])
def test_kill_9_then_rerun_gives_byte_identical_teacher(reference_teacher: Path, smoke_dataset: Path,
                                                        tmp_path: Path, fault: str) -> None:
    from distilvpr_lib.data.files import is_temp_file

    out = tmp_path / "teacher"
    killed = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(out), *TEACHER_ARGS,
                       fault=fault)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert not (out / "teacher.pt").exists()
    if fault.startswith("write:"):
        name = fault.split(":")[1]
        assert [p for p in (out / "checkpoints").iterdir() if is_temp_file(p) and name in p.name], \
            "the kill should have left a partial temporary file"
    _resume_until_complete(smoke_dataset, out)
    assert (out / "teacher.pt").read_bytes() == (reference_teacher / "teacher.pt").read_bytes()
    assert not [p for p in out.rglob("*") if is_temp_file(p)], "stale temporary files survived the resume"
    assert json.loads((out / "metrics.json").read_text())["status"] == "complete"


def test_batch_with_a_broken_dataset_creates_no_batch_folder(smoke_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(smoke_dataset, root)
    victim = _missing_test_cloud(root, tmp_path / "unused")
    grid = write_grid(tmp_path / "grid.yaml", REPO / "notebooks" / "03_distillation.ipynb",
                      [{"name": "nokd", "method": "nokd"}], base=smoke_base(root), name="broken")
    proc = distilvpr("batch", str(grid), "--out", str(tmp_path / "runs"))
    assert_one_line_error(proc, victim)
    assert not (tmp_path / "runs").exists()


def test_second_writer_of_the_same_out_is_refused(smoke_dataset: Path, tmp_path: Path) -> None:
    from distilvpr_lib.engine.runs.run_guard import RunFolderLock

    out = tmp_path / "teacher"
    with RunFolderLock(out):  # this test process stands for a run in progress
        proc = distilvpr("train-teacher", "--dataset", str(smoke_dataset), "--out", str(out), *TEACHER_ARGS)
        line = assert_one_line_error(proc, out)
        assert sorted(p.name for p in out.iterdir()) == [".distilvpr.lock"]  # nothing else was written
    assert f"is being written by process {os.getpid()}" in line
    assert list(out.iterdir()) == []  # the holder's lock file goes with it


def test_failure_after_the_start_records_status_failed(smoke_dataset: Path, tmp_path: Path) -> None:
    """NaN points pass the preflight (it only sizes the clouds) and fail when the cloud is read in training:
    still one line and exit 1, and the run folder says ``status: failed`` with that line."""
    root = tmp_path / "data"
    shutil.copytree(smoke_dataset, root)
    victim = _nan_points(root, tmp_path / "unused")
    out = tmp_path / "teacher"
    proc = distilvpr("train-teacher", "--dataset", str(root), "--out", str(out), *TEACHER_ARGS)
    line = assert_one_line_error(proc, victim)
    assert "NaN" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == line[len("error: "):]
