"""Spectrum diagnostics, their JSON/PNG outputs, the MAE reconstruction grid."""

import json
import os

import numpy as np
import pytest

from mi_ssl_jax.evaluators import common, diagnostics, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
  with open(path, "rb") as f:
    head = f.read(8)
  return head == PNG_MAGIC and os.path.getsize(path) > 1000


def test_diagnostics_closed_forms():
  d = 8
  # Rows ±e_i, equally often: ρ = I/d exactly (normalised, uncentred).
  eye = np.eye(d, dtype=np.float32)
  iso = np.concatenate([eye, -eye] * 4)
  diag = diagnostics.representation_diagnostics(iso)
  assert diag["vn_entropy"] == pytest.approx(np.log(d), rel=1e-5)
  assert diag["renyi2_entropy"] == pytest.approx(np.log(d), rel=1e-5)
  assert diag["effective_rank"] == pytest.approx(d, rel=1e-4)
  assert diag["rankme"] == pytest.approx(d, rel=1e-3)
  np.testing.assert_allclose(diag["spectrum"], np.full(d, 1 / d), atol=1e-6)
  # Collapsed: every row along one direction -> rank 1, zero entropy.
  rng = np.random.default_rng(0)
  col = rng.normal(size=(64, 1)) * rng.normal(size=(1, d))  # same shape
  diag = diagnostics.representation_diagnostics(col.astype(np.float32))
  assert diag["vn_entropy"] == pytest.approx(0.0, abs=1e-4)
  assert diag["effective_rank"] == pytest.approx(1.0, abs=1e-3)
  assert diag["spectrum"][0] == pytest.approx(1.0, abs=1e-5)
  assert diag["max_entropy"] == pytest.approx(np.log(d))
  with pytest.raises(FloatingPointError, match="NaN"):
    diagnostics.representation_diagnostics(np.full((64, d), np.nan))


def test_diagnostics_json_png_and_padding(tmp_path):
  rng = np.random.default_rng(1)
  z = (rng.normal(size=(100, 16)) * np.linspace(3, 0.1, 16)).astype(np.float32)
  labels = np.zeros(100, np.int32)
  want = diagnostics.representation_diagnostics(z)
  # 100 rows in batches of 24 over 8 devices: the last batch is padded.
  ev = diagnostics.Evaluator(common.identity_predict_fn,
                             data=common.array_source(z, labels, 24),
                             outdir=str(tmp_path), max_examples=None)
  got = dict(ev.run(None, step=7))
  for k in diagnostics.SCALAR_KEYS:
    assert got[k] == pytest.approx(want[k], rel=1e-6), k
  with open(tmp_path / "step7.json") as f:
    saved = json.load(f)
  assert saved["num_examples"] == 100 and len(saved["spectrum"]) == 16
  assert _is_png(tmp_path / "step7.png")


def test_reconstruction_grid_png(tmp_path):
  rng = np.random.default_rng(2)
  n, size, p, c = 3, 16, 4, 3
  images = rng.uniform(size=(n, size, size, c)).astype(np.float32)
  mask = (rng.uniform(size=(n, (size // p) ** 2)) < 0.75).astype(np.float32)
  # Patch predictions in MAE's patchify order must round-trip exactly.
  patches = images.reshape(n, size // p, p, size // p, p, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(n, (size // p) ** 2, p * p * c)
  np.testing.assert_array_equal(plots.unpatchify(patches, p, size, size),
                                images)
  path = plots.reconstruction_grid(images, mask, patches,
                                   str(tmp_path / "recon.png"), patch_size=p,
                                   title="step 0")
  assert _is_png(path)
  gray = plots.reconstruction_grid(
      images[..., :1], mask, images[..., :1], str(tmp_path / "g.png"),
      patch_size=p, pixel_mean=[0.5], pixel_std=[0.25])
  assert _is_png(gray)
  with pytest.raises(ValueError, match="patches"):
    plots.reconstruction_grid(images, mask[:, :5], images,
                              str(tmp_path / "x.png"), patch_size=p)


def test_spectrum_plot_overlays(tmp_path):
  path = plots.plot_spectrum({"a": np.linspace(1, 0, 10), "b": np.ones(10)},
                             str(tmp_path / "s.png"), annotation="x 1.0")
  assert _is_png(path)
  with pytest.raises(ValueError, match="positive"):
    plots.plot_spectrum({"z": np.zeros(3)}, str(tmp_path / "z.png"))
