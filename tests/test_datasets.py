"""Benchmark loading (both layouts, the real fixture), datasets, augmentation, sampler, collate and masks."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distilvpr_lib.config import IMAGENET_MEAN, IMAGENET_STD, NON_NEGATIVE_RADIUS_M, POSITIVE_RADIUS_M, DataConfig
from distilvpr_lib.data import augment
from distilvpr_lib.data.benchmark import Benchmark, detect_layout
from distilvpr_lib.data.collate import batch_coordinates, make_collate_fn, make_masks, quantize
from distilvpr_lib.data.datasets import EvaluationDataset, TrainingDataset, flatten_sets
from distilvpr_lib.data.clouds import read_bin, write_npy_cloud
from distilvpr_lib.data.locations import read_locations_csv
from distilvpr_lib.data.pickles import save_pickle
from distilvpr_lib.errors import DataFormatError, MissingDataError
from distilvpr_lib.data.sampler import PositivePairBatchSampler
from distilvpr_lib.data.splits import make_training_tuples, write_lidar2image_ndx
from distilvpr_lib.data.toy import write_toy_oxford_dataset


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_oxford_dataset(tmp_path_factory.mktemp("toy"), n_runs=3, route_length_m=400.0)


@pytest.fixture(scope="module")
def toy(toy_dir: Path) -> Benchmark:
    return Benchmark.load(toy_dir)


def _random_tuples(n: int = 200, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    positions = np.c_[rng.uniform(0, 400, n), rng.uniform(0, 40, n)]
    return make_training_tuples([f"oxford/r/pointcloud_20m_10overlap/{i}.bin" for i in range(n)], np.arange(n), positions)


# ---------------------------------------------------------------- Benchmark
def test_oxford_benchmark_loads(toy: Benchmark, toy_dir: Path) -> None:
    assert toy.layout == "oxford" and detect_layout(toy_dir) == "oxford"
    assert toy.run_names == ["2014-05-01-10-00-00", "2014-05-02-10-00-00", "2014-05-03-10-00-00"]
    assert toy.has_images and toy.image_dir == toy_dir / "images"
    assert len(toy.training_tuples) > 0 and toy.has_split("test") and toy.has_split("validation")
    rel = toy.training_tuples[0].rel_scan_filepath
    cloud = toy.read_cloud(rel)
    assert cloud.dtype == np.float32 and cloud.shape == (4096, 3)
    assert np.array_equal(cloud, read_bin(toy_dir / rel).astype(np.float32))
    image_path = toy.image_path(rel)
    ts = int(Path(rel).stem)
    assert image_path == toy_dir / "images" / Path(rel).parts[1] / f"{toy.lidar2image[ts][0]}.png"
    assert toy.read_image(rel).size == (32, 24) and toy.read_image(rel).mode == "RGB"
    assert toy.set_run_names("test") == toy.run_names
    with pytest.raises(KeyError, match="known splits"):
        toy.database_sets("train")


def test_missing_image_names_submap_and_image(toy_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(toy_dir, copy, copy_function=os.link)  # hard links: fast
    benchmark = Benchmark.load(copy)
    rel = benchmark.training_tuples[3].rel_scan_filepath
    image = benchmark.image_path(rel)
    image.unlink()
    with pytest.raises(MissingDataError) as info:
        benchmark.image_path(rel)
    assert str(image) in str(info.value) and rel in str(info.value)
    with pytest.raises(MissingDataError, match=rel):
        TrainingDataset(benchmark, DataConfig())[3]


def test_nonexistent_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"nope: dataset folder not found"):
        Benchmark.load(tmp_path / "nope")
    with pytest.raises(DataFormatError, match="not a benchmark folder"):
        Benchmark.load(tmp_path)
    (tmp_path / "oxford").mkdir()
    with pytest.raises(MissingDataError, match="no benchmark pickles"):
        Benchmark.load(tmp_path)
    with pytest.raises(KeyError, match="known layouts"):
        Benchmark.load(tmp_path, layout="kitti")


def test_explicit_image_dir_without_index(toy_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="lidar2image_ndx.pickle: image index not found"):
        Benchmark.load(toy_dir, image_dir=tmp_path)
    assert Benchmark.load(toy_dir, image_dir=toy_dir / "images").has_images


def test_boreas_layout(tmp_path: Path) -> None:
    runs = ["boreas-2020-11-26-13-58", "boreas-2020-12-01-13-26"]
    rels, positions, ndx = [], [], {}
    rng = np.random.default_rng(0)
    for r, run in enumerate(runs):
        for i in range(6):
            ts = 1606417230000000 + r * 10**9 + i * 10**6
            rel = f"{run}/lidar_1_4096_interval10/{ts}.npy"
            write_npy_cloud(tmp_path / rel, rng.uniform(-50, 50, (4096, 3)))
            image_ts = ts + 3
            (tmp_path / run / "camera_lidar_interval10").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (30, 26), (r * 50, i * 20, 0)).save(tmp_path / run / "camera_lidar_interval10" / f"{image_ts}.png")
            ndx[ts] = [image_ts]
            rels.append(rel)
            positions.append([4.8e6 + 5.0 * i + r, 6.2e5])
    tuples = make_training_tuples(rels, np.array([int(Path(p).stem) for p in rels]), np.array(positions))
    save_pickle(tmp_path / "boreas_training_queries_baseline.pickle", tuples)
    database = [{i: {"query": rels[6 * r + i], "northing": positions[6 * r + i][0], "easting": 6.2e5} for i in range(6)}
                for r in range(2)]
    query = [{k: {**v, 1 - r: [k]} for k, v in database[r].items()} for r in range(2)]
    save_pickle(tmp_path / "boreas_evaluation_database.pickle", database)
    save_pickle(tmp_path / "boreas_evaluation_query.pickle", query)
    write_lidar2image_ndx(tmp_path / "boreas_lidar2image_ndx.pickle", ndx)

    benchmark = Benchmark.load(tmp_path)
    assert benchmark.layout == "boreas" and benchmark.run_names == runs and benchmark.has_images
    rel = rels[7]
    assert benchmark.image_path(rel) == tmp_path / runs[1] / "camera_lidar_interval10" / f"{int(Path(rel).stem) + 3}.png"
    assert benchmark.read_cloud(rel).dtype == np.float32
    dataset = TrainingDataset(benchmark, DataConfig(quantization_size=1.0))
    assert dataset.cloud_augmentation.names == ["jitter", "remove_points", "remove_block"]  # no geometric ones
    item = dataset[7]
    assert item["image"].shape == (3, 26, 30) and item["rel_path"] == rel
    assert not benchmark.has_split("validation")
    with pytest.raises(MissingDataError, match="no validation split"):
        benchmark.query_sets("validation")


# ---------------------------------------------------------------- real fixture
@pytest.mark.real_data
def test_real_fixture_true_neighbours_match_csv(oxford_real_dir: Path) -> None:
    benchmark = Benchmark.load(oxford_real_dir)
    assert benchmark.layout == "oxford" and benchmark.training_tuples == {} and not benchmark.has_images
    assert len(benchmark.run_names) == 2
    with pytest.raises(MissingDataError, match="no image index"):
        benchmark.image_path(benchmark.database_sets()[0][0]["query"])
    database, query = benchmark.database_sets("test"), benchmark.query_sets("test")
    # positions from the CSVs, keyed by rel path
    csv_positions: dict[str, np.ndarray] = {}
    for run in benchmark.run_names:
        frame = read_locations_csv(oxford_real_dir / "oxford" / run / "pointcloud_locations_20m.csv")
        for ts, n, e in frame.itertuples(index=False):
            csv_positions[f"oxford/{run}/pointcloud_20m/{ts}.bin"] = np.array([n, e])
    with_neighbour = []
    for j, run_set in enumerate(query):
        count = 0
        for entry in run_set.values():
            here = csv_positions[entry["query"]]
            assert np.allclose(here, [entry["northing"], entry["easting"]])
            found = False
            for i, db in enumerate(database):
                if i == j:
                    continue
                brute = [k for k, e in db.items() if np.linalg.norm(csv_positions[e["query"]] - here) <= 25.0]
                assert sorted(entry[i]) == brute
                found |= bool(brute)
            count += found
        with_neighbour.append(count)
    assert with_neighbour == [38, 37]  # the README's counts
    cloud = benchmark.read_cloud(database[0][0]["query"])
    assert cloud.shape == (4096, 3) and np.abs(cloud).max() <= 1.0
    dataset = EvaluationDataset(benchmark, flatten_sets(database)[0])
    assert len(dataset) == 100 and "image" not in dataset[0]


# ---------------------------------------------------------------- datasets
def test_training_dataset_items(toy: Benchmark) -> None:
    clean = TrainingDataset(toy, DataConfig(), augment=False)
    augmented = TrainingDataset(toy, DataConfig(), augment=True)
    assert len(clean) == len(toy.training_tuples)
    item = clean[2]
    assert set(item) == {"ndx", "cloud", "image", "rel_path"} and item["ndx"] == 2
    assert item["cloud"].dtype == torch.float32 and item["cloud"].shape == (4096, 3)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 24, 32)
    raw = torch.from_numpy(toy.read_cloud(item["rel_path"]))
    assert torch.equal(item["cloud"], raw)
    # evaluation transform: exactly ToTensor + Normalize
    from torchvision.transforms.functional import normalize, to_tensor

    expected = normalize(to_tensor(toy.read_image(item["rel_path"])), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(item["image"], expected)
    torch.manual_seed(0)
    a = augmented[2]
    torch.manual_seed(0)
    b = augmented[2]
    assert torch.equal(a["cloud"], b["cloud"]) and torch.equal(a["image"], b["image"])  # seeded by torch
    assert not torch.equal(a["cloud"], raw)
    off = TrainingDataset(toy, DataConfig(augment_clouds=False, augment_images=False))
    assert torch.equal(off[2]["cloud"], raw) and torch.allclose(off[2]["image"], expected)


def test_evaluation_dataset(toy: Benchmark) -> None:
    rel_paths, offsets = flatten_sets(toy.database_sets("test"))
    assert offsets == [0, 20, 40, 60] and len(rel_paths) == 60
    dataset = EvaluationDataset(toy, rel_paths)
    first, again = dataset[5], dataset[5]
    assert first["ndx"] == 5 and first["rel_path"] == rel_paths[5]
    assert torch.equal(first["cloud"], again["cloud"]) and torch.equal(first["image"], again["image"])
    assert EvaluationDataset(toy, rel_paths, load_images=False)[0].keys() == {"ndx", "cloud", "rel_path"}


# ---------------------------------------------------------------- augmentation
def test_cloud_augmentations_properties() -> None:
    torch.manual_seed(0)
    points = torch.rand(4096, 3) * 2 - 1
    rotated = augment.RandomRotationZ()(points)
    assert torch.allclose(rotated[:, 2], points[:, 2])
    assert torch.allclose(rotated[:, :2].norm(dim=1), points[:, :2].norm(dim=1), atol=1e-6)
    cos = (rotated[:, :2] * points[:, :2]).sum(1) / points[:, :2].norm(dim=1) ** 2
    assert cos.min() >= math.cos(math.radians(5.0)) - 1e-5
    jittered = augment.JitterPoints()(points)
    assert (jittered - points).abs().max() <= 0.002 + 1e-7 and not torch.equal(jittered, points)
    for _ in range(20):
        removed = augment.RemoveRandomPoints()(points)
        zeros = (removed == 0).all(dim=1).sum()
        assert zeros <= math.floor(4096 * 0.1)
    flips = [augment.RandomFlip()(points) for _ in range(200)]
    kinds = {("x" if torch.equal(f[:, 0], -points[:, 0]) else "y" if torch.equal(f[:, 1], -points[:, 1]) else "none")
             for f in flips}
    assert kinds == {"x", "y", "none"}
    assert all(torch.equal(f[:, 2], points[:, 2]) for f in flips)
    translated = augment.RandomTranslation()(points)
    offset = translated - points
    assert torch.allclose(offset, offset[:1].expand_as(offset), atol=1e-6)
    block = augment.RemoveRandomBlock(p=1.0)
    erased = [int((block(points) == 0).all(dim=1).sum()) for _ in range(10)]
    assert max(erased) > 0
    assert torch.equal(augment.RemoveRandomBlock(p=0.0)(points), points)


def test_build_cloud_augmentation_switches() -> None:
    assert augment.build_cloud_augmentation("oxford").names == [
        "rotation", "flip", "jitter", "remove_points", "translation", "remove_block"]
    assert augment.build_cloud_augmentation("oxford", enabled=["remove_block", "jitter"]).names == ["jitter", "remove_block"]
    points = torch.rand(4096, 3)
    assert torch.equal(augment.build_cloud_augmentation("oxford", enabled=())(points), points)
    with pytest.raises(KeyError, match="known"):
        augment.build_cloud_augmentation("oxford", enabled=["shear"])
    with pytest.raises(KeyError, match="known layouts"):
        augment.build_cloud_augmentation("kitti")


def test_image_transform_erases_before_normalising() -> None:
    from torchvision import transforms

    train = augment.build_image_transform(train=True)
    kinds = [type(t) for t in train.transforms]
    assert kinds == [transforms.ColorJitter, transforms.ToTensor, transforms.RandomErasing, transforms.Normalize]
    assert [type(t) for t in augment.build_image_transform(train=False).transforms] == [transforms.ToTensor,
                                                                                     transforms.Normalize]
    # an erased pixel is black before normalising: value -mean/std afterwards
    torch.manual_seed(1)
    image = Image.new("RGB", (64, 48), (200, 180, 160))
    found = False
    for _ in range(20):
        out = train(image)
        black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
        if torch.isclose(out, black.expand_as(out), atol=1e-5).all(dim=0).any():
            found = True
            break
    assert found


# ---------------------------------------------------------------- sampler
@pytest.mark.parametrize("batch_size", [4, 8, 16])
def test_sampler_properties(batch_size: int) -> None:
    tuples = _random_tuples()
    sampler = PositivePairBatchSampler(tuples, batch_size=batch_size, seed=3)
    batches = list(sampler)
    assert len(sampler) == len(batches) > 0
    for k, batch in enumerate(batches):
        assert len(batch) % 2 == 0 and len(batch) >= 4
        if k < len(batches) - 1:
            assert len(batch) == batch_size
        assert len(batch) <= batch_size
        for a, b in zip(batch[0::2], batch[1::2]):
            assert b in tuples[a].positives and a in tuples[b].positives
    anchors_without_positives = {i for i, t in tuples.items() if len(t.positives) == 0}
    used = {i for batch in batches for i in batch}
    assert not used & anchors_without_positives
    assert len(used) > 0.8 * (len(tuples) - len(anchors_without_positives))


def test_sampler_determinism_and_epochs() -> None:
    tuples = _random_tuples()
    a = PositivePairBatchSampler(tuples, 8, seed=5)
    b = PositivePairBatchSampler(tuples, 8, seed=5)
    assert list(a) == list(b) and list(a) == list(a)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PositivePairBatchSampler(tuples, 8, seed=6)) != list(PositivePairBatchSampler(tuples, 8, seed=5))
    for bad in (2, 7, 0):
        with pytest.raises(ValueError, match="even"):
            PositivePairBatchSampler(tuples, bad, seed=0)


# ---------------------------------------------------------------- collate and masks
def test_quantize_counts() -> None:
    points = torch.tensor([[0.001, 0.002, 0.003], [0.004, 0.009, 0.0], [0.011, 0.0, 0.0], [-0.001, 0.0, 0.0]])
    voxels = quantize(points, 0.01)
    assert voxels.dtype == torch.int64
    assert voxels.tolist() == [[-1, 0, 0], [0, 0, 0], [1, 0, 0]]
    cloud = torch.rand(4096, 3) * 2 - 1
    expected = len({tuple(v) for v in np.floor(cloud.double().numpy() / 0.1).astype(int).tolist()})
    assert len(quantize(cloud, 0.1)) == expected
    for size in (0.01, 0.1, 1.0):  # the packed-key fast path equals the row-wise unique
        metric = torch.randn(4096, 3) * 30
        assert torch.equal(quantize(metric, size), torch.unique(torch.floor(metric.double() / size).long(), dim=0))
    coords = batch_coordinates([quantize(cloud, 0.1), quantize(points, 0.01)])
    assert coords.dtype == torch.int32 and coords.shape == (expected + 3, 4)
    assert coords[:expected, 0].eq(0).all() and coords[expected:, 0].eq(1).all()


def test_masks_agree_with_radii() -> None:
    tuples = _random_tuples(150, seed=2)
    labels = np.random.default_rng(0).choice(150, 40, replace=False)
    positives, negatives = make_masks(labels, tuples)
    positions = np.array([tuples[i].position for i in labels])
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    eye = np.eye(len(labels), dtype=bool)
    assert np.array_equal(positives.numpy(), (distance <= POSITIVE_RADIUS_M) & ~eye)
    assert np.array_equal(negatives.numpy(), (distance > NON_NEGATIVE_RADIUS_M) & ~eye)
    assert not positives.diagonal().any() and not negatives.diagonal().any()


def test_collate_batch_and_skip_flag(toy: Benchmark) -> None:
    dataset = TrainingDataset(toy, DataConfig())
    collate = make_collate_fn(toy.training_tuples, 0.01)
    sampler = PositivePairBatchSampler(toy.training_tuples, 8, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    batch = next(iter(loader))
    b = len(batch["labels"])
    assert batch["coords"].dtype == torch.int32 and batch["coords"].shape[1] == 4
    assert sorted(batch["coords"][:, 0].unique().tolist()) == list(range(b))
    assert batch["coords"][:, 1:].abs().max() <= 150  # [-1, 1] clouds, rotated/translated a little, at 0.01
    assert batch["images"].shape == (b, 3, 24, 32) and batch["clouds"].shape == (b, 4096, 3)
    assert batch["positives_mask"].shape == (b, b) and batch["positives_mask"].dtype == torch.bool
    for a in range(0, b, 2):
        assert batch["positives_mask"][a, a + 1] and batch["positives_mask"][a + 1, a]
    assert len(batch["rel_paths"]) == b and batch["skip"] is False
    # two far-apart sub-maps: no positive pair -> skip
    tuples = toy.training_tuples
    far = max(tuples, key=lambda i: np.linalg.norm(tuples[i].position - tuples[0].position))
    lone = collate([dataset[0], dataset[far]])
    assert lone["skip"] is True and not lone["positives_mask"].any()
    evaluation = make_collate_fn(None, 0.01)([dataset[0], dataset[1]])
    assert evaluation["positives_mask"] is None and evaluation["skip"] is False
