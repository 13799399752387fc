"""Stage-by-stage profile of a teacher run and a student run through the real pipelines (issue 26).

    # a small study-resolution world in /tmp (never in the repository), then the profile:
    .venv/bin/python benchmarks/bench_run_stages.py --make-world /tmp/stage-world --route-m 1000
    .venv/bin/python benchmarks/bench_run_stages.py /tmp/stage-world --epochs 3 --threads 1
    # A/B of settings, interleaved (A, B, A, B, ...) in fresh processes, medians per stage:
    .venv/bin/python benchmarks/bench_run_stages.py /tmp/stage-world --kinds student --repeats 3 \\
        --ab train.channels_last_cpu=false --ab train.channels_last_cpu=true
    # against the code of another commit (unpacked outside the repository), same timers:
    git archive 85fa693 | tar -x -C /tmp/base
    .venv/bin/python benchmarks/bench_run_stages.py /tmp/stage-world --kinds student --teacher T \\
        --ab before:code=/tmp/base --ab now: --ab "kernels:train.channels_last_cpu=true,train.fused_adam=true"

Every run is :func:`~distilvpr_lib.engine.runs.teacher_run.train_teacher` or
:func:`~distilvpr_lib.engine.runs.student_run.distill_student` itself, in a fresh Python process (so that the
start-up, the imports and the peak RSS are the run's own), with the study profile (``--profile``) at fewer epochs
(``--epochs``) on the given world; the visual prior is left out (``model.pretrained_image_weights=None``: it
changes the weights, not the cost). Nothing in the engine is changed: the timers are wrappers installed around
engine functions and methods for the duration of the run (:class:`StageClock`). Time is charged to the
innermost running stage (exclusive time), so the stages add up to the run's wall time; what no wrapper covers
is ``other``. The stages:

* ``imports`` (torch and the library), ``preflight``, ``start`` (run folder, benchmark pickles, model build,
  loader), ``image cache`` (the student's decoded training images), ``teacher cache`` (student: load;
  teacher: build);
* ``train/data`` (the loader's ``next``), ``train/forward`` (sparse cloud branch of the teacher separately as
  ``train/forward/cloud``), ``train/loss``, ``train/loss/diagnostics`` (norm stats, per-term gradient norms,
  hyperbolic clamp share), ``train/backward``, ``train/optimizer``, ``train/logging`` (TensorBoard scalars),
  ``train`` (the rest of the epoch loop: zero_grad, device moves, skip checks, tqdm);
* ``validation/...`` and ``test/...``: ``data`` (evaluation loader: clouds and PNG decoding),
  ``forward``, ``embed`` (rest of the embedding pass), ``search`` (the PointNetVLAD protocol on the
  embeddings), ``save`` (results file);
* ``checkpoint`` (``last.pt`` and its state), ``best weights`` (``best.pt``), ``final weights``
  (loading the selected weights, writing ``student.pt`` / ``teacher.pt``).

Each stage gets its wall seconds and its process-CPU seconds (``time.process_time``; with one thread, close to
the wall time on an idle machine and much steadier than it on a shared one). Peak RSS is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the run's process (its DataLoader workers' ``RUSAGE_CHILDREN`` is
reported too, when it had any). The machine this project runs on is shared: compare settings only within
one invocation (``--ab``, interleaved), never across invocations.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

PROCESS_START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]

#: Top-level groups of the summary table (the issue's stages) -> stage path prefixes.
GROUPS: dict[str, tuple[str, ...]] = {
    "start-up": ("imports", "preflight", "start", "image cache", "teacher cache (load)"),
    "data": ("train/data",),
    "train step": ("train/forward", "train/loss", "train/backward", "train/optimizer", "train"),
    "diagnostics": ("train/loss/diagnostics",),
    "logging": ("train/logging", "logging"),
    "validation": ("validation",),
    "checkpointing": ("checkpoint", "best weights"),
    "final test": ("test", "final weights"),
    "teacher cache (build)": ("teacher cache (build)",),
    "other": ("other",),
}


class StageClock:
    """Exclusive wall time per stage path: time goes to the innermost running stage.

    ``with clock.stage("validation"):`` pushes a stage; a stage entered inside it is recorded under
    ``"validation/<name>"``. Time outside every stage is ``"other"``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[str] = []
        self.last = time.perf_counter()
        self.last_cpu = time.process_time()

    def _charge(self) -> None:
        now, now_cpu = time.perf_counter(), time.process_time()
        path = "/".join(self.stack) if self.stack else "other"
        self.seconds[path] += now - self.last
        self.cpu_seconds[path] += now_cpu - self.last_cpu
        self.last, self.last_cpu = now, now_cpu

    @contextlib.contextmanager
    def stage(self, name: str):
        self._charge()
        self.stack.append(name)
        self.calls["/".join(self.stack)] += 1
        try:
            yield
        finally:
            self._charge()
            self.stack.pop()

    def wrap(self, fn: Callable, name: str | Callable[..., str]) -> Callable:
        """``fn`` timed as stage ``name`` (or ``name(*args, **kwargs)``)."""
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name(*args, **kwargs) if callable(name) else name):
                return fn(*args, **kwargs)

        return timed

    def patch(self, owner: Any, attr: str, name: str | Callable[..., str]) -> None:
        setattr(owner, attr, self.wrap(getattr(owner, attr), name))


