"""The project's error types and the CLI's error boundary (issue 14), and the shared smoke dataset."""

from __future__ import annotations

import json
from pathlib import Path


def test_smoke_dataset_fixture_is_a_complete_generated_benchmark(smoke_dataset: Path) -> None:
    from distilvpr_lib.data.benchmark import Benchmark

    benchmark = Benchmark.load(smoke_dataset)
    assert json.loads((smoke_dataset / "synth_complete.json").read_text())
    assert benchmark.layout == "oxford" and benchmark.has_images
    assert len(benchmark.training_tuples) >= 16  # two batches of the smoke profile
    assert benchmark.has_split("test") and benchmark.has_split("validation")
    assert len(benchmark.run_names) == 3  # the smoke profile's n_runs


# ---------------------------------------------------------------------------
# Error types
# ---------------------------------------------------------------------------
def test_error_message_is_one_line_with_file_problem_and_hint() -> None:
    import pickle

    from distilvpr_lib.errors import CheckpointError, DataFormatError, MissingDataError, OptionError, format_error

    error = MissingDataError("cloud not found", path="/data/x.bin", hint="regenerate the dataset")
    assert str(error) == "/data/x.bin: cloud not found (regenerate the dataset)"
    assert isinstance(error, FileNotFoundError) and isinstance(error, DataFormatError) and error.exit_code == 1
    assert format_error(error) == str(error)
    again = pickle.loads(pickle.dumps(error))  # crosses DataLoader worker / papermill boundaries intact
    assert type(again) is MissingDataError and str(again) == str(error) and again.path == error.path
    assert "\n" not in str(DataFormatError("a\nb", path="f"))
    assert OptionError("bad").exit_code == 2 and CheckpointError("x").exit_code == 1


def test_torch_load_errors_never_advise_weights_only_false(tmp_path: Path) -> None:
    import datetime

    import torch

    from distilvpr_lib.engine.train.checkpoint import CheckpointError, load_weights

    evil = tmp_path / "evil.pt"
    torch.save({"x": datetime.date(2020, 1, 1)}, evil)  # any global outside torch's allow-list
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all" * 10)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path, fragment in ((evil, "refusing to load global"), (garbage, "not a torch file"), (empty, "empty")):
        try:
            load_weights(path)
        except CheckpointError as exc:
            message = str(exc)
        else:  # pragma: no cover
            raise AssertionError(f"{path} loaded")
        assert message.startswith(f"{path}: ") and fragment in message, message
        assert "weights_only" not in message and "\n" not in message


def test_state_dict_mismatches_list_missing_shape_and_unexpected_keys(tmp_path: Path) -> None:
    import pytest
    import torch

    from distilvpr_lib.engine.train.checkpoint import CheckpointError, check_state_dict, state_dict_mismatches

    expected = {"a.weight": torch.zeros(8, 3), "b.bias": torch.zeros(8)}
    found = {"a.weight": torch.zeros(4, 3), "c": torch.zeros(1)}
    assert state_dict_mismatches(found, expected) == [
        "missing key 'b.bias' (expected shape (8,))", "'a.weight' has shape (4, 3), expected (8, 3)",
        "unexpected key 'c'"]
    assert state_dict_mismatches(expected, expected) == []
    with pytest.raises(CheckpointError, match=r"teacher\.pt: does not fit .*3 mismatch\(es\): missing key 'b.bias'"):
        check_state_dict(found, expected, tmp_path / "teacher.pt")


# ---------------------------------------------------------------------------
# The CLI boundary
# ---------------------------------------------------------------------------
def _boundary_command(monkeypatch, exc: BaseException):
    """Make `distilvpr check-data` raise ``exc``, to exercise the boundary alone."""
    import distilvpr_lib.data.check as check

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(check, "check_dataset", boom)


def test_cli_prints_one_line_and_exit_code_for_project_errors(monkeypatch, capsys) -> None:
    from distilvpr_lib.cli import main
    from distilvpr_lib.errors import DataFormatError, OptionError

    monkeypatch.delenv("DISTILVPR_DEBUG", raising=False)
    _boundary_command(monkeypatch, DataFormatError("field 'timestamp' is 'x'", path="/d/t.pickle", hint="fix it"))
    assert main(["check-data", "/d"]) == 1
    err = capsys.readouterr().err
    assert err == "error: /d/t.pickle: field 'timestamp' is 'x' (fix it)\n"
    _boundary_command(monkeypatch, OptionError("--foo: unknown"))
    assert main(["check-data", "/d"]) == 2
    assert capsys.readouterr().err == "error: --foo: unknown\n"


