#!/usr/bin/env python
"""Build and install MinkowskiEngine 0.5.4 for the installed torch (CPU-only by default).

Run it with the project's interpreter (the one that has torch)::

    .venv/bin/python scripts/build_minkowski.py            # build (or install from cache) + self-check
    .venv/bin/python scripts/build_minkowski.py --force    # rebuild even if cached / installed
    .venv/bin/python scripts/build_minkowski.py --check    # only run the self-check

What it does (stdlib only; every step prints what it runs):

1. If ``MinkowskiEngine`` already imports with version 0.5.4 (and ``--force`` is not given), it only runs
   the self-check and stops.
2. Makes sure the OpenBLAS header (``cblas.h``) exists; when missing it runs
   ``apt-get install -y libopenblas-dev`` if we are root, otherwise prints that instruction and stops.
3. Looks for a cached wheel under ``~/.cache/distilvpr/minkowski/<torch version>/`` and installs it.
4. Otherwise downloads the sdist with ``pip download`` (this needs *this* interpreter, because
   MinkowskiEngine's ``setup.py`` imports torch), extracts it, applies our patches (below), builds a wheel
   with ``pip wheel --no-build-isolation`` (``MAX_JOBS`` parallel compile jobs, default 2), stores the
   wheel in the cache and installs it.
5. Runs a self-check in a fresh interpreter: import, a small sparse convolution forward + backward, and
   global average pooling on a batch of 3 clouds compared with per-cloud means.

Patches applied to the extracted sdist (our own edits; MinkowskiEngine's code is not vendored here):

* ``from collections import Sequence`` (and other ABCs) -> ``collections.abc`` in the Python package
  (the aliases were removed in Python 3.10).
* ``src/global_pooling_cpu.cpp``: the ``*_PYTORCH_INDEX`` global sum/avg pooling (the default mode of
  ``MinkowskiGlobalAvgPooling`` / ``MinkowskiGlobalSumPooling``) wrote the pooled features of batch value
  ``b`` into output row ``batch_index[b]`` although ``batch_index[r]`` is the batch value of output row
  ``r``: whenever the origin coordinate map does not list the batches in order, the rows of the result
  were permuted against the output coordinates (and ``num_nonzero``, used by the backward pass, too).
  The fix writes output row ``r`` from the input rows of batch value ``batch_index[r]``.

If ``--cuda`` is ``auto`` (default) and both a CUDA device and ``nvcc`` are available, a CUDA build is
tried first and the script falls back to the CPU build with a message if it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ME_VERSION = "0.5.4"
SDIST_NAME = f"MinkowskiEngine-{ME_VERSION}"
DEFAULT_CACHE_ROOT = Path.home() / ".cache" / "distilvpr" / "minkowski"
#: Bumped whenever our patches change, so that cached wheels built with older patches are not reused.
PATCH_LEVEL = 1

CBLAS_HEADER_DIRS = (
    "/usr/include",
    "/usr/include/x86_64-linux-gnu",
    "/usr/include/aarch64-linux-gnu",
    "/usr/include/openblas",
    "/usr/local/include",
    "/opt/conda/include",
)

ABC_NAMES = {
    "Sequence", "MutableSequence", "Iterable", "Iterator", "Mapping", "MutableMapping", "Set",
    "MutableSet", "Callable", "Hashable", "Sized", "Container", "Collection", "Generator",
}

# The buggy block of src/global_pooling_cpu.cpp (whitespace-insensitive match) and its replacement.
POOLING_BUG_PATTERN = re.compile(
    r"for\s*\(\s*int\s+b\s*=\s*0\s*;\s*b\s*<\s*batch_size\s*;\s*\+\+b\s*\)\s*\{\s*"
    r"LOG_DEBUG\(\s*\"batch \"\s*,\s*b\s*,\s*\"size\"\s*,\s*vec_maps\[b\]\.numel\(\)\s*\)\s*;\s*"
    r"if\s*\(\s*use_avg\s*\)\s*"
    r"out_feat\[batch_index\[b\]\]\s*=\s*in_feat\.index_select\(\s*0\s*,\s*vec_maps\[b\]\s*\)\.mean\(0\)\s*;\s*"
    r"else\s*"
    r"out_feat\[batch_index\[b\]\]\s*=\s*in_feat\.index_select\(\s*0\s*,\s*vec_maps\[b\]\s*\)\.sum\(0\)\s*;\s*"
    r"num_nonzero\[batch_index\[b\]\]\s*=\s*vec_maps\[b\]\.numel\(\)\s*;\s*"
    r"\}",
    re.S,
)
POOLING_FIX = """for (int b = 0; b < batch_size; ++b) {
          // distilvpr patch: output row b holds batch value batch_index[b];
          // vec_maps is indexed by batch value.
          auto const batch_value = batch_index[b].item<int64_t>();
          auto const &rows = vec_maps[batch_value];
          LOG_DEBUG("row ", b, "batch", batch_value, "size", rows.numel());
          if (use_avg)
            out_feat[b] = in_feat.index_select(0, rows).mean(0);
          else
            out_feat[b] = in_feat.index_select(0, rows).sum(0);
          num_nonzero[b] = rows.numel();
        }"""

SELF_CHECK = r"""
import sys
import torch
import MinkowskiEngine as ME

