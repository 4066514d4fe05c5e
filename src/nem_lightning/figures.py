"""Figures of Neural EM groupings as RGB arrays: the paper's per-step overview, sequence GIFs, AMI curves.

Pure numpy/matplotlib (no Lightning): every function returns a ``uint8`` RGB array (H, W, 3) that any
logger can take, and ``save_png`` / ``save_gif`` write them atomically. Drawing uses matplotlib's
object API with the Agg canvas (no pyplot, no global backend state).

Soft assignments are colour-coded as in the paper: each pixel takes the colour of its most responsible
component (``argmax_k gamma``) from a fixed qualitative palette, scaled by its confidence ``max_k gamma``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from nem_lightning.files import atomic_path

# tab10 without its grey, so component colours never look like the grey prediction rows; cycles past 9.
_PALETTE_HEX = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
PALETTE = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in _PALETTE_HEX], dtype=np.uint8)  # (P, 3)
MAX_COLUMNS = 10  # EM steps shown by grouping_figure unless told otherwise


def colorize_gamma(gamma: np.ndarray) -> np.ndarray:
    """Colour-code soft assignments: palette colour of argmax_k gamma, brightness max_k gamma.

    Args:
        gamma: (..., K, H, W) responsibilities summing to one over K.

    Returns:
        (..., H, W, 3) uint8 RGB.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    colour = PALETTE[gamma.argmax(-3) % len(PALETTE)]  # (..., H, W, 3)
    return np.rint(colour * gamma.max(-3)[..., None]).astype(np.uint8)


def colorize_groups(groups: np.ndarray) -> np.ndarray:
    """True groups as RGB: group 0 (background and overlaps, never scored) black, group g palette colour g-1.

    Args:
        groups: (..., H, W) integer labels.

    Returns:
        (..., H, W, 3) uint8 RGB.
    """
    groups = np.asarray(groups).astype(np.int64)
    colour = PALETTE[(groups - 1) % len(PALETTE)]
    return np.where((groups > 0)[..., None], colour, 0).astype(np.uint8)


def grey_to_rgb(images: np.ndarray) -> np.ndarray:
    """(..., H, W) intensities in [0, 1] (clipped) to (..., H, W, 3) uint8 RGB."""
    grey = np.rint(np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, -1)


def select_steps(steps: int, max_columns: int = MAX_COLUMNS) -> np.ndarray:
    """Indices of the steps to show: all of them, or ``max_columns`` spread evenly from the first to the last."""
    if steps <= max_columns:
        return np.arange(steps)
    return np.unique(np.rint(np.linspace(0, steps - 1, max(max_columns, 2))).astype(np.int64))


