r"""Times the real train step of any recipe: img/s, split, FLOPs, MFU, memory.

  python -m mi_ssl_jax.bench.step --config=configs/mmae_vitb.py:runlocal
  python -m mi_ssl_jax.bench.step --config=configs/quickstart.py --input
  python -m mi_ssl_jax.bench.step --config=configs/matrix_ssl_r50.py \
      --set batch_size=256 --set model.dtype=bfloat16 --json=/tmp/step.json

Builds the train step exactly as `mi_ssl_jax.train` does (method, model,
optimizer, sharding over every local device, donation) on synthetic batches
of the recipe's shape, and reports:

* compile time, median step time over `--steps` steps, images/s (an image
  of a two-view method counts once per view pair);
* the step split from the profiler: every XLA op executed in `--profile_steps`
  traced steps is attributed through the compiled HLO's source metadata to
  the network forward, the network backward (ops under `transpose(jvp(...))`),
  the loss / regulariser (ops from `mi_ssl_jax/losses` and
  `mi_ssl_jax/matrix`), the optimizer (optax) or other (EMA update,
  metrics, copies); shares are of the traced op time; the same op time is
  also split by op kind (`matmul_instructions`: matmuls and convolutions,
  library fusions included, vs all other ops);
* model FLOPs per step from XLA's cost analysis of the compiled step, and
  MFU against the device's dense peak (`PEAKS`; the CPU "peak" is measured
  here with a large float32 matmul);
* peak device memory (GPU/TPU allocator statistics) or XLA's memory analysis
  of the step (CPU);
* the method's diagnostics as the trainer runs them (`train.make_diagnostics`:
  `config.diagnostics_examples` examples of the batch): median seconds per
  call (`diagnostics_s`), the step time with them amortised over
  `config.diagnostics_steps` steps (`step_with_diagnostics_s`), and their
  share of training time, t_d / (N · t_step + t_d) (`--diagnostics_reps 0`
  skips them);
* with `--input`: the rate of the real input pipeline alone and of the step
  fed by it (host -> device prefetch), so input-boundness is visible.

Imports neither TensorFlow nor clu unless `--input` is given (it runs on
accelerator hosts with only jax/flax/optax/orbax installed; recipes need
ml-collections). `--set key=value` overrides config fields (Python literals).
"""

from __future__ import annotations

import argparse
import ast
import collections
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

# Dense peaks per chip (TFLOP/s), bf16 on accelerators. Sources: NVIDIA
# datasheets (A100 SXM 312 bf16 / 19.5 fp32; H100 SXM5 989 bf16 dense, the
# often-quoted 1,979 includes 2:4 sparsity; H200 SXM the H100's compute) and
# Google Cloud TPU system-architecture pages (v4 275, v5e 197, v5p 459,
# v6e Trillium 918).
PEAKS = {
    "A100": 312.0, "H100": 989.4, "H200": 989.4,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}
PEAK_SOURCES = {
    "A100": "NVIDIA A100 datasheet (bf16 dense)",
    "H100": "NVIDIA H100 SXM5 datasheet (bf16 dense)",
    "H200": "NVIDIA H200 SXM datasheet (bf16 dense, H100 compute)",
    "TPU": "Google Cloud TPU system architecture pages (bf16 per chip)",
    "cpu": "measured: float32 2048x2048 matmul on this machine",
}


