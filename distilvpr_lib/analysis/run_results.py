"""The retrieval results of finished runs, for the retrieval pictures and the browser (notebook 05).

:func:`load_results` reads :class:`~distilvpr_lib.engine.evaluation.results.RetrievalResults` files;
:func:`gather_results` takes files and/or model folders (a folder's ``test_results.npz`` when it was
computed on this benchmark, else the model is evaluated with
:func:`~distilvpr_lib.engine.runs.run_evaluation.evaluate_run`); :func:`check_results` refuses results of
another benchmark or split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distilvpr_lib.engine.evaluation.results import RetrievalResults
from distilvpr_lib.engine.runs.run_evaluation import evaluate_run
from distilvpr_lib.engine.runs.run_folder import TEST_RESULTS_FILE


def load_results(files: Mapping[str, str | Path] | Sequence[str | Path] | str | Path) -> dict[str, Any]:
    """Load :class:`RetrievalResults` files into ``{label: results}``.

    Args:
        files: ``{label: path}``; a list of paths (labels = the parent folder's name, or the file
            stem when names repeat); or one path.
    Raises:
        ValueError: unreadable file (the message names it); FileNotFoundError: missing file.
    """
    if isinstance(files, (str, Path)):
        files = [files]
    if not isinstance(files, Mapping):
        paths = [Path(p) for p in files]
        labels = [p.parent.name or p.stem for p in paths]
        if len(set(labels)) != len(labels):
            labels = [p.stem if p.parent.name else str(p) for p in paths]
        files = dict(zip(labels, paths))
    out: dict[str, Any] = {}
    for label, path in files.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: retrieval results file of {label!r} not found")
        out[str(label)] = RetrievalResults.load(path)
    return out


def gather_results(benchmark: Any, results: Mapping[str, str | Path] | None = None,
                   models: Mapping[str, str | Path] | None = None, split: str = "test",
                   progress: bool = False) -> dict[str, Any]:
    """Collect ``{label: RetrievalResults}`` for the browser from files and/or model folders.

    Args:
        benchmark: the loaded Benchmark the pictures are drawn from.
        results: ``{label: results file}`` (``.npz``/``.json`` written by ``RetrievalResults.save``).
        models: ``{label: teacher folder or student run}``. For the test split the folder's
            ``test_results.npz`` (written by the run pipelines) is used when it matches this
            benchmark; otherwise the model is evaluated on ``split`` of this benchmark with
            :func:`distilvpr_lib.engine.runs.run_evaluation.evaluate_run` (loads ``config.json`` + weights).
        split: ``"test"`` or ``"validation"``.

    Returns:
        ``{label: RetrievalResults}`` in the order given (files first), all checked against the
        benchmark with :func:`check_results`.
    """
    out: dict[str, Any] = dict(load_results(dict(results))) if results else {}
    for label, folder in (models or {}).items():
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: model folder of {label!r} not found")
        stored = folder / TEST_RESULTS_FILE
        loaded = None
        if split == "test" and stored.is_file():
            loaded = RetrievalResults.load(stored)
            try:
                check_results({label: loaded}, benchmark, split)
            except ValueError:
                loaded = None  # computed on another dataset: evaluate on this one
        if loaded is None:
            image_dir = getattr(benchmark, "image_dir", None)
            _, loaded = evaluate_run(folder, dataset_dir=benchmark.dataset_dir, split=split, device="cpu",
                                     image_dir=image_dir if getattr(benchmark, "has_images", False) else None,
                                     progress=progress)
        out[str(label)] = loaded
    if not out:
        raise ValueError("gather_results: give at least one results file or model folder")
    check_results(out, benchmark, split)
    return out


def finished_runs(profile: str) -> dict[str, Path]:
    """The finished model folders of ``profile`` (notebook 05's default ``models``), each holding its
    ``test_results.npz``: the profile's teacher (label ``teacher``), notebook 03's student run (its folder name)
    and the seed-0 runs of the profile's batch (their variation names). Empty when none is finished.
    """
    from distilvpr_lib.config import profile_folders
    from distilvpr_lib.paths import project_path

    folders = profile_folders(profile)
    found: dict[str, Path] = {}
    candidates = [("teacher", project_path(folders.teacher)), (Path(folders.distill_run).name,
                                                               project_path(folders.distill_run))]
    batch = project_path(folders.batch)
    if batch is not None and batch.is_dir():
        candidates += [(run.name.split("__seed")[0], run) for run in sorted(batch.glob("*__seed0"))]
    for label, folder in candidates:
        if folder is not None and (folder / TEST_RESULTS_FILE).is_file():
            found[label] = folder
    return found


def check_results(results: Mapping[str, Any], benchmark: Any, split: str = "test") -> None:
    """Check that every results object was computed on ``benchmark``'s ``split`` (same set sizes)
    and kept its retrievals.

    Raises:
        ValueError: naming the model and what differs.
    """
    db_sizes = [len(s) for s in benchmark.database_sets(split)]
    q_sizes = [len(s) for s in benchmark.query_sets(split)]
    for label, res in results.items():
        if list(res.database_sizes) != db_sizes or list(res.query_sizes) != q_sizes:
            other = "validation" if split == "test" else "test"
            hint = ""
            if benchmark.has_split(other) and list(res.database_sizes) == [len(s) for s in benchmark.database_sets(other)]:
                hint = f" (they match the {other!r} split: pass split={other!r})"
            raise ValueError(
                f"results {label!r}: database sizes {list(res.database_sizes)} / query sizes {list(res.query_sizes)} "
                f"differ from the {split!r} split of {benchmark.dataset_dir} ({db_sizes} / {q_sizes}){hint}")
        if not res.retrievals:
            raise ValueError(f"results {label!r} hold no retrievals (evaluated with keep_retrievals=False)")


__all__ = ["check_results", "gather_results", "load_results"]
