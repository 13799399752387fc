"""Where the engine runs: device names, the mixed-precision dtype and float32 islands under autocast
(moving a batch to a device is :func:`distilvpr_lib.data.collate.move_to_device`, shared with the evaluation).

Used by the training loop (:mod:`~distilvpr_lib.engine.train.loop`), the run pipelines and
:mod:`~distilvpr_lib.engine.train.distributed`; it imports nothing else from the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise ``torch.device(name)``.

    Raises:
        ConfigValueError: (an OptionError, exit status 2) an unknown device name, or a CUDA device asked for
            where CUDA is not available (:func:`distilvpr_lib.config.check_device_name`).
    """
    from distilvpr_lib.config_checks import check_device_name

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    return torch.device(name)


#: ``TrainConfig.amp_dtype`` values.
AMP_DTYPES: dict[str, torch.dtype | None] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "auto": None}


def resolve_amp_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Autocast dtype for ``TrainConfig.amp_dtype``: ``"auto"`` = bfloat16 on the CPU and on CUDA devices
    that support it, else float16.

    Raises:
        KeyError: unknown name (lists the known ones).
    """
    if name not in AMP_DTYPES:
        raise KeyError(f"unknown train.amp_dtype {name!r}; known: {sorted(AMP_DTYPES)}")
    dtype = AMP_DTYPES[name]
    if dtype is None:
        device = torch.device(device)
        supported = device.type == "cpu" or (
            device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        dtype = torch.bfloat16 if supported else torch.float16
    return dtype


class _Float32Forward:
    """A module's bound ``forward`` run with autocast disabled (installed as an instance attribute)."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            return self.forward(*args, **kwargs)


def keep_float32_under_autocast(model: nn.Module) -> list[str]:
    """Make the sparse cloud branches of ``model`` run in float32 inside autocast regions (in place).

    The sparse-convolution backends do not support autocast (the torch backend's scatter-add mixes the
    dtypes autocast gives its matrix products); the cloud branch is small next to the image branch, so
    mixed precision keeps it in float32 and autocasts the rest. Idempotent; parameters and state-dict
    keys are untouched.

    Returns:
        The names of the wrapped submodules (``["cloud_fe"]`` for the teacher, ``[]`` for the student).
    """
    from distilvpr_lib.models.sparse import CloudBranch

    wrapped = []
    for name, module in model.named_modules():
        if isinstance(module, CloudBranch):
            if not isinstance(module.__dict__.get("forward"), _Float32Forward):
                module.forward = _Float32Forward(module.forward)  # type: ignore[method-assign]
            wrapped.append(name)
    return wrapped



def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN has bfloat16 kernels on this CPU (AVX-512 BF16 / AMX); without them (AVX2) bfloat16
    matrix products fall back to code ~100x slower than float32 (benchmarks/bench_train_step.py --study-step)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:  # pragma: no cover - a build without oneDNN
        return False


def precision_record(device: torch.device | str, autocast: torch.dtype | None) -> dict[str, Any]:
    """What a run's floats were computed in, for its ``metrics.json`` (results and speed depend on it).

    Args:
        device: the training device.
        autocast: the autocast dtype the training used, ``None`` when it did not autocast.

    Returns:
        ``{"device": "cpu", "autocast": "bfloat16" | "float16" | "off", "cpu_capability": "AVX2" | "AVX512" | ...,
        "native_bfloat16": bool}`` — the last two on the CPU only (oneDNN's dispatch level and
        :func:`cpu_has_native_bfloat16`). ``machine`` joins them in one comparable string, e.g.
        ``"cpu AVX2 autocast=off"`` or ``"cpu AVX512 native-bf16 autocast=bfloat16"`` (the benchmark's
        fingerprint, docs/benchmark/PROTOCOL.md §5 "Machine").
    """
    device = torch.device(device)
    record: dict[str, Any] = {"device": device.type,
                              "autocast": "off" if autocast is None else str(autocast).removeprefix("torch.")}
    parts = [device.type]
    if device.type == "cpu":
        record["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
        record["native_bfloat16"] = cpu_has_native_bfloat16()
        parts += [record["cpu_capability"], *(["native-bf16"] if record["native_bfloat16"] else [])]
    record["machine"] = " ".join([*parts, f"autocast={record['autocast']}"])
    return record


def channels_last_enabled(train_cfg: Any, device: torch.device | str) -> bool:
    """Whether the image networks run in the channels-last memory format on ``device``.

    CUDA: ``train_cfg.channels_last``. CPU: ``channels_last`` and ``channels_last_cpu`` (oneDNN's convolutions
    are faster on NHWC, but their sums round differently from the NCHW ones, so the CPU switch is a run setting of
    its own, off by default). Used for training and for the validation and test embedding of the same run.
    """
    device = torch.device(device)
    wanted = bool(train_cfg.channels_last)
    if device.type == "cuda":
        return wanted
    return wanted and device.type == "cpu" and bool(train_cfg.channels_last_cpu)


__all__ = ["AMP_DTYPES", "channels_last_enabled", "cpu_has_native_bfloat16", "keep_float32_under_autocast",
           "precision_record", "resolve_amp_dtype", "resolve_device"]
