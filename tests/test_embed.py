"""compute_embeddings / evaluate_model with a stub model, stub benchmark and stub dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distilvpr_lib.engine.evaluation.embed import compute_embeddings, compute_split_embeddings, evaluate_model
from distilvpr_lib.engine.evaluation.evaluate import evaluate_retrieval

N_PLACES, N_RUNS = 12, 3
RNG = np.random.default_rng(0)
PLACE_VECTORS = RNG.normal(size=(N_PLACES, 3))


def rel_path(run: int, place: int) -> str:
    return f"oxford/run-{run}/pointcloud_20m/{1000 + place}.bin"


def cloud_of(rel: str) -> torch.Tensor:
    """A (16, 3) cloud whose mean is the place vector plus a small run-specific offset."""
    run = int(rel.split("/")[1].split("-")[1])
    place = int(rel.rsplit("/", 1)[1][:-4]) - 1000
    centre = PLACE_VECTORS[place] + 0.01 * (run + 1)
    points = centre + 0.001 * np.random.default_rng(place * 7 + run).normal(size=(16, 3))
    return torch.tensor(points, dtype=torch.float32)


class StubBenchmark:
    """The Benchmark API evaluate_model relies on: database_sets, query_sets, layout."""

    def __init__(self, layout: str = "oxford", query_places: range = range(2, 10)) -> None:
        self.layout = layout
        orders = [np.roll(np.arange(N_PLACES), r) for r in range(N_RUNS)]  # per-run visiting order
        self.orders = orders
        self._db = [{k: {"query": rel_path(r, int(p)), "northing": float(p), "easting": 0.0} for k, p in enumerate(o)}
                    for r, o in enumerate(orders)]
        row_of = [{int(p): k for k, p in enumerate(o)} for o in orders]
        self._q = []
        for j in range(N_RUNS):
            places = [int(p) for p in orders[j]] if layout == "boreas" else [int(p) for p in orders[j] if p in query_places]
            entries = {}
            for k, p in enumerate(places):
                entry: dict[Any, Any] = {"query": rel_path(j, p), "northing": float(p), "easting": 0.0}
                entry.update({i: [row_of[i][p]] for i in range(N_RUNS) if i != j})
                entries[k] = entry
            self._q.append(entries)

    def database_sets(self, split: str = "test") -> list[dict]:
        assert split in {"test", "validation"}
        return self._db

    def query_sets(self, split: str = "test") -> list[dict]:
        return self._q


class StubDataset(Dataset):
    """EvaluationDataset stand-in: items {ndx, cloud, rel_path}; records what it was built with."""

    built_with: list[list[str]] = []

    def __init__(self, benchmark: Any, rel_paths: list[str]) -> None:
        self.rel_paths = list(rel_paths)
        StubDataset.built_with.append(self.rel_paths)

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getitem__(self, ndx: int) -> dict:
        return {"ndx": ndx, "cloud": cloud_of(self.rel_paths[ndx]), "rel_path": self.rel_paths[ndx]}


def stub_collate(items: list[dict]) -> dict:
    return {"clouds": torch.stack([it["cloud"] for it in items]), "rel_paths": [it["rel_path"] for it in items]}


class MeanCloudModel(nn.Module):
    """embedding = mean point (B, 3) through an identity Linear; BatchNorm proves eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3, bias=False)
        nn.init.eye_(self.linear.weight)
        self.norm = nn.BatchNorm1d(3, affine=False)  # identity in eval mode (fresh running stats)
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.calls.append((self.training, torch.is_grad_enabled(), batch["clouds"].shape[0]))
        emb = self.norm(self.linear(batch["clouds"].mean(dim=1)))
        return {"embedding": emb, "other": 2 * emb}


def test_compute_embeddings_eval_mode_no_grad_in_order() -> None:
    paths = [rel_path(r, p) for r in range(2) for p in range(N_PLACES)]
    model = MeanCloudModel().train()
    emb = compute_embeddings(model, StubDataset(None, paths), batch_size=5, collate_fn=stub_collate)
    expected = np.stack([cloud_of(p).numpy().mean(0) for p in paths])
    np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-5)
    assert emb.dtype == np.float32 and emb.shape == (24, 3)
    assert [c[2] for c in model.calls] == [5, 5, 5, 5, 4]
    assert all(not training and not grad for training, grad, _ in model.calls)
    assert model.training  # mode restored
    other = compute_embeddings(model, DataLoader(StubDataset(None, paths), batch_size=7, collate_fn=stub_collate),
                               key="other")
    np.testing.assert_allclose(other, 2 * emb, rtol=1e-5)


