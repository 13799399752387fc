"""Realism statistics of submaps and the cross-modal premise measure of a generated dataset.

* :func:`cloud_statistics` / :func:`realism_table`: per-cloud statistics of PointNetVLAD-style
  submaps and a comparison of their medians between a generated and a real dataset (unique voxels
  at 0.01, mean nearest-neighbour distance, 5th/95th z percentiles, median |max| per axis).
* :func:`premise_table`: for the same places seen in different runs, how well image similarity
  and cloud similarity separate same-place pairs from different-place pairs (ROC AUC), per
  condition of the query run. DistilVPR's premise holds when appearance changes much more than
  geometry: the image AUC across conditions is clearly below the cloud AUC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from distilvpr_lib.data.clouds import read_bin
from distilvpr_lib.data.files import PathLike

#: Statistics compared by :func:`realism_table`, with the median of the real Oxford fixture
#: (``oxford_dh3d``, 100 submaps) for reference.
REALISM_COLUMNS: tuple[str, ...] = (
    "unique_voxels_0.01", "mean_nn_distance", "z_p05", "z_p95", "abs_max_x", "abs_max_y", "abs_max_z",
)


def cloud_statistics(clouds: Iterable[np.ndarray]) -> "pandas.DataFrame":  # noqa: F821
    """Per-cloud statistics of normalised submaps.

    Args:
        clouds: iterable of (N, 3) arrays (normalised coordinates).

    Returns:
        DataFrame, one row per cloud, columns :data:`REALISM_COLUMNS`:
        unique voxels of ``floor(p / 0.01)``, mean distance to the nearest other point,
        5th and 95th percentile of z, and the maximum absolute coordinate per axis.
    """
    import pandas as pd
    from scipy.spatial import cKDTree

    rows = []
    for cloud in clouds:
        p = np.asarray(cloud, dtype=np.float64)
        unique = len(np.unique(np.floor(p / 0.01).astype(np.int64), axis=0))
        dist, _ = cKDTree(p).query(p, k=2)
        amax = np.abs(p).max(axis=0)
        rows.append({
            "unique_voxels_0.01": float(unique),
            "mean_nn_distance": float(dist[:, 1].mean()),
            "z_p05": float(np.percentile(p[:, 2], 5)),
            "z_p95": float(np.percentile(p[:, 2], 95)),
            "abs_max_x": float(amax[0]),
            "abs_max_y": float(amax[1]),
            "abs_max_z": float(amax[2]),
        })
    return pd.DataFrame(rows, columns=list(REALISM_COLUMNS))


def _bin_files(dataset_dir: Path, folder: str) -> list[Path]:
    return sorted((dataset_dir / "oxford").glob(f"*/{folder}/*.bin"))


def load_clouds(dataset_dir: PathLike, folder: str = "pointcloud_20m", limit: int | None = None,
                seed: int = 0) -> list[np.ndarray]:
    """Read the ``.bin`` clouds of ``<dataset_dir>/oxford/*/<folder>/`` (an even subset if ``limit``)."""
    files = _bin_files(Path(dataset_dir), folder)
    if not files:
        raise FileNotFoundError(f"{dataset_dir}: no clouds under oxford/*/{folder}/")
    if limit is not None and len(files) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))
        files = [files[i] for i in pick]
    return [read_bin(f) for f in files]


def realism_table(generated_dir: PathLike, real_dir: PathLike, folder: str = "pointcloud_20m",
                  limit: int | None = 200, tolerance: float = 0.15) -> "pandas.DataFrame":  # noqa: F821
    """Compare the medians of :func:`cloud_statistics` between a generated and a real dataset.

    Args:
        generated_dir, real_dir: dataset folders in the Oxford layout.
        folder: cloud folder inside each run.
        limit: at most this many clouds per dataset (an even random subset).
        tolerance: relative tolerance for the ``within_tolerance`` column.

    Returns:
        DataFrame indexed by statistic with columns ``generated``, ``real``, ``relative_error``
        (|generated - real| / |real|) and ``within_tolerance``.
    """
    import pandas as pd

    gen = cloud_statistics(load_clouds(generated_dir, folder, limit)).median()
    real = cloud_statistics(load_clouds(real_dir, folder, limit)).median()
    table = pd.DataFrame({"generated": gen, "real": real})
    table["relative_error"] = (table["generated"] - table["real"]).abs() / table["real"].abs()
    table["within_tolerance"] = table["relative_error"] <= tolerance
    table.index.name = "statistic"
    return table


