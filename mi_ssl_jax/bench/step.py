r"""Times the real train step of any recipe: img/s, split, FLOPs, MFU, memory.

  python -m mi_ssl_jax.bench.step --config=configs/mmae_vitb.py:runlocal
  python -m mi_ssl_jax.bench.step --config=configs/quickstart.py --input
  python -m mi_ssl_jax.bench.step --config=configs/matrix_ssl_r50.py \
      --set batch_size=256 --set compute_dtype=bfloat16 --json=/tmp/step.json

Builds the train step exactly as `mi_ssl_jax.train` does (method, model,
optimizer, sharding over every local device, donation) on synthetic batches
of the recipe's shape, and reports:

* compile time, median step time over `--steps` steps, images/s (an image
  of a two-view method counts once per view pair);
* the step split from the profiler: every XLA op executed in `--profile_steps`
  traced steps (on GPUs: in an executable compiled with command buffers
  off, see `profile_split`) is attributed through the compiled HLO's
  source metadata to
  the network forward, the network backward (ops under `transpose(jvp(...))`),
  the loss / regulariser (ops from `mi_ssl_jax/losses` and
  `mi_ssl_jax/matrix`), the optimizer (optax) or other (EMA update,
  metrics, copies); shares are of the traced op time; the same op time is
  also split by op kind (`instruction_kinds`: matmuls and convolutions,
  library fusions and calls included; cuDNN fused attention; all other
  ops);
* model FLOPs per step counted on the step's jaxpr (matmuls and
  convolutions, `mi_ssl_jax.bench.flops`; XLA's cost analysis is printed
  beside it, but on GPUs it misses the cuBLAS / cuDNN library calls), and
  MFU against the device's dense peak (`PEAKS`; the CPU "peak" is measured
  here with a large float32 matmul);
* the step's own peak memory per device from XLA's memory analysis of the
  compiled executable (not the allocator's process-wide peak, which would
  carry over from an earlier, larger configuration);
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
import dataclasses
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


def build_program(config, mesh=None, *, total_steps: int = 10_000,
                  steps_per_epoch: int = 100, crop_on_device: bool = False
                  ) -> dict[str, Any]:
  """The train step of `config` as the trainer builds it, nothing allocated.

  Method, model codec, optimizer and step from the trainer's own functions
  (`train.make_state_fns`, `train.make_train_step`; the hardware choices of
  `mi_ssl_jax.platforms` resolved for `mesh`'s devices), the state's
  shardings (`train.state_shardings`) and the jitted, donating step.
  Returns a dict with `jitted`, `step_fn` (un-jitted), `init_state`,
  `abstract_state` (ShapeDtypeStructs with shardings), `state_sharding`,
  `batch_sharding`, `mesh`, `method`, `fmt`, `local_batch`, `kernels`,
  `schedule`, `codec`.
  `mesh` defaults to the recipe's mesh over every local device.
  `total_steps` and `steps_per_epoch` set the learning-rate schedule (a
  benchmark's defaults; the GPU study passes its run's), `crop_on_device`
  the device crops of two-view methods
  (`train_inputs.make_device_inputs`).
  """
  from mi_ssl_jax import methods, platforms, sharding, train  # noqa: PLC0415
  from mi_ssl_jax import train_inputs as inputs  # noqa: PLC0415
  from mi_ssl_jax.methods import base as method_base  # noqa: PLC0415

  method = methods.get_method(config.method)
  fmt = method_base.input_format(method)
  if mesh is None:
    mesh = sharding.make_mesh(config.get("mesh", (("data", -1),)),
                              config.get("mesh_axis_type", "auto"))
  local_batch = train.validate_config(config, method, mesh)
  platform = platforms.mesh_platform(mesh)
  codec, tx, schedule, init_state = train.make_state_fns(
      config, method, total_steps, config.num_train_examples,
      steps_per_epoch, platform)
  abstract = jax.eval_shape(init_state)
  state_sharding = train.state_shardings(config, abstract, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  device_inputs = inputs.make_device_inputs(config, fmt, crop_on_device)
  step_fn = train.make_train_step(
      method, codec, tx, schedule, jax.random.key(config.seed),
      int(config.get("grad_accum_steps", 1)), device_inputs,
      grad_chunks=int(config.get("grad_chunks", 1)))
  diagnostics = train.make_diagnostics(
      config, method, codec, jax.random.key(config.seed), device_inputs,
      sharding.replicated(mesh))
  jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding,
                                  sharding.replicated(mesh)),
                   donate_argnums=0)
  abstract_state = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      abstract, state_sharding)
  return dict(jitted=jitted, step_fn=step_fn, init_state=init_state,
              abstract_state=abstract_state, state_sharding=state_sharding,
              batch_sharding=batch_sharding, mesh=mesh, method=method,
              fmt=fmt, local_batch=local_batch, inputs=inputs,
              diagnostics=diagnostics, schedule=schedule, codec=codec,
              kernels=platforms.resolve(config, platform))


def _synthetic(config) -> None:
  """Random images of the recipe's shape (input-free benchmarks)."""
  with config.unlocked():
    config.dataset = "synthetic"
    config.num_train_examples = config.get("num_train_examples") or 100_000


def build_step(config, synthetic: bool = True) -> dict[str, Any]:
  """`build_program` plus the initial state and one batch on the devices.

  The state is built once, by the jitted `init_state` with the step's
  shardings (as the trainer does); the batch is the recipe's first batch
  (synthetic images unless `synthetic=False`).
  """
  from mi_ssl_jax import sharding  # noqa: PLC0415

  if synthetic:
    _synthetic(config)
  with config.unlocked():
    config.evals = type(config.evals)()
  built = build_program(config)
  built["state"] = jax.jit(built["init_state"],
                           out_shardings=built["state_sharding"])()
  host = next(built["inputs"].make_train_iter(
      config, built["local_batch"], built["fmt"], 0))
  built["batch"] = sharding.global_batch(host, built["batch_sharding"])
  built["config"] = config
  return built


def model_flops(config, built, batch=None) -> float:
  """Model FLOPs of one train step (`mi_ssl_jax.bench.flops`).

  Counted on the step's jaxpr; when the program uses cuDNN attention (padded
  tokens, a custom kernel), on the same step traced with XLA attention, so
  the count is the model's, whatever the kernels (no padding counted).
  `batch`: the global batch (arrays or ShapeDtypeStructs), default
  `built["batch"]`.
  """
  from mi_ssl_jax.bench import flops  # noqa: PLC0415

  program = built
  if built["kernels"].attention == "cudnn":
    xla_config = config.copy_and_resolve_references()
    with xla_config.unlocked():
      xla_config.attention = "xla"
    program = build_program(xla_config, built["mesh"])
  batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
      built["batch"] if batch is None else batch)
  return flops.count(program["step_fn"], program["abstract_state"], batch)


