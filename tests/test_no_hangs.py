"""No silent hangs on multi-device CPU (docs/known_issues.md).

jaxlib 0.10.2's batched CPU LAPACK kernels (eigh, SVD, Cholesky, LU, QR)
split their batch over XLA's intra-op pool from inside a pool thread and
wait; as many concurrent batched calls as pool threads deadlock. The quick
start's diagnostics did this on 8 (or 2) CPU devices at its first log step.

* `test_no_batched_lapack_*`: the lowered train step and diagnostics of the
  quick start (fast) and of a Siamese recipe (slow: tracing) contain no
  LAPACK call with a batch dimension, so the deadlock cannot happen there.
* `test_quickstart_real_step_and_diagnostics_on_8_cpu_devices` (slow: 145–206 s
  on a 2-core machine at load average 10–17): the quick-start recipe's real
  model, step and diagnostics run past two log steps with diagnostics on 8
  simulated devices, in a subprocess with a timeout (a hang fails the test,
  it does not hang CI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import pytest

from mi_ssl_jax import configs, methods, sharding, train
from mi_ssl_jax import train_inputs as inputs
from mi_ssl_jax.data import sources
from mi_ssl_jax.methods import base as method_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_FMNIST = sources.fashion_mnist_dir() is not None
# stablehlo: custom_call @lapack_ssyevd_ffi(...) {..., num_batch_dims = "1"}
_LAPACK = re.compile(
    r"custom_call @(lapack_\w+)\(.*?num_batch_dims = \"(\d+)\"")


def _lowered_texts(config) -> dict[str, str]:
  """StableHLO of the jitted train step and diagnostics of `config` on the
  tests' 8-device mesh (lowered only: nothing runs)."""
  method = methods.get_method(config.method)
  mesh = sharding.make_mesh(config.mesh, config.mesh_axis_type)
  local_batch = train.validate_config(config, method, mesh)
  d = train.resolve_durations(config, config.num_train_examples)
  run = train._build(config, method, mesh, d, config.num_train_examples)
  host = next(inputs.make_train_iter(config, local_batch,
                                     method_base.input_format(method), 0))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding.batch_sharding(mesh)), host)
  return {"step": run.train_step.lower(run.abstract, batch).as_text(),
          "diagnostics": run.diagnostics.lower(run.abstract, batch).as_text()}


def _synthetic(name: str, **fields):
  config = configs.load(name)
  with config.unlocked():
    config.dataset = "synthetic"
    config.num_train_examples = 1024
    config.evals = type(config.evals)()
    config.update(fields)
  return config


@pytest.mark.parametrize("name,fields", [
    ("quickstart", {}),  # the real quick-start model, batch 256
    # Tracing a ResNet's BatchNorm updates takes ~30 s here (flax NNX asks
    # each tracer for its sharding, which walks the jaxpr), hence slow.
    pytest.param("fmnist_siamese:tiny,method=matrix_ssl", {"batch_size": 64},
                 marks=pytest.mark.slow),
])
def test_no_batched_lapack_in_the_step_or_the_diagnostics(name, fields):
  texts = _lowered_texts(_synthetic(name, **fields))
  calls = {k: _LAPACK.findall(v) for k, v in texts.items()}
  assert calls["diagnostics"], "expected eigh/SVD calls in the diagnostics"
  batched = {k: [c for c in v if c[1] != "0"] for k, v in calls.items()}
  assert batched == {"step": [], "diagnostics": []}, batched


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_quickstart_real_step_and_diagnostics_on_8_cpu_devices(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  env.pop("MI_SSL_TEST_STALL", None)
  workdir = tmp_path / "qs8"
  cmd = [sys.executable, "-m", "mi_ssl_jax.main",
         "--config=configs/quickstart.py", f"--workdir={workdir}",
         "--config.total_steps=4", "--config.log_steps=2",
         "--config.diagnostics_steps=2", "--config.evals={}",
         "--config.tensorboard=False",
         # A hang ends in a stack dump (exit 75) rather than the timeout.
         "--config.watchdog_first_s=240"]
  try:
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
  except subprocess.TimeoutExpired:
    pytest.fail("the quick start on 8 CPU devices hung (killed after 600 s)")
  assert out.returncode == 0, out.stderr[-4000:]
  rows = [json.loads(line)
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  with_diagnostics = [r["step"] for r in rows if "block4_token_entropy" in r
                      and "lidar" in r and "rankme" in r]
  assert with_diagnostics == [1, 2, 4], rows  # first line, then cadence