def device_peak_tflops(device: Any) -> tuple[float, str]:
  """(peak TFLOP/s per device, its source) for `device`."""
  kind = getattr(device, "device_kind", "")
  if device.platform == "cpu":
    return measured_cpu_tflops(), PEAK_SOURCES["cpu"]
  for name, peak in sorted(PEAKS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      src = PEAK_SOURCES["TPU" if name.startswith("TPU") else name]
      return peak, src
  return float("nan"), f"unknown device kind {kind!r}"


def measured_cpu_tflops(n: int = 2048, reps: int = 5) -> float:
  """Achieved float32 matmul TFLOP/s on all local CPU devices together."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e12


def load_config(spec: str, sets: list[str]):
  """Loads `name_or_file[:arg]` (get_config) and applies `--set key=value`.

  `spec` is a packaged recipe's name (`mmae_vitb:runlocal`) or a path to a
  `.py` file (`configs/mmae_vitb.py:runlocal`); see `mi_ssl_jax.configs`.
  """
  from mi_ssl_jax import configs  # noqa: PLC0415
  try:
    config = configs.load(spec)
  except configs.RecipeNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  with config.unlocked():
    for item in sets:
      key, _, text = item.partition("=")
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      node = config
      parts = key.split(".")
      for part in parts[:-1]:
        node = node[part]
      node[parts[-1]] = value
  return config


# --------------------------------------------------------------- the step ----


def build_step(config, synthetic: bool = True):
  """The jitted train step, its initial state and one batch (as train.py)."""

  from mi_ssl_jax import methods, sharding, train  # noqa: PLC0415
  from mi_ssl_jax import train_inputs as inputs  # noqa: PLC0415
  from mi_ssl_jax.methods import base as method_base  # noqa: PLC0415

  with config.unlocked():
    if synthetic:
      config.dataset = "synthetic"
      config.num_train_examples = config.get("num_train_examples") or 100_000
    config.evals = type(config.evals)()
  method = methods.get_method(config.method)
  fmt = method_base.input_format(method)
  mesh = sharding.make_mesh(config.get("mesh", (("data", -1),)),
                            config.get("mesh_axis_type", "auto"))
  local_batch = train.validate_config(config, method, mesh)
  total = 10_000
  codec, tx, schedule, init_state = train.make_state_fns(
      config, method, total, config.num_train_examples, 100)

  abstract = jax.eval_shape(init_state)
  state_sharding = sharding.param_shardings(
      abstract, mesh, config.get("param_sharding", "replicate"))
  batch_sharding = sharding.batch_sharding(mesh)
  device_augment = inputs.make_device_augment(config, fmt)
  step_fn = train.make_train_step(
      method, codec, tx, schedule, jax.random.key(config.seed),
      int(config.get("grad_accum_steps", 1)), device_augment)
  diagnostics = train.make_diagnostics(
      config, method, codec, jax.random.key(config.seed), device_augment,
      sharding.replicated(mesh))
  jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding,
                                  sharding.replicated(mesh)),
                   donate_argnums=0)
  state = jax.jit(init_state, out_shardings=state_sharding)()
  host = next(inputs.make_train_iter(config, local_batch, fmt, 0))
  batch = sharding.global_batch(host, batch_sharding)
  return dict(jitted=jitted, state=state, batch=batch, config=config,
              fmt=fmt, local_batch=local_batch, batch_sharding=batch_sharding,
              inputs=inputs, diagnostics=diagnostics)


def _sync(tree):
  jax.block_until_ready(tree)
  return tree


def time_steps(jitted, state, batch, steps: int) -> tuple[Any, list[float]]:
  """Runs `steps` steps; returns the state and per-step seconds."""
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = jitted(state, batch)
    _sync(metrics)
    times.append(time.perf_counter() - t)
  return state, times


def time_diagnostics(config, diagnostics, state, batch, reps: int,
                     step_s: float) -> dict[str, Any]:
  """Compile time and median seconds of the diagnostics, and their cost at
  the run's cadence (`train.resolve_durations(...).diagnostics`)."""
  from mi_ssl_jax import train  # noqa: PLC0415
  every = train.resolve_durations(
      config, config.get("num_train_examples")).diagnostics
  t = time.perf_counter()
  compiled = diagnostics.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  _sync(compiled(state, batch))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    _sync(compiled(state, batch))
    times.append(time.perf_counter() - t)
  diag_s = statistics.median(times)
  n, _ = train.diagnostics_subsample(config)
  return {
      "diagnostics_s": diag_s, "diagnostics_compile_s": compile_s,
      "diagnostics_examples": n, "diagnostics_steps": every,
      "step_with_diagnostics_s": (step_s + diag_s / every if every
                                  else step_s),
      "diagnostics_share": (diag_s / (every * step_s + diag_s) if every
                            else 0.0),
  }


# --------------------------------------------------------------- profile ----

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{([^}]*)\}")


