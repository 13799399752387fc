"""A dataset's fingerprint: one hash that changes when any file of the benchmark does, the same on every machine.

Runs record it (``metrics.json``, the training checkpoint) and key what they derive from the data by it (the
teacher cache, the resume check), so a run never silently mixes two datasets, nor reuses what was computed from
other images.

What :func:`dataset_fingerprint` hashes (format ``distilvpr-dataset-fingerprint/1``), over every regular file
under the dataset folder and, when it lies elsewhere, under the image folder, in the order of their relative
POSIX paths (the image folder's files prefixed with ``<image-dir>/``):

* the relative path and the byte size of every file;
* the **bytes** of every index file (``.pickle``, ``.pkl``, ``.json``, ``.csv``, ``.txt``, ``.yaml``, ``.yml``):
  the benchmark pickles, the image index, the generator's records and the per-run location tables, which name
  every sub-map, its position and its images.

The bulk data (``.bin``/``.npy`` clouds, ``.png`` images, ...) counts by path and size only: reading every byte
of a full-size dataset (tens of GB) at each run start would cost minutes. Any regenerated or resized dataset
changes its pickles or its image sizes; a cloud or image overwritten in place with another of the same byte size
(a fixed-size ``.bin`` cloud, say) does not change the fingerprint. Hidden names (starting with ``.``: the
image cache ``.cache/``, temporary files) are skipped; symbolic links are followed (each folder once, so a loop
ends). Neither the folder's absolute path nor modification times enter: a copy of the dataset (another path,
another machine, another ``mtime``) has the same fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from distilvpr_lib.errors import DataFormatError, MissingDataError

PathLike = str | os.PathLike

#: Version tag hashed first: a change of what is hashed changes every fingerprint.
FINGERPRINT_FORMAT: str = "distilvpr-dataset-fingerprint/1"
#: Suffixes of the index files whose bytes are hashed (lower case).
CONTENT_HASHED_SUFFIXES: frozenset[str] = frozenset({".pickle", ".pkl", ".json", ".csv", ".txt", ".yaml", ".yml"})
#: Prefix of the image folder's files when it lies outside the dataset folder.
IMAGE_DIR_PREFIX: str = "<image-dir>/"
#: Length of the short form shown in messages and file names.
SHORT_LENGTH: int = 12

_CHUNK = 1 << 20


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every regular, non-hidden file under ``root`` (links followed once)."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:  # a symlink loop, or a folder linked twice
            continue
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)  # a folder reached twice: always under the same name
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=True):
                subfolders.append(path)
            elif entry.is_file(follow_symlinks=True):
                yield path.relative_to(root).as_posix(), path
        stack.extend(reversed(subfolders))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_files(dataset_dir: PathLike, image_dir: PathLike | None = None) -> list[tuple[str, Path]]:
    """The files :func:`dataset_fingerprint` covers: sorted ``(name, path)`` pairs (see the module docstring).

    ``image_dir`` inside ``dataset_dir`` (the default ``<dataset_dir>/images``) adds nothing; one elsewhere adds
    its files as ``<image-dir>/<relative path>``.
    """
    dataset_dir = Path(dataset_dir)
    files = dict(_walk_files(dataset_dir))
    if image_dir is not None:
        image_root = Path(image_dir)
        resolved_data, resolved_images = dataset_dir.resolve(), image_root.resolve()
        if resolved_images != resolved_data and resolved_data not in resolved_images.parents:
            files.update((IMAGE_DIR_PREFIX + name, path) for name, path in _walk_files(image_root))
    return sorted(files.items())


def dataset_fingerprint(dataset_dir: PathLike, image_dir: PathLike | None = None) -> str:
    """The content-addressed fingerprint of a benchmark folder (and its image folder): hex SHA-256.

    What it hashes is in the module docstring: every file's relative path and size, and the bytes of the index
    files (pickles, JSON, CSV, ...); not the absolute path, not modification times. Runs record it as
    ``dataset_fingerprint`` in ``metrics.json``. Stat-ing every file and reading the pickles takes well under a
    second at the study profile.

    Args:
        dataset_dir: the benchmark folder (``--dataset``).
        image_dir: the image folder (``--image-dir``) when it is not inside ``dataset_dir``; ``None`` = the
            dataset folder's own.

    Returns:
        64 hex characters (the first :data:`SHORT_LENGTH` are the short form of messages and file names).

    Raises:
        MissingDataError: (a FileNotFoundError) ``dataset_dir`` or ``image_dir`` does not exist.
        DataFormatError: one of them is a file, not a folder.
    """
    for folder, what in ((dataset_dir, "dataset folder"), (image_dir, "image folder")):
        if folder is not None and not Path(folder).is_dir():
            if Path(folder).exists():
                raise DataFormatError(f"is a file, expected the {what}", path=folder)
            raise MissingDataError(f"{what} not found", path=folder)
    digest = hashlib.sha256(FINGERPRINT_FORMAT.encode() + b"\n")
    for name, path in dataset_files(dataset_dir, image_dir):
        size = path.stat().st_size
        content = _file_digest(path) if path.suffix.lower() in CONTENT_HASHED_SUFFIXES else "-"
        digest.update(f"{name}\0{size}\0{content}\n".encode())
    return digest.hexdigest()


def short_fingerprint(fingerprint: str | None) -> str:
    """The first :data:`SHORT_LENGTH` characters (``"unknown"`` for ``None``): for messages and file names."""
    return fingerprint[:SHORT_LENGTH] if fingerprint else "unknown"


__all__ = ["CONTENT_HASHED_SUFFIXES", "FINGERPRINT_FORMAT", "IMAGE_DIR_PREFIX", "dataset_files",
           "dataset_fingerprint", "short_fingerprint"]
