# ruff: noqa: E501 (compiled HLO lines are long)
"""The step benchmark (mi_ssl_jax.bench.step): op kinds and `--input`."""

import jax
import jax.numpy as jnp
import pytest

from mi_ssl_jax.bench import step as step_bench
from mi_ssl_jax.data import sources
from tests import flop_formulas


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
  _, split, kinds, info = step_bench.profile_split(jitted, w, x, steps=2)
  assert set(kinds) <= set(step_bench.KINDS)
  assert kinds.get("matmul/conv", 0.0) > 0.0, (split, kinds)
  assert sum(split.values()) > 0.0
  assert abs(sum(split.values()) - sum(kinds.values())) < 1e-9
  assert info["attributed_share"] == 1.0  # CPU: only mapped ops are seen


# A compiled GPU module as XLA prints it (abridged): a cuBLAS GEMM, cuDNN
# attention, a Triton GEMM fusion and a loop fusion, with source metadata.
_GPU_HLO = """
HloModule jit_step

%triton_gemm_computation (p0: bf16[8,8], p1: bf16[8,8]) -> bf16[8,8] {
  %p0 = bf16[8,8]{1,0} parameter(0)
  %p1 = bf16[8,8]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %add.1 = f32[8]{0} add(%p0, %p0)
}

ENTRY %main (a: bf16[8,8]) -> f32[8] {
  %a = bf16[8,8]{1,0} parameter(0)
  %custom-call.3 = (bf16[8,8]{1,0}, s8[0]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm", metadata={op_name="jit(step)/jvp(Block)/dot_general" source_file="/x/mi_ssl_jax/models/vit.py" source_line=1}
  %custom-call.4 = (bf16[8,8]{1,0}, s8[0]{0}) custom-call(%a, %a, %a), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(step)/transpose(jvp(Block))/attn" source_file="/x/mi_ssl_jax/models/vit.py" source_line=2}
  %gemm_fusion_dot.5 = bf16[8,8]{1,0} fusion(%a, %a), kind=kCustom, calls=%triton_gemm_computation, metadata={op_name="jit(step)/jvp(mmae)/dot_general" source_file="/x/mi_ssl_jax/losses/mae.py" source_line=3}
  ROOT %loop_add_fusion.6 = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/adamw/add" source_file="/x/optax/_src/transform.py" source_line=4}
}
"""


def test_attribute_maps_gpu_kernels_to_instructions():
  """GPU kernels carry their instruction (`hlo_op`) or its name with '.'
  and '-' as '_'; host rows are ignored; the unmapped rest is reported."""
  meta = [
      {"ph": "M", "name": "process_name", "pid": 1,
       "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7,
       "args": {"name": "Stream #13(Compute)"}},
      {"ph": "M", "name": "process_name", "pid": 2,
       "args": {"name": "/host:CPU"}}]
  kernel = lambda name, dur, **args: {"ph": "X", "pid": 1, "tid": 7,
                                      "name": name, "dur": dur,
                                      "args": args}
  events = meta + [
      kernel("sm90_xmma_gemm_bf16", 4000.0, hlo_op="custom-call.3"),
      kernel("cudnn_generated_fort_native_sdpa", 3000.0,
             hlo_op="custom-call.4"),
      kernel("gemm_fusion_dot_5", 2000.0),
      kernel("loop_add_fusion_6", 800.0),
      kernel("memcpy_unknown", 200.0),
      {"ph": "X", "pid": 2, "tid": 1, "name": "custom-call.3",
       "dur": 9999.0}]
  totals, kinds, info = step_bench.attribute(events, _GPU_HLO, steps=2)
  ms = lambda d: {k: round(1e3 * v, 6) for k, v in d.items()}
  assert ms(totals) == {"network forward": 2.0, "network backward": 1.5,
                        "loss/regulariser": 1.0, "optimizer": 0.4}
  assert ms(kinds) == {"matmul/conv": 3.0, "fused attention": 1.5,
                       "other ops": 0.4}
  assert info["attributed_share"] == pytest.approx(9800 / 10000)
  ((name, ms_per_step),) = info["top_unattributed"]
  assert name == "memcpy_unknown" and ms_per_step == pytest.approx(0.1)


def _mae_tiny_config(**sets):
  config = step_bench.load_config(
      "fmnist_mae:method=mae,tiny=True",
      ["online_probe=False", *(f"{k}={v!r}" for k, v in sets.items())])
  return config


def test_model_flops_are_the_hand_count_whatever_the_kernels():
  """The jaxpr count equals the hand formula exactly, for the CPU, TPU and
  GPU programs alike (cuDNN attention is counted on the XLA twin), and
  XLA's CPU cost analysis agrees within the elementwise work it adds
  (normalisations, GELU, softmax and the optimizer on every device's
  replicated parameters: 30% of this 32-wide model)."""
  hand = None
  for attention in ("xla_heads_first", "xla", "cudnn"):
    config = _mae_tiny_config(attention=attention)
    built = step_bench.build_step(config)
    assert built["kernels"].attention == attention
    flops = step_bench.model_flops(config, built)
    hand = flop_formulas.mae_train_step_flops(config)
    assert flops == hand, (attention, flops, hand)
  compiled = built["jitted"].lower(built["state"], built["batch"]).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA counts per device (the step is batch-sharded over the mesh).
  per_device = hand / built["mesh"].devices.size
  assert per_device <= cost["flops"] <= 1.5 * per_device
  memory = step_bench.memory_of(compiled)
  assert memory["peak_bytes"] > memory["argument"] > 0


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