def memory_of(compiled) -> dict[str, Any]:
  """Per-device bytes of a compiled step from XLA's memory analysis.

  `peak_bytes` is the larger of XLA's reported peak of live buffers (where
  the backend reports one) and arguments + outputs + temporaries +
  generated code − aliased (donated) bytes: the program's whole footprint,
  the sum MaxText's `train_compile` prints (on TPUs the reported peak can
  leave temporaries out). Unlike the allocator's peak it belongs to this
  program alone, so every configuration of one process gets its own
  number.
  """
  try:
    ma = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 (backend without the analysis)
    return {}
  if ma is None:
    return {}
  out = {k: int(getattr(ma, f"{k}_size_in_bytes", 0)) for k in (
      "argument", "output", "alias", "temp", "generated_code")}
  derived = (out["argument"] + out["output"] + out["temp"]
             + out["generated_code"] - out["alias"])
  reported = int(getattr(ma, "peak_memory_in_bytes", 0) or 0)
  out["reported_peak"] = reported
  out["peak_bytes"] = max(reported, derived)
  out["source"] = ("XLA memory_analysis: max(reported peak, arguments + "
                   "outputs + temp + code - aliased)")
  return out


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
# The opcode after the result shape (a plain shape or a tuple of shapes).
_OPCODE = re.compile(r"=\s*(?:\([^()]*\)|\S+)\s+([\w\-]+)\(")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_MATMUL_OPS = ("dot", "convolution")
# Library calls that run a matmul or convolution (GPU: cuBLAS / cuBLASLt
# GEMMs, cuDNN convolutions), and cuDNN's fused attention.
_MATMUL_TARGETS = ("__cublas", "__cudnn$conv")
_ATTENTION_TARGETS = ("__cudnn$fmha",)
KINDS = ("matmul/conv", "fused attention", "other ops")