def test_compute_embeddings_with_the_project_collate() -> None:
    paths = [rel_path(0, p) for p in range(5)]
    emb = compute_embeddings(MeanCloudModel(), StubDataset(None, paths), batch_size=2, quantization_size=0.01)
    np.testing.assert_allclose(emb, np.stack([cloud_of(p).numpy().mean(0) for p in paths]), rtol=1e-4, atol=1e-5)


def test_move_to_device_reaches_nested_tensors_and_keeps_the_rest() -> None:
    from distilvpr_lib.data.collate import move_to_device

    images = torch.ones(2, 3, 4, 4)
    batch = {"images": images, "nested": {"coords": torch.zeros(5, 4, dtype=torch.int32)},
             "pair": (torch.arange(3), "x"), "rel_paths": ["a", "b"], "skip": False, "positives_mask": None}
    moved = move_to_device(batch, torch.device("meta"))
    assert moved["images"].device.type == "meta" and moved["images"].shape == (2, 3, 4, 4)
    assert moved["nested"]["coords"].device.type == "meta" and moved["nested"]["coords"].dtype == torch.int32
    assert isinstance(moved["pair"], tuple) and moved["pair"][0].device.type == "meta" and moved["pair"][1] == "x"
    assert moved["rel_paths"] == ["a", "b"] and moved["skip"] is False and moved["positives_mask"] is None
    assert batch["images"] is images and images.device.type == "cpu"  # the input batch is not changed
    assert move_to_device(batch, torch.device("cpu"))["images"] is images  # already there: the same tensor


def test_compute_embeddings_bad_arguments() -> None:
    data = StubDataset(None, [rel_path(0, 0)])
    with pytest.raises(ValueError, match="batch_size"):
        compute_embeddings(MeanCloudModel(), data, collate_fn=stub_collate)
    with pytest.raises(ValueError, match="quantization_size"):
        compute_embeddings(MeanCloudModel(), data, batch_size=2)
    with pytest.raises(KeyError):
        compute_embeddings(MeanCloudModel(), data, batch_size=2, collate_fn=stub_collate, key="nope")


def test_evaluate_model_oxford_one_pass_and_perfect_recall() -> None:
    StubDataset.built_with.clear()
    bench = StubBenchmark("oxford")
    model = MeanCloudModel()
    r = evaluate_model(model, bench, split="test", batch_size=8, dataset_factory=StubDataset, collate_fn=stub_collate,
                       top_k=5)
    # One dataset over the distinct clouds: the query clouds are database clouds too.
    assert len(StubDataset.built_with) == 1
    assert sorted(StubDataset.built_with[0]) == sorted(rel_path(r_, p) for r_ in range(N_RUNS) for p in range(N_PLACES))
    assert r.summary()["AR@1"] == 100.0 and r.recall_at_1p == 100.0
    assert len(r.per_pair) == N_RUNS * (N_RUNS - 1)
    assert (r.per_pair["n_queries_evaluated"] == 8).all()
    assert r.run_names == ["run-0", "run-1", "run-2"]
    # Same numbers as evaluate_retrieval on embeddings computed by hand, row k = entry k.
    db = [np.stack([cloud_of(s[k]["query"]).numpy().mean(0) for k in range(len(s))]) for s in bench.database_sets()]
    qs = [np.stack([cloud_of(s[k]["query"]).numpy().mean(0) for k in range(len(s))]) for s in bench.query_sets()]
    manual = evaluate_retrieval(db, qs, bench.query_sets(), top_k=5)
    np.testing.assert_array_equal(r.recall_at_n, manual.recall_at_n)
    for key, pair in manual.retrievals.items():
        np.testing.assert_array_equal(r.retrievals[key].indices, pair.indices)


def test_compute_split_embeddings_rows_follow_set_keys() -> None:
    bench = StubBenchmark("oxford")
    db, qs = compute_split_embeddings(MeanCloudModel(), bench, batch_size=4, dataset_factory=StubDataset,
                                      collate_fn=stub_collate)
    assert [d.shape for d in db] == [(N_PLACES, 3)] * N_RUNS and [q.shape for q in qs] == [(8, 3)] * N_RUNS
    for s, e in zip(bench.database_sets(), db):
        for k in (0, 5, N_PLACES - 1):
            np.testing.assert_allclose(e[k], cloud_of(s[k]["query"]).numpy().mean(0), rtol=1e-4, atol=1e-5)


