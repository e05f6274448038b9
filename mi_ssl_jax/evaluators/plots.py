"""PNG figures: spectra, MAE reconstructions, and the study's result plots.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so importing this module never changes a user's matplotlib
state and works headless (CI, TPU VMs). Inputs are numpy arrays; nothing here
depends on the models.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mi_ssl_jax import paths


def _save(fig: Figure, path: str) -> str:
  """Renders `fig` as PNG to `path` (local or gs://; see mi_ssl_jax.paths)."""
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=fig.dpi)
  paths.write_bytes(path, buf.getvalue())
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


# ---------------------------------------------------------------------------
# Study figures (mi_ssl_jax.study): rows are the summary rows of
# `study.collect` with knn/linear means and stds per (family, label,
# budget fraction).
# ---------------------------------------------------------------------------


def study_accuracy(rows: Sequence[Mapping], path: str, *, names,
                   knn_k: int = 20) -> str:
  """Horizontal bars of kNN and linear top-1 (mean ± std) per method.

  Baseline rows (family "baseline") are drawn as vertical reference lines:
  raw pixels dashed, random init dotted.
  """
  main = [r for r in rows if r["fraction"] == 1.0]
  methods = [r for r in main if r["family"] != "baseline"]
  refs = [r for r in main if r["family"] == "baseline"]
  fig = Figure(figsize=(10.0, 0.45 * max(len(methods), 4) + 1.5), dpi=100)
  for j, (metric, title) in enumerate(
      (("knn", f"kNN top-1 (k = {knn_k})"), ("linear", "linear probe top-1"))):
    ax = fig.add_subplot(1, 2, j + 1)
    y = np.arange(len(methods))[::-1]
    means = [r[f"{metric}_mean"] for r in methods]
    stds = [r[f"{metric}_std"] for r in methods]
    families = list(dict.fromkeys(r["family"] for r in methods))
    colors = [f"C{families.index(r['family']) % 10}" for r in methods]
    ax.barh(y, means, xerr=stds, color=colors, alpha=0.8, capsize=3)
    ax.set_yticks(y)
    ax.set_yticklabels([names(r) for r in methods] if j == 0 else [])
    styles = ["--", ":", "-."]
    for i, r in enumerate(refs):
      if not np.isnan(r[f"{metric}_mean"]):
        ax.axvline(r[f"{metric}_mean"], color="k", ls=styles[min(i, 2)],
                   lw=1, label=f"{names(r)} {r[f'{metric}_mean']:.1f}")
    finite = [m for m in means + [r[f"{metric}_mean"] for r in refs]
              if not np.isnan(m)]
    if finite:
      lo = max(0.0, min(finite) - 5.0)
      ax.set_xlim(lo, min(100.0, max(finite) + 3.0))
    ax.set_xlabel(f"{title} (%)")
    ax.grid(True, axis="x", alpha=0.3)
    if refs:
      ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  return _save(fig, path)


