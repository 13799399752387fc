"""Grid executors: the engine's overhead per run, and what a killed worker costs (issue 28).

1. A grid of ``--runs`` smoke runs (notebook 03, ``--epochs`` epochs; the methods nokd / distilvpr alternate
   over seeds) executed twice into fresh folders: ``--executor local --workers 2`` and
   ``--executor dask-local --workers 2``. Printed: wall time of each batch, the sum of the runs' own times
   (``status.json`` seconds: papermill + kernel + training), and the overhead per run of Dask relative to the
   local thread pool, ``(wall_dask - wall_local) / runs``, together with the LocalCluster's start-up.
2. Recovery: one smoke run (``--kill-epochs`` epochs) on a LocalCluster of 2 workers, its worker killed with
   SIGKILL right after its first checkpoint. Printed: the time from the kill to the resubmitted run starting
   (``status.json`` ``started`` rewritten), the batch's wall time against the same run uninterrupted, and
   whether ``student.pt`` is byte-identical.

    python benchmarks/bench_grid_executors.py                       # makes a smoke dataset and teacher in a temp folder
    python benchmarks/bench_grid_executors.py --dataset D --teacher T --runs 8 --epochs 1

Slow (a few minutes on 2 idle cores: 2 x 8 smoke runs + 2 runs). Note the machine's load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _grid(path: Path, name: str, dataset: Path, teacher: Path, epochs: int, runs: int) -> Path:
    seeds = list(range((runs + 1) // 2))
    variations = [{"name": "nokd", "method": "nokd"}, {"name": "distilvpr", "method": "distilvpr"}][:max(1, min(runs, 2))]
    path.write_text(yaml.safe_dump({
        "name": name, "notebook": "notebooks/03_distillation.ipynb", "seeds": seeds, "variations": variations,
        "base": {"dataset": str(dataset), "teacher": str(teacher), "profile": "smoke", "epochs": epochs}}))
    return path


def _run_seconds(batch_dir: Path) -> float:
    return sum(json.loads(p.read_text()).get("seconds", 0.0) for p in batch_dir.glob("*/status.json"))


def overhead(dataset: Path, teacher: Path, work: Path, runs: int, epochs: int) -> dict:
    from distilvpr_lib.batch import run_batch
    from distilvpr_lib.executors.backends import DaskExecutor

    grid = _grid(work / "grid.yaml", "bench", dataset, teacher, epochs, runs)
    figures: dict = {"runs": runs, "epochs": epochs}
    start = time.perf_counter()
    summary = run_batch(grid, out_root=work / "local", workers=2, progress=False)
    figures["local_wall_s"] = time.perf_counter() - start
    figures["local_run_s"] = _run_seconds(work / "local" / "bench")
    assert summary.n_failed == 0, str(summary)
    start = time.perf_counter()
    executor = DaskExecutor.local(workers=2)
    figures["dask_cluster_start_s"] = time.perf_counter() - start
    try:
        summary = run_batch(grid, out_root=work / "dask", executor=executor, progress=False)
    finally:
        executor.close()
    figures["dask_wall_s"] = time.perf_counter() - start  # start-up and shut-down included
    figures["dask_run_s"] = _run_seconds(work / "dask" / "bench")
    assert summary.n_failed == 0, str(summary)
    n = len(summary.outcomes)
    figures["overhead_per_run_s"] = (figures["dask_wall_s"] - figures["local_wall_s"]) / n
    same = all((work / "local" / "bench" / o.name / "student.pt").read_bytes()
               == (work / "dask" / "bench" / o.name / "student.pt").read_bytes() for o in summary.outcomes)
    figures["weights_identical"] = same
    return figures


def recovery(dataset: Path, teacher: Path, work: Path, epochs: int) -> dict:
    from distilvpr_lib.batch import run_batch
    from distilvpr_lib.executors.backends import DaskExecutor

    grid = work / "kill.yaml"
    _grid(grid, "kill", dataset, teacher, epochs, 1)
    figures: dict = {"epochs": epochs}
    start = time.perf_counter()
    run_batch(grid, out_root=work / "straight", workers=2, progress=False)  # cores // 2 threads, as dask-local's runs
    figures["uninterrupted_wall_s"] = time.perf_counter() - start
    run_dir = work / "killed" / "kill" / "nokd__seed0"
    executor = DaskExecutor.local(workers=2)
    try:
        done: dict = {}
        start = time.perf_counter()
        launcher = threading.Thread(target=lambda: done.update(
            summary=run_batch(grid, out_root=work / "killed", executor=executor, progress=False)))
        launcher.start()
        while not (run_dir / "checkpoints" / "last.pt").is_file():
            if not launcher.is_alive():
                raise RuntimeError("the run ended before its first checkpoint")
            time.sleep(0.1)
        first_start = json.loads((run_dir / "status.json").read_text())["started"]
        address = next(a for a, keys in executor.client.processing().items()
                       if any(run_dir.name in str(k) for k in keys))
        pid = executor.client.run(os.getpid, workers=[address])[address]
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        restarted = None
        while launcher.is_alive():
            with_status = json.loads((run_dir / "status.json").read_text())
            if restarted is None and with_status.get("started", first_start) != first_start:
                restarted = with_status["started"]
            time.sleep(0.1)
        launcher.join()
        figures["killed_wall_s"] = time.perf_counter() - start
    finally:
        executor.close()
    status = json.loads((run_dir / "status.json").read_text())
    restarted = restarted or status["started"]
    figures["kill_to_restart_s"] = restarted - killed_at
    figures["status"] = status["status"]
    figures["weights_identical"] = ((run_dir / "student.pt").read_bytes()
                                    == (work / "straight" / "kill" / "nokd__seed0" / "student.pt").read_bytes())
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="smoke dataset (default: generated into the work folder)")
    parser.add_argument("--teacher", type=Path, help="smoke teacher folder (default: trained, 1 epoch)")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--kill-epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-grid-"))
    work.mkdir(parents=True, exist_ok=True)
    dataset, teacher = args.dataset, args.teacher
    if dataset is None:
        from distilvpr_lib.config import profile_config
        from distilvpr_lib.data.synth.generate import generate_dataset

        dataset = work / "data"
        generate_dataset(dataset, profile_config("smoke").synth, seed=0, progress=False)
    if teacher is None:
        from distilvpr_lib.config import apply_overrides, profile_config
        from distilvpr_lib.engine.runs.teacher_run import train_teacher

        teacher = work / "teacher"
        train_teacher(apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(dataset), "train.epochs": 1}),
                      teacher, progress=False)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; work {work}")
    if not args.skip_overhead:
        f = overhead(dataset.resolve(), teacher.resolve(), work, args.runs, args.epochs)
        print(f"grid of {f['runs']} smoke runs ({f['epochs']} epoch(s)), 2 at a time:")
        print(f"  local      (thread pool, 2 workers):  wall {f['local_wall_s']:7.1f} s   sum of run times "
              f"{f['local_run_s']:7.1f} s")
        print(f"  dask-local (LocalCluster, 2 workers): wall {f['dask_wall_s']:7.1f} s   sum of run times "
              f"{f['dask_run_s']:7.1f} s   (cluster start {f['dask_cluster_start_s']:.1f} s, included)")
        print(f"  Dask overhead per run: {f['overhead_per_run_s']:+.1f} s; weights identical to local: "
              f"{f['weights_identical']}")
    if not args.skip_recovery:
        r = recovery(dataset.resolve(), teacher.resolve(), work, args.kill_epochs)
        print(f"kill -9 of the worker after the first checkpoint ({r['epochs']} epochs):")
        print(f"  kill -> run restarted on a worker: {r['kill_to_restart_s']:.1f} s")
        print(f"  batch wall {r['killed_wall_s']:.1f} s vs uninterrupted {r['uninterrupted_wall_s']:.1f} s "
              f"(extra {r['killed_wall_s'] - r['uninterrupted_wall_s']:+.1f} s); status {r['status']}; "
              f"weights identical: {r['weights_identical']}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