class _TimedLoader:
    """A loader whose ``next`` is the stage ``data``; other attributes pass through (``batch_sampler``)."""

    def __init__(self, loader: Any, clock: StageClock) -> None:
        self._loader, self._clock = loader, clock

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self):
        iterator = iter(self._loader)
        while True:
            with self._clock.stage("data"):
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
            yield batch


class _TimedObjective:
    """The objective called as stage ``loss`` (``obj(...)`` looks ``__call__`` up on the type, so wrap)."""

    def __init__(self, objective: Any, clock: StageClock) -> None:
        self._objective, self._clock = objective, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objective, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._clock.stage("loss"):
            return self._objective(*args, **kwargs)


def install_hooks(clock: StageClock) -> None:
    """Wrap the engine's stage functions with timers (this process only; no behaviour change)."""
    import torch
    from torch.utils.data import DataLoader

    import distilvpr_lib.models as models
    from distilvpr_lib.engine.evaluation import embed
    from distilvpr_lib.engine.evaluation.results import RetrievalResults
    from distilvpr_lib.engine.runs import preflight, run_setup, student_run, teacher_run
    from distilvpr_lib.engine.train import loop, objectives
    from distilvpr_lib.engine.train.loop import Trainer

    clock.patch(preflight, "preflight_distill", "preflight")
    clock.patch(preflight, "preflight_train_teacher", "preflight")
    for module in (student_run, teacher_run):
        for attr in ("start_run", "load_benchmark", "check_benchmark", "make_training_loader"):
            clock.patch(module, attr, "start")
        clock.patch(module, "evaluate_split", lambda model, benchmark, split, *a, **k: split)
        clock.patch(module, "load_weights", "final weights")
        clock.patch(module, "save_weights", "final weights")
    clock.patch(student_run, "make_cached_student_loader", "image cache")
    clock.patch(student_run, "get_teacher_cache", "teacher cache (load)")
    clock.patch(teacher_run, "build_teacher_cache", "teacher cache (build)")
    clock.patch(models, "build_student", "start")
    clock.patch(models, "build_teacher", "start")
    clock.patch(loop, "save_checkpoint", "checkpoint")
    clock.patch(loop, "save_weights", "best weights")
    clock.patch(Trainer, "_state", "checkpoint")
    for attr in ("_norm_stats", "term_gradient_norms", "hyperbolic_clamp_share"):
        clock.patch(objectives, attr, "diagnostics")
    clock.patch(embed, "evaluate_retrieval", "search")
    clock.patch(embed, "compute_embeddings", "embed")
    clock.patch(RetrievalResults, "save", "save")
    clock.patch(torch.Tensor, "backward", "backward")

    class TimedDataLoader(DataLoader):  # the evaluation loader of compute_embeddings
        def __iter__(self):
            iterator = super().__iter__()
            while True:
                with clock.stage("data"):
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        return
                yield batch

    embed.DataLoader = TimedDataLoader

    original_fit = Trainer.fit
    original_epoch = Trainer._train_one_epoch

    def fit(self: Trainer, resume: bool = True):
        self.train_loader = _TimedLoader(self.train_loader, clock)
        self.objective = _TimedObjective(self.objective, clock)
        self.optimizer.step = clock.wrap(self.optimizer.step, "optimizer")
        self.model.forward = clock.wrap(self.model.forward, "forward")
        cloud = getattr(self.model, "cloud_fe", None)
        if cloud is not None:
            cloud.forward = clock.wrap(cloud.forward, "cloud")
        for attr in ("scalar", "epoch", "validation", "flush"):
            if hasattr(self.scalars, attr):
                clock.patch(self.scalars, attr, "logging")
        return original_fit(self, resume)

    def train_one_epoch(self: Trainer, epoch: int):
        with clock.stage("train"):
            return original_epoch(self, epoch)

    Trainer.fit = fit
    Trainer._train_one_epoch = train_one_epoch


