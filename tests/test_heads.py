"""Per-head evaluation of a teacher (engine.runs.run_evaluation.evaluate_heads: the modality gap) and the PCA
embedding projection figure, on a tiny smoke teacher trained for one epoch."""

from __future__ import annotations

import numpy as np
import pytest

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.engine.evaluation import embed
from distilvpr_lib.engine.runs.run_evaluation import HEAD_COLUMNS, evaluate_heads, head_split_embeddings, load_benchmark
from distilvpr_lib.engine.runs.run_folder import load_model_from_dir
from distilvpr_lib.engine.runs.teacher_run import train_teacher


@pytest.fixture(scope="module")
def smoke_teacher(smoke_dataset, tmp_path_factory):
    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(smoke_dataset), "train.epochs": 1})
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    metrics = train_teacher(cfg, folder, progress=False)
    return folder, metrics


def test_heads_table_matches_the_single_head_protocol(smoke_teacher, monkeypatch):
    folder, metrics = smoke_teacher
    model, cfg, kind = load_model_from_dir(folder)
    assert kind == "teacher"
    benchmark = load_benchmark(cfg)

    passes = []
    real = embed.compute_split_embeddings

    def spy(*args, **kwargs):
        passes.append(kwargs.get("key"))
        return real(*args, **kwargs)

    monkeypatch.setattr(embed, "compute_split_embeddings", spy)
    table = evaluate_heads(model, benchmark, "test", cfg)
    assert passes == ["heads"], "all three heads must come from one embedding pass"
    monkeypatch.setattr(embed, "compute_split_embeddings", real)

    assert list(table.index) == ["fused", "cloud-only", "image-only"]
    assert list(table.columns) == [*HEAD_COLUMNS, "dim"]
    assert table.loc["fused", "dim"] == cfg.model.cloud_dim + cfg.model.image_dim
    assert table.loc["cloud-only", "dim"] == cfg.model.cloud_dim
    assert table.loc["image-only", "dim"] == cfg.model.image_dim
    values = table[list(HEAD_COLUMNS)].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 100).all()
    # AR@N is non-decreasing in N
    assert (np.diff(table[["AR@1", "AR@5", "AR@10", "AR@25"]].to_numpy(), axis=1) >= -1e-9).all()
    # the fused row is the teacher's reported test result
    assert table.loc["fused", "AR@1"] == pytest.approx(metrics["test"]["AR@1"])
    assert table.loc["fused", "AR@1%"] == pytest.approx(metrics["test"]["AR@1%"])
    # each head equals the one-head evaluation with that output key
    for key, label in (("cloud_embedding", "cloud-only"), ("image_embedding", "image-only")):
        single = embed.evaluate_model(model, benchmark, "test", data_cfg=cfg.data,
                                      batch_size=cfg.train.eval_batch_size, normalize=cfg.train.eval_normalize,
                                      key=key)
        assert table.loc[label, "AR@1"] == pytest.approx(single.recall_at(1))
        assert table.loc[label, "AR@25"] == pytest.approx(single.recall_at(25))
        assert table.loc[label, "AR@1%"] == pytest.approx(single.recall_at_1p)

    # a folder path gives the same table
    from_folder = evaluate_heads(folder, split="test")
    assert np.allclose(from_folder[list(HEAD_COLUMNS)].to_numpy(), values)


def test_head_embeddings_split_the_fused_embedding(smoke_teacher):
    folder, _ = smoke_teacher
    model, cfg, _ = load_model_from_dir(folder)
    heads = head_split_embeddings(model, load_benchmark(cfg), "test", cfg)
    fused_db = np.concatenate(heads["embedding"][0])
    cloud_db = np.concatenate(heads["cloud_embedding"][0])
    image_db = np.concatenate(heads["image_embedding"][0])
    # the teacher's fused embedding is cat(cloud, image)
    assert np.array_equal(fused_db, np.concatenate([cloud_db, image_db], axis=1))


def test_a_student_folder_is_refused(tmp_path, monkeypatch):
    import distilvpr_lib.engine.runs.run_evaluation as runs

    monkeypatch.setattr(runs, "load_model_from_dir", lambda *a, **k: (None, None, "student"))
    with pytest.raises(ValueError, match="needs a teacher"):
        evaluate_heads(tmp_path)


def test_embedding_projection_colours_points_by_place():
    from distilvpr_lib.viz.figures import embedding_projection

    rng = np.random.default_rng(0)
    along = np.repeat(np.linspace(0.0, 500.0, 20), 3)  # 20 places seen in 3 runs
    positions = np.stack([5735000.0 + along, 620000.0 + 0.5 * along], axis=1)
    embeddings = np.stack([np.cos(along / 100.0), np.sin(along / 100.0)], axis=1) @ rng.normal(size=(2, 16))
    fig = embedding_projection(embeddings, positions)
    scatter = fig.axes[0].collections[0]
    assert scatter.get_offsets().shape == (60, 2)
    colours = np.asarray(scatter.get_array())
    # the colour is the position along the route (from 0), the same for a place in every run
    assert colours.min() == pytest.approx(0.0, abs=1e-6)
    assert colours.max() == pytest.approx(np.hypot(500.0, 250.0), rel=1e-6)
    assert np.allclose(colours.reshape(20, 3), colours.reshape(20, 3)[:, :1])
    assert len(fig.axes) == 2  # axes + colour bar
    with pytest.raises(ValueError, match="positions"):
        embedding_projection(embeddings, positions[:5])
    with pytest.raises(ValueError, match="embeddings"):
        embedding_projection(embeddings[0], positions[:1])
