"""Where caches go: the student's image cache (``data.image_cache``) beside a dataset, in a cache folder, or in
the run folder when the dataset is read-only — decided and checked (writable) before anything is written.

Used by the preflight (:mod:`.preflight`) and by the run setup that opens the cache (:mod:`.run_setup`), so
both pick the same folder. Nothing here creates a file: writability is probed with a temporary folder,
removed at once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from distilvpr_lib.config import IMAGE_CACHE_FOLDER
from distilvpr_lib.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import ExperimentConfig

PathLike = str | os.PathLike


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where a folder would be created)."""
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    return ancestor


def probe_writable(folder: Path) -> None:
    """Create and remove a temporary folder in ``folder``; raises the ``OSError`` of a place not writable."""
    tempfile.TemporaryDirectory(dir=folder, prefix=".distilvpr-write-probe-").cleanup()



#: Environment variable naming a folder for the image caches of every dataset (one sub-folder per dataset).
CACHE_DIR_ENV: str = "DISTILVPR_CACHE_DIR"
#: Sub-folder of the run folder holding the image cache when the dataset folder is read-only.
RUN_IMAGE_CACHE_FOLDER: str = "image_cache"
_CACHE_DIR_HINT = (f"choose a writable folder: --cache-dir DIR, --set data.image_cache_dir=DIR or {CACHE_DIR_ENV}=DIR; "
                   "or set data.image_cache=false")


def resolve_image_cache_dir(cfg: "ExperimentConfig", out_dir: PathLike) -> Path:
    """Where the student's image cache (``data.image_cache``) lives, checked writable; nothing is created.

    In order: ``data.image_cache_dir`` when set (``--cache-dir``); else ``$DISTILVPR_CACHE_DIR/<dataset>-<hash>``
    (one sub-folder per dataset folder, so datasets never share cache files); else ``<dataset_dir>/.cache``
    when the dataset folder is writable (shared by every run on the dataset); else the run folder's
    ``image_cache/`` (a read-only dataset).

    Raises:
        OptionError: (exit status 2) ``data.image_cache_dir`` or ``$DISTILVPR_CACHE_DIR`` is a file or not writable.
    """
    dataset_dir = Path(cfg.data.dataset_dir)
    chosen: tuple[str, Path] | None = None
    if cfg.data.image_cache_dir:
        chosen = (f"data.image_cache_dir={cfg.data.image_cache_dir}", Path(cfg.data.image_cache_dir))
    elif os.environ.get(CACHE_DIR_ENV, "").strip():
        root = Path(os.environ[CACHE_DIR_ENV].strip())
        tag = hashlib.sha256(str(dataset_dir.resolve()).encode()).hexdigest()[:8]
        chosen = (f"{CACHE_DIR_ENV}={root}", root / f"{dataset_dir.resolve().name}-{tag}")
    if chosen is not None:
        what, folder = chosen
        ancestor = nearest_existing(folder)
        if (folder.exists() and not folder.is_dir()) or not ancestor.is_dir():
            raise OptionError(f"{what}: the image cache folder cannot be created (a file stands in its path "
                              f"at {ancestor})", hint=_CACHE_DIR_HINT)
        try:
            probe_writable(ancestor)
        except OSError as exc:
            raise OptionError(f"{what}: the image cache folder is not writable ({exc.strerror or exc}; "
                              f"at {ancestor})", hint=_CACHE_DIR_HINT) from exc
        return folder
    default = dataset_dir / IMAGE_CACHE_FOLDER
    try:
        probe_writable(nearest_existing(default))
        return default
    except OSError:
        return Path(out_dir) / RUN_IMAGE_CACHE_FOLDER


__all__ = ["CACHE_DIR_ENV", "RUN_IMAGE_CACHE_FOLDER", "nearest_existing", "probe_writable", "resolve_image_cache_dir"]