def peak_rss_mib() -> dict[str, float]:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"self": round(own, 1), "children": round(children, 1)}


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line (``STAGES {...}``) at the end."""
    clock = StageClock()
    clock.seconds["imports"] = 0.0
    with clock.stage("imports"):
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from distilvpr_lib.config import apply_overrides, profile_config
        from distilvpr_lib.engine.runs.student_run import distill_student
        from distilvpr_lib.engine.runs.teacher_run import train_teacher
    install_hooks(clock)
    cfg = profile_config(args.profile)
    overrides: dict[str, Any] = {"data.dataset_dir": str(args.dataset), "train.epochs": args.epochs,
                                 "model.pretrained_image_weights": None, "train.device": "cpu"}
    if args.epochs < max(cfg.train.milestones):
        overrides["train.milestones"] = (max(1, args.epochs - 1),)
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = None if value == "none" else value  # coerced to the field's type by apply_overrides
    cfg = apply_overrides(cfg, overrides)
    started = time.perf_counter()
    if args.child == "teacher":
        metrics = train_teacher(cfg, args.out, resume=False, progress=False)
    else:
        metrics = distill_student(cfg, args.teacher, args.out, resume=False, method=args.method, progress=False)
    run_seconds = time.perf_counter() - started
    clock._charge()
    report = {
        "kind": args.child, "threads": torch.get_num_threads(), "set": args.set,
        "wall_s": round(time.perf_counter() - PROCESS_START, 3), "run_s": round(run_seconds, 3),
        "stages": {k: round(v, 4) for k, v in clock.seconds.items()},
        "cpu_stages": {k: round(v, 4) for k, v in clock.cpu_seconds.items()},
        "cpu_s": round(time.process_time(), 3), "calls": dict(clock.calls),
        "epochs": len(metrics["epochs"]), "batches_per_epoch": metrics["epochs"][-1]["batches"],
        "validation": {k: metrics["validation"].get(k) for k in ("AR@1", "AR@1%")} if metrics.get("validation")
        else None,
        "test": {k: metrics["test"].get(k) for k in ("AR@1", "AR@1%")},
        "best_epoch": metrics.get("best_epoch"),
        "peak_rss_mib": peak_rss_mib(),
    }
    print("STAGES " + json.dumps(report))


def run_child(kind: str, args: argparse.Namespace, out: Path, settings: list[str],
              teacher: Path | None = None) -> dict[str, Any]:
    """One run in a fresh process. A setting ``code=DIR`` runs the library of another checkout (e.g. the commit
    before a change, unpacked with ``git archive``) under the same timers."""
    code = [s.split("=", 1)[1] for s in settings if s.startswith("code=")]
    settings = [s for s in settings if not s.startswith("code=")]
    root = Path(code[-1]) if code else REPO
    command = [sys.executable, str(Path(__file__).resolve()), str(args.dataset), "--child", kind, "--out", str(out),
               "--profile", args.profile, "--epochs", str(args.epochs), "--method", args.method,
               "--threads", str(args.threads)]
    for item in settings:
        command += ["--set", item]
    if teacher is not None:
        command += ["--teacher", str(teacher)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("STAGES ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"bench_run_stages: the {kind} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("STAGES "):])


def grouped(stages: dict[str, float]) -> dict[str, float]:
    """The issue's stages: each stage path goes to the group of its longest matching prefix."""
    out = {g: 0.0 for g in GROUPS}
    for path, seconds in stages.items():
        best, length = "other", -1
        for group, prefixes in GROUPS.items():
            for prefix in prefixes:
                if (path == prefix or path.startswith(prefix + "/")) and len(prefix) > length:
                    best, length = group, len(prefix)
        out[best] += seconds
    return out


