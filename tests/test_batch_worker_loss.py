"""A lost Dask worker costs nothing (issue 28): SIGKILL of the worker process running a smoke distillation run
(after its first epoch's checkpoint) makes the scheduler resubmit the task; the run resumes from
``checkpoints/last.pt`` and its ``student.pt`` is byte-identical to the same run left alone.

Two runs with identical parameters (``reference`` and ``victim``) go to a LocalCluster of 2 workers (one run
slot, one thread budget each); the worker running ``victim`` is killed with ``kill -9``. The papermill child of
the killed worker dies with it (:func:`distilvpr_lib.executors.die_with_parent`) and the kernel follows, so the
resubmitted task finds the run folder free.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_teacher_folder(smoke_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.engine.runs.teacher_run import train_teacher

    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(smoke_dataset), "train.epochs": 1})
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    train_teacher(cfg, folder, progress=False)
    return folder


def _stdout(notebook: Path) -> str:
    nb = nbformat.read(notebook, as_version=4)
    return "".join("".join(o.get("text", "")) for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_killing_a_worker_mid_run_resumes_the_run_to_identical_weights(smoke_dataset: Path, smoke_teacher_folder: Path,
                                                                       tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from distilvpr_lib.batch import run_batch
    from distilvpr_lib.executors import DaskExecutor

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "loss", "notebook": "notebooks/03_distillation.ipynb", "seeds": [0],
        "base": {"dataset": str(smoke_dataset), "teacher": str(smoke_teacher_folder), "profile": "smoke",
                 "epochs": 2, "method": "nokd"},
        "variations": [{"name": "reference"}, {"name": "victim"}]}))  # the same run twice
    out = tmp_path / "runs"
    victim = out / "loss" / "victim__seed0"
    executor = DaskExecutor.local(workers=2)
    try:
        outcome: dict = {}
        launcher = threading.Thread(target=lambda: outcome.update(
            summary=run_batch(grid, out_root=out, executor=executor, progress=False)))
        launcher.start()
        deadline = time.time() + 600
        while not (victim / "checkpoints" / "last.pt").is_file():  # the end of epoch 1
            assert launcher.is_alive() and time.time() < deadline, "the victim never reached its first checkpoint"
            time.sleep(0.2)
        processing = executor.client.processing()
        address = next(a for a, keys in processing.items() if any("victim__seed0" in str(k) for k in keys))
        pid = executor.client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        launcher.join(timeout=900)
        assert not launcher.is_alive()
    finally:
        executor.close()
    summary = outcome["summary"]
    assert [(o.name, o.status) for o in summary.outcomes] == [("reference__seed0", "ok"), ("victim__seed0", "ok")], \
        [o.error for o in summary.outcomes]
    # resumed, not restarted: the re-executed notebook trained epoch 2 only
    printed = _stdout(victim / "notebook.ipynb")
    assert re.search(r"^epoch +2 ", printed, re.M) and not re.search(r"^epoch +1 ", printed, re.M), printed
    reference = out / "loss" / "reference__seed0"
    assert (victim / "student.pt").read_bytes() == (reference / "student.pt").read_bytes()
    from distilvpr_lib.data.files import is_temp_file

    assert not [p for p in victim.rglob("*") if is_temp_file(p)], "no temporary file left by the killed write"
