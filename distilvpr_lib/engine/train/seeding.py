"""Seeding, determinism and random-number-generator state capture (for exact resume).

Nothing here runs at import: the caller seeds explicitly with :func:`seed_everything`
(docs/METHOD.md §8.14 — the reference reseeded at every import, which we do not reproduce).

The generators that a training run consumes are Python's ``random``, NumPy's global
generator and torch's CPU and CUDA generators. :func:`capture_rng_state` /
:func:`restore_rng_state` snapshot all of them, so a checkpoint taken at an epoch
boundary resumes into exactly the same random stream; :func:`preserved_rng_state`
runs a block (e.g. a validation pass) without disturbing the training stream.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

#: cuBLAS needs this workspace setting to be deterministic under ``use_deterministic_algorithms``.
_CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Args:
        seed: any non-negative integer.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def configure_determinism(deterministic: bool) -> None:
    """Switch torch's deterministic algorithms (and cuDNN's) on or off.

    With ``deterministic=True``: ``torch.use_deterministic_algorithms(True)`` (an op without a
    deterministic implementation raises), ``cudnn.deterministic=True``, ``cudnn.benchmark=False``
    and ``CUBLAS_WORKSPACE_CONFIG`` set when not already set (required by cuBLAS on CUDA ≥ 10.2).
    With ``False`` the defaults are restored (``cudnn.benchmark`` stays off: inputs vary in size).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(bool(deterministic))
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every global generator a training run draws from.

    Returns:
        ``{"python": ..., "numpy": ..., "torch": ByteTensor, "cuda": list[ByteTensor]}``
        (``cuda`` is empty without CUDA). Plain values only: safe to ``torch.save`` and to load
        back with ``weights_only=True``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # Plain Python values (no numpy arrays) so checkpoints load with ``weights_only=True``.
        "numpy": (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`capture_rng_state`.

    CUDA states are restored only when CUDA is available and the device count matches
    (a checkpoint moved to another machine still resumes; it is then only CPU-exact).
    """
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(_as_numpy_state(state["numpy"]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda_states])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block without changing any global generator's state as seen after it.

    Used around validation/test evaluation so that evaluating (which creates data loaders
    that draw a base seed) never shifts the training stream: a run evaluated every epoch and
    one evaluated less often train identically.
    """
    saved = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(saved)


def _as_python_state(value: Any) -> tuple:
    # A state round-tripped through some serialisers comes back as lists; random.setstate wants tuples.
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _as_numpy_state(value: Any) -> tuple:
    if isinstance(value, dict):  # np.random.get_state(legacy=False) form
        return value  # type: ignore[return-value]
    name, keys, pos, has_gauss, cached = value
    return (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