assert ME.__version__ == %(version)r, f"MinkowskiEngine version {ME.__version__} != %(version)s"
torch.manual_seed(0)
# 1) a small sparse convolution, forward + backward
coords = torch.unique(torch.randint(0, 6, (60, 3)), dim=0)
bcoords = ME.utils.batched_coordinates([coords.int(), (coords[: len(coords) // 2] + 1).int()])
feats = torch.randn(len(bcoords), 4, requires_grad=True)
x = ME.SparseTensor(feats, coordinates=bcoords)
conv = ME.MinkowskiConvolution(4, 8, kernel_size=3, stride=2, dimension=3)
y = conv(x)
y.F.square().sum().backward()
assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0, "no gradient through the sparse conv"
assert conv.kernel.grad is not None and conv.kernel.grad.abs().sum() > 0
# 2) global average pooling on 3 clouds == manual per-cloud means (checks our pooling patch)
clouds = [torch.unique(torch.randint(0, 20, (n, 3)), dim=0).int() for n in (50, 7, 23)]
order = [2, 0, 1]  # batches listed out of order
bc = torch.cat([torch.cat([torch.full((len(clouds[b]), 1), b, dtype=torch.int32), clouds[b]], 1) for b in order])
f = torch.randn(len(bc), 5)
pooled = ME.MinkowskiGlobalAvgPooling()(ME.SparseTensor(f, coordinates=bc))
for row, b in enumerate(pooled.C[:, 0].tolist()):
    expected = f[bc[:, 0] == b].mean(0)
    assert torch.allclose(pooled.F[row], expected, atol=1e-5), f"global pooling row {row} (batch {b}) is wrong"
print("MinkowskiEngine", ME.__version__, "self-check OK")
"""


def log(msg: str) -> None:
    print(f"[build_minkowski] {msg}", flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    log("$ " + " ".join(cmd) + (f"   (in {cwd})" if cwd else ""))
    subprocess.run(cmd, check=True, env=env, cwd=cwd)


def python_eval(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so a just-installed package is seen)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def installed_me_version() -> str | None:
    res = python_eval("import MinkowskiEngine as ME; print(ME.__version__)")
    if res.returncode != 0:
        return None
    return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else None


def torch_info() -> tuple[str, bool]:
    res = python_eval("import torch; print(torch.__version__); print(torch.cuda.is_available())")
    if res.returncode != 0:
        sys.exit(
            f"error: torch is not importable by {sys.executable}; install torch first "
            f"(MinkowskiEngine's setup.py imports it).\n{res.stderr.strip()}"
        )
    version, cuda = res.stdout.strip().splitlines()[-2:]
    return version, cuda == "True"


def self_check() -> bool:
    log("self-check: import, sparse conv forward/backward, global pooling on 3 clouds")
    res = subprocess.run([sys.executable, "-c", SELF_CHECK % {"version": ME_VERSION}], text=True,
                         capture_output=True)
    sys.stdout.write(res.stdout)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        log("self-check FAILED")
        return False
    return True


def find_cblas() -> Path | None:
    for d in CBLAS_HEADER_DIRS:
        p = Path(d) / "cblas.h"
        if p.is_file():
            return p
    return None


def ensure_openblas(allow_apt: bool) -> None:
    header = find_cblas()
    if header:
        log(f"OpenBLAS/CBLAS header found: {header}")
        return
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if allow_apt and is_root and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            run(["apt-get", "install", "-y", "libopenblas-dev"], env=env)
        except subprocess.CalledProcessError:
            run(["apt-get", "update"], env=env)
            run(["apt-get", "install", "-y", "libopenblas-dev"], env=env)
        if find_cblas():
            return
    sys.exit(
        "error: the OpenBLAS development header (cblas.h) is missing. Install it first, e.g.\n"
        "    sudo apt-get install -y libopenblas-dev      (Debian/Ubuntu)\n"
        "    conda install -c conda-forge openblas        (conda)\n"
        "then re-run this script."
    )


def patch_collections_imports(pkg_dir: Path) -> list[Path]:
    """Move ABC imports from ``collections`` to ``collections.abc``; return the patched files."""
    patched = []
    line_re = re.compile(r"^(\s*)from collections import ([^\n]+)$", re.M)
    for path in sorted(pkg_dir.rglob("*.py")):
        text = path.read_text()

        def fix(m: re.Match) -> str:
            indent, names = m.group(1), [n.strip() for n in m.group(2).split(",") if n.strip()]
            abc = [n for n in names if n.split(" as ")[0].strip() in ABC_NAMES]
            rest = [n for n in names if n not in abc]
            if not abc:
                return m.group(0)
            lines = []
            if rest:
                lines.append(f"{indent}from collections import {', '.join(rest)}")
            lines.append(f"{indent}from collections.abc import {', '.join(abc)}")
            return "\n".join(lines)

        new = line_re.sub(fix, text)
        if new != text:
            path.write_text(new)
            patched.append(path)
    return patched


def patch_sources(src_root: Path) -> None:
    patched = patch_collections_imports(src_root / "MinkowskiEngine")
    for p in patched:
        log(f"patched collections.abc import: {p.relative_to(src_root)}")
    if len(patched) != 5:
        log(f"warning: expected 5 files importing ABCs from collections, patched {len(patched)}")
    if not patched:
        sys.exit("error: no `from collections import Sequence` found: is this really MinkowskiEngine 0.5.4?")

    pooling = src_root / "src" / "global_pooling_cpu.cpp"
    text = pooling.read_text()
    new, count = POOLING_BUG_PATTERN.subn(POOLING_FIX, text)
    if count != 1:
        sys.exit(f"error: {pooling}: the global pooling block to patch was found {count} times (expected 1)")
    pooling.write_text(new)
    log(f"patched batch-row mix-up in {pooling.relative_to(src_root)}")


def build_wheel(src_root: Path, out_dir: Path, jobs: int, cuda: bool) -> Path:
    env = dict(os.environ)
    env.update(SETUPTOOLS_USE_DISTUTILS="stdlib", MAX_JOBS=str(jobs), CFLAGS="-DNDEBUG -fwrapv -g0")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(out_dir)]
    cmd += ["--config-settings=--build-option=--force_cuda" if cuda else "--config-settings=--build-option=--cpu_only"]
    cmd += ["--config-settings=--build-option=--blas=openblas", "."]
    run(cmd, env=env, cwd=src_root)
    wheels = sorted(out_dir.glob("MinkowskiEngine-*.whl")) + sorted(out_dir.glob("minkowskiengine-*.whl"))
    if not wheels:
        sys.exit(f"error: pip wheel finished but no wheel was written to {out_dir}")
    return wheels[-1]


def install_wheel(wheel: Path) -> None:
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])


def cached_wheel(cache_dir: Path) -> Path | None:
    info_path = cache_dir / "build_info.json"
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError:
        return None
    wheel = cache_dir / info.get("wheel", "")
    py_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if (info.get("patch_level") == PATCH_LEVEL and info.get("python") == py_tag
            and info.get("version") == ME_VERSION and wheel.is_file()):
        return wheel
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if installed or cached")
    parser.add_argument("--check", action="store_true", help="only run the self-check")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")),
                        help="parallel compile jobs (MAX_JOBS; default 2)")
    parser.add_argument("--cuda", choices=("auto", "never", "force"), default="auto",
                        help="auto: try a CUDA build when a GPU and nvcc exist, else CPU (default)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_ROOT,
                        help=f"wheel cache root (default {DEFAULT_CACHE_ROOT})")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the build tree here (default: temp)")
    parser.add_argument("--no-apt", action="store_true", help="never call apt-get")
    args = parser.parse_args(argv)

    if args.check:
        return 0 if self_check() else 1

    if not args.force:
        version = installed_me_version()
        if version == ME_VERSION:
            log(f"MinkowskiEngine {version} already installed for {sys.executable}; nothing to build")
            return 0 if self_check() else 1
        if version:
            log(f"MinkowskiEngine {version} installed; replacing it with {ME_VERSION}")

    torch_version, cuda_available = torch_info()
    log(f"python {sys.executable}; torch {torch_version}; CUDA device available: {cuda_available}")
    cache_dir = args.cache_dir / torch_version
    ensure_openblas(allow_apt=not args.no_apt)

    if not args.force:
        wheel = cached_wheel(cache_dir)
        if wheel:
            log(f"installing cached wheel {wheel}")
            install_wheel(wheel)
            return 0 if self_check() else 1

    want_cuda = args.cuda == "force" or (args.cuda == "auto" and cuda_available and shutil.which("nvcc"))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="minkowski_build_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        env = dict(os.environ, SETUPTOOLS_USE_DISTUTILS="stdlib")
        sdists = sorted(work.glob(f"{SDIST_NAME}.tar.gz"))
        if not sdists:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--no-build-isolation", f"minkowskiengine=={ME_VERSION}", "-d", str(work)], env=env)
            sdists = sorted(work.glob(f"{SDIST_NAME}.tar.gz"))
        if not sdists:
            sys.exit(f"error: pip download did not produce {SDIST_NAME}.tar.gz in {work}")
        src_root = work / SDIST_NAME
        if src_root.exists():
            shutil.rmtree(src_root)
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(work, filter="data")
        patch_sources(src_root)

        wheel_dir = work / "wheels"
        wheel = None
        variant = "cpu"
        if want_cuda:
            log("CUDA device and nvcc found: trying a CUDA build first")
            try:
                wheel = build_wheel(src_root, wheel_dir, args.jobs, cuda=True)
                variant = "cuda"
            except (subprocess.CalledProcessError, SystemExit) as exc:
                log(f"CUDA build failed ({exc}); falling back to the CPU-only build")
                shutil.rmtree(src_root / "build", ignore_errors=True)
        if wheel is None:
            wheel = build_wheel(src_root, wheel_dir, args.jobs, cuda=False)
        log(f"built {wheel.name} ({variant}) in {time.time() - t0:.0f} s")

        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = cache_dir / wheel.name
        shutil.copy2(wheel, cached.with_suffix(".tmp"))
        os.replace(cached.with_suffix(".tmp"), cached)
        info = {"wheel": wheel.name, "version": ME_VERSION, "torch": torch_version, "variant": variant,
                "patch_level": PATCH_LEVEL, "python": f"cp{sys.version_info.major}{sys.version_info.minor}",
                "build_seconds": round(time.time() - t0)}
        tmp_info = cache_dir / "build_info.json.tmp"
        tmp_info.write_text(json.dumps(info, indent=2))
        os.replace(tmp_info, cache_dir / "build_info.json")
        log(f"cached wheel at {cached}")
        install_wheel(cached)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if self_check() else 1


if __name__ == "__main__":
    sys.exit(main())
