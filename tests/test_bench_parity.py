"""The CPU parity benchmark: its table and the PyTorch reference model."""

import importlib.util
import json
import math
import subprocess
import sys

import jax
import pytest
from flax import nnx

from mi_ssl_jax import methods
from mi_ssl_jax.bench import parity
from mi_ssl_jax.bench import step as step_bench


def _run(impl, rnd, rate):
  return {"impl": impl, "round": rnd, "load": 1.0, "load_after": 1.5,
          "steps_per_s": rate, "step_s": 1 / rate, "step_s_min": 0.9 / rate}


def test_table_ratios():
  runs = [_run("ours", 1, 1.0), _run("pytorch", 1, 2.0),
          _run("pytorch", 2, 1.0), _run("ours", 2, 2.0)]
  text = parity.table(runs)
  assert "| 1 | ours | 1.00 → 1.50 | 1.000 | 1000 ms | 900 ms |" in text
  assert "per-round ratio ours / PyTorch: 0.50×, 2.00×" in text
  assert "median steps/s: ours 1.500, PyTorch 1.500; ratio 1.00×" in text


def _our_param_count():
  config = step_bench.load_config(parity.RECIPE, list(parity.PARITY_SETS))
  method = methods.get_method(config.method)
  model = nnx.eval_shape(lambda: method.init(config, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def test_torch_reference_is_the_same_model(tmp_path):
  # torch runs in its own process, as in the benchmark: importing torch (and
  # triton) into a process that already runs XLA can crash it, so it is
  # looked up, not imported, here.
  if not all(importlib.util.find_spec(m) for m in ("torch", "timm")):
    pytest.skip("needs the bench extra (torch, timm)")
  out = tmp_path / "torch.json"
  subprocess.run([sys.executable, "-m", "mi_ssl_jax.bench.torch_mmae",
                  "--steps=1", "--warmup=1", "--threads=2", f"--json={out}"],
                 check=True, stdout=subprocess.DEVNULL)
  result = json.loads(out.read_text())
  assert math.isfinite(result["first_loss"]) and result["steps_per_s"] > 0
  # Encoder, decoder and probe: the same parameters as ours (5,778,106).
  assert result["params"] == _our_param_count() == 5_778_106


def test_torch_reference_profile_by_op_kind():
  if not all(importlib.util.find_spec(m) for m in ("torch", "timm")):
    pytest.skip("needs the bench extra (torch, timm)")
  out = subprocess.run([sys.executable, "-m", "mi_ssl_jax.bench.torch_mmae",
                        "--profile", "--steps=1", "--threads=2"],
                       check=True, capture_output=True, text=True).stdout
  line = next(row for row in out.splitlines()
              if row.startswith("pytorch op kinds"))
  shares = [float(p.split("(")[1].rstrip("%)")) for p in line.split(", ")]
  assert len(shares) == 3 and abs(sum(shares) - 100) <= 2, line
  assert shares[0] > 20, line  # matmuls are a large part of a ViT step
