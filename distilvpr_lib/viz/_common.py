"""Shared helpers of the figure modules: figure creation without pyplot, image conversion, saving.

Figures are built as bare :class:`matplotlib.figure.Figure` objects (no ``pyplot``): they are not
registered in pyplot's global figure list, so nothing is shown twice in a notebook, nothing leaks in
long headless runs and no display is needed (rendering uses the Agg canvas). A notebook shows one by
making it the last expression of a cell or with ``display(fig)``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Frame colour of a retrieved item that is a true match (within 25 m) / is not.
MATCH_COLOUR = "#2ca02c"
MISS_COLOUR = "#d62728"
#: Region colours of the maps.
REGION_COLOURS: dict[str, str] = {
    "training": "#1f77b4",
    "validation": "#ff7f0e",
    "test": "#d62728",
    "guard / unused": "#9e9e9e",
}


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A Figure with an Agg canvas attached (headless-safe, not tracked by pyplot).

    Args:
        width, height: size in inches.
    """
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def image_array(image: Any) -> np.ndarray | None:
    """Convert a PIL image, an (H, W[, C]) array or a CHW tensor to an (H, W, 3|4) or (H, W) array.

    ``None`` stays ``None`` (the caller draws a placeholder). Floats are expected in [0, 1].
    """
    if image is None:
        return None
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def show_image(ax: Any, image: Any, placeholder: str = "no image") -> None:
    """Draw an image on an axes without ticks; a grey placeholder with text when ``image`` is None."""
    arr = image_array(image)
    if arr is None:
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, placeholder, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="#555555")
    else:
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def frame_axes(ax: Any, colour: str, width: float = 4.0) -> None:
    """Frame an axes with coloured spines (the green / red retrieval frames)."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def figure_png(fig: Figure, dpi: int | None = None) -> bytes:
    """Render a Figure to PNG bytes (Agg)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int | None = None) -> Path:
    """Save a Figure as PNG atomically (parents created); returns the path."""
    from distilvpr_lib.data.files import atomic_write

    path = Path(path)
    data = figure_png(fig, dpi)
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill, nbclient), where rich outputs are shown."""
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_figure(fig: Figure, path: str | Path | None = None, dpi: int | None = None) -> None:
    """Save ``fig`` as PNG at ``path`` (when given, atomically, parents created) and show it inline.

    In a Jupyter kernel the figure is displayed as an ``image/png`` output of the running cell (so it also lands
    in a papermill copy); elsewhere (a script, a test) it is only saved. Returns ``None``, so a cell ending in
    ``show_figure(...)`` shows the figure and no path.
    """
    data = figure_png(fig, dpi)
    if path is not None:
        from distilvpr_lib.data.files import atomic_write

        with atomic_write(Path(path), "wb") as handle:
            handle.write(data)
    if in_notebook():
        from IPython.display import Image, display

        display(Image(data=data, format="png"))


def write_metrics(out: str | Path, metrics: Mapping[str, Any], name: str = "metrics.json") -> Path:
    """Write ``metrics`` as strict JSON to ``<out>/<name>`` atomically (NaN -> null, sorted keys); returns the path
    (:func:`distilvpr_lib.data.files.write_json`)."""
    from distilvpr_lib.data.files import write_json

    return write_json(Path(out) / name, metrics, sort_keys=True)
