"""Import the authors' MinkLoc++ teacher checkpoints (``r1_best_ep<E>_<AR@1>.pth``) as teacher folders.

The DistilVPR authors distribute their teachers as bare ``state_dict`` files of the reference
``MinkLocMultimodal`` (``--model minklocmmcat``), stored as
``teacher_weights/<experiment name>/models/r1_best_ep<E>_<AR@1>.pth``; the keys, shapes and dtypes are listed
in ``../shared/spec/reference_teacher_state_dict.tsv``. :func:`prepare_reference_teacher` converts such a
file (a :class:`ReferenceTeacherImport`: config, converted state_dict, provenance) and
:func:`distilvpr_lib.engine.runs.run_folder.import_reference_teacher` writes it as a teacher folder of this project::

    <out_dir>/config.json    the ExperimentConfig; model architecture inferred from the tensor shapes
    <out_dir>/teacher.pt     our teacher's state_dict (engine.train.checkpoint.save_weights)
    <out_dir>/import.json    provenance: source path, sha256, epoch and AR@1 from the file name, experiment name,
                             inferred architecture, ignored keys, warnings
    <out_dir>/metrics.json   kind "teacher", status "imported", test null (evaluate it with ``distilvpr evaluate``)

which :func:`distilvpr_lib.engine.runs.run_folder.load_model_from_dir` and ``distill_student`` read like a trained
teacher folder (the teacher-embedding cache is built on demand by ``engine.runs.student_cache.get_teacher_cache``).

Architecture inference (shapes win)
-----------------------------------
* ``cloud_planes``: output channels of each bottom-up level (majority over the level's conv/BN shapes, so
  one mis-shaped tensor is reported as such instead of changing the inferred width);
* ``cloud_layers``: number of blocks ``blocks.<level>.<j>`` per level;
* ``cloud_topdown``: number of ``tconvs.<j>`` (``conv1x1s`` must hold one more);
* ``cloud_dim``: output channels of ``conv1x1s``/``tconvs``; ``image_dim``: ``image_fe.conv1x1`` outputs;
* ``cloud_conv0_kernel_size``: cube root of ``conv0``'s kernel volume;
* ``image_backbone``: blocks in ResNet ``layer1..3`` (2/2/2 = resnet18, 3/4/6 = resnet34).

The experiment name (parsed by :mod:`.reference_names`; ``0oxford__T-minklocmmcat__resnet18__img256__pc128__32_64_64__1_1_1__1__allstgF__b128
__trainteacher``, or the first release's ``T:`` form), found in the path or given, supplies the dataset and
training batch size and is cross-checked against the shapes: a disagreement is a warning, the shapes are used.

Kernel layout: no permutation
-----------------------------
MinkowskiEngine stores a convolution kernel as ``(kernel volume, C_in, C_out)`` (``(C_in, C_out)`` for a
1x1x1 kernel) with rows in its own kernel-offset order. Both of our sparse backends store kernels in exactly
that layout and order (``models.sparse.kernel_offsets``: x fastest, odd kernels centred, even kernels
``0..k-1``; derived from the built library and pinned by ``tests/test_backend_equivalence.py``), so the
reference tensors are copied unchanged. ``tests/test_reference_import.py`` checks this end to end: a model
built from raw MinkowskiEngine layers, exported with its own ``state_dict()``, gives the same embeddings after
the import on both backends (a wrong offset order would change them).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..config import ExperimentConfig, Layout, ModelConfig, profile_config
from ..data.files import file_sha256
from ..errors import CheckpointError, MissingCheckpointError, describe_torch_load_error
from .reference_names import (
    ReferenceExperimentName,
    experiment_name_from_path,
    parse_checkpoint_name,
    parse_experiment_name,
)
from .teacher import REFERENCE_UNUSED_PREFIXES

PathLike = str | os.PathLike

IMPORT_FORMAT = "distilvpr-reference-import/1"
#: ModelConfig fields that the checkpoint's shapes determine.
ARCHITECTURE_FIELDS: tuple[str, ...] = ("cloud_planes", "cloud_layers", "cloud_topdown", "cloud_conv0_kernel_size",
                                        "cloud_dim", "image_dim", "image_backbone")
#: Blocks in ResNet layer1..layer3 -> torchvision backbone name.
RESNET_BLOCKS: dict[tuple[int, int, int], str] = {(2, 2, 2): "resnet18", (3, 4, 6): "resnet34"}
#: Profile whose values are the reference defaults (used when no base config is given).
REFERENCE_PROFILE = "paper"
KERNEL_LAYOUT_NOTE = ("MinkowskiEngine (kernel volume, C_in, C_out) in MinkowskiEngine's kernel-offset order; "
                      "identical to both sparse backends' layout, copied without permutation")


class ReferenceCheckpointError(CheckpointError, ValueError):
    """A reference checkpoint cannot be imported; the message names the file and the offending key."""


# ---------------------------------------------------------------------------------------------------------
# Reading and inferring
# ---------------------------------------------------------------------------------------------------------
def read_reference_state_dict(path: PathLike) -> dict[str, Tensor]:
    """Load a ``.pth`` with ``torch.load(weights_only=True)``: a bare state_dict, or one under ``state_dict``/``model``.

    A ``module.`` prefix (DataParallel) is removed.

    Raises:
        FileNotFoundError: no such file.
        ReferenceCheckpointError: unreadable, or not a mapping of names to tensors (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError("reference teacher checkpoint not found", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report which file is broken and why, never torch's advice
        raise ReferenceCheckpointError(f"{path}: cannot read a torch state_dict: {describe_torch_load_error(exc)}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ReferenceCheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), "
                                       f"got {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ReferenceCheckpointError(f"{path}: not a state_dict: entry {bad[0]!r} is not a named tensor")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _shape(state: Mapping[str, Tensor], key: str, where: str, ndims: tuple[int, ...] | None = None) -> tuple[int, ...]:
    if key not in state:
        raise ReferenceCheckpointError(f"{where}: missing key {key!r} (needed to infer the architecture)")
    shape = tuple(state[key].shape)
    if ndims is not None and len(shape) not in ndims:
        dims = " or ".join(map(str, ndims))
        raise ReferenceCheckpointError(f"{where}: key {key!r} has shape {shape}, expected a {dims}-dimensional tensor")
    return shape


def _indices(state: Mapping[str, Tensor], prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` of keys ``<prefix><i>.``."""
    found = set()
    for key in state:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _contiguous(indices: list[int], what: str, where: str) -> int:
    if indices != list(range(len(indices))):
        missing = sorted(set(range(max(indices) + 1)) - set(indices)) if indices else [0]
        raise ReferenceCheckpointError(f"{where}: {what} {missing[0]} is missing (found {indices})")
    return len(indices)


def _vote(values: list[int], what: str, where: str) -> int:
    if not values:
        raise ReferenceCheckpointError(f"{where}: cannot infer {what}")
    return Counter(values).most_common(1)[0][0]


def infer_architecture(state: Mapping[str, Tensor], where: str = "state_dict") -> dict[str, Any]:
    """Infer the teacher's ModelConfig architecture fields from a reference state_dict's shapes.

    Args:
        state: reference keys (``cloud_fe.backbone.*``, ``image_fe.model.*``...) -> tensors.
        where: the file name, for messages.

    Returns:
        ``{cloud_planes, cloud_layers, cloud_topdown, cloud_conv0_kernel_size, cloud_dim, image_dim,
        image_backbone}``.

    Raises:
        ReferenceCheckpointError: a key needed for the inference is missing or has an impossible shape.
    """
    bb = "cloud_fe.backbone."
    conv0 = _shape(state, bb + "conv0.kernel", where, (2, 3))
    volume = 1 if len(conv0) == 2 else conv0[0]
    k0 = round(volume ** (1.0 / 3.0))
    if k0 ** 3 != volume:
        raise ReferenceCheckpointError(f"{where}: key {bb + 'conv0.kernel'!r} has shape {conv0}: kernel volume "
                                       f"{volume} is not a cube (expected k**3, e.g. 125 for kernel size 5)")
    n_levels = _contiguous(_indices(state, bb + "blocks."), "bottom-up level (cloud_fe.backbone.blocks.<i>)", where)
    if n_levels == 0:
        raise ReferenceCheckpointError(f"{where}: no key 'cloud_fe.backbone.blocks.0.*': not a MinkLoc++ teacher")
    planes, layers = [], []
    for level in range(n_levels):
        prefix = f"{bb}blocks.{level}."
        n_blocks = _contiguous(_indices(state, prefix), f"block {prefix}<j>", where)
        votes: list[int] = []
        for j in range(n_blocks):
            b = f"{prefix}{j}."
            for key, dim in (("conv1.kernel", -1), ("conv2.kernel", -2), ("conv2.kernel", -1),
                             ("norm1.bn.weight", 0), ("norm2.bn.weight", 0)):
                if b + key in state and state[b + key].dim() >= 1:
                    votes.append(int(state[b + key].shape[dim]))
        planes.append(_vote(votes, f"the channels of level {level} ({prefix}*)", where))
        layers.append(n_blocks)
    n_tconvs = len(_indices(state, bb + "tconvs."))
    n_laterals = len(_indices(state, bb + "conv1x1s."))
    if n_laterals == 0:
        raise ReferenceCheckpointError(f"{where}: missing key {bb + 'conv1x1s.0.kernel'!r} (the top-down lateral)")
    dim_votes = [int(v.shape[-1]) for k, v in state.items()
                 if k.startswith((bb + "conv1x1s.", bb + "tconvs.")) and k.endswith(".kernel") and v.dim() >= 2]
    dim_votes += [int(v.shape[-2]) for k, v in state.items()
                  if k.startswith(bb + "tconvs.") and k.endswith(".kernel") and v.dim() == 3]
    cloud_dim = _vote(dim_votes, "cloud_dim (conv1x1s/tconvs output channels)", where)
    image_key = "image_fe.conv1x1.weight"
    image_shape = _shape(state, image_key, where, (4,))
    if image_shape[1] != 256:
        raise ReferenceCheckpointError(
            f"{where}: key {image_key!r} has shape {image_shape}: the 1x1 conv takes {image_shape[1]} channels, "
            "expected 256 (ResNet layer3); checkpoints with --minklocmm_image_useallstages True are not supported")
    image_dim = image_shape[0]
    blocks = []
    for layer in (1, 2, 3):
        prefix = f"image_fe.model.layer{layer}."
        n_blocks = _contiguous(_indices(state, prefix), f"ResNet block {prefix}<j>", where)
        if n_blocks == 0:
            raise ReferenceCheckpointError(
                f"{where}: missing key {prefix + '0.conv1.weight'!r} (no ResNet layer{layer})")
        blocks.append(n_blocks)
        if any(k.startswith(prefix) and ".conv3." in k for k in state):
            raise ReferenceCheckpointError(f"{where}: {prefix}* has bottleneck blocks (conv3): only resnet18/resnet34 "
                                           "image branches are supported")
    backbone = RESNET_BLOCKS.get(tuple(blocks))
    if backbone is None:
        raise ReferenceCheckpointError(
            f"{where}: ResNet layer1..3 have {tuple(blocks)} blocks; known image backbones: "
            + ", ".join(f"{name} {b}" for b, name in RESNET_BLOCKS.items()))
    return {"cloud_planes": tuple(planes), "cloud_layers": tuple(layers), "cloud_topdown": n_tconvs,
            "cloud_conv0_kernel_size": k0, "cloud_dim": cloud_dim, "image_dim": image_dim,
            "image_backbone": backbone}


def _expected_state(model_cfg: ModelConfig) -> dict[str, Tensor]:
    """Our teacher's state_dict for an architecture (built on the always-available torch backend)."""
    from .teacher import build_teacher

    cfg = dataclasses.replace(model_cfg, sparse_backend="torch", pretrained_image_weights=None)
    return build_teacher(cfg).state_dict()


def convert_reference_state_dict(state: Mapping[str, Tensor], model_cfg: ModelConfig, where: str = "state_dict"
                                 ) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Map a reference state_dict onto our teacher's keys (identity names, kernels copied unchanged).

    Args:
        state: the reference state_dict.
        model_cfg: the architecture (e.g. from :func:`infer_architecture`).
        where: the file name, for messages.

    Returns:
        ``(our state_dict in our key order, ignored reference keys (sorted), notes)``.

    Raises:
        ReferenceCheckpointError: a missing, unexpected or mis-shaped key, or a non-numeric dtype; the message
        names the file, the key and the expected vs actual shape.
    """
    expected = _expected_state(model_cfg)
    ignored = sorted(k for k in state if k.startswith(REFERENCE_UNUSED_PREFIXES))
    arch = ", ".join(f"{f}={getattr(model_cfg, f)}" for f in ARCHITECTURE_FIELDS)
    notes: list[str] = []
    missing = [k for k in expected if k not in state]
    filled = [k for k in missing if k.endswith(".num_batches_tracked")]
    missing = [k for k in missing if k not in filled]
    if missing:
        first = missing[0]
        raise ReferenceCheckpointError(
            f"{where}: missing key {first!r} (expected shape {tuple(expected[first].shape)}, "
            f"{str(expected[first].dtype).replace('torch.', '')})"
            + (f" and {len(missing) - 1} more: {missing[1:6]}" if len(missing) > 1 else "")
            + f"; inferred architecture: {arch}")
    if filled:
        notes.append(f"{len(filled)} BatchNorm num_batches_tracked counters missing (unused with a fixed momentum); "
                     "set to 0")
    unexpected = [k for k in state if k not in expected and k not in set(ignored)]
    if unexpected:
        raise ReferenceCheckpointError(
            f"{where}: unexpected key {unexpected[0]!r} (shape {tuple(state[unexpected[0]].shape)})"
            + (f" and {len(unexpected) - 1} more: {unexpected[1:6]}" if len(unexpected) > 1 else "")
            + f": not part of the MinkLoc++ teacher with the inferred architecture ({arch}) nor a known unused "
            f"part ({', '.join(REFERENCE_UNUSED_PREFIXES)})")
    bad_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad_shape:
        first = bad_shape[0]
        raise ReferenceCheckpointError(
            f"{where}: key {first!r} has shape {tuple(state[first].shape)}, expected {tuple(expected[first].shape)}"
            + (f" (also mis-shaped: {bad_shape[1:6]})" if len(bad_shape) > 1 else "")
            + f"; inferred architecture: {arch}")
    out: dict[str, Tensor] = {}
    cast = []
    for key, ref in expected.items():
        if key in filled:
            out[key] = torch.zeros_like(ref)
            continue
        value = state[key].detach()
        if ref.is_floating_point() != value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ReferenceCheckpointError(f"{where}: key {key!r} has dtype {str(value.dtype).replace('torch.', '')}, "
                                           f"expected {str(ref.dtype).replace('torch.', '')}")
        if value.dtype != ref.dtype:
            cast.append(key)
        out[key] = value.to(ref.dtype).clone().contiguous()
    if cast:
        notes.append(f"{len(cast)} tensors converted to the model's dtype, e.g. {cast[0]!r} "
                     f"{str(state[cast[0]].dtype).replace('torch.', '')} -> "
                     f"{str(expected[cast[0]].dtype).replace('torch.', '')}")
    return out, ignored, notes


# ---------------------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ReferenceTeacherImport:
    """A converted reference checkpoint, ready to be written as a teacher folder.

    Attributes:
        source: the ``.pth`` file. source_sha256: its SHA-256.
        config: the teacher's ExperimentConfig (architecture from the shapes).
        state_dict: our teacher's weights.
        architecture: the inferred ModelConfig fields.
        ignored_keys: reference keys of unused parts (ResNet layer4/fc, CosPlace, ConvAP, NetVLAD heads).
        experiment: the parsed experiment name, if any.
        epoch, reported_ar1: from ``r1_best_ep<E>_<AR@1>.pth`` (the authors' own test AR@1), if present.
        warnings: disagreements (name or base config vs shapes) and conversions worth a look.
    """

    source: Path
    source_sha256: str
    config: ExperimentConfig
    state_dict: dict[str, Tensor]
    architecture: dict[str, Any]
    ignored_keys: list[str]
    experiment: ReferenceExperimentName | None = None
    epoch: int | None = None
    reported_ar1: float | None = None
    warnings: list[str] = field(default_factory=list)

    def with_config(self, config: ExperimentConfig) -> "ReferenceTeacherImport":
        """The same import with another config (e.g. after ``--set``); its architecture must stay the checkpoint's.

        Raises:
            ReferenceCheckpointError: ``config.model`` changes an architecture field.
        """
        changed = {f: getattr(config.model, f) for f in ARCHITECTURE_FIELDS
                   if _norm(getattr(config.model, f)) != _norm(self.architecture[f])}
        if changed:
            name, value = next(iter(changed.items()))
            raise ReferenceCheckpointError(
                f"{self.source}: model.{name}={value} contradicts the checkpoint, which has {name}="
                f"{self.architecture[name]} (the architecture is fixed by the tensor shapes)")
        config = copy.deepcopy(config)
        config.model.pretrained_image_weights = None
        return dataclasses.replace(self, config=config)

    def summary(self) -> dict[str, Any]:
        """The ``import.json`` content (without the written teacher.pt's hash)."""
        return {
            "format": IMPORT_FORMAT,
            "source": str(self.source),
            "source_sha256": self.source_sha256,
            "source_bytes": self.source.stat().st_size if self.source.is_file() else None,
            "epoch": self.epoch,
            "reported_AR@1": self.reported_ar1,
            "experiment_name": self.experiment.raw if self.experiment else None,
            "experiment": dataclasses.asdict(self.experiment) if self.experiment else None,
            "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in self.architecture.items()},
            "sparse_backend": self.config.model.sparse_backend,
            "kernel_layout": KERNEL_LAYOUT_NOTE,
            "converted_keys": len(self.state_dict),
            "ignored_keys": list(self.ignored_keys),
            "warnings": list(self.warnings),
        }


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _config_from_name(name: ReferenceExperimentName | None) -> ExperimentConfig:
    """The reference defaults (``paper`` profile) with the name's dataset and batch size, mapped like
    ``distilvpr train`` maps the reference options."""
    if name is None:
        return profile_config(REFERENCE_PROFILE)
    import argparse

    from ..reference import ReferenceOptionError, add_reference_options, resolve_reference_options

    parser = argparse.ArgumentParser(add_help=False)
    add_reference_options(parser)
    argv = ["--train_mode", "train_teacher", "--train_batch_size", str(name.batch_size)]
    if name.dataset in ("oxford", "oxfordadafusion", "boreas"):
        argv += ["--dataset", name.dataset]
    try:
        return resolve_reference_options(parser.parse_args(argv), profile=REFERENCE_PROFILE).config
    except ReferenceOptionError:  # pragma: no cover - the argv above is always valid
        return profile_config(REFERENCE_PROFILE)


def prepare_reference_teacher(path: PathLike, base_config: ExperimentConfig | None = None,
                              experiment_name: str | None = None) -> ReferenceTeacherImport:
    """Read, check and convert a reference teacher checkpoint (nothing is written).

    Args:
        path: the ``.pth`` (bare state_dict, or one under ``state_dict``/``model``).
        base_config: every non-architecture setting (data, training, sparse backend...); ``None`` = the
            reference defaults (``paper`` profile) with the dataset and batch size of the experiment name.
        experiment_name: the reference experiment name, when the path does not contain it.

    Returns:
        A :class:`ReferenceTeacherImport`; its ``warnings`` are also emitted with :func:`warnings.warn`.

    Raises:
        FileNotFoundError: no such file.
        ReferenceCheckpointError: unreadable file, unparseable ``experiment_name``, missing / unexpected /
            mis-shaped key (the message names the file and the key).
    """
    path = Path(path)
    where = str(path)
    state = read_reference_state_dict(path)
    if experiment_name is not None:
        name = parse_experiment_name(experiment_name)
        if name is None:
            raise ReferenceCheckpointError(
                f"{where}: experiment name {experiment_name!r} is not a reference name like "
                "'0oxford__T-minklocmmcat__resnet18__img256__pc128__32_64_64__1_1_1__1__allstgF__b128__trainteacher'")
    else:
        name = experiment_name_from_path(path)
    notes: list[str] = []
    architecture = infer_architecture(state, where)
    if name is not None:
        for key, value in name.architecture().items():
            if _norm(value) != _norm(architecture[key]):
                notes.append(f"experiment name {name.raw!r} says {key}={value} but the tensor shapes give "
                             f"{architecture[key]}; using the shapes")
        if name.model != "minklocmmcat":
            notes.append(f"experiment name says model {name.model!r}; importing as 'minklocmmcat' (the shapes fit)")
        if name.image_useallstages:
            notes.append("experiment name says allstgT, but the image branch stops after layer3 (as the shapes show)")
    if base_config is None:
        config = _config_from_name(name)
    else:
        config = copy.deepcopy(base_config)
        for key in ARCHITECTURE_FIELDS:
            if _norm(getattr(config.model, key)) != _norm(architecture[key]):
                notes.append(f"base config has model.{key}={getattr(config.model, key)}; the checkpoint has "
                             f"{architecture[key]} (used)")
        if name is not None and name.dataset in ("oxford", "oxfordadafusion", "boreas"):
            layout = Layout.BOREAS if name.dataset == Layout.BOREAS else Layout.OXFORD
            if layout != config.data.layout:
                notes.append(f"the teacher was trained on {name.dataset!r} (experiment name) but the config's "
                             f"data.layout is {config.data.layout!r}")
    for key, value in architecture.items():
        setattr(config.model, key, value)
    config.model.pretrained_image_weights = None  # the weights are in teacher.pt
    dim = config.model.cloud_dim + config.model.image_dim
    if base_config is not None and config.model.student_dim != dim:
        notes.append(f"model.student_dim={config.model.student_dim} differs from the teacher's {dim}-d embedding; "
                     f"distillation needs model.student_dim={dim}")
    model_state, ignored, conversion_notes = convert_reference_state_dict(state, config.model, where)
    notes += conversion_notes
    parsed = parse_checkpoint_name(path)
    for note in notes:
        warnings.warn(f"{where}: {note}", UserWarning, stacklevel=2)
    return ReferenceTeacherImport(
        source=path.resolve(), source_sha256=file_sha256(path), config=config, state_dict=model_state,
        architecture=architecture, ignored_keys=ignored, experiment=name,
        epoch=parsed[0] if parsed else None, reported_ar1=parsed[1] if parsed else None, warnings=notes)


def describe_import(imported: ReferenceTeacherImport) -> str:
    """Human-readable lines: source, experiment, reported AR@1, inferred architecture, ignored keys, warnings."""
    lines = [f"source: {imported.source}", f"sha256: {imported.source_sha256}"]
    exp = imported.experiment
    lines.append(f"experiment: {exp.raw if exp else '(none found in the path)'}")
    if exp:
        lines.append(f"  dataset {exp.dataset}, training batch {exp.batch_size}, "
                     f"{'teacher run' if exp.train_teacher else 'student run'}, '{exp.separator}' form")
    if imported.epoch is not None:
        lines.append(f"reported by the authors: epoch {imported.epoch}, test AR@1 {imported.reported_ar1:.2f}")
    lines.append("inferred architecture (from the tensor shapes):")
    lines += [f"  model.{k} = {v}" for k, v in imported.architecture.items()]
    lines.append(f"  model.sparse_backend = {imported.config.model.sparse_backend}")
    n_params = sum(int(v.numel()) for k, v in imported.state_dict.items() if not k.endswith("num_batches_tracked"))
    lines.append(f"converted: {len(imported.state_dict)} tensors ({n_params:,} values); kernels: {KERNEL_LAYOUT_NOTE}")
    lines.append(f"ignored keys ({len(imported.ignored_keys)}, parts the teacher's forward never uses):")
    lines += [f"  {k}" for k in imported.ignored_keys]
    lines += [f"warning: {w}" for w in imported.warnings]
    return "\n".join(lines)


__all__ = [
    "ARCHITECTURE_FIELDS", "ReferenceCheckpointError", "ReferenceTeacherImport", "read_reference_state_dict", "infer_architecture", "convert_reference_state_dict",
    "prepare_reference_teacher", "describe_import",
]
