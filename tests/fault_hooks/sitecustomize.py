"""Fault injection for tests/test_fault_injection.py: SIGKILL the real ``distilvpr`` process at a chosen point.

Put this folder on ``PYTHONPATH`` and set ``DISTILVPR_TEST_FAULT``:

* ``epoch:E`` — kill -9 at the first optimiser step after ``checkpoints/last.pt`` was written E - 1 times
  (during epoch E);
* ``write:NAME:N`` — at the N-th atomic write of ``NAME`` (``last.pt``, ``best.pt``): cut the temporary file
  to half its bytes, then kill -9 before it is renamed (a kill in the middle of the write).

Test-only: nothing in the project imports it; without the variable it does nothing.
"""

import os
import signal

_SPEC = os.environ.get("DISTILVPR_TEST_FAULT", "")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_WRITES: dict = {}


def _target_of(fd) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return ""


def _count_writes(kill_name: str = "", kill_at: int = 0) -> None:
    """Count atomic writes per file name (by their fsync); optionally kill in the middle of one."""
    original = os.fsync

    def fsync(fd):
        target = _target_of(fd)
        if target.startswith(".") and target.endswith(".tmp"):
            name = target[1:].rsplit(".", 2)[0]  # .last.pt.k3j_x9a2.tmp -> last.pt
            _WRITES[name] = _WRITES.get(name, 0) + 1
            if name == kill_name and _WRITES[name] == kill_at:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                _kill()
        return original(fd)

    os.fsync = fsync


def _install_epoch(epoch: int) -> None:
    import torch.optim

    _count_writes()
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        if _WRITES.get("last.pt", 0) >= epoch - 1:
            _kill()
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = step


if _SPEC.startswith("epoch:"):
    _install_epoch(int(_SPEC.split(":")[1]))
elif _SPEC.startswith("write:"):
    _, _name, _n = _SPEC.split(":")
    _count_writes(_name, int(_n))
