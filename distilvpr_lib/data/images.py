"""Image files of the benchmark: a readability check (header, or every pixel)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from distilvpr_lib.data.files import PathLike, require_file
from distilvpr_lib.errors import DataFormatError


def check_image_file(path: PathLike, decode: bool = False) -> tuple[int, int]:
    """Check that an image file is readable: its header always, every pixel with ``decode``.

    The header check (``PIL.Image.open``: format and size, a few hundred bytes) catches empty,
    garbage and non-image files; ``decode=True`` decodes the whole image, which also catches
    truncated or corrupt pixel data (``distilvpr check-data --deep``).

    Returns:
        ``(width, height)``.

    Raises:
        MissingDataError: no such file. DataFormatError: empty, not an image, or (``decode``)
            truncated / corrupt (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    require_file(path, "image")
    if path.stat().st_size == 0:
        raise DataFormatError("empty image file (0 bytes)", path=path, hint="re-copy or regenerate it")
    try:
        with Image.open(path) as image:
            size = image.size
            if decode:
                image.load()
    except UnidentifiedImageError as exc:
        raise DataFormatError("not an image (its header is not a known image format)", path=path,
                              hint="re-copy or regenerate it") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt data (PIL raises all three)
        raise DataFormatError(f"corrupt image ({exc})", path=path, hint="re-copy or regenerate it") from exc
    if size[0] <= 0 or size[1] <= 0:
        raise DataFormatError(f"image of size {size}", path=path, hint="re-copy or regenerate it")
    return size


def image_size_problems(sizes: dict[Path, tuple[int, int]],
                        expected: tuple[int, int] | None = None) -> list[DataFormatError]:
    """One problem per image whose (width, height) differs from the others' (the most common size) or from
    ``expected``: a batch stacks images, so a dataset's images must all have one size.

    Args:
        sizes: image path -> ``(width, height)`` (as :func:`check_image_file` returns).
        expected: ``(width, height)`` every image must have, or ``None``: the most common size.
    """
    if not sizes:
        return []
    counts = Counter(sizes.values())
    common, n_common = counts.most_common(1)[0]
    target = expected if expected is not None else common
    if expected is not None:
        what = f"the size the configuration expects is {target[0]}x{target[1]}"
    else:
        what = f"the other {n_common} image(s) are {target[0]}x{target[1]}"
    return [DataFormatError(f"image of size {w}x{h}, {what}; the images of a dataset must all have one size",
                            path=path, hint="resize or regenerate it; distilvpr check-data lists every one")
            for path, (w, h) in sizes.items() if (w, h) != target]