def instruction_kinds(hlo_text: str) -> dict[str, str]:
  """Instruction name -> "matmul/conv" | "fused attention", for the
  instructions that run a matmul, a convolution or fused attention.

  A plain `dot` / `convolution`; a fusion (XLA:CPU's YNNPACK / XNNPACK /
  oneDNN library fusions, GPU Triton GEMM fusions) whose called computation
  contains one; a library custom call (cuBLAS GEMM, cuDNN convolution, cuDNN
  fused attention). Everything else (XLA's own loop fusions: elementwise,
  reductions, layout copies; sorts, gathers, eigh) is "other ops".
  """
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and not line.startswith(" "):
      current = bodies.setdefault(m.group(1), [])
    elif current is not None and line.startswith(" "):
      current.append(line)
  out = {}
  for lines in bodies.values():
    for line in lines:
      m = _INSTR.match(line) or re.match(
          r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", line)
      op = _OPCODE.search(line)
      if not m or not op:
        continue
      code = op.group(1)
      target = _TARGET.search(line)
      if code in _MATMUL_OPS:
        out[m.group(1)] = "matmul/conv"
      elif code == "custom-call" and target:
        if target.group(1).startswith(_ATTENTION_TARGETS):
          out[m.group(1)] = "fused attention"
        elif target.group(1).startswith(_MATMUL_TARGETS):
          out[m.group(1)] = "matmul/conv"
      elif code == "fusion":
        called = _CALLS.search(line)
        body = bodies.get(called.group(1), []) if called else []
        if any((o := _OPCODE.search(b)) and o.group(1) in _MATMUL_OPS
               for b in body):
          out[m.group(1)] = "matmul/conv"
  return out


def matmul_instructions(hlo_text: str) -> set[str]:
  """Names of the instructions that run a matmul or convolution."""
  return {k for k, v in instruction_kinds(hlo_text).items()
          if v == "matmul/conv"}


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


def _normal(name: str) -> str:
  """Instruction or kernel name in one spelling: GPU kernels are named
  after their HLO instruction with '.' and '-' replaced by '_'."""
  return re.sub(r"[.\-]", "_", name.strip().lstrip("%"))


# Compiler options of the profiled executable on GPUs: XLA runs most of a
# step as CUDA-graph command buffers, whose kernels the profiler reports
# under the command buffer's annotation instead of their HLO instruction;
# turned off, every kernel carries its instruction (`hlo_op`).
GPU_PROFILE_OPTIONS = {"xla_gpu_enable_command_buffer": ""}


def _trace_events(jitted_or_compiled, state, batch, steps: int):
  tmp = tempfile.mkdtemp(prefix="mi_ssl_trace_")
  try:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = jitted_or_compiled(state, batch)
      _sync(metrics)
    files = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"),
                      recursive=True)
    if not files:
      return state, []
    with gzip.open(files[0]) as f:
      return state, json.load(f).get("traceEvents", [])
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _device_threads(events) -> set[tuple[Any, Any]]:
  """(pid, tid) of the accelerator's kernel rows ("Stream" rows on GPUs,
  "XLA Ops" on TPUs); empty on CPU, where XLA ops run on host threads."""
  pids = {e["pid"] for e in events if e.get("ph") == "M"
          and e.get("name") == "process_name"
          and str(e.get("args", {}).get("name", "")).startswith("/device:")}
  rows = set()
  for e in events:
    if (e.get("ph") == "M" and e.get("name") == "thread_name"
        and e.get("pid") in pids):
      tname = str(e.get("args", {}).get("name", ""))
      if "Stream" in tname or tname == "XLA Ops":
        rows.add((e["pid"], e.get("tid")))
  if not rows:  # unnamed rows: every row of the device processes
    rows = {(e["pid"], e.get("tid")) for e in events
            if e.get("ph") == "X" and e.get("pid") in pids}
  return rows


