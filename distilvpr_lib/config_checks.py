"""Config value ranges: a resolved config checked before a run writes anything (exit status 2).

:func:`check_config_values` (called by every preflight, :mod:`distilvpr_lib.engine.runs.preflight`) refuses
epochs < 1, a batch size < 2, non-positive learning rates, unknown choices (layout, sparse backend, AMP
dtype, ...) and a device this machine does not have (:func:`check_device_name`), naming the field and the
option that sets it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from distilvpr_lib.config import AUTO_LAYOUT, LAYOUTS, SECTIONS, ExperimentConfig
from distilvpr_lib.config_types import ConfigValueError, describe_value


#: ``section.field`` -> (smallest allowed value, inclusive?) for numeric fields that have a lower bound.
LOWER_BOUNDS: dict[str, tuple[float, bool]] = {
    "train.epochs": (1, True),
    "train.batch_size": (2, True),
    "train.eval_batch_size": (1, True),
    "train.eval_every": (1, True),
    "train.image_lr": (0, False),
    "train.cloud_lr": (0, False),
    "train.weight_decay": (0, True),
    "train.gamma": (0, False),
    "train.warmup_epochs": (0, True),
    "train.margin": (0, True),
    "train.distributed_timeout_s": (1, True),
    "data.quantization_size": (0, False),
    "data.image_lidar_k": (1, True),
    "data.num_workers": (0, True),
    "data.bcs_aug_rate": (0, True),
    "data.hue_aug_rate": (0, True),
    "model.cloud_dim": (1, True),
    "model.image_dim": (1, True),
    "model.student_dim": (1, True),
    "model.cloud_topdown": (0, True),
    "model.cloud_conv0_kernel_size": (1, True),
    "model.gem_p": (0, False),
    "distill.curvature": (0, False),
    "distill.until_epoch": (0, True),
    "distill.from_epoch": (1, True),
}
#: ``section.field`` -> the allowed values of fields with a closed set of choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.layout": (AUTO_LAYOUT, *LAYOUTS),
    "model.sparse_backend": ("torch", "minkowski"),
    "train.amp_dtype": ("float16", "bfloat16", "auto"),
    "train.lr_schedule": ("step", "cosine"),
    "train.distributed_backend": ("auto", "gloo", "nccl"),
}
#: Tuple fields whose every element must be >= 1.
POSITIVE_TUPLES: tuple[str, ...] = ("model.cloud_planes", "model.cloud_layers")
#: How to set a field on the command line, where an option exists for it.
_OPTION_OF: dict[str, str] = {"train.epochs": "--epochs", "train.seed": "--seed", "train.device": "--device"}


def _value_problem(dotted: str, value: Any) -> str | None:
    if dotted in LOWER_BOUNDS:
        low, inclusive = LOWER_BOUNDS[dotted]
        if not (value >= low if inclusive else value > low):
            return f"must be {'>=' if inclusive else '>'} {low:g}, got {value!r}"
    if dotted in CHOICES and value not in CHOICES[dotted]:
        return f"must be one of {', '.join(CHOICES[dotted])}, got {value!r}"
    if dotted in POSITIVE_TUPLES and (not value or any(v < 1 for v in value)):
        return f"must be a non-empty list of values >= 1, got {list(value)!r}"
    return None


def check_device_name(name: str, where: str = "train.device") -> None:
    """``auto``, ``cpu``, ``cuda`` / ``cuda:N`` (CUDA present, N a visible device) or ``mps``.

    torch is imported only for a CUDA or MPS name (checking it needs the runtime).

    Raises:
        ConfigValueError: an unknown device name, or a CUDA / MPS device this machine does not have.
    """
    option = _OPTION_OF.get(where)
    how = f" ({option} or --set {where}=...)" if option else ""
    if not isinstance(name, str):
        raise ConfigValueError(f"{where}: expected a device name, got {describe_value(name)}")
    if name in {"auto", "cpu"}:
        return
    kind, _, index = name.partition(":")
    if kind not in {"cuda", "mps"} or (index and not index.isdigit()) or (kind == "mps" and index):
        raise ConfigValueError(f"{where}: unknown device {name!r}; use auto, cpu, cuda or cuda:N{how}")
    import torch

    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigValueError(f"{where}={name!r}: MPS is not available on this machine; use cpu or auto{how}")
        return
    if not torch.cuda.is_available():
        raise ConfigValueError(f"{where}={name!r}: CUDA is not available on this machine (no GPU, or a torch "
                               f"built without CUDA); use cpu or auto{how}")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigValueError(f"{where}={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                               f"(cuda:0..cuda:{torch.cuda.device_count() - 1}){how}")


def lr_schedule_problem(schedule: str, warmup_epochs: int, milestones: tuple[int, ...] | list[int],
                        epochs: int) -> str | None:
    """What is wrong with a schedule's settings taken together (``None``: nothing), as a one-line message.

    Warm-up epochs belong to the cosine schedule; the cosine schedule has no milestones (they would sit in the
    run's record without acting) and needs at least one epoch after its warm-up.
    """
    if schedule == "step" and warmup_epochs:
        return (f"train.warmup_epochs: {warmup_epochs} warm-up epoch(s) need train.lr_schedule=cosine "
                f"(the step schedule has none; --set train.warmup_epochs=0)")
    if schedule == "cosine" and milestones:
        return (f"train.milestones: {list(milestones)!r} are the step schedule's; train.lr_schedule=cosine takes "
                f"train.milestones=[] (--set train.milestones=)")
    if schedule == "cosine" and warmup_epochs >= epochs:
        return (f"train.warmup_epochs: {warmup_epochs} warm-up epoch(s) leave no cosine epoch in "
                f"train.epochs={epochs}")
    return None


def check_config_values(cfg: ExperimentConfig, check_device: bool = True) -> None:
    """Range- and choice-check a resolved config before a run writes anything.

    Checks :data:`LOWER_BOUNDS` (epochs >= 1, batch size >= 2 — a batch needs a positive pair —, learning
    rates > 0, ...), :data:`CHOICES`, :data:`POSITIVE_TUPLES`, ``train.milestones`` >= 1, the LR schedule's
    settings together (:func:`lr_schedule_problem`),
    ``data.validation_fraction`` in [0, 1), and with ``check_device`` the device (:func:`check_device_name`).

    Raises:
        ConfigValueError: (exit status 2) the first bad value, naming the field (and its option).
    """
    for section in SECTIONS:
        if section in ("synth", "prior"):
            continue
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            dotted = f"{section}.{f.name}"
            problem = _value_problem(dotted, getattr(obj, f.name))
            if problem:
                option = _OPTION_OF.get(dotted)
                how = f" ({option} N or --set {dotted}=N)" if option else f" (--set {dotted}=...)"
                raise ConfigValueError(f"{dotted}: {problem}{how}")
    if any(m < 1 for m in cfg.train.milestones):
        raise ConfigValueError(f"train.milestones: epochs >= 1, got {list(cfg.train.milestones)!r}")
    schedule_problem = lr_schedule_problem(cfg.train.lr_schedule, cfg.train.warmup_epochs, cfg.train.milestones,
                                           cfg.train.epochs)
    if schedule_problem:
        raise ConfigValueError(schedule_problem)
    if not 0.0 <= cfg.data.validation_fraction < 1.0:
        raise ConfigValueError(f"data.validation_fraction: must lie in [0, 1), got {cfg.data.validation_fraction!r}")
    if check_device:
        check_device_name(cfg.train.device)


__all__ = ["CHOICES", "LOWER_BOUNDS", "POSITIVE_TUPLES", "check_config_values", "check_device_name",
           "lr_schedule_problem"]
