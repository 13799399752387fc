"""A run whose notebook kernel never started (the port race of kernels launched side by side) is started again;
any other failure is not (batch.execute_notebook)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from distilvpr_lib import batch
from distilvpr_lib.batch_records import KERNEL_START_ATTEMPTS, KERNEL_START_FAILURES

_FAKE = """
import json, sys
from pathlib import Path
counter, out, fail_with, failures = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n <= failures:
    sys.stderr.write(fail_with + "\\n")
    sys.exit(1)
(out / "metrics.json").write_text(json.dumps({"status": "complete"}))
"""


def _fake_papermill(monkeypatch, tmp_path: Path, run_dir: Path, fail_with: str, failures: int) -> Path:
    script, counter = tmp_path / "fake_papermill.py", tmp_path / "starts"
    script.write_text(_FAKE)
    monkeypatch.setattr(batch, "die_with_parent", lambda cmd: [sys.executable, str(script), str(counter),
                                                                str(run_dir), fail_with, str(failures)])
    monkeypatch.setattr(batch.time, "sleep", lambda s: None)
    return counter


@pytest.mark.parametrize("message", KERNEL_START_FAILURES)
def test_a_kernel_that_never_started_is_started_again(monkeypatch, tmp_path: Path, message: str) -> None:
    run_dir = tmp_path / "run"
    counter = _fake_papermill(monkeypatch, tmp_path, run_dir, f"RuntimeError: {message} (seconds)", failures=2)
    outcome = batch.execute_notebook(tmp_path / "nb.ipynb", run_dir, {"method": "nokd"})
    assert outcome.status == "ok" and counter.read_text() == "3"
    assert json.loads((run_dir / batch.STATUS_FILE).read_text())["attempts"] == 3


def test_the_attempts_are_bounded_and_other_failures_are_not_retried(monkeypatch, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    message = f"RuntimeError: {KERNEL_START_FAILURES[0]}"
    counter = _fake_papermill(monkeypatch, tmp_path, run_dir, message, failures=KERNEL_START_ATTEMPTS)
    outcome = batch.execute_notebook(tmp_path / "nb.ipynb", run_dir, {"method": "nokd"})
    assert outcome.status == "failed" and counter.read_text() == str(KERNEL_START_ATTEMPTS)
    assert KERNEL_START_FAILURES[0] in outcome.error

    other = tmp_path / "other"
    other.mkdir()
    counter = _fake_papermill(monkeypatch, other, other / "run", "ValueError: the notebook's own error", failures=1)
    outcome = batch.execute_notebook(other / "nb.ipynb", other / "run", {"method": "nokd"})
    assert outcome.status == "failed" and counter.read_text() == "1"  # a cell failed: never run twice
    assert json.loads((other / "run" / batch.STATUS_FILE).read_text())["attempts"] == 1