def study_budget(rows: Sequence[Mapping], path: str, *, base_budget: float,
                 unit: str, seeds: Sequence[int], names,
                 knn_k: int = 20) -> str:
  """Accuracy vs training budget (budget fraction × base) per method."""
  fig = Figure(figsize=(9.0, 3.6), dpi=100)
  labels = sorted({r["label"] for r in rows})
  for j, (metric, title) in enumerate(
      (("knn", f"kNN top-1 (k = {knn_k})"), ("linear", "linear probe top-1"))):
    ax = fig.add_subplot(1, 2, j + 1)
    for label in labels:
      pts = []
      for r in sorted((r for r in rows if r["label"] == label),
                      key=lambda r: r["fraction"]):
        vals = [v for s, v in zip(r["seeds"], r[metric], strict=False)
                if s in seeds and v is not None]
        if vals:
          pts.append((r["fraction"] * base_budget, float(np.mean(vals))))
      if pts:
        xs, ys = zip(*pts, strict=False)
        row = next(r for r in rows if r["label"] == label)
        ax.plot(xs, ys, marker="o", label=names(row))
    ax.set_xlabel(f"training budget ({unit})")
    ax.set_ylabel(f"{title} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def study_info_flow(info: Mapping[str, Sequence[Mapping]], path: str, *,
                    names: Mapping[str, str] | None = None) -> str:
  """Matrix mutual information and joint entropy of the two views vs step.

  Args:
    info: method -> list of per-seed curves ``{"step": [...],
      "matrix_mutual_information": [...], "matrix_joint_entropy": [...]}``.
    path: output PNG path.
    names: display names of the methods.
  """
  names = dict(names or {})
  fig = Figure(figsize=(9.0, 3.6), dpi=100)
  keys = (("matrix_mutual_information", "matrix mutual information (α = 2)"),
          ("matrix_joint_entropy", "matrix joint entropy (α = 2)"))
  for j, (key, title) in enumerate(keys):
    ax = fig.add_subplot(1, 2, j + 1)
    for i, (method, curves) in enumerate(info.items()):
      n = min(len(c["step"]) for c in curves)
      steps = np.asarray(curves[0]["step"][:n])
      vals = np.asarray([c[key][:n] for c in curves], np.float64)
      ax.plot(steps, vals.mean(0), color=f"C{i}",
              label=f"{names.get(method, method)} ({len(curves)} seeds)")
      if len(curves) > 1:
        ax.fill_between(steps, vals.min(0), vals.max(0), color=f"C{i}",
                        alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def study_layer_entropy(layer: Mapping[str, Mapping[str, Mapping]],
                        path: str, *, names: Mapping[str, str] | None = None,
                        titles: Mapping[str, str] | None = None) -> str:
  """Token entropy per layer (x) for every method, one panel per family.

  Args:
    layer: family -> method -> ``{"first_mean": [...], "last_mean": [...],
      "seeds": [...]}`` (values per layer, in depth order).
    path: output PNG path.
    names: display names of the methods; titles: of the families.
  """
  names, titles = dict(names or {}), dict(titles or {})
  fig = Figure(figsize=(5.0 * len(layer), 3.8), dpi=100)
  for j, (family, methods) in enumerate(layer.items()):
    ax = fig.add_subplot(1, len(layer), j + 1)
    for i, (method, e) in enumerate(methods.items()):
      color = f"C{i % 10}"
      depth = np.arange(1, len(e["last_mean"]) + 1)
      ax.plot(depth, e["last_mean"], color=color, marker="o", ms=3,
              label=f"{names.get(method, method)}")
      ax.plot(np.arange(1, len(e["first_mean"]) + 1), e["first_mean"],
              color=color, ls="--", lw=0.8, alpha=0.6)
    depth = max(len(e["last_mean"]) for e in methods.values())
    ax.set_xticks(np.arange(1, depth + 1))
    ax.set_xlabel("block" if family == "mae" else "stage")
    ax.set_ylabel("token entropy (nats)")
    ax.set_title(titles.get(family, family), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  return _save(fig, path)


def study_correlation(points: Sequence[Mapping], path: str,
                      diagnostics: Sequence[str], knn_k: int = 20) -> str:
  """Scatter of each label-free diagnostic against kNN accuracy.

  One panel per diagnostic; colour = family, every point one evaluated
  checkpoint (method × seed × step).
  """
  fams = list(dict.fromkeys(p["family"] for p in points))
  fig = Figure(figsize=(3.2 * len(diagnostics), 3.2), dpi=100)
  for j, diag in enumerate(diagnostics):
    ax = fig.add_subplot(1, len(diagnostics), j + 1)
    for i, fam in enumerate(fams):
      pts = [(p[diag], p["knn"]) for p in points
             if p["family"] == fam and p.get(diag) is not None
             and p.get("knn") is not None]
      if pts:
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, s=12, color=f"C{i}", label=fam, alpha=0.8)
    ax.set_xlabel(diag)
    if j == 0:
      ax.set_ylabel(f"kNN top-1 (k = {knn_k}) (%)")
      ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)