# ---------------------------------------------------------------------------
# Premise: appearance changes much more than geometry across runs
# ---------------------------------------------------------------------------
def image_descriptor(image: np.ndarray, size: tuple[int, int] = (16, 12)) -> np.ndarray:
    """Zero-mean unit-norm downsampled grayscale (for normalised cross-correlation).

    Args:
        image: (H, W, 3) uint8.
        size: (width, height) of the thumbnail.
    """
    from PIL import Image

    gray = np.asarray(Image.fromarray(image).convert("L").resize(size, Image.BILINEAR), dtype=np.float64)
    v = gray.ravel() - gray.mean()
    return v / max(np.linalg.norm(v), 1e-9)


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour (chamfer) distance between two (N, 3) clouds."""
    from scipy.spatial import cKDTree

    da, _ = cKDTree(b).query(a, k=1)
    db, _ = cKDTree(a).query(b, k=1)
    return float(0.5 * (da.mean() + db.mean()))


def roc_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float:
    """Probability that a random positive scores higher than a random negative (ties count half)."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def premise_table(dataset_dir: PathLike, reference_run: str | None = None, same_radius_m: float = 5.0,
                  different_min_m: float = 50.0, max_places: int = 60, negatives_per_place: int = 5,
                  seed: int = 0, include_control: bool = True) -> "pandas.DataFrame":  # noqa: F821
    """Same-place vs different-place separability of images and clouds, per query-run condition.

    For every run other than the reference (default: the first run whose condition is ``sunny``,
    else the first run), each evaluation submap of the reference run is paired with the nearest
    submap (training or evaluation folder) of the other run (a *same-place* pair when within
    ``same_radius_m``) and with
    ``negatives_per_place`` random submaps of the other run farther than ``different_min_m``
    (*different-place* pairs). Similarities: image = normalised cross-correlation of 16x12
    grayscale thumbnails of the nearest images; cloud = negative symmetric chamfer distance.

    With ``include_control``, a first row pairs the reference run with its own training submaps
    (same condition, a few metres apart): how separable the images are without a condition change.

    Returns:
        DataFrame, one row per other run (after the control row): ``run``, ``archetype``, ``season``, ``pairs_same``,
        ``pairs_different``, ``image_auc``, ``cloud_auc``, ``image_same_mean``,
        ``image_different_mean``, ``cloud_same_mean``, ``cloud_different_mean`` (chamfer
        distances, lower = more similar), ``auc_gap`` (= cloud_auc - image_auc).
    """
    import pandas as pd
    from PIL import Image

    from distilvpr_lib.data.locations import read_locations_csv
    from distilvpr_lib.data.pickles import load_lidar2image_ndx

    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / "synth_manifest.json"
    conditions = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        conditions = {r["name"]: r for r in manifest.get("runs", [])}
    runs = sorted(p.name for p in (dataset_dir / "oxford").iterdir() if (p / "pointcloud_locations_20m.csv").is_file())
    if len(runs) < 2:
        raise ValueError(f"{dataset_dir}: need at least two runs for the premise measure")
    if reference_run is None:
        sunny = [r for r in runs if conditions.get(r, {}).get("archetype") == "sunny"]
        reference_run = sunny[0] if sunny else runs[0]
    ndx = load_lidar2image_ndx(dataset_dir / "images" / "lidar2image_ndx.pickle")
    rng = np.random.default_rng(seed)

    def read_run(run: str, folders: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        stamps, positions, where = [], [], []
        for folder in folders:
            frame = read_locations_csv(dataset_dir / "oxford" / run / f"pointcloud_locations_{folder[len('pointcloud_'):]}.csv")
            stamps.append(frame["timestamp"].to_numpy())
            positions.append(frame[["northing", "easting"]].to_numpy())
            where += [folder] * len(frame)
        return np.concatenate(stamps), np.concatenate(positions), where

    cache_img: dict[tuple[str, int], np.ndarray] = {}
    cache_cloud: dict[tuple[str, int], np.ndarray] = {}

    def img(run: str, ts: int) -> np.ndarray:
        key = (run, ts)
        if key not in cache_img:
            path = dataset_dir / "images" / run / f"{ndx[ts][0]}.png"
            cache_img[key] = image_descriptor(np.asarray(Image.open(path).convert("RGB")))
        return cache_img[key]

    def cloud(run: str, ts: int, folder: str) -> np.ndarray:
        key = (run, ts)
        if key not in cache_cloud:
            cache_cloud[key] = read_bin(dataset_dir / "oxford" / run / folder / f"{ts}.bin")
        return cache_cloud[key]

    all_folders = ("pointcloud_20m", "pointcloud_20m_10overlap")
    ref_ts, ref_pos, ref_folder = read_run(reference_run, ("pointcloud_20m",))
    places = np.arange(len(ref_ts))
    if len(places) > max_places:
        places = np.sort(rng.choice(places, size=max_places, replace=False))
    rows = []
    targets = ([(reference_run, True)] if include_control else []) + [(r, False) for r in runs if r != reference_run]
    for run, control in targets:
        # the control pairs the reference run with itself: its training submaps, about 5 m from
        # the evaluation ones (never the same file), so a slightly larger radius
        radius = max(same_radius_m, 6.0) if control else same_radius_m
        ts, pos, folder = read_run(run, ("pointcloud_20m_10overlap",) if control else all_folders)
        img_same, img_diff, cl_same, cl_diff = [], [], [], []
        for i in places:
            ref_img = img(reference_run, int(ref_ts[i]))
            ref_cloud = cloud(reference_run, int(ref_ts[i]), ref_folder[i])
            dist = np.linalg.norm(pos - ref_pos[i], axis=1)
            if control:
                dist[ts == ref_ts[i]] = np.inf
            j = int(np.argmin(dist))
            if dist[j] <= radius:
                img_same.append(float(ref_img @ img(run, int(ts[j]))))
                cl_same.append(chamfer_distance(ref_cloud, cloud(run, int(ts[j]), folder[j])))
            far = np.flatnonzero(dist > different_min_m)
            if len(far):
                for j2 in rng.choice(far, size=min(negatives_per_place, len(far)), replace=False):
                    img_diff.append(float(ref_img @ img(run, int(ts[j2]))))
                    cl_diff.append(chamfer_distance(ref_cloud, cloud(run, int(ts[j2]), folder[j2])))
        info = conditions.get(run, {})
        image_auc = roc_auc(img_same, img_diff)
        cloud_auc = roc_auc([-c for c in cl_same], [-c for c in cl_diff])
        rows.append({
            "run": run, "archetype": "same run (control)" if control else info.get("archetype", ""),
            "season": info.get("season", ""),
            "pairs_same": len(img_same), "pairs_different": len(img_diff),
            "image_auc": image_auc, "cloud_auc": cloud_auc,
            "image_same_mean": float(np.mean(img_same)) if img_same else float("nan"),
            "image_different_mean": float(np.mean(img_diff)) if img_diff else float("nan"),
            "cloud_same_mean": float(np.mean(cl_same)) if cl_same else float("nan"),
            "cloud_different_mean": float(np.mean(cl_diff)) if cl_diff else float("nan"),
            "auc_gap": cloud_auc - image_auc,
        })
    table = pd.DataFrame(rows)
    table.attrs["reference_run"] = reference_run
    table.attrs["reference_archetype"] = conditions.get(reference_run, {}).get("archetype", "")
    return table