def _stack_files(hlo_text: str) -> dict[int, str]:
  """stack_frame_id -> "|"-joined source files of that call stack.

  Newer XLA prints source locations once per module (FileNames,
  FileLocations, StackFrames tables) and refers to them by stack_frame_id.
  """
  files, locs, frames, section = {}, {}, {}, None
  for line in hlo_text.splitlines():
    head = line.strip()
    if head in ("FileNames", "FunctionNames", "FileLocations",
                "StackFrames"):
      section = head
      continue
    m = re.match(r"^(\d+)\s+(.*)$", head)
    if not m or section is None:
      if head and not m:
        section = None
      continue
    key, rest = int(m.group(1)), m.group(2)
    if section == "FileNames":
      files[key] = rest.strip('"')
    elif section == "FileLocations":
      f = re.search(r"file_name_id=(\d+)", rest)
      locs[key] = int(f.group(1)) if f else 0
    elif section == "StackFrames":
      loc = re.search(r"file_location_id=(\d+)", rest)
      parent = re.search(r"parent_frame_id=(\d+)", rest)
      frames[key] = (int(loc.group(1)) if loc else 0,
                     int(parent.group(1)) if parent else 0)
  out = {}
  for frame in frames:
    seen, chain, f = set(), [], frame
    while f in frames and f not in seen:
      seen.add(f)
      loc, parent = frames[f]
      chain.append(files.get(locs.get(loc, 0), ""))
      f = parent
    out[frame] = "|".join(chain)
  return out