def median_report(reports: list[dict[str, Any]], field: str = "stages") -> dict[str, float]:
    keys = sorted({k for r in reports for k in r.get(field, {})})
    return {k: statistics.median(r[field].get(k, 0.0) for r in reports) for k in keys}


def print_table(title: str, columns: dict[str, list[dict[str, Any]]], detail: bool = True) -> None:
    """Median wall and process-CPU seconds and the wall share per stage, one column per setting.

    On a shared machine the CPU seconds of a one-thread run move much less with the load than its wall time."""
    medians = {name: median_report(reports) for name, reports in columns.items()}
    cpu = {name: median_report(reports, "cpu_stages") for name, reports in columns.items()}
    walls = {name: statistics.median(r["wall_s"] for r in reports) for name, reports in columns.items()}
    cpu_totals = {name: statistics.median(r.get("cpu_s", 0.0) for r in reports) for name, reports in columns.items()}
    print(f"\n### {title}")
    header = "| stage | " + " | ".join(f"{name} wall s | share | CPU s" for name in columns) + " |"
    print(header)
    print("|---|" + "---:|---:|---:|" * len(columns))
    groups = {name: grouped(m) for name, m in medians.items()}
    cpu_groups = {name: grouped(m) for name, m in cpu.items()}
    for group in GROUPS:
        cells = " | ".join(f"{groups[n][group]:.2f} | {100 * groups[n][group] / walls[n]:.1f} % | "
                           f"{cpu_groups[n][group]:.2f}" for n in columns)
        print(f"| **{group}** | {cells} |")
    print("| **whole process** | " + " | ".join(f"{walls[n]:.2f} | 100 % | {cpu_totals[n]:.2f}" for n in columns)
          + " |")
    if detail:
        keys = sorted({k for m in medians.values() for k in m})
        print("\n| stage path (exclusive) | " + " | ".join(f"{name} wall s | CPU s" for name in columns) + " |")
        print("|---|" + "---:|---:|" * len(columns))
        for key in keys:
            print(f"| {key} | " + " | ".join(f"{medians[n].get(key, 0.0):.3f} | {cpu[n].get(key, 0.0):.3f}"
                                             for n in columns) + " |")
    for name, reports in columns.items():
        r = reports[-1]
        rss = [x["peak_rss_mib"]["self"] for x in reports]
        print(f"- {name}: {r['epochs']} epochs x {r['batches_per_epoch']} batches, {r['threads']} thread(s); "
              f"peak RSS {statistics.median(rss):.0f} MiB (runs: {', '.join(f'{v:.0f}' for v in rss)}); "
              f"best epoch {[x['best_epoch'] for x in reports]}; validation {[x['validation'] for x in reports]}; "
              f"test {[x['test'] for x in reports]}; wall {[x['wall_s'] for x in reports]}")


