"""PNG figures: eigenvalue spectra and MAE reconstruction grids.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so importing this module never changes a user's matplotlib
state and works headless (CI, TPU VMs). Inputs are numpy arrays; nothing here
depends on the models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  FigureCanvasAgg(fig)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=fig.dpi)
  os.replace(tmp, path)
  return path


def plot_spectrum(spectra: Mapping[str, np.ndarray], path: str, *,
                  title: str = "Embedding covariance spectrum",
                  annotation: str | None = None) -> str:
  """Log-scale eigenvalues (descending, normalised to sum 1) vs index.

  Args:
    spectra: label -> eigenvalues [D] (any order; sorted here). Several labels
      overlay, e.g. one per checkpoint or per method.
    path: output PNG path.
    title: axes title.
    annotation: text placed in the upper right (e.g. the metrics).

  Returns:
    ``path``.
  """
  if not spectra:
    raise ValueError("plot_spectrum needs at least one spectrum")
  fig = Figure(figsize=(6.0, 4.0), dpi=100)
  ax = fig.add_subplot(1, 1, 1)
  for label, eigs in spectra.items():
    eigs = np.sort(np.clip(np.asarray(eigs, np.float64), 0.0, None))[::-1]
    total = eigs.sum()
    if not np.isfinite(total) or total <= 0:
      raise ValueError(f"spectrum '{label}' has no positive finite mass")
    p = eigs / total
    floor = np.finfo(np.float32).tiny  # log axis: show exact zeros at a floor
    ax.semilogy(np.arange(1, len(p) + 1), np.maximum(p, floor), label=label)
  ax.set_xlabel("eigenvalue index (descending)")
  ax.set_ylabel("eigenvalue / trace")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  if len(spectra) > 1:
    ax.legend(loc="lower left", fontsize=8)
  if annotation:
    ax.text(0.98, 0.98, annotation, transform=ax.transAxes, ha="right",
            va="top", fontsize=8, family="monospace",
            bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
  fig.tight_layout()
  return _save(fig, path)


def unpatchify(patches: np.ndarray, patch_size: int, height: int,
               width: int) -> np.ndarray:
  """[n, L, p·p·C] -> [n, H, W, C], MAE's patch order (row-major, (p, q, c)).

  MAE ``patchify`` maps (n, C, h·p, w·q) to (n, h·w, p·q·C) with the
  einsum 'nchpwq->nhwpqc'; this inverts it for channels-last images.
  """
  n, num, dim = patches.shape
  h, w = height // patch_size, width // patch_size
  c = dim // (patch_size * patch_size)
  if h * w != num or c * patch_size * patch_size != dim:
    raise ValueError(
        f"cannot unpatchify {patches.shape} into {height}x{width} images with "
        f"patch size {patch_size}")
  x = patches.reshape(n, h, w, patch_size, patch_size, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, height, width, c)


def _pixel_mask(mask: np.ndarray, patch_size: int, height: int,
                width: int) -> np.ndarray:
  """[n, L] patch mask (1 = masked) -> [n, H, W, 1] pixel mask."""
  h, w = height // patch_size, width // patch_size
  if mask.shape[1] != h * w:
    raise ValueError(f"mask has {mask.shape[1]} patches, images of "
                     f"{height}x{width} with patch {patch_size} have {h * w}")
  m = mask.reshape(-1, h, w).astype(np.float32)
  m = np.repeat(np.repeat(m, patch_size, axis=1), patch_size, axis=2)
  return m[..., None]


def _to_display(x: np.ndarray, mean: Sequence[float] | None,
                std: Sequence[float] | None) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if std is not None:
    x = x * np.asarray(std, np.float32)
  if mean is not None:
    x = x + np.asarray(mean, np.float32)
  x = np.clip(x, 0.0, 1.0)
  return x[..., 0] if x.shape[-1] == 1 else x


def reconstruction_grid(images: np.ndarray, mask: np.ndarray,
                        reconstructions: np.ndarray, path: str, *,
                        patch_size: int,
                        pixel_mean: Sequence[float] | None = None,
                        pixel_std: Sequence[float] | None = None,
                        paste_visible: bool = True,
                        title: str | None = None) -> str:
  """MAE figure: original / masked / reconstruction (/ reconstruction+visible).

  Args:
    images: [n, H, W, C] inputs as fed to the model.
    mask: [n, L] per-patch mask, 1 = removed (MAE convention).
    reconstructions: [n, H, W, C] images or [n, L, p·p·C] patch predictions
      (in the same pixel space as ``images``; undo ``norm_pix_loss`` first).
    path: output PNG path.
    patch_size: ViT patch size p.
    pixel_mean: per-channel mean to add back for display (inputs normalised).
    pixel_std: per-channel std to multiply back for display.
    paste_visible: add a 4th column with the visible patches pasted back in.
    title: optional figure title.

  Returns:
    ``path``.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must be [n, H, W, C], got {images.shape}")
  n, height, width, _ = images.shape
  rec = np.asarray(reconstructions, np.float32)
  if rec.ndim == 3:
    rec = unpatchify(rec, patch_size, height, width)
  if rec.shape != images.shape:
    raise ValueError(f"reconstructions {rec.shape} do not match images "
                     f"{images.shape}")
  pm = _pixel_mask(np.asarray(mask), patch_size, height, width)  # [n,H,W,1]
  # Masked patches shown grey (0.5 after de-normalisation).
  grey = np.full_like(images, 0.5)
  if pixel_mean is not None or pixel_std is not None:
    grey = (grey - np.asarray(pixel_mean if pixel_mean is not None else 0.0,
                              np.float32)) / np.asarray(
                                  pixel_std if pixel_std is not None else 1.0,
                                  np.float32)
  columns = [("original", images), ("masked", images * (1 - pm) + grey * pm),
             ("reconstruction", rec)]
  if paste_visible:
    columns.append(("reconstruction + visible", images * (1 - pm) + rec * pm))
  fig = Figure(figsize=(2.0 * len(columns), 2.0 * n + (0.4 if title else 0)),
               dpi=100)
  axes = fig.subplots(n, len(columns), squeeze=False)
  for i in range(n):
    for j, (name, arr) in enumerate(columns):
      ax = axes[i, j]
      img = _to_display(arr[i], pixel_mean, pixel_std)
      ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0,
                vmax=1.0, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(name, fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
