"""A content hash of a dataset folder: which generated files a run read (the benchmark's records, PROTOCOL §2, §8).

:func:`dataset_fingerprint` is the SHA-256 over the sorted relative paths and the bytes of every file of the folder,
read in chunks (a study world is gigabytes). Left out: the caches the workbench writes *into* a dataset folder
while using it (``.cache/``, the decoded-image cache of ``data.image_cache``; any top-level folder whose name starts
with a dot) and the temporary files of an interrupted atomic write; they are derived from the dataset, not part of
it, and would otherwise change the fingerprint when a student runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from distilvpr_lib.data.files import PathLike, is_temp_file
from distilvpr_lib.errors import MissingDataError

_CHUNK = 1 << 20


def dataset_files(dataset_dir: PathLike) -> list[Path]:
    """The files :func:`dataset_fingerprint` hashes, as paths relative to ``dataset_dir``, sorted (POSIX order).

    Raises:
        MissingDataError: the folder does not exist.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise MissingDataError("dataset folder does not exist", path=root, hint="generate it first (distilvpr synth)")
    files = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        if here == root:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        dirs.sort()
        for name in names:
            path = here / name
            if path.is_file() and not is_temp_file(path):
                files.append(path.relative_to(root))
    return sorted(files, key=lambda p: p.as_posix())


def dataset_fingerprint(dataset_dir: PathLike) -> str:
    """SHA-256 (hex) of a dataset folder's content: for every file of :func:`dataset_files`, in order, its
    relative POSIX path, a NUL, its size, a NUL and its bytes. Two folders with the same files and bytes give the
    same fingerprint wherever they lie; a renamed, added, removed or changed file changes it.

    Raises:
        MissingDataError: the folder does not exist.
    """
    root = Path(dataset_dir)
    digest = hashlib.sha256()
    for rel in dataset_files(root):
        path = root / rel
        digest.update(rel.as_posix().encode("utf-8") + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["dataset_files", "dataset_fingerprint"]
