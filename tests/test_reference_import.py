"""Importing the authors' MinkLoc++ teacher checkpoints (models.reference_import, distilvpr import-teacher).

* a state_dict with exactly the keys/shapes/dtypes of ``../shared/spec/reference_teacher_state_dict.tsv``
  (random values) imports, builds and runs; the imported teacher agrees on both sparse backends;
* a model of the reference structure written with raw MinkowskiEngine layers, exported with its own
  ``state_dict()``, round-trips through the importer to the same embeddings on both backends (so the kernel
  layout needs no permutation; a permuted kernel is shown to change the embeddings);
* missing / mis-shaped / unexpected keys and unreadable files fail naming the file and the key;
* experiment names (``T-`` and ``T:``) and ``r1_best_ep<E>_<AR@1>.pth`` are parsed;
* ``distilvpr import-teacher`` and the ``distilvpr train --teacher_weights_path X.pth`` path.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distilvpr_lib.cli import main
from distilvpr_lib.config import ModelConfig, profile_config
from distilvpr_lib.engine.runs.run_folder import IMPORT_FILE, import_reference_teacher, load_model_from_dir
from distilvpr_lib.models import build_teacher
from distilvpr_lib.models.reference_import import ReferenceCheckpointError, infer_architecture, prepare_reference_teacher
from distilvpr_lib.models.reference_names import experiment_name_from_path, parse_checkpoint_name, parse_experiment_name
from distilvpr_lib.models.teacher import REFERENCE_UNUSED_PREFIXES

TSV = Path(__file__).resolve().parents[2] / "shared" / "spec" / "reference_teacher_state_dict.tsv"
OXFORD_NAME = "0oxford__T-minklocmmcat__resnet18__img256__pc128__32_64_64__1_1_1__1__allstgF__b128__trainteacher"
OXFORD_NAME_COLON = OXFORD_NAME.replace("__T-", "__T:")
SMOKE_NAME = "0oxford__T-minklocmmcat__resnet18__img64__pc32__8_16_16__1_1_1__1__allstgF__b16__trainteacher"


def has_minkowski() -> bool:
    try:
        import MinkowskiEngine  # noqa: F401
    except ImportError:
        return False
    return True


needs_minkowski = pytest.mark.skipif(not has_minkowski(), reason="MinkowskiEngine not built "
                                     "(python scripts/build_minkowski.py)")


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def read_tsv() -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    if not TSV.is_file():
        pytest.skip(f"{TSV} not found")
    rows = []
    for line in TSV.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(ast.literal_eval(shape)), getattr(torch, dtype.strip())))
    return rows


def random_tsv_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly the TSV's keys, shapes and dtypes; values random but sane (positive variances, GeM p ~ 3)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in read_tsv():
        if dtype == torch.int64:
            state[key] = torch.randint(0, 10_000, shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(".p"):
            state[key] = torch.rand(shape, generator=g) + 2.5
        elif key.endswith((".bn.weight", "bn1.weight", "bn2.weight", "downsample.1.weight")):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = max(1, math.prod(shape[1:]) if len(shape) > 1 else 1)
            state[key] = (torch.randn(shape, generator=g) / math.sqrt(fan_in)).to(dtype)
    return state


def save_reference(state: dict, root: Path, name: str = OXFORD_NAME, file: str = "r1_best_ep57_97.24.pth") -> Path:
    path = root / name / "models" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def surface_coords(sizes=(300, 450), quantization=0.01, seed=0) -> torch.Tensor:
    """IntTensor (N, 4) [batch, x, y, z] of unique voxels of small plane-and-box clouds."""
    rng = np.random.default_rng(seed)
    rows = []
    for b, n in enumerate(sizes):
        k = n // 3
        pts = np.concatenate([
            np.c_[rng.uniform(-1, 1, k), rng.uniform(-1, 1, k), rng.normal(-0.3, 0.004, k)],
            np.c_[rng.uniform(-1, 1, k), rng.normal(0.5, 0.004, k), rng.uniform(-0.3, 0.5, k)],
            np.c_[rng.uniform(-0.2, 0.1, n - 2 * k), rng.uniform(-0.3, 0, n - 2 * k), rng.uniform(-0.3, -0.1, n - 2 * k)],
        ])
        vox = torch.unique(torch.floor(torch.from_numpy(pts) / quantization).long(), dim=0)
        rows.append(torch.cat([torch.full((len(vox), 1), b), vox], 1))
    return torch.cat(rows).int()


def small_batch(num_clouds: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"coords": surface_coords(tuple(300 + 150 * i for i in range(num_clouds)), seed=seed),
            "images": torch.randn(num_clouds, 3, 64, 80, generator=g)}


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """max |a - b| <= tol * max(1, max |a|)."""
    a, b = a.detach().double(), b.detach().double()
    scale = max(1.0, float(a.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"{what}: max abs difference {err:.3g} (scale {scale:.3g})"


def embed(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(batch)


# ---------------------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,sep", [(OXFORD_NAME, "-"), (OXFORD_NAME_COLON, ":")])
def test_experiment_name_both_forms(name, sep):
    parsed = parse_experiment_name(name)
    assert parsed is not None and parsed.separator == sep and parsed.raw == name
    assert (parsed.tryid, parsed.dataset, parsed.model, parsed.image_backbone) == (0, "oxford", "minklocmmcat",
                                                                                    "resnet18")
    assert (parsed.image_dim, parsed.cloud_dim, parsed.cloud_topdown, parsed.batch_size) == (256, 128, 1, 128)
    assert parsed.cloud_planes == (32, 64, 64) and parsed.cloud_layers == (1, 1, 1)
    assert parsed.train_teacher and not parsed.image_useallstages and parsed.student_backbone is None
    path = Path("/x/teacher_weights") / name / "models" / "r1_best_ep57_97.24.pth"
    assert experiment_name_from_path(path) == parsed


def test_experiment_name_variants_and_checkpoint_name():
    boreas = parse_experiment_name("logs_0boreas__T:minklocmmcat__resnet34__img256__pc128__32_64_128__2_1_1__2"
                                   "__allstgT__S:resnet18__384__b64__+rkdg__w1.0")
    assert boreas is not None and boreas.dataset == "boreas" and boreas.image_backbone == "resnet34"
    assert boreas.cloud_planes == (32, 64, 128) and boreas.cloud_layers == (2, 1, 1) and boreas.cloud_topdown == 2
    assert boreas.image_useallstages and boreas.student_backbone == "resnet18" and boreas.student_dim == 384
    assert boreas.batch_size == 64 and not boreas.train_teacher
    assert parse_experiment_name("teacher_weights") is None
    assert parse_experiment_name("0oxford__T-minklocmmcat__resnet18__img256") is None
    assert experiment_name_from_path("/tmp/teacher.pth") is None
    assert parse_checkpoint_name("a/b/r1_best_ep57_97.24.pth") == (57, 97.24)
    assert parse_checkpoint_name("r1_best_ep48_93.05.pth") == (48, 93.05)
    assert parse_checkpoint_name("teacher.pt") is None


# ---------------------------------------------------------------------------------------------------------
# the TSV state dict
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tsv_state() -> dict[str, torch.Tensor]:
    return random_tsv_state_dict()


@pytest.fixture(scope="module")
def tsv_import(tsv_state, tmp_path_factory):
    """The TSV state dict saved under the Oxford experiment name and imported (torch backend)."""
    root = tmp_path_factory.mktemp("tsv")
    path = save_reference(tsv_state, root)
    out = import_reference_teacher(path, root / "teacher_weights" / "oxford-authors")
    return path, out


def test_tsv_state_dict_imports_builds_and_runs(tsv_state, tsv_import):
    path, out = tsv_import
    assert out.name == "oxford-authors"
    for name in ("config.json", "teacher.pt", IMPORT_FILE, "metrics.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / IMPORT_FILE).read_text())
    assert record["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["source"] == str(path.resolve())
    assert (record["epoch"], record["reported_AR@1"]) == (57, 97.24)
    assert record["experiment_name"] == OXFORD_NAME and record["warnings"] == []
    ignored = sorted(k for k in tsv_state if k.startswith(REFERENCE_UNUSED_PREFIXES))
    assert record["ignored_keys"] == ignored and len(ignored) == 39
    assert any(k.startswith("image_fe.imagenetvlad.") for k in ignored)
    assert record["converted_keys"] == len(tsv_state) - len(ignored) == 166
    assert record["teacher_weights_sha256"] == hashlib.sha256((out / "teacher.pt").read_bytes()).hexdigest()
    assert record["architecture"] == {"cloud_planes": [32, 64, 64], "cloud_layers": [1, 1, 1], "cloud_topdown": 1,
                                      "cloud_conv0_kernel_size": 5, "cloud_dim": 128, "image_dim": 256,
                                      "image_backbone": "resnet18"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "teacher" and metrics["status"] == "imported" and metrics["test"] is None

    model, cfg, kind = load_model_from_dir(out)
    assert kind == "teacher" and cfg.model.sparse_backend == "torch" and cfg.model.pretrained_image_weights is None
    assert cfg.data.layout == "oxford" and cfg.train.batch_size == 128  # from the experiment name
    # every kept tensor is the file's, bit for bit (kernels copied without permutation)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tsv_state[key]), key
    out_dict = embed(model, small_batch())
    assert out_dict["embedding"].shape == (2, 384) and torch.isfinite(out_dict["embedding"]).all()
    assert torch.equal(out_dict["embedding"][:, :128], out_dict["cloud_embedding"])
    assert not torch.allclose(out_dict["embedding"][0], out_dict["embedding"][1])


def test_reimport_same_file_is_allowed_another_is_refused(tsv_state, tsv_import, tmp_path):
    path, out = tsv_import
    target = tmp_path / "t"
    import_reference_teacher(path, target)
    weights = (target / "teacher.pt").read_bytes()
    (target / "teacher_cache.pt").write_bytes(b"cache")
    import_reference_teacher(path, target)  # same source (a resumed `distilvpr train`): refreshed in place
    assert (target / "teacher_cache.pt").is_file()
    assert (target / "teacher.pt").read_bytes() == weights  # same bytes: the cache's weight hash stays valid
    other = dict(tsv_state)
    other["image_fe.image_gem.p"] = other["image_fe.image_gem.p"] + 1.0
    other_path = save_reference(other, tmp_path / "other")
    with pytest.raises(FileExistsError, match="another file"):
        import_reference_teacher(other_path, target)
    import_reference_teacher(other_path, target, overwrite=True)
    assert not (target / "teacher_cache.pt").exists()  # described the old weights
    assert json.loads((target / IMPORT_FILE).read_text())["source"] == str(other_path.resolve())


@pytest.mark.minkowski
@needs_minkowski
def test_imported_teacher_same_on_both_backends(tsv_import, tmp_path):
    path, out = tsv_import
    cfg = profile_config("paper")
    cfg.model.sparse_backend = "minkowski"
    out_me = import_reference_teacher(path, tmp_path / "me", base_config=cfg)
    torch_model, _, _ = load_model_from_dir(out)
    me_model, me_cfg, _ = load_model_from_dir(out_me)
    assert me_cfg.model.sparse_backend == "minkowski"
    assert (out_me / "teacher.pt").read_bytes() == (out / "teacher.pt").read_bytes()
    batch = small_batch(3, seed=1)
    a, b = embed(torch_model, batch), embed(me_model, batch)
    for key in ("cloud_embedding", "image_embedding", "embedding"):
        assert_close(a[key], b[key], key)


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
def test_missing_key_fails_naming_file_and_key(tsv_state, tmp_path):
    state = dict(tsv_state)
    del state["cloud_fe.backbone.blocks.1.0.eca.conv.weight"]
    path = save_reference(state, tmp_path)
    with pytest.raises(ReferenceCheckpointError) as info:
        import_reference_teacher(path, tmp_path / "out")
    message = str(info.value)
    assert str(path) in message and "missing key 'cloud_fe.backbone.blocks.1.0.eca.conv.weight'" in message
    assert "(1, 1, 3)" in message
    assert not (tmp_path / "out").exists()
    # a key needed to infer the architecture
    state = dict(tsv_state)
    del state["cloud_fe.backbone.conv0.kernel"]
    with pytest.raises(ReferenceCheckpointError, match="missing key 'cloud_fe.backbone.conv0.kernel'"):
        prepare_reference_teacher(save_reference(state, tmp_path / "b"))


def test_mis_shaped_key_fails_naming_key_and_shapes(tsv_state, tmp_path):
    state = dict(tsv_state)
    state["cloud_fe.backbone.blocks.1.0.conv1.kernel"] = torch.zeros(27, 32, 63)
    path = save_reference(state, tmp_path)
    with pytest.raises(ReferenceCheckpointError) as info:
        import_reference_teacher(path, tmp_path / "out")
    message = str(info.value)
    assert str(path) in message and "'cloud_fe.backbone.blocks.1.0.conv1.kernel'" in message
    assert "(27, 32, 63)" in message and "expected (27, 32, 64)" in message
    state = dict(tsv_state)
    state["cloud_fe.backbone.conv0.kernel"] = torch.zeros(124, 1, 32)
    with pytest.raises(ReferenceCheckpointError, match="conv0.kernel.*not a cube"):
        prepare_reference_teacher(save_reference(state, tmp_path / "b"))
    state = dict(tsv_state)
    state["image_fe.conv1x1.bias"] = torch.zeros(255)
    with pytest.raises(ReferenceCheckpointError, match=r"'image_fe.conv1x1.bias' has shape \(255,\), expected \(256,\)"):
        prepare_reference_teacher(save_reference(state, tmp_path / "c"))


def test_unexpected_key_and_bad_dtype_and_bad_files(tsv_state, tmp_path):
    state = dict(tsv_state)
    state["cloud_fe.backbone.extra.kernel"] = torch.zeros(3)
    with pytest.raises(ReferenceCheckpointError, match="unexpected key 'cloud_fe.backbone.extra.kernel'"):
        prepare_reference_teacher(save_reference(state, tmp_path / "a"))
    state = dict(tsv_state)
    state["image_fe.conv1x1.bias"] = torch.zeros(256, dtype=torch.int64)
    with pytest.raises(ReferenceCheckpointError, match="'image_fe.conv1x1.bias' has dtype int64, expected float32"):
        prepare_reference_teacher(save_reference(state, tmp_path / "b"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ReferenceCheckpointError, match=f"{garbage}: cannot read"):
        prepare_reference_teacher(garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ReferenceCheckpointError, match="expected a state_dict"):
        prepare_reference_teacher(listed)
    with pytest.raises(FileNotFoundError, match="not found"):
        prepare_reference_teacher(tmp_path / "missing.pth")


def test_wrapped_prefixed_and_half_precision_files_import(tsv_state, tmp_path):
    state = {f"module.{k}": (v.half() if v.is_floating_point() else v) for k, v in tsv_state.items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    with pytest.warns(UserWarning, match="converted to the model's dtype"):
        imported = prepare_reference_teacher(path, experiment_name=OXFORD_NAME_COLON)
    assert imported.experiment.separator == ":" and imported.epoch is None
    assert imported.state_dict["image_fe.conv1x1.weight"].dtype == torch.float32
    with pytest.raises(ReferenceCheckpointError, match="not a reference name"):
        prepare_reference_teacher(path, experiment_name="my-teacher")
    # files saved before BatchNorm had num_batches_tracked: the (unused) counters are filled with 0
    old_bn = {k: v for k, v in tsv_state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old_bn, tmp_path / "old.pth")
    with pytest.warns(UserWarning, match="num_batches_tracked counters missing"):
        imported = prepare_reference_teacher(tmp_path / "old.pth")
    assert int(imported.state_dict["cloud_fe.backbone.bn0.bn.num_batches_tracked"]) == 0
    assert imported.experiment is None and imported.config.data.layout == "oxford"


def test_shapes_win_over_name_and_base_config(tsv_state, tmp_path):
    wrong_name = OXFORD_NAME.replace("__pc128__", "__pc256__").replace("__resnet18__", "__resnet34__")
    path = save_reference(tsv_state, tmp_path, name=wrong_name)
    with pytest.warns(UserWarning, match="cloud_dim=256 but the tensor shapes give 128"):
        imported = prepare_reference_teacher(path)
    assert imported.config.model.cloud_dim == 128 and imported.config.model.image_backbone == "resnet18"
    assert any("image_backbone=resnet34" in w for w in imported.warnings)
    base = profile_config("smoke")  # planes 8/16/16, 32 + 64 dims, student 96
    with pytest.warns(UserWarning, match="student_dim=96"):
        imported = prepare_reference_teacher(path, base_config=base)
    m = imported.config.model
    assert (m.cloud_planes, m.cloud_dim, m.image_dim) == ((32, 64, 64), 128, 256)
    assert imported.config.train.epochs == base.train.epochs and imported.config.profile == "smoke"
    assert base.model.cloud_dim == 32  # the caller's config is not modified
    with pytest.raises(ReferenceCheckpointError, match="model.cloud_dim=64 contradicts the checkpoint"):
        imported.with_config(dataclasses.replace(imported.config,
                                                 model=dataclasses.replace(imported.config.model, cloud_dim=64)))


def test_other_architectures_are_inferred():
    """resnet34, two blocks per level, two top-down levels, conv0 kernel 3, other widths."""
    cfg = ModelConfig(cloud_planes=(8, 16, 24), cloud_layers=(2, 1, 1), cloud_topdown=2, cloud_conv0_kernel_size=3,
                      cloud_dim=20, image_dim=40, image_backbone="resnet34")
    state = build_teacher(cfg).state_dict()
    arch = infer_architecture(state)
    assert arch == {"cloud_planes": (8, 16, 24), "cloud_layers": (2, 1, 1), "cloud_topdown": 2,
                    "cloud_conv0_kernel_size": 3, "cloud_dim": 20, "image_dim": 40, "image_backbone": "resnet34"}


# ---------------------------------------------------------------------------------------------------------
# a reference-structured model written with raw MinkowskiEngine layers
# ---------------------------------------------------------------------------------------------------------
def build_reference_me_model():
    """MinkLocMultimodal of docs/METHOD.md §3.1 from raw ME layers, with the reference attribute names."""
    import MinkowskiEngine as ME
    import torchvision

    def eca_kernel(channels: int) -> int:
        t = int(abs((math.log2(channels) + 1) / 2))
        return t if t % 2 else t + 1

    def cloud_mean(x) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.C[:, 0].long()
        n = int(batch.max()) + 1
        sums = torch.zeros(n, x.F.shape[1], dtype=x.F.dtype).index_add_(0, batch, x.F)
        return sums / torch.bincount(batch, minlength=n).unsqueeze(1).to(x.F.dtype), batch

    class ECA(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            k = eca_kernel(channels)
            self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

        def forward(self, x):
            mean, batch = cloud_mean(x)
            weights = torch.sigmoid(self.conv(mean.unsqueeze(1)).squeeze(1))
            return ME.SparseTensor(x.F * weights[batch], coordinate_map_key=x.coordinate_map_key,
                                   coordinate_manager=x.coordinate_manager)

    class ECABasicBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int) -> None:
            super().__init__()
            self.conv1 = ME.MinkowskiConvolution(inplanes, planes, kernel_size=3, stride=1, dimension=3)
            self.norm1 = ME.MinkowskiBatchNorm(planes, momentum=0.1)
            self.conv2 = ME.MinkowskiConvolution(planes, planes, kernel_size=3, stride=1, dimension=3)
            self.norm2 = ME.MinkowskiBatchNorm(planes, momentum=0.1)
            self.relu = ME.MinkowskiReLU()
            self.downsample = None
            if inplanes != planes:
                self.downsample = nn.Sequential(
                    ME.MinkowskiConvolution(inplanes, planes, kernel_size=1, stride=1, dimension=3),
                    ME.MinkowskiBatchNorm(planes))
            self.eca = ECA(planes)

        def forward(self, x):
            out = self.relu(self.norm1(self.conv1(x)))
            out = self.eca(self.norm2(self.conv2(out)))
            residual = x if self.downsample is None else self.downsample(x)
            return self.relu(out + residual)

    class MinkFPN(nn.Module):  # registration order = the TSV's key order
        def __init__(self, planes=(32, 64, 64), layers=(1, 1, 1), out_dim=128) -> None:
            super().__init__()
            self.convs, self.bns, self.blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            inplanes = planes[0]
            for plane, n in zip(planes, layers):
                self.convs.append(ME.MinkowskiConvolution(inplanes, inplanes, kernel_size=2, stride=2, dimension=3))
                self.bns.append(ME.MinkowskiBatchNorm(inplanes))
                blocks = []
                for _ in range(n):
                    blocks.append(ECABasicBlock(inplanes, plane))
                    inplanes = plane
                self.blocks.append(nn.Sequential(*blocks))
            self.tconvs = nn.ModuleList([ME.MinkowskiConvolutionTranspose(out_dim, out_dim, kernel_size=2, stride=2,
                                                                          dimension=3)])
            self.conv1x1s = nn.ModuleList([
                ME.MinkowskiConvolution(planes[-1], out_dim, kernel_size=1, stride=1, dimension=3),
                ME.MinkowskiConvolution(planes[-2], out_dim, kernel_size=1, stride=1, dimension=3)])
            self.conv0 = ME.MinkowskiConvolution(1, planes[0], kernel_size=5, stride=1, dimension=3)
            self.bn0 = ME.MinkowskiBatchNorm(planes[0])
            self.relu = ME.MinkowskiReLU()

        def forward(self, x):
            x = self.relu(self.bn0(self.conv0(x)))
            maps = []
            for i, (conv, bn, block) in enumerate(zip(self.convs, self.bns, self.blocks)):
                x = block(self.relu(bn(conv(x))))
                if i == len(self.convs) - 2:  # one top-down level: the lateral comes from the middle level
                    maps.append(x)
            x = self.tconvs[0](self.conv1x1s[0](x))
            return x + self.conv1x1s[1](maps[-1])

    class GeM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.ones(1) * 3)

        def forward(self, x):
            clamped = ME.SparseTensor(x.F.clamp(min=1e-6).pow(self.p), coordinate_map_key=x.coordinate_map_key,
                                      coordinate_manager=x.coordinate_manager)
            return cloud_mean(clamped)[0].pow(1.0 / self.p)

    class Pooling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pooling = GeM()

        def forward(self, x):
            return self.pooling(x)

    class MinkLoc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = MinkFPN()
            self.pooling = Pooling()

        def forward(self, coords):
            x = ME.SparseTensor(torch.ones(len(coords), 1), coordinates=coords)
            return self.pooling(self.backbone(x))

    class ImageGeM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.ones(1) * 3)

        def forward(self, x):
            return nn.functional.avg_pool2d(x.clamp(min=1e-6).pow(self.p), x.shape[-2:]).pow(1.0 / self.p).flatten(1)

    class CosPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gem = ImageGeM()
            self.fc = nn.Linear(256, 256)

    class ConvAP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.channel_pool = nn.Conv2d(256, 256, 1)

    class NetVLAD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(256, 64, 1, bias=False)
            self.centroids = nn.Parameter(torch.rand(64, 256))

    class ResNetFPNv2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torchvision.models.resnet18(weights=None)
            self.conv1x1 = nn.Conv2d(256, 256, 1)
            self.image_gem = ImageGeM()
            self.imagecosplace, self.imageconvap, self.imagenetvlad = CosPlace(), ConvAP(), NetVLAD()

        def forward(self, images):
            m = self.model
            x = m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(images)))))))
            return self.image_gem(self.conv1x1(x))

    class MinkLocMultimodal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cloud_fe = MinkLoc()
            self.image_fe = ResNetFPNv2()

        def forward(self, coords, images):
            cloud, image = self.cloud_fe(coords), self.image_fe(images)
            return {"cloud_embedding": cloud, "image_embedding": image, "embedding": torch.cat([cloud, image], 1)}

    torch.manual_seed(0)
    model = MinkLocMultimodal()
    g = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        # BN statistics of a calibration batch (momentum 1 for one training-mode pass), so every layer's
        # activations stay O(1) in eval mode and the embeddings depend on every kernel; then random affine
        # parameters, counters and GeM exponents.
        for module in norms:
            module.momentum = 1.0
        calibration = small_batch(4, seed=11)
        model.train()(calibration["coords"], calibration["images"])
        for module in norms:
            module.momentum = 0.1
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.copy_(torch.randn(n, generator=g) * 0.2)
            module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
        for module in model.modules():
            if isinstance(module, (GeM, ImageGeM)):
                module.p.copy_(2.5 + torch.rand(1, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def me_reference(tmp_path_factory):
    pytest.importorskip("MinkowskiEngine")
    model = build_reference_me_model()
    batch = small_batch(3, seed=2)
    with torch.no_grad():
        expected = model(batch["coords"], batch["images"])
    root = tmp_path_factory.mktemp("me_ref")
    path = save_reference(model.state_dict(), root, name=OXFORD_NAME_COLON)
    return model, batch, expected, path


@pytest.mark.minkowski
@needs_minkowski
def test_me_reference_model_has_exactly_the_tsv_keys(me_reference):
    model = me_reference[0]
    got = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
    assert got == read_tsv()  # same keys, shapes, dtypes and even the same order


@pytest.mark.minkowski
@needs_minkowski
@pytest.mark.parametrize("backend", ["torch", "minkowski"])
def test_me_reference_model_round_trips_to_identical_embeddings(me_reference, backend, tmp_path):
    _, batch, expected, path = me_reference
    base = profile_config("paper")
    base.model.sparse_backend = backend
    out = import_reference_teacher(path, tmp_path / backend, base_config=base)
    model, cfg, _ = load_model_from_dir(out)
    assert cfg.model.sparse_backend == backend
    got = embed(model, batch)
    for key in ("cloud_embedding", "image_embedding", "embedding"):
        assert got[key].shape == expected[key].shape
        assert_close(expected[key], got[key], f"{backend} {key}")
    assert float(expected["cloud_embedding"].std()) > 1e-3  # the comparison is not between constants


def swap_x_and_z(kernel: torch.Tensor) -> torch.Tensor:
    """The kernel rows re-ordered as if z (not x) varied fastest: a plausible layout mistake."""
    k = round(kernel.shape[0] ** (1 / 3))
    return kernel.reshape(k, k, k, *kernel.shape[1:]).transpose(0, 2).reshape(kernel.shape)


@pytest.mark.minkowski
@needs_minkowski
@pytest.mark.parametrize("key", ["cloud_fe.backbone.conv0.kernel", "cloud_fe.backbone.convs.0.kernel",
                                 "cloud_fe.backbone.blocks.0.0.conv1.kernel", "cloud_fe.backbone.tconvs.0.kernel"])
def test_permuted_kernel_rows_would_change_the_embeddings(me_reference, key, tmp_path):
    """The round trip is sensitive to the kernel-offset order of every kernel size (5, 2, 3, transposed 2)."""
    model, batch, expected, _ = me_reference
    state = copy.deepcopy(model.state_dict())
    state[key] = swap_x_and_z(state[key])
    path = save_reference(state, tmp_path)
    got = embed(load_model_from_dir(import_reference_teacher(path, tmp_path / "out"))[0], batch)
    err = float((got["cloud_embedding"] - expected["cloud_embedding"]).abs().max())
    assert err > 1e-2 * max(1.0, float(expected["cloud_embedding"].abs().max())), err


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------
def test_cli_import_teacher(tsv_import, tmp_path, capsys):
    path, _ = tsv_import
    out = tmp_path / "teacher_weights" / "authors"
    status = main(["import-teacher", str(path), "--out", str(out), "--backend", "torch",
                   "--set", "data.dataset_dir=data/oxford", "train.eval_batch_size=16"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "model.cloud_planes = (32, 64, 64)" in printed and "model.image_backbone = resnet18" in printed
    assert "ignored keys (39" in printed and "image_fe.imagenetvlad.centroids" in printed
    assert "epoch 57, test AR@1 97.24" in printed and '"dataset_dir": "data/oxford"' in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["dataset_dir"] == "data/oxford" and cfg["train"]["eval_batch_size"] == 16
    assert cfg["model"]["cloud_dim"] == 128

    # a bad file: exit 1, message names the file; nothing written
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 10)
    assert main(["import-teacher", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # an override contradicting the shapes, an unknown field: exit 2
    assert main(["import-teacher", str(path), "--out", str(tmp_path / "y"), "--set", "model.cloud_dim=64"]) == 2
    assert "contradicts the checkpoint" in capsys.readouterr().err
    assert main(["import-teacher", str(path), "--out", str(tmp_path / "z"), "--profile", "smoke",
                 "--set", "train.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


# ---------------------------------------------------------------------------------------------------------
# distilvpr train --teacher_weights_path X.pth
# ---------------------------------------------------------------------------------------------------------
def smoke_reference_file(root: Path) -> Path:
    """A reference-format file of the smoke architecture (8/16/16, 32 + 64 = 96-d), unused parts included."""
    cfg = profile_config("smoke").model
    torch.manual_seed(3)
    state = build_teacher(cfg).state_dict()
    full = nn.Module()
    full.model = __import__("torchvision").models.resnet18(weights=None)
    for key, value in full.state_dict().items():
        if key.startswith(("model.layer4.", "model.fc.")):
            state[f"image_fe.{key}"] = value
    state["image_fe.imagenetvlad.centroids"] = torch.rand(64, 64)
    return save_reference(state, root, name=SMOKE_NAME, file="r1_best_ep1_50.00.pth")


def test_train_path_imports_and_the_cache_is_built_on_demand(smoke_dataset, tmp_path):
    """What `distilvpr train --teacher_weights_path X.pth` does before training: import with its config, then
    distill_student's get_teacher_cache builds the cache from the imported folder."""
    import argparse

    from distilvpr_lib.engine.runs.run_evaluation import load_benchmark
    from distilvpr_lib.engine.runs.student_cache import get_teacher_cache
    from distilvpr_lib.reference import add_reference_options, resolve_reference_options

    pth = smoke_reference_file(tmp_path)
    parser = argparse.ArgumentParser()
    add_reference_options(parser)
    run = resolve_reference_options(parser.parse_args(
        ["--teacher_weights_path", str(pth), "--dataset_folder", str(smoke_dataset), "--rkdgloss_weight", "10"]),
        profile="smoke")
    cfg = run.config
    teacher_dir = import_reference_teacher(Path(run.teacher_weights_path), tmp_path / "run" / "teacher",
                                           base_config=cfg)
    teacher_cfg = json.loads((teacher_dir / "config.json").read_text())
    assert teacher_cfg["data"]["dataset_dir"] == str(smoke_dataset)
    assert teacher_cfg["model"]["cloud_planes"] == [8, 16, 16]
    assert json.loads((teacher_dir / IMPORT_FILE).read_text())["ignored_keys"][0] == "image_fe.imagenetvlad.centroids"
    benchmark = load_benchmark(cfg)
    cache = get_teacher_cache(teacher_dir, cfg, benchmark, torch.device("cpu"), progress=False)
    assert (teacher_dir / "teacher_cache.pt").is_file()
    assert cache.dim == cfg.model.student_dim == 96 and len(cache) == len(benchmark.training_tuples)
    # the cached embeddings are the imported teacher's
    model, _, _ = load_model_from_dir(teacher_dir)
    assert model.output_dim == 96


@pytest.mark.parametrize("backend", ["torch", pytest.param("minkowski", marks=[pytest.mark.minkowski,
                                                                                 needs_minkowski])])
def test_distilvpr_train_with_a_reference_pth(smoke_dataset, tmp_path, capsys, backend):
    pth = smoke_reference_file(tmp_path)
    out = tmp_path / "runs" / "seed"
    status = main(["train", "--profile", "smoke", "--backend", backend, "--teacher_weights_path", str(pth),
                   "--dataset_folder", str(smoke_dataset), "--epochs", "1", "--train_batch_size", "8",
                   "--rkdgloss_weight", "10", "--crosslogitdistloss_weight_st2ss", "0.1",
                   "--crosslogitsimloss_weight_st2ss", "0.1", "--crosslogitgeodistloss_weight_st2ss", "0.1",
                   "--out", str(out)])
    assert status == 0
    teacher = out / "teacher"
    for name in ("config.json", "teacher.pt", IMPORT_FILE, "teacher_cache.pt"):
        assert (teacher / name).is_file(), name
    assert json.loads((teacher / "config.json").read_text())["model"]["sparse_backend"] == backend
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["teacher_dir"] == str(teacher)
    assert set(metrics["final_losses"]) > {"triplet", "total"}