def profile_split(jitted, state, batch, steps: int, compiled=None
                  ) -> tuple[Any, dict, dict, dict]:
  """Traces `steps` steps and attributes the op time.

  Every traced op is mapped to its HLO instruction in the compiled step
  (by the `hlo_op` the profiler attaches, or by its name: GPU kernels are
  named after their instruction), then to a category by the instruction's
  source metadata (`classify`) and to a kind (`instruction_kinds`). On a
  GPU the profiled executable is compiled with command buffers off
  (`GPU_PROFILE_OPTIONS`), so kernels are not hidden inside CUDA graphs;
  its timings can differ slightly from the timed executable's. Elsewhere
  `compiled` (the step already compiled from `jitted`) is profiled.

  Returns:
    (state, {category: s/step}, {kind: s/step}, info) where info has
    `attributed_share` (attributed op time / all device op time; 1.0 on
    CPU, where only mapped ops are seen), `command_buffers` and
    `top_unattributed` [(name, ms/step)].
  """
  info: dict[str, Any] = {"command_buffers": "default"}
  if jax.local_devices()[0].platform == "gpu":
    try:
      compiled = jitted.lower(state, batch).compile(
          compiler_options=GPU_PROFILE_OPTIONS)
      info["command_buffers"] = "off for the profile"
    except Exception as e:  # noqa: BLE001 (older XLA: profile as is)
      info["command_buffers"] = f"default (could not turn off: {e!s:.80})"
  if compiled is None:
    compiled = jitted.lower(state, batch).compile()
  hlo = compiled.as_text()
  state, events = _trace_events(compiled, state, batch, steps)
  totals, kinds, attribution = attribute(events, hlo, steps)
  info.update(attribution)
  return state, totals, kinds, info