def test_evaluate_model_boreas_reuses_database_embeddings() -> None:
    StubDataset.built_with.clear()
    bench = StubBenchmark("boreas")
    db, qs = compute_split_embeddings(MeanCloudModel(), bench, batch_size=16, dataset_factory=StubDataset,
                                      collate_fn=stub_collate)
    assert all(q is d for q, d in zip(qs, db))
    assert len(StubDataset.built_with) == 1 and len(StubDataset.built_with[0]) == N_RUNS * N_PLACES
    r = evaluate_model(MeanCloudModel(), bench, batch_size=16, dataset_factory=StubDataset, collate_fn=stub_collate)
    assert r.summary()["AR@1"] == 100.0
    assert (r.per_pair["n_queries_evaluated"] == N_PLACES).all()


def test_boreas_misaligned_query_sets_raise() -> None:
    bench = StubBenchmark("boreas")
    bench._q[1] = {k: v for k, v in bench._q[1].items() if k < N_PLACES - 1}
    with pytest.raises(ValueError, match="run 1: 11 query entries but 12 database entries"):
        compute_split_embeddings(MeanCloudModel(), bench, batch_size=4, dataset_factory=StubDataset,
                                 collate_fn=stub_collate)
    bench = StubBenchmark("boreas")
    bench._q[2][3]["query"] = rel_path(0, 0)
    with pytest.raises(ValueError, match="run 2, entry 3"):
        compute_split_embeddings(MeanCloudModel(), bench, batch_size=4, dataset_factory=StubDataset,
                                 collate_fn=stub_collate)


def test_evaluate_model_detects_a_bad_model() -> None:
    """A model ignoring its input (constant embedding) cannot reach 100: the test can fail."""

    class Constant(MeanCloudModel):
        def forward(self, batch: dict) -> dict[str, torch.Tensor]:
            return {"embedding": torch.ones(batch["clouds"].shape[0], 3)}

    r = evaluate_model(Constant(), StubBenchmark("oxford"), batch_size=8, dataset_factory=StubDataset,
                       collate_fn=stub_collate, top_k=5)
    assert r.summary()["AR@1"] < 20.0


def test_evaluate_model_on_the_toy_oxford_benchmark(tmp_path) -> None:
    """End to end with the real Benchmark, EvaluationDataset and collate."""
    from distilvpr_lib.data import benchmark as benchmark_module, toy
    from distilvpr_lib.config import DataConfig

    root = toy.write_toy_oxford_dataset(tmp_path / "toy", n_runs=3, route_length_m=200.0, with_images=False)
    bench = benchmark_module.Benchmark.load(root)

    class FirstPoints(nn.Module):
        def forward(self, batch: dict) -> dict[str, torch.Tensor]:
            assert batch["coords"].shape[1] == 4  # the project collate quantised the clouds
            return {"embedding": batch["clouds"][:, :8].reshape(batch["clouds"].shape[0], -1)}

    r = evaluate_model(FirstPoints(), bench, split="test", data_cfg=DataConfig(dataset_dir=str(root)), batch_size=16)
    assert len(r.per_pair) == 6
    assert r.summary()["AR@1"] == 100.0
    assert r.run_names == toy.toy_run_names(3)


class RadialHistogram(nn.Module):
    """A hand-made global descriptor: normalised histograms of the point radius and height."""

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        clouds = batch["clouds"]
        radius = clouds[..., :2].norm(dim=-1)
        feats = [torch.stack([torch.histc(v, bins=16, min=lo, max=hi) for v in values])
                 for values, lo, hi in ((radius, 0.0, 1.5), (clouds[..., 2], -1.0, 1.0))]
        emb = torch.cat(feats, dim=1)
        return {"embedding": emb / emb.sum(dim=1, keepdim=True).clamp_min(1.0)}


@pytest.mark.real_data
def test_evaluate_model_on_real_oxford_submaps(oxford_real_dir) -> None:
    """The real Benchmark + EvaluationDataset + collate on 100 real sub-maps, with a hand-made
    descriptor: runs end to end, evaluates the 38 / 37 queries with a true neighbour, and does far
    better than chance (about 2 true neighbours among 50)."""
    from distilvpr_lib.config import DataConfig
    from distilvpr_lib.data.benchmark import Benchmark

    bench = Benchmark.load(oxford_real_dir)
    r = evaluate_model(RadialHistogram(), bench, data_cfg=DataConfig(dataset_dir=str(oxford_real_dir)), batch_size=25)
    assert r.per_pair["n_queries_evaluated"].tolist() == [37, 38]
    assert r.run_names == ["2015-03-10-14-18-10", "2015-11-13-10-28-08"]
    query_sets = bench.query_sets("test")
    chance = np.mean([100 * len(e[1 - j]) / 50 for j in (0, 1) for e in query_sets[j].values() if len(e[1 - j])])
    assert r.recall_at(1) > 3 * chance  # measured: AR@1 = 25.4 (chance about 4)
    assert np.all(np.diff(r.recall_at_n) >= 0)