def hlo_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (op_name, source files of its call stack)."""
  stacks = _stack_files(hlo_text)
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    meta = m.group(2)
    op = re.search(r'op_name="([^"]*)"', meta)
    src = re.search(r'source_file="([^"]*)"', meta)
    frame = re.search(r"stack_frame_id=(\d+)", meta)
    files = src.group(1) if src else (
        stacks.get(int(frame.group(1)), "") if frame else "")
    out[m.group(1)] = (op.group(1) if op else "", files)
  return out


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OPCODE = re.compile(r"=\s*\S+\s+([\w\-]+)\(")
_MATMUL_OPS = ("dot", "convolution")


def matmul_instructions(hlo_text: str) -> set[str]:
  """Names of the instructions that run a matmul or convolution.

  A plain `dot` / `convolution`, or a fusion (XLA:CPU's YNNPACK / XNNPACK /
  oneDNN library fusions, GPU cuBLAS / Triton fusions) whose called
  computation contains one. The rest of the step is XLA's own loop fusions
  (elementwise, reductions, layout copies), sorts, gathers and library calls
  such as eigh.
  """
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and not line.startswith(" "):
      current = bodies.setdefault(m.group(1), [])
    elif current is not None and line.startswith(" "):
      current.append(line)
  out = set()
  for lines in bodies.values():
    for line in lines:
      m = _INSTR.match(line)
      op = _OPCODE.search(line)
      if not m or not op:
        continue
      if op.group(1) in _MATMUL_OPS:
        out.add(m.group(1))
      elif op.group(1) == "fusion":
        called = _CALLS.search(line)
        body = bodies.get(called.group(1), []) if called else []
        if any((o := _OPCODE.search(b)) and o.group(1) in _MATMUL_OPS
               for b in body):
          out.add(m.group(1))
  return out


def classify(op_name: str, source: str) -> str:
  """The step-split category of one op."""
  if "/mi_ssl_jax/losses/" in source or "/mi_ssl_jax/matrix/" in source:
    return "loss/regulariser"
  if "optax" in source:
    return "optimizer"
  if "/mi_ssl_jax/models/" in source or "/flax/" in source:
    return "network backward" if "transpose(" in op_name else (
        "network forward")
  return "other"


def profile_split(jitted, state, batch, steps: int
                  ) -> tuple[Any, dict, dict]:
  """Traces `steps` steps.

  Returns:
    (state, {category: seconds per step}, {op kind: seconds per step}); the
    op kinds are "matmul/conv" (`matmul_instructions`) and "other ops".
  """
  hlo = jitted.lower(state, batch).compile().as_text()
  sources = hlo_sources(hlo)
  matmuls = matmul_instructions(hlo)
  tmp = tempfile.mkdtemp(prefix="mi_ssl_trace_")
  try:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = jitted(state, batch)
      _sync(metrics)
    files = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"),
                      recursive=True)
    if not files:
      return state, {}, {}
    with gzip.open(files[0]) as f:
      events = json.load(f).get("traceEvents", [])
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  totals: dict[str, float] = collections.Counter()
  kinds: dict[str, float] = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    name = e.get("name", "")
    key = name if name in sources else name.split(":")[0].strip("%")
    if key not in sources:
      continue
    seconds = e.get("dur", 0.0) * 1e-6 / steps
    totals[classify(*sources[key])] += seconds
    kinds["matmul/conv" if key in matmuls else "other ops"] += seconds
  return state, dict(totals), dict(kinds)


# ------------------------------------------------------------------ input ----


def input_rates(config, built, state, seconds: float
                ) -> tuple[Any, dict[str, float]]:
  """Batches/s of the real pipeline alone and of the step fed by it.

  `state` is the live train state (the built one was donated by the timed
  steps); returns (state after the fed steps, rates).
  """
  inputs = built["inputs"]
  with config.unlocked():
    config.dataset = built["orig_dataset"]
    config.num_train_examples = built["orig_examples"]
  it = iter(inputs.make_train_iter(config, built["local_batch"], built["fmt"],
                                   0))
  next(it)
  n, t = 0, time.perf_counter()
  while time.perf_counter() - t < seconds:
    next(it)
    n += 1
  pipe = n / (time.perf_counter() - t)
  from mi_ssl_jax import sharding  # noqa: PLC0415
  batches = sharding.prefetch_to_device(it, built["batch_sharding"])
  state, m = built["jitted"](state, next(batches))
  _sync(m)
  n, t = 0, time.perf_counter()
  while time.perf_counter() - t < seconds:
    state, m = built["jitted"](state, next(batches))
    n += 1
  _sync(m)
  return state, {"pipeline_batches_per_s": pipe,
                 "fed_steps_per_s": n / (time.perf_counter() - t)}


# ------------------------------------------------------------------- main ----


def benchmark(config, steps: int = 20, warmup: int = 3,
              profile_steps: int = 3, with_input: bool = False,
              input_seconds: float = 10.0,
              diagnostics_reps: int = 5) -> dict[str, Any]:
  """Runs the benchmark of `config`; returns the result record."""
  orig = (config.dataset, config.get("num_train_examples"))
  t0 = time.perf_counter()
  built = build_step(config)
  built["orig_dataset"], built["orig_examples"] = orig
  jitted, state, batch = built["jitted"], built["state"], built["batch"]
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  flops = float(cost.get("flops", float("nan")))
  state, _ = time_steps(jitted, state, batch, warmup)
  state, times = time_steps(jitted, state, batch, steps)
  step_s = statistics.median(times)
  diag = {}
  if diagnostics_reps and built["diagnostics"] is not None:
    diag = time_diagnostics(config, built["diagnostics"], state, batch,
                            diagnostics_reps, step_s)
  split: dict[str, Any] = {}
  kinds: dict[str, float] = {}
  if profile_steps:
    try:
      state, split, kinds = profile_split(jitted, state, batch,
                                          profile_steps)
    except Exception as e:  # noqa: BLE001 (profiler unavailable)
      split = {"error": str(e)[:200]}
  devices = jax.local_devices()
  peak, peak_src = device_peak_tflops(devices[0])
  n_dev = len(devices) if devices[0].platform != "cpu" else 1
  mem = {}
  stats = getattr(devices[0], "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    mem = {"peak_bytes": int(stats["peak_bytes_in_use"]),
           "source": "allocator peak_bytes_in_use"}
  else:
    try:
      ma = compiled.memory_analysis()
      mem = {"peak_bytes": int(ma.temp_size_in_bytes +
                               ma.argument_size_in_bytes +
                               ma.output_size_in_bytes -
                               ma.alias_size_in_bytes),
             "source": "XLA memory_analysis (temp + arguments + outputs)"}
    except Exception:  # noqa: BLE001
      mem = {}
  batch_size = int(config.batch_size)
  result = {
      "config": config.method, "batch_size": batch_size,
      "dtype": str(config.get("dtype") or config.get("model", {}).get(
          "dtype", "float32")),
      "image_size": int(config.image_size),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "compile_s": compile_s, "step_s": step_s,
      "step_s_min": min(times), "img_per_s": batch_size / step_s,
      "flops_per_step": flops,
      "tflops_per_s": flops / step_s / 1e12,
      "peak_tflops_per_device": peak, "peak_source": peak_src,
      "mfu": flops / step_s / 1e12 / (peak * n_dev) if peak == peak else None,
      "split_s": split, "op_kinds_s": kinds, "memory": mem,
      "jax": jax.__version__, "backend": jax.default_backend(),
      **diag,
  }
  if with_input:
    _, result["input"] = input_rates(config, built, state, input_seconds)
  return result


def _shares(seconds: dict[str, float]) -> str:
  """"a 12.0 ms (60%), b 8.0 ms (40%)", largest first."""
  total = sum(seconds.values())
  return ", ".join(f"{k} {1e3 * v:.1f} ms ({100 * v / total:.0f}%)"
                   for k, v in sorted(seconds.items(), key=lambda kv: -kv[1]))


def format_result(r: dict[str, Any]) -> str:
  lines = [f"{r['config']} batch {r['batch_size']} {r['dtype']} "
           f"{r['image_size']}px on {r['devices']} (jax {r['jax']})",
           f"  compile {r['compile_s']:.1f} s | step {r['step_s'] * 1e3:.1f} "
           f"ms (min {r['step_s_min'] * 1e3:.1f}) | {r['img_per_s']:.1f} img/s",
           f"  {r['flops_per_step'] / 1e9:.1f} GFLOP/step | "
           f"{r['tflops_per_s']:.3f} TFLOP/s | MFU "
           + (f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a")
           + f" of {r['peak_tflops_per_device']:.2f} TFLOP/s "
           f"({r['peak_source']})"]
  split = {k: v for k, v in r["split_s"].items() if isinstance(v, float)}
  if split:
    lines.append("  split (profiled op time): " + _shares(split))
  if r.get("op_kinds_s"):
    lines.append("  op kinds: " + _shares(r["op_kinds_s"]))
  if "diagnostics_s" in r:
    every = r["diagnostics_steps"]
    cadence = (f"every {every} steps: step with them "
               f"{r['step_with_diagnostics_s'] * 1e3:.1f} ms, "
               f"{100 * r['diagnostics_share']:.2f}% of training time"
               if every else "off (diagnostics_steps=0)")
    lines.append(f"  diagnostics {r['diagnostics_s'] * 1e3:.1f} ms per call "
                 f"on {r['diagnostics_examples']} examples (compile "
                 f"{r['diagnostics_compile_s']:.1f} s); {cadence}")
  if r["memory"]:
    lines.append(f"  peak memory {r['memory']['peak_bytes'] / 2**20:.0f} MiB "
                 f"({r['memory']['source']})")
  if "input" in r:
    i = r["input"]
    bound = ("input-bound" if i["pipeline_batches_per_s"] <
             1.0 / r["step_s"] else "compute-bound")
    lines.append(f"  input pipeline {i['pipeline_batches_per_s']:.2f} "
                 f"batches/s alone, step fed by it "
                 f"{i['fed_steps_per_s']:.2f} steps/s ({bound})")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="recipe file[:arg]")
  p.add_argument("--set", action="append", default=[],
                 help="config override key=value (repeatable)")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--profile_steps", type=int, default=3,
                 help="traced steps for the split (0: no profile)")
  p.add_argument("--input", action="store_true",
                 help="also time the real input pipeline (imports TF)")
  p.add_argument("--input_seconds", type=float, default=10.0)
  p.add_argument("--diagnostics_reps", type=int, default=5,
                 help="timed diagnostics calls (0: do not time them)")
  p.add_argument("--json", default="", help="write the result here")
  args = p.parse_args(argv)
  config = load_config(args.config, args.set)
  result = benchmark(config, args.steps, args.warmup, args.profile_steps,
                     args.input, args.input_seconds, args.diagnostics_reps)
  print(format_result(result), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2, default=str)
      f.write("\n")


if __name__ == "__main__":
  main()