def make_world(out: Path, profile: str, route_m: float, workers: int) -> None:
    """The profile's generator settings with a shorter route (``route_m``), into ``out``."""
    import dataclasses

    from distilvpr_lib.config import profile_config
    from distilvpr_lib.data.synth.generate import generate_dataset

    if str(out.resolve()).startswith(str(REPO)):
        sys.exit(f"bench_run_stages: --make-world {out}: write the world outside the repository (e.g. /tmp)")
    synth = dataclasses.replace(profile_config(profile).synth, route_length_m=route_m)
    report = generate_dataset(out, synth, workers=workers, progress=False)
    print(f"{out}: {report.clouds_total} clouds, {report.images_total} images, {report.splits_summary}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, nargs="?", help="benchmark folder (e.g. from --make-world)")
    parser.add_argument("--make-world", type=Path, default=None, help="generate a world here and stop")
    parser.add_argument("--route-m", type=float, default=1000.0, help="route length of --make-world (m)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes of --make-world")
    parser.add_argument("--profile", default="study")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--method", default="distilvpr", help="student method (distilvpr needs the teacher run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (study: 1 per run)")
    parser.add_argument("--kinds", nargs="+", default=["teacher", "student"], choices=["teacher", "student"])
    parser.add_argument("--teacher", type=Path, default=None, help="existing teacher folder (skips its run)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_run_stages"), help="run folders")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (interleaved)")
    parser.add_argument("--ab", action="append", default=[],
                        help="a setting to compare: [LABEL:]comma-separated key=value overrides ('' = the "
                             "profile; code=DIR = the library of another checkout); give it twice or more")
    parser.add_argument("--set", action="append", default=[], help="key=value override of every run")
    parser.add_argument("--json", type=Path, default=None, help="write every run's report here")
    parser.add_argument("--child", choices=["teacher", "student"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.make_world is not None:
        make_world(args.make_world, args.profile, args.route_m, args.workers)
        return
    if args.dataset is None or not args.dataset.is_dir():  # `make bench` runs every script without arguments
        print(f"bench_run_stages: skipped: no dataset folder {args.dataset or ''} (generate a small one with "
              f"`{Path(sys.executable).name} benchmarks/bench_run_stages.py --make-world /tmp/stage-world`, then pass "
              "it); it never generates one unasked")
        return
    settings = {}
    for item in args.ab or [""]:
        label, _, overrides = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        settings[label or overrides or "profile"] = [s for s in overrides.split(",") if s]
    print(f"bench_run_stages: {args.dataset}, profile {args.profile}, {args.epochs} epochs, {args.threads} "
          f"thread(s) per run, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(the machine may be shared: compare columns of one invocation only)")
    all_reports: dict[str, dict[str, list]] = {}
    teacher = args.teacher
    if "teacher" in args.kinds:
        columns: dict[str, list] = {name: [] for name in settings}
        for r in range(args.repeats):
            for name, extra in settings.items():
                out = args.work / f"teacher-{len(all_reports)}-{r}-{list(settings).index(name)}"
                columns[name].append(run_child("teacher", args, out, args.set + extra))
                teacher = teacher or out
        print_table(f"teacher ({args.epochs} epochs)", columns)
        all_reports["teacher"] = columns
    if "student" in args.kinds:
        if teacher is None and args.method != "nokd":
            parser.error(f"--method {args.method} needs a teacher: add --kinds teacher or --teacher DIR")
        columns = {name: [] for name in settings}
        for r in range(args.repeats):
            for name, extra in settings.items():
                out = args.work / f"student-{r}-{list(settings).index(name)}"
                columns[name].append(run_child("student", args, out, args.set + extra, teacher=teacher))
        print_table(f"student, {args.method} ({args.epochs} epochs)", columns)
        all_reports["student"] = columns
    if args.json:
        args.json.write_text(json.dumps(all_reports, indent=1))


if __name__ == "__main__":
    main()
