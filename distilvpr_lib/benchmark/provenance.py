"""Where a benchmark run was made: the code commit, torch version and threads its rows carry, and the machine
check of PROTOCOL §5 "Machine" (which machines may make the spec's rows)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from distilvpr_lib.benchmark.spec import BenchmarkSpec, BenchmarkStateError


def code_commit() -> str:
    """The commit of the library's source checkout (``git rev-parse HEAD``), ``+dirty`` when its working tree
    differs from it; ``unknown`` outside a git checkout."""
    source = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def threads_per_run(workers: int) -> int:
    """Threads each of ``workers`` side-by-side runs gets from the batch runner (``cpu_count // workers``)."""
    return max(1, (os.cpu_count() or 1) // max(1, int(workers)))


def torch_version() -> str:
    import torch

    return str(torch.__version__)


def machine_problem(spec: BenchmarkSpec) -> str | None:
    """Why this machine may not make the spec's rows (PROTOCOL §5 "Machine"), or ``None`` when it may.

    With ``machine: cpu-native-bf16`` the profile must train on the CPU here, and if it autocasts to bfloat16 the
    CPU must have native bfloat16 kernels (:func:`~distilvpr_lib.engine.train.devices.cpu_has_native_bfloat16`):
    without them bfloat16 runs ~15x slower than float32 and rounds differently from the rows it is compared with.
    """
    if spec.machine == "any":
        return None
    import torch

    from distilvpr_lib.config import profile_config
    from distilvpr_lib.engine.train.devices import cpu_has_native_bfloat16, resolve_amp_dtype, resolve_device

    train = profile_config(spec.profile).train
    device = resolve_device(train.device)
    if device.type != "cpu":
        return (f"the {spec.profile} profile would train on {device} here, but machine: {spec.machine} makes every "
                "row on the CPU (a GPU run is a deviation of its own)")
    if (train.mixed_precision and resolve_amp_dtype(train.amp_dtype, device) == torch.bfloat16
            and not cpu_has_native_bfloat16()):
        return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bfloat16 kernels and the "
                f"{spec.profile} profile trains under bfloat16 autocast: machine: {spec.machine} makes no row here")
    return None


def check_machine(spec: BenchmarkSpec, stage: str) -> None:
    """Refuse to start ``stage``'s training on a machine :func:`machine_problem` rejects (nothing is written).

    Raises:
        BenchmarkStateError: (exit 1) one line naming the spec and the problem.
    """
    problem = machine_problem(spec)
    if problem:
        raise BenchmarkStateError(f"{stage}: {problem}", path=spec.source,
                                  hint="run it on a CPU with AVX-512 BF16 or AMX (PROTOCOL §5, 'Machine')")


def row_machine_problem(spec: BenchmarkSpec, precision: dict[str, Any] | None) -> str | None:
    """Why a finished run's ``metrics.json`` ``precision`` record may not be a row of ``spec``, or ``None``."""
    if spec.machine == "any":
        return None
    if not precision:
        return "the run does not record its precision (made before the machine was recorded)"
    if precision.get("device") != "cpu":
        return f"the run trained on {precision.get('device')}, not the CPU"
    if precision.get("autocast") == "bfloat16" and not precision.get("native_bfloat16"):
        return f"the run autocast to bfloat16 on a CPU without native bfloat16 kernels ({precision.get('machine')})"
    return None
