"""The step benchmark (mi_ssl_jax.bench.step): op kinds and `--input`."""

import jax
import jax.numpy as jnp
import pytest

from mi_ssl_jax.bench import step as step_bench
from mi_ssl_jax.data import sources


def _toy_step(w, x):
  """A "train step": one matmul, then elementwise work and a reduction."""
  y = jnp.tanh(x @ w) * 3.0 + 1.0  # [B, N]
  return w, {"loss": jnp.sum(y * y)}


def _entry_instructions(hlo: str) -> list[tuple[str, str]]:
  """(name, line) of the entry computation's instructions."""
  lines = hlo.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
  out = []
  for line in lines[start + 1:]:
    if line.startswith("}"):
      break
    name = line.split("=")[0].replace("ROOT", "").strip().lstrip("%")
    out.append((name, line))
  return out


def test_matmul_instructions_finds_the_dot_and_only_it():
  w, x = jnp.ones((64, 32)), jnp.ones((128, 64))
  hlo = jax.jit(_toy_step).lower(w, x).compile().as_text()
  matmuls = step_bench.matmul_instructions(hlo)
  entry = _entry_instructions(hlo)
  top_matmuls = [name for name, _ in entry if name in matmuls]
  assert len(top_matmuls) == 1, hlo  # the one x @ w
  others = [name for name, line in entry
            if name not in matmuls and " parameter(" not in line]
  assert others, hlo  # tanh, scaling and the reduction are not matmuls


def test_profile_split_returns_both_op_kinds():
  w = jax.random.normal(jax.random.PRNGKey(0), (256, 256))
  x = jax.random.normal(jax.random.PRNGKey(1), (512, 256))
  jitted = jax.jit(_toy_step)
  _, split, kinds = step_bench.profile_split(jitted, w, x, steps=2)
  assert set(kinds) <= {"matmul/conv", "other ops"}
  assert kinds.get("matmul/conv", 0.0) > 0.0, (split, kinds)
  assert sum(split.values()) > 0.0
  assert abs(sum(split.values()) - sum(kinds.values())) < 1e-9


@pytest.mark.skipif(sources.fashion_mnist_dir() is None,
                    reason="Fashion-MNIST not installed")
def test_input_mode_feeds_the_step_from_the_real_pipeline():
  # Device augmentation: the host pipeline crops, the step does the rest.
  config = step_bench.load_config(
      "quickstart:tiny", ["augment.augment_on=device", "batch_size=16"])
  result = step_bench.benchmark(config, steps=1, warmup=1, profile_steps=0,
                                with_input=True, input_seconds=0.3,
                                diagnostics_reps=0)
  assert result["input"]["pipeline_batches_per_s"] > 0
  assert result["input"]["fed_steps_per_s"] > 0
  assert "step fed by it" in step_bench.format_result(result)


@pytest.mark.usefixtures("fast_compile")
def test_diagnostics_are_timed_as_the_trainer_runs_them():
  config = step_bench.load_config(
      "quickstart:tiny", ["num_train_examples=64", "log_steps=2",
                          "diagnostics_examples=8"])
  built = step_bench.build_step(config)
  diag = step_bench.time_diagnostics(
      config, built["diagnostics"], built["state"], built["batch"], reps=1,
      step_s=0.1)
  assert diag["diagnostics_s"] > 0 and diag["diagnostics_examples"] == 8
  assert diag["diagnostics_steps"] == 1000  # the default, a multiple of 2
  every = 1000 * 0.1
  assert diag["diagnostics_share"] == pytest.approx(
      diag["diagnostics_s"] / (every + diag["diagnostics_s"]))
  assert diag["step_with_diagnostics_s"] == pytest.approx(
      0.1 + diag["diagnostics_s"] / 1000)