def test_cli_traceback_only_with_debug(monkeypatch, capsys) -> None:
    from distilvpr_lib.cli import main
    from distilvpr_lib.errors import DataFormatError

    _boundary_command(monkeypatch, DataFormatError("bad", path="/d/x"))
    monkeypatch.delenv("DISTILVPR_DEBUG", raising=False)
    assert main(["check-data", "/d", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("error: /d/x: bad\n")
    monkeypatch.setenv("DISTILVPR_DEBUG", "1")
    assert main(["check-data", "/d"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_cli_unexpected_and_os_errors_are_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    import errno

    from distilvpr_lib.cli import main

    monkeypatch.delenv("DISTILVPR_DEBUG", raising=False)
    _boundary_command(monkeypatch, OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.pt")))
    assert main(["check-data", "/d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'x.pt'}: disk full: ") and err.count("\n") == 1
    assert "bytes free (No space left on device)" in err and "free space on that disk" in err
    _boundary_command(monkeypatch, TypeError("unsupported operand"))
    assert main(["check-data", "/d"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected TypeError: unsupported operand" in err and "--debug" in err


# ---------------------------------------------------------------------------
# Data format errors name the file, the entry and the field
# ---------------------------------------------------------------------------
def _tuple(**fields):
    import numpy as np

    from distilvpr_lib.data.pickles import TrainingTuple

    values = dict(id=0, timestamp=100, rel_scan_filepath="oxford/r/pointcloud_20m/100.bin",
                  positives=np.array([], dtype=np.int64), non_negatives=np.array([0]), position=np.array([1.0, 2.0]))
    values.update(fields)
    return TrainingTuple(**values)


import pytest  # noqa: E402


@pytest.mark.parametrize("field, value", [("timestamp", "1400000000x"), ("id", "0"), ("position", ["a", "b"]),
                                          ("timestamp", 1.5), ("position", [float("nan"), 1.0]),
                                          ("rel_scan_filepath", 7)])
def test_training_pickle_wrong_types_name_file_entry_and_field(tmp_path: Path, field: str, value) -> None:
    from distilvpr_lib.data.pickles import load_training_tuples, save_pickle
    from distilvpr_lib.errors import DataFormatError

    path = tmp_path / "training_queries_baseline.pickle"
    save_pickle(path, {0: _tuple(**{field: value})})
    with pytest.raises(DataFormatError) as info:
        load_training_tuples(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"'{field}'" in message and "entry 0" in message, message


@pytest.mark.parametrize("field, value", [("northing", "5735000"), ("easting", None), ("northing", float("inf"))])
def test_evaluation_pickle_wrong_coordinates_name_the_field(tmp_path: Path, field: str, value) -> None:
    from distilvpr_lib.data.pickles import load_evaluation_sets, save_pickle
    from distilvpr_lib.errors import DataFormatError

    path = tmp_path / "db.pickle"
    entry = {"query": "oxford/r/pointcloud_20m/1.bin", "northing": 1.0, "easting": 2.0}
    entry[field] = value
    save_pickle(path, [{0: entry}])
    with pytest.raises(DataFormatError, match=rf"db\.pickle: run 0 entry 0.*'{field}'"):
        load_evaluation_sets(path, "database")


def test_lidar2image_string_timestamps_name_the_entry(tmp_path: Path) -> None:
    from distilvpr_lib.data.pickles import load_lidar2image_ndx, save_pickle
    from distilvpr_lib.errors import DataFormatError

    path = tmp_path / "lidar2image_ndx.pickle"
    save_pickle(path, {100: ["12a"]})
    with pytest.raises(DataFormatError, match=r"lidar2image_ndx\.pickle: entry 100 .*'12a'"):
        load_lidar2image_ndx(path)
    save_pickle(path, {"x": [1]})
    with pytest.raises(DataFormatError, match=r"lidar2image_ndx\.pickle: key 'x'"):
        load_lidar2image_ndx(path)


def test_bin_cut_to_half_is_reported_truncated_not_float32(tmp_path: Path) -> None:
    import numpy as np

    from distilvpr_lib.data.clouds import read_bin, write_bin
    from distilvpr_lib.errors import DataFormatError

    path = tmp_path / "cut.bin"
    write_bin(path, np.random.default_rng(0).uniform(-50, 50, (4096, 3)))
    path.write_bytes(path.read_bytes()[:49152])
    with pytest.raises(DataFormatError, match=r"expected 98304 bytes .*got 49152 bytes \(truncated: .*2048 of 4096"):
        read_bin(path)
    path.write_bytes(np.random.default_rng(0).uniform(-50, 50, (4096, 3)).astype(np.float32).tobytes())
    with pytest.raises(DataFormatError, match="looks like float32"):
        read_bin(path)


def test_image_header_and_deep_decode(tmp_path: Path) -> None:
    from PIL import Image

    from distilvpr_lib.data.images import check_image_file
    from distilvpr_lib.errors import DataFormatError

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(good)
    assert check_image_file(good, decode=True) == (64, 48)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x13\x37" * 500)
    with pytest.raises(DataFormatError, match=r"garbage\.png: not an image"):
        check_image_file(garbage)
    cut = tmp_path / "cut.png"
    Image.effect_noise((64, 48), 40).convert("RGB").save(cut)
    cut.write_bytes(cut.read_bytes()[:2000])
    assert check_image_file(cut) == (64, 48)  # the header is intact
    with pytest.raises(DataFormatError, match=r"cut\.png: corrupt image"):
        check_image_file(cut, decode=True)


# ---------------------------------------------------------------------------
# Run-folder hygiene
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_write_follows_the_umask_not_mkstemp(tmp_path: Path, umask: int, mode: int) -> None:
    import os

    from distilvpr_lib.data.files import atomic_output_path, atomic_write

    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.json", "w") as handle:
            handle.write("{}")
        with atomic_output_path(tmp_path / "b.npz") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.npz").stat().st_mode & 0o777 == mode


def test_guarded_run_locks_cleans_stale_temp_files_and_records_failure(tmp_path: Path) -> None:
    from distilvpr_lib.data.files import is_temp_file
    from distilvpr_lib.engine.runs.run_guard import RunFolderLock, check_not_locked, guarded_run
    from distilvpr_lib.errors import DataFormatError, RunFolderLockedError

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / "checkpoints" / ".last.pt.k3j_x9a2.tmp", out / ".test_results.ab12cd34.tmp.npz"]
    for path in stale:
        path.write_bytes(b"partial")
    keep = out / "checkpoints" / "last.pt"
    keep.write_bytes(b"kept")
    assert all(is_temp_file(p) for p in stale) and not is_temp_file(keep)
    with pytest.raises(DataFormatError):
        with guarded_run(out, "teacher"):
            assert not any(p.exists() for p in stale) and keep.exists()
            with pytest.raises(RunFolderLockedError, match=r"is being written by process \d+"):
                RunFolderLock(out).acquire()
            with pytest.raises(RunFolderLockedError):
                check_not_locked(out)
            raise DataFormatError("bad entry", path="/d/t.pickle")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "/d/t.pickle: bad entry"
    check_not_locked(out)  # released
    assert not (out / ".distilvpr.lock").exists()  # and its file removed
    with RunFolderLock(out):
        assert (out / ".distilvpr.lock").is_file()
    assert not (out / ".distilvpr.lock").exists()


def test_run_unless_complete_runs_guarded_or_returns_the_complete_run(tmp_path: Path) -> None:
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.engine.runs.run_guard import check_not_locked, run_unless_complete
    from distilvpr_lib.errors import RunFolderLockedError

    cfg, out = profile_config("smoke"), tmp_path / "run"
    calls: list[str] = []

    def pipeline() -> dict:
        with pytest.raises(RunFolderLockedError):  # the pipeline runs holding the folder's lock
            check_not_locked(out)
        calls.append("trained")
        (out / "config.json").write_text(cfg.to_json())
        (out / "student.pt").write_bytes(b"w")
        (out / "metrics.json").write_text(json.dumps({"status": "complete", "kind": "student", "epochs": 1}))
        return {"status": "complete", "fresh": True}

    assert run_unless_complete("student", cfg, out, True, "student.pt", pipeline, progress=False)["fresh"]
    assert calls == ["trained"] and not (out / ".distilvpr.lock").exists() and (out / "run.log").is_file()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"resume state")
    done = run_unless_complete("student", cfg, out, True, "student.pt", pipeline, progress=False)
    assert done == {"status": "complete", "kind": "student", "epochs": 1} and calls == ["trained"]  # not retrained
    assert not (out / "checkpoints").exists()  # tidied: a complete run keeps no last.pt

    def interrupted() -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # resume=False: a complete run is not reused
        run_unless_complete("teacher", cfg, tmp_path / "t", False, "teacher.pt", interrupted, progress=False)
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["kind"] == "teacher"


def test_preflight_out_dir_refuses_a_file_and_writes_nothing(tmp_path: Path) -> None:
    from distilvpr_lib.engine.runs.preflight import preflight_out_dir
    from distilvpr_lib.errors import RunFolderError

    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        preflight_out_dir(tmp_path / "f")
    with pytest.raises(RunFolderError, match="a file stands in its path"):
        preflight_out_dir(tmp_path / "f" / "run")
    preflight_out_dir(tmp_path / "new" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_collect_batch_of_a_missing_or_empty_folder_is_one_clear_error(tmp_path: Path) -> None:
    from distilvpr_lib.batch_ledger import collect_batch
    from distilvpr_lib.errors import MissingDataError

    with pytest.raises(MissingDataError, match=r"batch folder does not exist \(run the grid first"):
        collect_batch(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match=r"empty: no batch runs in this folder"):
        collect_batch(tmp_path / "empty")
    assert not (tmp_path / "nope").exists()


def test_chance_recall_from_database_sizes() -> None:
    from distilvpr_lib.engine.evaluation.evaluate import chance_recall_at_n

    database = [{k: {} for k in range(10)}, {k: {} for k in range(4)}]
    query = [{0: {1: [0]}, 1: {1: []}}, {0: {0: [1, 2]}}]  # run 0 vs db 1: 1 of 4; run 1 vs db 0: 2 of 10
    assert chance_recall_at_n(database, query, n=1) == pytest.approx(100 * (0.25 + 0.2) / 2)
    assert chance_recall_at_n(database, query, n=4) == pytest.approx(100 * (1.0 + (1 - 70 / 210)) / 2)
