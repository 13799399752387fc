"""Generate a complete multi-modal dataset (clouds, images, CSVs, pickles) in one of the layouts.

:func:`generate_dataset` (``distilvpr synth``) picks the layout's writer — :class:`~.oxford.OxfordWriter`
(a procedural loop around the PointNetVLAD test squares) or :class:`~.boreas.BoreasWriter` (a suburban
road driven by procedural drives of one route, or by the real Boreas trajectories) — and runs the shared
skeleton :func:`~.skeleton.run_generation`: same seed and settings -> identical bytes; re-running completes
an interrupted generation.
"""

from __future__ import annotations

from distilvpr_lib.config import LAYOUTS, Layout, SynthConfig
from distilvpr_lib.data.files import PathLike
from distilvpr_lib.data.synth.boreas import BoreasWriter
from distilvpr_lib.data.synth.oxford import OxfordWriter
from distilvpr_lib.data.synth.skeleton import GenerationReport, LayoutWriter, Progress, run_generation


def generate_dataset(out_dir: PathLike, cfg: SynthConfig, seed: int | None = None, layout: str = "oxford",
                     workers: int | None = None, progress: Progress = True,
                     build_pickles: bool = True, boreas_poses_dir: PathLike | None = None) -> GenerationReport:
    """Generate (or complete) a dataset in ``out_dir``.

    Args:
        out_dir: dataset folder (created).
        cfg: generator settings (a profile's ``synth`` section).
        seed: overrides ``cfg.seed``.
        layout: ``"oxford"`` (a procedural loop around the PointNetVLAD test squares) or ``"boreas"``
            (a suburban road driven by procedural or real Boreas trajectories, see :mod:`.boreas`).
        workers: processes rendering in parallel (default ``cfg.workers``; 1 = in this process).
        progress: show a tqdm bar (``True``), nothing (``False``), or a callback ``(done, total)``.
        build_pickles: write the benchmark pickles with :func:`data.splits.build_oxford_benchmark` (Oxford).
        boreas_poses_dir: ``layout="boreas"`` only: a folder of real Boreas poses (e.g.
            ``$DISTILVPR_REAL_DATA/boreas_poses``), or ``None`` / ``"procedural"`` (default): ``cfg.n_runs``
            procedural drives of one generated route (:mod:`.boreas_route`), from the seed alone.

    Returns:
        :class:`~.skeleton.GenerationReport`.

    Raises:
        KeyError: unknown layout.
        ValueError: ``out_dir`` holds a dataset generated with other settings; ``boreas_poses_dir`` with the
            Oxford layout.
        FileNotFoundError: a ``boreas_poses_dir`` folder without Boreas poses.
    """
    if layout not in LAYOUTS:
        raise KeyError(f"unknown layout {layout!r}; known layouts: {sorted(LAYOUTS)}")
    if boreas_poses_dir is not None and layout != Layout.BOREAS:
        raise ValueError(f"boreas_poses_dir={str(boreas_poses_dir)!r} applies to layout 'boreas' only, not {layout!r}")
    writer: LayoutWriter = (BoreasWriter(boreas_poses_dir) if layout == Layout.BOREAS
                            else OxfordWriter(build_pickles=build_pickles))
    return run_generation(writer, out_dir, cfg, seed=seed, workers=workers, progress=progress)


__all__ = ["generate_dataset"]
