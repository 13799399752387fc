"""A benchmark folder on disk (Oxford or Boreas layout), loaded and validated.

Oxford layout (docs/METHOD.md §2.1)::

    <dataset_dir>/oxford/<run>/pointcloud_20m[_10overlap]/<ts>.bin
    <dataset_dir>/oxford/<run>/pointcloud_locations_20m[_10overlap].csv
    <dataset_dir>/training_queries_baseline.pickle                  (optional: evaluation-only folders)
    <dataset_dir>/oxford_evaluation_{database,query}.pickle
    <dataset_dir>/validation_evaluation_{database,query}.pickle     (optional, written by data.splits)
    <image_dir>/lidar2image_ndx.pickle, <image_dir>/<run>/<image_ts>.png   (image_dir default <dataset_dir>/images)

Boreas layout (docs/METHOD.md §2.2)::

    <dataset_dir>/<run>/lidar_1_4096_interval10/<ts>.npy
    <image_dir>/<run>/camera_lidar_interval10/<image_ts>.png          (image_dir default: the folder holding the runs)
    <dataset_dir>/boreas_training_queries_baseline.pickle, boreas_evaluation_{database,query}.pickle
    <dataset_dir>/boreas_lidar2image_ndx.pickle
    <dataset_dir>/[boreas_]validation_evaluation_{database,query}.pickle  (optional)

Image lookup: run = grand-parent folder of the cloud file, ``lidar_ts = int(stem)``, image =
``lidar2image_ndx[lidar_ts][k]`` (k = 0: the nearest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import AUTO_LAYOUT, LAYOUTS, Layout
from distilvpr_lib.data.clouds import read_cloud_file, run_from_path, timestamp_from_path
from distilvpr_lib.data.files import PathLike
from distilvpr_lib.data.pickles import (
    TrainingTuple,
    check_query_against_database,
    load_evaluation_sets,
    load_lidar2image_ndx,
    load_training_tuples,
)
from distilvpr_lib.data.splits import (
    BOREAS_IMAGE_FOLDER,
    BOREAS_LIDAR2IMAGE_PICKLE,
    BOREAS_TEST_DATABASE_PICKLE,
    BOREAS_TEST_QUERY_PICKLE,
    BOREAS_TRAINING_PICKLE,
    BOREAS_VALIDATION_DATABASE_PICKLE,
    BOREAS_VALIDATION_QUERY_PICKLE,
    LIDAR2IMAGE_PICKLE,
    OXFORD_RUNS_FOLDER,
    TEST_DATABASE_PICKLE,
    TEST_QUERY_PICKLE,
    TRAINING_PICKLE,
    VALIDATION_DATABASE_PICKLE,
    VALIDATION_QUERY_PICKLE,
    VALIDATION_SQUARES_JSON,
)
from distilvpr_lib.errors import DataFormatError, MissingDataError

SPLITS: tuple[str, ...] = ("test", "validation")

#: File names per layout.
LAYOUT_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    Layout.OXFORD.value: {
        "training": (TRAINING_PICKLE,),
        "test_database": (TEST_DATABASE_PICKLE,),
        "test_query": (TEST_QUERY_PICKLE,),
        "validation_database": (VALIDATION_DATABASE_PICKLE,),
        "validation_query": (VALIDATION_QUERY_PICKLE,),
        "lidar2image": (LIDAR2IMAGE_PICKLE,),
    },
    Layout.BOREAS.value: {
        "training": (BOREAS_TRAINING_PICKLE,),
        "test_database": (BOREAS_TEST_DATABASE_PICKLE,),
        "test_query": (BOREAS_TEST_QUERY_PICKLE,),
        "validation_database": (BOREAS_VALIDATION_DATABASE_PICKLE, VALIDATION_DATABASE_PICKLE),
        "validation_query": (BOREAS_VALIDATION_QUERY_PICKLE, VALIDATION_QUERY_PICKLE),
        "lidar2image": (BOREAS_LIDAR2IMAGE_PICKLE,),
    },
}


def detect_layout(dataset_dir: PathLike) -> str:
    """``"boreas"`` when a ``boreas_*`` benchmark pickle exists, ``"oxford"`` when an ``oxford/`` folder
    or an Oxford pickle exists.

    Raises:
        MissingDataError: the folder does not exist. DataFormatError: neither layout recognised.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise MissingDataError(f"{dataset_dir}: dataset folder not found")
    boreas = LAYOUT_FILES[Layout.BOREAS.value]
    if any((dataset_dir / name).is_file() for key in ("training", "test_database", "test_query")
           for name in boreas[key]):
        return Layout.BOREAS.value
    oxford = LAYOUT_FILES[Layout.OXFORD.value]
    if (dataset_dir / OXFORD_RUNS_FOLDER).is_dir() or any(
            (dataset_dir / name).is_file() for key in ("training", "test_database", "test_query") for name in oxford[key]):
        return Layout.OXFORD.value
    raise DataFormatError(
        f"{dataset_dir}: not a benchmark folder: expected an 'oxford/' folder with "
        f"{TEST_DATABASE_PICKLE} / {TRAINING_PICKLE} (Oxford layout) or boreas_*.pickle files (Boreas layout)"
    )


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass
class Benchmark:
    """A loaded benchmark: training tuples, evaluation sets per split, cloud and image lookup.

    Build with :meth:`load`. Attributes:
        dataset_dir: the folder; layout: ``"oxford"`` or ``"boreas"``.
        training_tuples: ``{id: TrainingTuple}`` (empty for evaluation-only folders).
        image_dir: the image root (``None`` for Boreas = per run, next to the clouds).
        lidar2image: ``{lidar_ts: [image_ts, ...]}`` or ``None`` when the benchmark has no images.
        run_names: sorted names of every run referenced by the pickles.
        validation_squares: ``[(northing, easting, half_width)]`` from ``validation_squares.json`` if present.
    """

    dataset_dir: Path
    layout: str
    training_tuples: dict[int, TrainingTuple] = field(repr=False)
    image_dir: Path | None
    lidar2image: dict[int, list[int]] | None = field(repr=False)
    lidar2image_path: Path | None
    run_names: list[str]
    _sets: dict[str, tuple[list[dict[int, dict[Any, Any]]], list[dict[int, dict[Any, Any]]]]] = field(repr=False)
    _set_files: dict[str, tuple[Path, Path]] = field(repr=False)
    validation_squares: list[tuple[float, float, float]] = field(default_factory=list)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, dataset_dir: PathLike, image_dir: PathLike | None = None, layout: str = "auto") -> "Benchmark":
        """Load a benchmark folder.

        Args:
            dataset_dir: the dataset folder (see the module docstring for both layouts).
            image_dir: image root; ``None`` = ``<dataset_dir>/images`` (Oxford) or the folder that
                holds each cloud's run folder (Boreas). An explicit ``image_dir`` must hold the index.
            layout: ``"auto"``, ``"oxford"`` or ``"boreas"``.

        Raises:
            MissingDataError: nonexistent folder, no evaluation or training pickle, explicit
                ``image_dir`` without its index. DataFormatError: malformed or unsafe pickles.
        """
        dataset_dir = Path(dataset_dir)
        if dataset_dir.exists() and not dataset_dir.is_dir():
            raise DataFormatError(f"{dataset_dir}: is a file, not a dataset folder")
        if not dataset_dir.is_dir():
            raise MissingDataError(f"{dataset_dir}: dataset folder not found")
        if layout == AUTO_LAYOUT:
            layout = detect_layout(dataset_dir)
        if layout not in LAYOUTS:
            raise KeyError(f"unknown layout {layout!r}; known layouts: {list(LAYOUTS)}")
        files = LAYOUT_FILES[layout]
        if not any((dataset_dir / name).is_file() for key in ("training", "test_database", "test_query")
                   for name in files[key]):
            try:
                found = detect_layout(dataset_dir)
            except DataFormatError:
                found = layout
            if found != layout:
                raise DataFormatError(
                    f"{dataset_dir}: {'an' if found[0] in 'aeiou' else 'a'} {found}-layout dataset, read as {layout} (no {files['training'][0]} or "
                    f"{files['test_database'][0]})", hint=f"use --layout {found} or {AUTO_LAYOUT}; in a notebook or "
                    f"--set: data.layout={found}")

        training_path = _first_existing(dataset_dir, files["training"])
        training = load_training_tuples(training_path) if training_path else {}

        sets: dict[str, tuple[list, list]] = {}
        set_files: dict[str, tuple[Path, Path]] = {}
        for split in SPLITS:
            db_path = _first_existing(dataset_dir, files[f"{split}_database"])
            q_path = _first_existing(dataset_dir, files[f"{split}_query"])
            if db_path is None and q_path is None:
                continue
            if db_path is None or q_path is None:
                present, absent = (db_path, files[f"{split}_database"][0]) if db_path else (q_path, files[f"{split}_query"][0])
                raise MissingDataError(f"{dataset_dir / absent}: {split} split is incomplete ({present.name} exists without it)")
            database = load_evaluation_sets(db_path, "database")
            query = load_evaluation_sets(q_path, "query")
            check_query_against_database(database, query, q_path)
            sets[split] = (database, query)
            set_files[split] = (db_path, q_path)
        if not training and "test" not in sets and "validation" not in sets:
            raise MissingDataError(
                f"{dataset_dir}: no benchmark pickles ({files['training'][0]}, {files['test_database'][0]}); "
                f"build them with distilvpr prepare-data {dataset_dir} (real data) or distilvpr synth (generated)")

        # Images.
        lidar2image_path: Path | None
        if layout == Layout.OXFORD:
            resolved_image_dir: Path | None = Path(image_dir) if image_dir is not None else dataset_dir / "images"
            lidar2image_path = resolved_image_dir / files["lidar2image"][0]
        else:
            resolved_image_dir = Path(image_dir) if image_dir is not None else None
            lidar2image_path = dataset_dir / files["lidar2image"][0]
        lidar2image: dict[int, list[int]] | None = None
        if lidar2image_path.is_file():
            lidar2image = load_lidar2image_ndx(lidar2image_path)
        elif image_dir is not None:
            raise MissingDataError(f"{lidar2image_path}: image index not found in the given image folder {image_dir}")
        else:
            lidar2image_path = None

        runs: set[str] = set()
        for t in training.values():
            runs.add(run_from_path(t.rel_scan_filepath))
        for database, query in sets.values():
            for run_set in (*database, *query):
                for entry in run_set.values():
                    runs.add(run_from_path(entry["query"]))

        squares: list[tuple[float, float, float]] = []
        squares_path = dataset_dir / VALIDATION_SQUARES_JSON
        if squares_path.is_file():
            try:
                info = json.loads(squares_path.read_text())
                squares = [tuple(float(x) for x in s) for s in info.get("validation_squares", [])]  # type: ignore[misc]
            except (ValueError, TypeError) as exc:
                raise DataFormatError(f"{squares_path}: unreadable validation squares ({exc})") from exc

        return cls(dataset_dir=dataset_dir, layout=layout, training_tuples=training, image_dir=resolved_image_dir,
                   lidar2image=lidar2image, lidar2image_path=lidar2image_path, run_names=sorted(runs),
                   _sets=sets, _set_files=set_files, validation_squares=squares)

    # ------------------------------------------------------------------ splits
    @property
    def has_images(self) -> bool:
        """Whether a LiDAR-to-image index was found."""
        return self.lidar2image is not None

    def has_split(self, split: str) -> bool:
        """Whether evaluation sets exist for ``split`` (``"test"`` or ``"validation"``)."""
        self._check_split(split)
        return split in self._sets

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; known splits: {list(SPLITS)}")

    def _split_sets(self, split: str) -> tuple[list, list]:
        self._check_split(split)
        if split not in self._sets:
            names = LAYOUT_FILES[self.layout][f"{split}_database"]
            hint = f" (build it with distilvpr prepare-data {self.dataset_dir})" if split == "validation" else ""
            raise MissingDataError(f"{self.dataset_dir / names[-1]}: no {split} split in this benchmark{hint}")
        return self._sets[split]

    def database_sets(self, split: str = "test") -> list[dict[int, dict[Any, Any]]]:
        """Per-run database dicts ``{k: {'query': rel_path, 'northing', 'easting'}}`` of a split."""
        return self._split_sets(split)[0]

    def query_sets(self, split: str = "test") -> list[dict[int, dict[Any, Any]]]:
        """Per-run query dicts (database entries plus ``{other_run_index: [db indices within 25 m]}``)."""
        return self._split_sets(split)[1]

    def split_files(self, split: str) -> tuple[Path, Path]:
        """The (database, query) pickle paths of a split."""
        self._split_sets(split)
        return self._set_files[split]

    def set_run_names(self, split: str = "test") -> list[str]:
        """Run name of each database set of a split (``''`` for an empty set)."""
        return [run_from_path(next(iter(s.values()))["query"]) if s else "" for s in self.database_sets(split)]

    def all_rel_paths(self) -> list[str]:
        """Every cloud referenced by the training tuples and evaluation sets (unique, in first-seen order)."""
        seen: dict[str, None] = {}
        for t in self.training_tuples.values():
            seen.setdefault(t.rel_scan_filepath, None)
        for database, query in self._sets.values():
            for run_set in (*database, *query):
                for entry in run_set.values():
                    seen.setdefault(entry["query"], None)
        return list(seen)

    # ------------------------------------------------------------------ files
    def cloud_path(self, rel: str) -> Path:
        """Absolute path of a cloud given its path relative to the dataset folder."""
        return self.dataset_dir / rel

    def image_path(self, rel_scan_filepath: str, k: int = 0) -> Path:
        """Path of the ``k``-th nearest image (0 = nearest) of a sub-map.

        Raises:
            MissingDataError: the benchmark has no images, or the sub-map is not in the index, or
                the image file is missing (the message names the sub-map and the image).
        """
        if self.lidar2image is None:
            expected = (self.image_dir / LIDAR2IMAGE_PICKLE) if self.layout == Layout.OXFORD and self.image_dir else \
                self.dataset_dir / LAYOUT_FILES[self.layout]["lidar2image"][0]
            raise MissingDataError(f"{expected}: no image index, so no image for sub-map {rel_scan_filepath}")
        lidar_ts = timestamp_from_path(rel_scan_filepath)
        images = self.lidar2image.get(lidar_ts)
        if images is None:
            raise MissingDataError(
                f"{self.lidar2image_path}: no image listed for sub-map {rel_scan_filepath} (LiDAR timestamp {lidar_ts})")
        if not 0 <= k < len(images):
            raise IndexError(f"{self.lidar2image_path}: sub-map {rel_scan_filepath} has {len(images)} images, asked for k={k}")
        run = run_from_path(rel_scan_filepath)
        if self.layout == Layout.OXFORD:
            assert self.image_dir is not None
            path = self.image_dir / run / f"{images[k]}.png"
        else:
            root = self.image_dir if self.image_dir is not None else self.cloud_path(rel_scan_filepath).parents[2]
            path = root / run / BOREAS_IMAGE_FOLDER / f"{images[k]}.png"
        if not path.is_file():
            raise MissingDataError(f"{path}: image of sub-map {rel_scan_filepath} not found")
        return path

    def read_cloud(self, rel: str) -> np.ndarray:
        """Read a sub-map cloud: ``(4096, 3)`` float32 (``.bin`` or ``.npy`` by suffix)."""
        return read_cloud_file(self.cloud_path(rel))

    def read_image(self, rel: str, k: int = 0) -> "PIL.Image.Image":  # noqa: F821
        """Read the ``k``-th nearest image of a sub-map as an RGB PIL image."""
        from PIL import Image, UnidentifiedImageError

        path = self.image_path(rel, k)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataFormatError(f"{path}: unreadable image of sub-map {rel} ({exc})") from exc

    def image_count(self, rel: str) -> int:
        """How many images the index lists for a sub-map (0 without images)."""
        if self.lidar2image is None:
            return 0
        return len(self.lidar2image.get(timestamp_from_path(rel), []))
