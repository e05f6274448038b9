"""The accelerator script runs end to end without TensorFlow and clu.

The lent GPU machines have jax/flax/optax/orbax but no TensorFlow, TFDS or
clu; this runs `mi_ssl_jax.bench.accelerator --tiny` on the CPU with those
imports blocked and checks every section produced numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKER = '''
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "clu"):
      raise ImportError(f"{name} is blocked in this test")
    return None
sys.meta_path.insert(0, _Blocked())
'''


@pytest.mark.slow
def test_accelerator_script_tiny_without_tensorflow(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(BLOCKER)
  env = dict(os.environ, PYTHONPATH=f"{site}:{ROOT}", JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "mi_ssl_jax.bench.accelerator", "--tiny",
       f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "accelerator.json").read_text())
  assert not result["errors"], result["errors"]
  for name in ("mae_vitb", "mmae_vitb", "mmae_vitb_xla_attention"):
    assert result["vit"][name]["img_per_s"] > 0
    assert result["vit"][name]["flops_per_step"] > 0
    assert result["vit"][name]["memory"]["peak_bytes"] > 0
  assert result["vit"]["mmae_vitb_xla_attention"]["kernels"][
      "attention"] == "xla"
  assert "loss/regulariser" in result["vit"]["mmae_vitb"]["split_s"]
  assert 0 < result["vit"]["regulariser_share"]["loss_regulariser_split"] < 1
  for name in ("matrix_ssl_r50", "mec_r50"):
    assert result["resnet"][name]["img_per_s"] > 0
  assert {r["method"] for r in result["matrix"]} >= {"eigh", "cholesky"}
  assert result["augment"]["device_two_view_colour"]["img_per_s"] > 0
  assert "not installed" in result["augment"]["host"]
  assert [r["kernel"] for r in result["attention"]] == ["xla"]
  torch = result["torch"]
  if "note" not in torch:  # torch + timm installed (the bench extra)
    assert torch["eager"]["img_per_s"] > 0
  md = (out / "accelerator.md").read_text()
  assert "| mmae_vitb |" in md and "M-MAE regulariser" in md
  assert "vs torch.compile" in md