def attribute(events: list[dict], hlo_text: str, steps: int
              ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
  """Trace events of `steps` steps -> ({category: s/step}, {kind: s/step},
  {"attributed_share", "top_unattributed"}).

  An event is one op of the compiled module `hlo_text` when its `hlo_op`
  argument or its name (GPU kernels carry their instruction's name with
  '.' and '-' as '_') is one of the module's instructions. On an
  accelerator only the device's kernel rows count (`_device_threads`) and
  `attributed_share` is the mapped part of their time; on CPU, where XLA
  ops run on host threads among other host work, only mapped events are
  seen and the share is 1.
  """
  sources = {_normal(k): v for k, v in hlo_sources(hlo_text).items()}
  kinds_of = {_normal(k): v for k, v in instruction_kinds(hlo_text).items()}
  rows = _device_threads(events)
  totals: dict[str, float] = collections.Counter()
  kinds: dict[str, float] = collections.Counter()
  unattributed: dict[str, float] = collections.Counter()
  device_total = 0.0
  for e in events:
    if e.get("ph") != "X":
      continue
    seconds = e.get("dur", 0.0) * 1e-6 / steps
    on_device = (e.get("pid"), e.get("tid")) in rows
    if rows and not on_device:
      continue  # host-side events (launches, annotations) of device ops
    device_total += seconds
    args = e.get("args") or {}
    name = str(e.get("name", ""))
    key = None
    for cand in (args.get("hlo_op"), name, name.split(":")[0]):
      if cand and _normal(str(cand)) in sources:
        key = _normal(str(cand))
        break
    if key is None:
      unattributed[str(args.get("hlo_op") or name)[:80]] += seconds
      continue
    totals[classify(*sources[key])] += seconds
    kinds[kinds_of.get(key, "other ops")] += seconds
  attributed = sum(totals.values())
  info = {"attributed_share": (attributed / device_total if rows
                               and device_total else 1.0),
          "top_unattributed": [(k, 1e3 * v) for k, v in
                               unattributed.most_common(8)] if rows else []}
  return dict(totals), dict(kinds), info


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
  step = built.get("compiled") or built["jitted"]
  state, m = step(state, next(batches))
  _sync(m)
  n, t = 0, time.perf_counter()
  while time.perf_counter() - t < seconds:
    state, m = step(state, next(batches))
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
  state, batch = built["state"], built["batch"]
  compiled = built["jitted"].lower(state, batch).compile()
  built["compiled"] = compiled
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  flops = model_flops(config, built)
  state, _ = time_steps(compiled, state, batch, warmup)
  state, times = time_steps(compiled, state, batch, steps)
  step_s = statistics.median(times)
  diag = {}
  if diagnostics_reps and built["diagnostics"] is not None:
    diag = time_diagnostics(config, built["diagnostics"], state, batch,
                            diagnostics_reps, step_s)
  split: dict[str, Any] = {}
  kinds: dict[str, float] = {}
  info: dict[str, Any] = {}
  if profile_steps:
    try:
      state, split, kinds, info = profile_split(
          built["jitted"], state, batch, profile_steps, compiled=compiled)
    except Exception as e:  # noqa: BLE001 (profiler unavailable)
      split = {"error": str(e)[:200]}
  devices = jax.local_devices()
  peak, peak_src = device_peak_tflops(devices[0])
  n_dev = len(devices) if devices[0].platform != "cpu" else 1
  batch_size = int(config.batch_size)
  result = {
      "config": config.method, "batch_size": batch_size,
      "dtype": str(config.compute_dtype),
      "image_size": int(config.image_size),
      "kernels": dataclasses.asdict(built["kernels"]),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "compile_s": compile_s, "step_s": step_s,
      "step_s_min": min(times), "img_per_s": batch_size / step_s,
      "flops_per_step": flops,
      "flops_source": "jaxpr matmul + convolution count (bench/flops.py)",
      "xla_cost_analysis_flops": float(cost.get("flops", float("nan"))),
      "tflops_per_s": flops / step_s / 1e12,
      "peak_tflops_per_device": peak, "peak_source": peak_src,
      "mfu": flops / step_s / 1e12 / (peak * n_dev) if peak == peak else None,
      "split_s": split, "op_kinds_s": kinds, "profile": info,
      "memory": memory_of(compiled),
      "jax": jax.__version__, "backend": devices[0].platform,
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
           f"{r['image_size']}px on {r['devices']} (jax {r['jax']}; "
           f"attention {r['kernels']['attention']}, log-det "
           f"{r['kernels']['logdet']})",
           f"  compile {r['compile_s']:.1f} s | step {r['step_s'] * 1e3:.1f} "
           f"ms (min {r['step_s_min'] * 1e3:.1f}) | {r['img_per_s']:.1f} img/s",
           f"  {r['flops_per_step'] / 1e9:.1f} GFLOP/step | "
           f"{r['tflops_per_s']:.3f} TFLOP/s | MFU "
           + (f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a")
           + f" of {r['peak_tflops_per_device']:.2f} TFLOP/s "
           f"({r['peak_source']}); XLA cost analysis "
           f"{r['xla_cost_analysis_flops'] / 1e9:.1f} GFLOP"]
  split = {k: v for k, v in r["split_s"].items() if isinstance(v, float)}
  if split:
    info = r.get("profile", {})
    share = info.get("attributed_share")
    lines.append("  split (profiled op time"
                 + (f", {100 * share:.0f}% of device time attributed"
                    if share is not None and share < 1.0 else "")
                 + f"; command buffers {info.get('command_buffers', '')}): "
                 + _shares(split))
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