def _render(fig: Figure) -> np.ndarray:
    """Draw a figure on an Agg canvas and return its pixels, (H, W, 3) uint8."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _steps_first(name: str, array: np.ndarray | None, steps: int, ndim: int) -> np.ndarray | None:
    """Check the rank and broadcast a leading axis of 1 (one frame for every step) to ``steps``."""
    if array is None:
        return None
    array = np.asarray(array)
    if array.ndim != ndim or array.shape[0] not in (1, steps):
        raise ValueError(f"{name} must have {ndim} axes with {steps} or 1 steps first, got shape {array.shape}")
    return np.broadcast_to(array, (steps, *array.shape[1:]))


def _gammas_preds(gammas: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 arrays, refused unless both are (T, K, H, W)."""
    gammas, preds = np.asarray(gammas, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    if gammas.ndim != 4 or preds.shape != gammas.shape:
        raise ValueError(f"gammas and preds must both be (T, K, H, W), got {gammas.shape} and {preds.shape}")
    return gammas, preds


def _mosaic(rows: list[np.ndarray], scale: int, gap: int) -> np.ndarray:
    """Tile R rows of (C, h, w, 3) images into one white-separated (R h' + gaps, C w' + gaps, 3) image."""
    R, (C, h, w, _) = len(rows), rows[0].shape
    h, w = h * scale, w * scale
    out = np.full((R * h + (R - 1) * gap, C * w + (C - 1) * gap, 3), 255, dtype=np.uint8)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            y, x = r * (h + gap), c * (w + gap)
            out[y : y + h, x : x + w] = image.repeat(scale, 0).repeat(scale, 1)
    return out


def grouping_figure(
    inputs: np.ndarray,
    corrupted: np.ndarray,
    gammas: np.ndarray,
    preds: np.ndarray,
    groups: np.ndarray | None = None,
    ami: float | None = None,
    title: str | None = None,
    *,
    max_columns: int = MAX_COLUMNS,
    tile_pixels: int = 64,
    dpi: int = 100,
) -> np.ndarray:
    """The paper's overview figure for one sample: rows of images, one column per EM step.

    Rows: ``input`` (clean target), ``corrupted`` (what the step read), ``groups`` (true groups, only when
    given), ``γ`` (colour-coded soft assignment), ``ψ k`` for each component (grey), ``reconstruction``
    (sum_k γ_k ψ_k). With more than ``max_columns`` steps, ``max_columns`` steps are shown, spread evenly
    from the first to the last; columns are labelled with the 1-based step t (the paper's t = 1..T).
    Images are upscaled by a whole number (nearest neighbour) and drawn pixel for pixel, so colours are exact.

    Args:
        inputs: (T, H, W) or (1, H, W) clean frames in [0, 1].
        corrupted: (T, H, W) or (1, H, W) noisy frames each step read.
        gammas: (T, K, H, W) responsibilities after each E-step.
        preds: (T, K, H, W) per-component predictions psi (channel squeezed).
        groups: (T, H, W) or (1, H, W) true group labels, optional.
        ami: this sample's AMI, appended to the title.
        title: figure title, e.g. ``"sample 3"``.
        max_columns: most step columns to draw.
        tile_pixels: about how many pixels one image tile spans.
        dpi: resolution the labels are drawn at.

    Returns:
        (H', W', 3) uint8 RGB.
    """
    gammas, preds = _gammas_preds(gammas, preds)
    T, K, H, W = gammas.shape
    inputs, corrupted = _steps_first("inputs", inputs, T, 3), _steps_first("corrupted", corrupted, T, 3)
    groups = _steps_first("groups", groups, T, 3)
    shown = select_steps(T, max_columns)
    rows: list[tuple[str, np.ndarray]] = [("input", grey_to_rgb(inputs)), ("corrupted", grey_to_rgb(corrupted))]
    if groups is not None:
        rows.append(("groups", colorize_groups(groups)))
    rows.append(("γ", colorize_gamma(gammas)))
    rows += [(f"ψ {k + 1}", grey_to_rgb(preds[:, k])) for k in range(K)]
    rows.append(("reconstruction", grey_to_rgb((gammas * preds).sum(1))))  # (T, H, W)

    scale, gap = max(1, round(tile_pixels / max(H, W))), 3
    mosaic = _mosaic([images[shown] for _, images in rows], scale, gap)  # (rows, columns) of tiles
    heading = " — ".join(s for s in (title, None if ami is None else f"AMI {ami:.3f}") if s)
    left, right, bottom, top = 100, 6, 6, 18 + (26 if heading else 0)  # margins in pixels, for the labels
    width, height = mosaic.shape[1] + left + right, mosaic.shape[0] + bottom + top
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((left / width, bottom / height, mosaic.shape[1] / width, mosaic.shape[0] / height))
    ax.imshow(mosaic, interpolation="nearest")  # one image pixel per output pixel
    ax.set_axis_off()
    tile_h, tile_w = H * scale + gap, W * scale + gap
    for c, t in enumerate(shown):
        ax.text(c * tile_w + W * scale / 2, -4, f"t={t + 1}", ha="center", va="bottom", fontsize=8)
    for r, (label, _) in enumerate(rows):
        ax.text(-6, r * tile_h + H * scale / 2, label, ha="right", va="center", fontsize=8)
    if heading:
        fig.text(0.5, 1 - 6 / height, heading, ha="center", va="top", fontsize=10)
    return _render(fig)


def ami_per_step_figure(
    ami_per_step: Sequence[float] | Mapping[str, Sequence[float]],
    title: str | None = None,
    *,
    reference: Mapping[int, float] | None = None,
    reference_label: str = "reference",
    dpi: int = 100,
) -> np.ndarray:
    """Line plot of AMI against EM step t = 1..T (e.g. ``test/ami_per_step``), optionally beside a reference.

    Args:
        ami_per_step: (T,) mean AMI after each step, or several such curves by legend label (each may have its
            own T).
        title: figure title.
        reference: points to draw as black markers, step -> AMI (e.g. values read off a paper's figure).
        reference_label: the reference's legend label.
        dpi: pixels per inch of the result.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    curves = dict(ami_per_step) if isinstance(ami_per_step, Mapping) else {None: ami_per_step}
    fig = Figure(figsize=(5.0, 3.3), dpi=dpi)
    ax = fig.add_subplot()
    lowest = 0.0
    for label, curve in curves.items():
        values = np.asarray(curve, dtype=np.float64).reshape(-1)
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        lowest = min(lowest, float(values[np.isfinite(values)].min(initial=0.0)))
    if reference:
        steps = sorted(reference)
        ax.plot(steps, [reference[t] for t in steps], "ks", markersize=5, label=reference_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("EM step")
    ax.set_ylabel("AMI")
    ax.set_ylim(lowest - 0.05 if lowest < 0 else 0.0, 1.0)
    ax.grid(alpha=0.3)
    if reference or None not in curves:
        ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _render(fig)


def sequence_frames(
    inputs: np.ndarray, gammas: np.ndarray, preds: np.ndarray, *, scale: int = 4, gap: int = 2
) -> np.ndarray:
    """One frame per step: input | colour-coded γ | reconstruction, side by side, upscaled by ``scale``.

    Args:
        inputs: (T, H, W) or (1, H, W) frames in [0, 1].
        gammas: (T, K, H, W) responsibilities.
        preds: (T, K, H, W) per-component predictions psi.
        scale: integer nearest-neighbour upscaling.
        gap: white pixels between panels (before upscaling).

    Returns:
        (T, scale * H, scale * (3 W + 2 gap), 3) uint8 RGB.
    """
    gammas, preds = _gammas_preds(gammas, preds)
    T, _, H, _ = gammas.shape
    inputs = _steps_first("inputs", inputs, T, 3)
    panels = [grey_to_rgb(inputs), colorize_gamma(gammas), grey_to_rgb((gammas * preds).sum(1))]  # 3 x (T, H, W, 3)
    white = np.full((T, H, gap, 3), 255, dtype=np.uint8)
    frames = np.concatenate([panels[0], white, panels[1], white, panels[2]], axis=2)  # (T, H, 3W + 2 gap, 3)
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write the bytes ``write`` puts into an open file to ``path``, atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        write(f)
    return Path(path)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 RGB array as a PNG, atomically."""
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    return _atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_gif(frames: Sequence[np.ndarray] | np.ndarray, path: str | os.PathLike, fps: float = 4.0) -> Path:
    """Write (T, H, W, 3) uint8 frames (or a list of (H, W, 3)) as a looping GIF, atomically.

    Pillow merges consecutive identical frames into one longer frame, so a still sequence has fewer frames.
    """
    images = [Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)) for a in frames]
    if not images:
        raise ValueError("save_gif needs at least one frame")
    duration = max(1, round(1000 / fps))  # milliseconds per frame
    return _atomic_write(
        path,
        lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0),
    )


def sequence_gif(
    inputs: np.ndarray,
    gammas: np.ndarray,
    preds: np.ndarray,
    path: str | os.PathLike,
    fps: float = 4.0,
    *,
    scale: int = 4,
) -> Path:
    """Animated GIF of a sequence, one frame per step: input | colour-coded γ | reconstruction.

    Args:
        inputs: (T, H, W) or (1, H, W) frames in [0, 1].
        gammas: (T, K, H, W) responsibilities.
        preds: (T, K, H, W) per-component predictions psi.
        path: the GIF to write (atomically).
        fps: frames per second.
        scale: integer upscaling of each frame.
    """
    return save_gif(sequence_frames(inputs, gammas, preds, scale=scale), path, fps)
