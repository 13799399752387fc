"""Fault injection for tests/test_fault_injection.py: SIGKILL the real ``distilvpr`` process at a chosen point.

Put this folder on ``PYTHONPATH`` and set ``DISTILVPR_TEST_FAULT``:

* ``epoch:E`` — kill -9 at the first optimiser step after ``checkpoints/last.pt`` was written E - 1 times
  (during epoch E);
* ``write:NAME:N`` — at the N-th atomic write of ``NAME`` (``last.pt``, ``best.pt``): cut the temporary file
  to half its bytes, then kill -9 before it is renamed (a kill in the middle of the write);
* ``enospc:NAME:N`` — the N-th atomic write of ``NAME`` fails with ``OSError(ENOSPC)`` (a full disk);
* ``readonly:DIR`` — DIR behaves as a read-only file system (tests run as root, where chmod stops nothing).

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


# ``enospc:NAME:N`` — the N-th atomic write of ``NAME`` fails with ENOSPC at its fsync (a full disk: the data
# did not fit), as the OS reports a write that found no space.
def _install_enospc(name: str, at: int) -> None:
    import errno

    original = os.fsync

    def fsync(fd):
        target = _target_of(fd)
        if target.startswith(".") and target.endswith(".tmp"):
            written = target[1:].rsplit(".", 2)[0]
            _WRITES[written] = _WRITES.get(written, 0) + 1
            if written == name and _WRITES[written] == at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(fd)

    os.fsync = fsync


# ``readonly:DIR`` — everything under DIR behaves as on a read-only file system (EROFS) for this process:
# creating, opening for writing, renaming or removing there fails. For tests run as root, where
# ``chmod -R a-w`` does not stop writes.
def _install_readonly(root: str) -> None:
    import builtins
    import errno
    import io

    root = os.path.realpath(root)

    def _inside(path) -> bool:
        try:
            real = os.path.realpath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False
        return real == root or real.startswith(root + os.sep)

    def _refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open = builtins.open, os.open

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _inside(file):
            _refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC) and _inside(path):
            _refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = open_
    os.open = os_open
    for name in ("mkdir", "rmdir", "unlink", "remove"):
        original = getattr(os, name)

        def guarded(path, *args, _original=original, **kwargs):
            if _inside(path):
                _refuse(path)
            return _original(path, *args, **kwargs)

        setattr(os, name, guarded)
    for name in ("rename", "replace"):
        original = getattr(os, name)

        def guarded2(src, dst, *args, _original=original, **kwargs):
            if _inside(src) or _inside(dst):
                _refuse(dst)
            return _original(src, dst, *args, **kwargs)

        setattr(os, name, guarded2)


if _SPEC.startswith("enospc:"):
    _, _name, _n = _SPEC.split(":")
    _install_enospc(_name, int(_n))
elif _SPEC.startswith("readonly:"):
    _install_readonly(_SPEC.split(":", 1)[1])
