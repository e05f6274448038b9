r"""Ahead-of-time compilation of a recipe's train step for a TPU slice.

  python -m mi_ssl_jax.bench.aot --config=mmae_vitb --topology=v5e-8
  python -m mi_ssl_jax.bench.aot --config=mmae_vitl --topology=v5e-8 \
      --set param_sharding=fsdp --set "mesh=(('data',1),('fsdp',-1))"
  python -m mi_ssl_jax.bench.aot --config=mmae_vitb --topology=v4-32 \
      --find_max_batch --json=/tmp/aot.json
  make aot AOT_ARGS="--config=mmae_vitb --topology=v5e-8"

Will my run fit, and how fast can it be? On any CPU-only machine with
libtpu installed (the `aot` extra, `jax[tpu]` at our jax version; `make
aot` puts it in `.venv-aot`), this compiles the real train step (the
trainer's own build: `mi_ssl_jax.bench.step.build_program`, i.e.
`train.make_state_fns`, `sharding.param_shardings`, `train.make_train_step`,
jit with the trainer's shardings and donation) for a TPU topology
(`jax.experimental.topologies.get_topology_desc`: every chip of the slice,
several hosts included) on abstract inputs, and reports per chip:

* bytes of arguments (parameters, optimizer state, the batch shard),
  outputs, temporaries and generated code, and the peak; whether it fits
  the chip's HBM with `--margin` (default 5 %) left for the runtime;
* FLOPs per step (model FLOPs counted on the step's jaxpr,
  `mi_ssl_jax.bench.flops`, and XLA's own count for the compiled
  program per chip), bytes accessed per chip;
* the roofline lower bound on the step time, max(model FLOPs / bf16
  peak, XLA's bytes-accessed estimate / HBM bandwidth) per chip, and the
  images/s it allows (`CHIPS`, with sources);
* the compile time.

The program is the one the TPU runs: the hardware choices
(`mi_ssl_jax.platforms`: XLA attention, Cholesky log-dets) come from the
topology's devices, and the batch split over the slice's hosts is checked
against the slice, not this machine. `--find_max_batch` searches the largest
global batch that fits (a linear model of memory in the per-chip batch from
two compiles, then compiles around its prediction) without XLA:TPU
rematerialising on its own (read from libtpu's log: `parse_xla_remat`;
every record says whether it did). `--set key=value`
overrides config fields as in `mi_ssl_jax.bench.step`. Results and their
commands: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

# Compiling for a TPU needs libtpu but no TPU: keep JAX's own backend on the
# CPU (no TPU probing) and let several compiles run side by side. libtpu
# looks for the TPU VM it runs on when it loads (metadata server, worker
# names) and prints a page of warnings when there is none; these settings
# (of the attached TPU, which compiling does not use) tell it not to look.
for _key, _value in (("JAX_PLATFORMS", "cpu"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                     ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_ACCELERATOR_TYPE", "v5litepod-8"),
                     ("TPU_WORKER_HOSTNAMES", "localhost")):
  os.environ.setdefault(_key, _value)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mi_ssl_jax.bench import step as step_bench  # noqa: E402
from mi_ssl_jax.config_lib import ConfigError  # noqa: E402

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: HBM per chip, dense bf16 peak, HBM bandwidth."""

  kind: str  # "TPU v5 lite" ... as jax names the device kind
  hbm_gib: float
  peak_tflops: float  # bf16, per chip
  hbm_gbps: float  # GB/s per chip
  megacore: bool  # two TensorCores presented as one device
  topology_prefix: str  # get_topology_desc's name prefix


# Google Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/
# v4, v5e, v5p, v6e): HBM per chip, bf16 peak per chip, HBM bandwidth.
CHIPS = {
    "v4": Chip("TPU v4", 32, 275.0, 1228.0, True, "v4"),
    "v5e": Chip("TPU v5 lite", 16, 197.0, 819.0, False, "v5e"),
    "v5p": Chip("TPU v5", 95, 459.0, 2765.0, True, "v5"),
    "v6e": Chip("TPU v6 lite", 32, 918.0, 1640.0, False, "v6e"),
}
CHIP_SOURCE = ("Google Cloud TPU system architecture pages (v4, v5e, v5p, "
               "v6e): HBM, bf16 peak and HBM bandwidth per chip")
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}
# Chips -> physical layout. 3-D tori (v4, v5p: the slice name counts
# TensorCores, two per chip) and 2-D (v5e, v6e: the name counts chips).
LAYOUT_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4),
             64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8),
             1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
LAYOUT_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8),
             64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice as users name it (`v5e-8`, `v4-32`, ...)."""

  name: str
  generation: str
  chip: Chip
  chips: int
  dims: tuple[int, ...]
  host_bounds: tuple[int, int, int]
  wrap: tuple[bool, bool, bool]

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.host_bounds)

  @property
  def topology_name(self) -> str:
    return f"{self.chip.topology_prefix}:" + "x".join(map(str, self.dims))


def parse_topology(name: str) -> Topology:
  """`v4-32`, `v5e-8`, `v5litepod-256`, `v5p-128`, `v6e-8`, ... -> Topology.

  Raises:
    ConfigError: an unknown generation or size (one line listing them).
  """
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
  gen = ALIASES.get(m.group(1), m.group(1)) if m else None
  if gen not in CHIPS:
    raise ConfigError(f"unknown TPU topology {name!r}; write <generation>-"
                      f"<size> with a generation of {sorted(CHIPS)} (or "
                      "v5litepod), e.g. v5e-8, v4-32, v5p-128, v6e-256")
  chip = CHIPS[gen]
  size = int(m.group(2))
  if chip.megacore:  # the name counts TensorCores, two per chip
    chips, table = size // 2, LAYOUT_3D
  else:
    chips, table = size, LAYOUT_2D
  if chips not in table:
    raise ConfigError(
        f"unknown {gen} slice size {size} in {name!r}; known: "
        + ", ".join(f"{gen}-{c * (2 if chip.megacore else 1)}"
                    for c in sorted(table)))
  dims = table[chips]
  if chip.megacore:
    bounds = (2, 2, 1) if chips >= 4 else (1, 1, 1)
    wrap = (chips >= 64,) * 3
  else:
    # One host drives up to 8 chips (v5e / v6e -8 machines); larger slices
    # are built of 4-chip hosts.
    bounds = (dims[0], dims[1], 1) if chips <= 8 else (2, 2, 1)
    wrap = (dims[0] == 16, dims[1] >= 16, False)
  return Topology(name, gen, chip, chips, dims, bounds, wrap)


def topology_devices(topo: Topology) -> list:
  """Compile-only devices of every chip of the slice (needs libtpu).

  Raises:
    ConfigError: libtpu missing or refusing the topology (one line).
  """
  import importlib.util  # noqa: PLC0415

  from jax.experimental import topologies  # noqa: PLC0415
  if importlib.util.find_spec("libtpu") is None:
    raise ConfigError(
        "compiling for a TPU needs libtpu (no TPU needed): run `make aot` "
        "(it installs the `aot` extra in .venv-aot) or pip install "
        "'mi_ssl_jax[aot]'")
  try:
    desc = topologies.get_topology_desc(
        topo.topology_name, "tpu",
        chip_config_name="megacore" if topo.chip.megacore else "default",
        chips_per_host_bounds=topo.host_bounds, num_slices=1,
        wrap=topo.wrap)
  except Exception as e:  # noqa: BLE001 (libtpu's errors have no one type)
    text = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ConfigError(f"libtpu refused topology {topo.name} "
                      f"({topo.topology_name}): {text[:200]}") from None
  if len(desc.devices) != topo.chips:
    raise ConfigError(f"topology {topo.name}: libtpu made "
                      f"{len(desc.devices)} devices, expected {topo.chips}")
  return list(desc.devices)


# Calls that exist only in XLA:CPU programs (LAPACK, the XNNPACK / YNNPACK /
# oneDNN / DUCC libraries): a program compiled for a TPU has none of them.
CPU_ONLY_MARKERS = ("lapack", "xnn", "ynn", "onednn", "__cpu", "ducc",
                    "eigen")


def cpu_only_ops(hlo_text: str) -> list[str]:
  """Custom-call targets of `hlo_text` that only XLA:CPU runs."""
  targets = set(re.findall(r'custom_call_target="([^"]*)"', hlo_text))
  return sorted(t for t in targets
                if any(m in t.lower() for m in CPU_ONLY_MARKERS))


def abstract_batch(config, program) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch as ShapeDtypeStructs with the step's batch sharding
  (shapes from one synthetic example of the recipe's input format)."""
  one = next(program["inputs"].make_train_iter(config, 1, program["fmt"], 0))
  return {k: jax.ShapeDtypeStruct((int(config.batch_size),) + v.shape[1:],
                                  v.dtype, sharding=program["batch_sharding"])
          for k, v in one.items()}


def compile_step(config, topo: Topology, devices=None,
                 margin: float = 0.05) -> dict[str, Any]:
  """Compiles `config`'s train step for `topo`; returns the record."""
  from mi_ssl_jax import sharding  # noqa: PLC0415

  config = config.copy_and_resolve_references()
  step_bench._synthetic(config)  # noqa: SLF001 (input-free, as bench.step)
  with config.unlocked():
    config.evals = type(config.evals)()
  devices = devices if devices is not None else topology_devices(topo)
  mesh = sharding.make_mesh(config.get("mesh", (("data", -1),)),
                            config.get("mesh_axis_type", "auto"),
                            devices=devices)
  program = step_bench.build_program(config, mesh)
  batch = abstract_batch(config, program)
  compiled = _compile(program["jitted"], program["abstract_state"], batch)
  model = config.get("model", {})
  return _record(
      topo, mesh, compiled, step_bench.model_flops(config, program, batch),
      int(config.batch_size), margin, program["abstract_state"]["params"],
      config=config.method,
      param_sharding=config.get("param_sharding", "replicate"),
      image_size=int(config.image_size),
      compute_dtype=str(config.compute_dtype),
      remat=str(model.get("remat", "none")),
      scan_blocks=bool(model.get("scan_blocks", False)),
      kernels=dataclasses.asdict(program["kernels"]))


# libtpu's log (glog; INFO and up by default, to files named
# `<program>.<host>.<user>.log.INFO.<date>-<time>.<pid>` in TPU_LOG_DIR).
_TPU_LOG_DIR_DEFAULT = "/tmp/tpu_logs"
# What XLA:TPU logs when its rematerialisation pass had to cut the peak
# to fit the HBM ("... hbm reduction:  36.95G => 28.69G").
_XLA_REMAT_LINE = re.compile(
    r"XLA::TPU rematerialization hbm reduction:\s+([\d.]+)([KMGT]?)\s*=>"
    r"\s*([\d.]+)([KMGT]?)")
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _xla_bytes(number: str, unit: str) -> float:
  """Bytes of a size as XLA:TPU prints it ("16.31", "G")."""
  return float(number) * _UNIT[unit]


def _tpu_log_path() -> str | None:
  """This process's libtpu INFO log file, or None when there is none."""
  log_dir = os.environ.get("TPU_LOG_DIR", _TPU_LOG_DIR_DEFAULT)
  suffix = f".{os.getpid()}"
  try:
    names = [n for n in os.listdir(log_dir)
             if ".log.INFO." in n and n.endswith(suffix)]
  except OSError:
    return None
  return os.path.join(log_dir, max(names)) if names else None


def _log_size(path: str | None) -> int:
  try:
    return os.path.getsize(path) if path else 0
  except OSError:
    return 0


def parse_xla_remat(log_text: str) -> dict[str, float] | None:
  """XLA:TPU's own rematerialisation in a compile's log: the peak before
  and after it (bytes; the last such line), or None when it did not run.

  Unrolled programs near the chip's memory compile only because XLA
  recomputes activations on its own (more compute than the program
  asks for); such a compile "fits" but is not the program as written.
  """
  found = _XLA_REMAT_LINE.findall(log_text)
  if not found:
    return None
  a, ua, b, ub = found[-1]
  return {"before_bytes": _xla_bytes(a, ua),
          "after_bytes": _xla_bytes(b, ub)}


def _xla_remat_since(path: str | None, offset: int) -> dict[str, Any]:
  """`parse_xla_remat` of what libtpu logged after `offset`; `known` is
  False when this process has no libtpu log to read."""
  if path is None:
    path = _tpu_log_path()
    offset = 0
  if path is None:
    return {"known": False, "remat": None}
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      text = f.read().decode("utf-8", "replace")
  except OSError:  # rotated or removed meanwhile: not known, not fatal
    return {"known": False, "remat": None}
  return {"known": True, "remat": parse_xla_remat(text)}


def _compile(jitted, state, batch) -> dict[str, Any]:
  """Lowers and compiles; memory, XLA's cost, CPU-only calls, time, and
  whether XLA:TPU rematerialised on its own to fit (`parse_xla_remat`).

  XLA:TPU refuses to compile a program whose buffers exceed the HBM: then
  `compile_error` holds its message and `memory` a lower bound from it.
  """
  t0 = time.perf_counter()
  lowered = jitted.lower(state, batch)
  log_path = _tpu_log_path()
  log_offset = _log_size(log_path)
  try:
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    out = dict(memory=step_bench.memory_of(compiled),
               cost=cost[0] if isinstance(cost, (list, tuple))
               else (cost or {}),
               cpu_only_ops=cpu_only_ops(compiled.as_text()),
               compile_error=None)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    oom = str(e).strip().splitlines()[0][:300]
    out = dict(memory=_memory_from_oom(oom, state), cost={},
               cpu_only_ops=[], compile_error=oom)
  out["compile_s"] = time.perf_counter() - t0
  out["xla_remat"] = _xla_remat_since(log_path, log_offset)
  return out


def roofline_bounds(chip: Chip, flops_per_chip: float,
                    bytes_per_chip: float | None
                    ) -> tuple[float, float | None, float]:
  """(matmul bound, bytes bound, step bound) in seconds: the FLOPs at the
  chip's bf16 peak, XLA's bytes accessed at its HBM bandwidth (None for a
  refused compile, which has no cost analysis), and the larger of the
  two."""
  t_compute = flops_per_chip / (chip.peak_tflops * 1e12)
  t_memory = (None if bytes_per_chip is None
              else float(bytes_per_chip) / (chip.hbm_gbps * 1e9))
  return t_compute, t_memory, max(t_compute, t_memory or 0.0)


def _record(topo: Topology, mesh, compiled: dict[str, Any],
            model_flops: float, batch_size: int, margin: float, params,
            **fields: Any) -> dict[str, Any]:
  """The record of one compile: memory against HBM, FLOPs, roofline."""
  from mi_ssl_jax import sharding  # noqa: PLC0415
  chip, n = topo.chip, mesh.devices.size
  cost, memory = compiled["cost"], compiled["memory"]
  flops_chip = model_flops / n
  # A refused compile has no cost analysis: what it cannot say is None
  # (JSON null), not NaN, so the record stays standard JSON.
  xla_flops = cost.get("flops")
  bytes_chip = cost.get("bytes accessed")
  t_compute, t_memory, t_step = roofline_bounds(chip, flops_chip, bytes_chip)
  hbm = chip.hbm_gib * GIB
  peak = memory.get("peak_bytes")
  return {
      **fields,
      "cpu_only_ops": compiled["cpu_only_ops"],
      "compile_error": compiled["compile_error"],
      # XLA:TPU's own rematerialisation: {"before_bytes", "after_bytes"} of
      # the peak, or None; `xla_remat_known` False: no libtpu log to read.
      "xla_remat": compiled["xla_remat"]["remat"],
      "xla_remat_known": compiled["xla_remat"]["known"],
      "topology": topo.name, "topology_name": topo.topology_name,
      "chips": topo.chips, "hosts": sharding.mesh_process_count(mesh),
      "chip": chip.kind, "mesh": dict(mesh.shape),
      "global_batch": batch_size, "batch_per_chip": batch_size / n,
      "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(
          params))),
      "memory_per_chip": memory, "hbm_bytes": hbm, "margin": margin,
      "fits": bool(compiled["compile_error"] is None and peak is not None
                   and peak <= (1.0 - margin) * hbm),
      "headroom_bytes": None if peak is None else hbm - peak,
      "model_flops_per_step": model_flops,
      "model_flops_per_chip": flops_chip,
      "xla_flops_per_chip": None if xla_flops is None else float(xla_flops),
      "bytes_accessed_per_chip": (None if bytes_chip is None
                                  else float(bytes_chip)),
      "compute_bound_s": t_compute, "memory_bound_s": t_memory,
      "roofline_step_s": t_step,
      "roofline_bound": ("memory" if t_memory is not None
                         and t_memory > t_compute else "compute"),
      "img_per_s_ceiling": batch_size / t_step,
      "img_per_s_compute_ceiling": batch_size / t_compute,
      "peak_tflops_per_chip": chip.peak_tflops, "peak_source": CHIP_SOURCE,
      "compile_s": compiled["compile_s"], "jax": jax.__version__,
  }


def compile_finetune(pretrain_config, topo: Topology, batch_size: int = 0,
                     num_classes: int = 1000, devices=None,
                     margin: float = 0.05) -> dict[str, Any]:
  """Compiles the fine-tuning step (`mi_ssl_jax.jobs.finetune`: protocol
  `mae_finetune`, Mixup/CutMix, layer decay, drop path) of a pretraining
  recipe's backbone for `topo`, data parallel; returns the record as
  `compile_step` does. `batch_size` 0 is the protocol's (2048)."""
  from flax import nnx  # noqa: PLC0415

  from mi_ssl_jax import (  # noqa: PLC0415
    loop,
    methods,
    model_state,
    platforms,
    sharding,
  )
  from mi_ssl_jax.finetune import classifier as ft  # noqa: PLC0415
  from mi_ssl_jax.finetune import layer_decay, mixup  # noqa: PLC0415

  protocol = ft.MAE_FINETUNE
  if batch_size:
    protocol, _ = protocol.with_overrides(batch_size=int(batch_size))
  devices = devices if devices is not None else topology_devices(topo)
  mesh = sharding.make_mesh((("data", -1),), "auto", devices=devices)
  sharding.check_batch_size(protocol.batch_size, mesh)
  pre = pretrain_config.copy_and_resolve_references()
  with pre.unlocked():
    if "drop_path_rate" in pre.get("model", {}):
      pre.model.drop_path_rate = protocol.drop_path_rate
  method = methods.get_method(pre.method)
  mconfig = model_state.method_config(
      pre, 1, platform=platforms.mesh_platform(mesh))
  size, channels = int(pre.image_size), int(pre.get("channels", 3))

  def new_classifier():
    model = method.init(mconfig, nnx.Rngs(0))
    backbone = ft.find_backbone(method, model)
    features_fn = None
    if backbone is None:
      backbone = model
      features_fn = lambda m, images, key: method.predict_fn(
          m, {"image": images})
    dim = ft.Classifier.features_of(backbone, features_fn, jnp.zeros(
        (1, size, size, channels)), None).shape[-1]
    return ft.Classifier(backbone, dim, num_classes,
                         head_init_std=protocol.head_init_std,
                         rngs=nnx.Rngs(0), features_fn=features_fn)

  abstract_model = nnx.eval_shape(new_classifier)
  codec = model_state.ModelCodec(abstract_model)
  params, rest = codec.abstract_params, codec.abstract_rest
  tx = ft.make_optimizer(protocol, 10_000, 500,
                         layer_decay.has_blocks(params))
  state = jax.eval_shape(lambda p, r: loop.init_state(p, r, tx.init(p)),
                         params, rest)
  repl = sharding.replicated(mesh)
  state_sharding = jax.tree.map(lambda _: repl, state)
  batch_sh = sharding.batch_sharding(mesh)
  mix = mixup.sample_mix(np.random.default_rng(0), size, size)
  # uint8 pixels, normalised in the step as the fine-tuning job does
  # (ImageNet's channel statistics: the scale is what matters here).
  from mi_ssl_jax.data import sources  # noqa: PLC0415
  normalize = (np.asarray(sources.IMAGENET_MEAN, np.float32),
               np.asarray(sources.IMAGENET_STD, np.float32))
  step_fn = ft.make_train_step(codec, protocol, num_classes, tx,
                               ft.make_schedule(protocol, 10_000, 500), 0,
                               normalize)
  jitted = jax.jit(step_fn, donate_argnums=0,
                   in_shardings=(state_sharding, {
                       "image": batch_sh, "label": batch_sh, "mix": repl}),
                   out_shardings=(state_sharding, repl))
  b = protocol.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, size, size, channels),
                                         jnp.uint8, sharding=batch_sh),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sh),
           "mix": jax.tree.map(lambda x: jax.ShapeDtypeStruct(
               np.shape(x), np.asarray(x).dtype, sharding=repl), mix)}
  state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=sh), state, state_sharding)
  from mi_ssl_jax.bench import flops as flops_lib  # noqa: PLC0415
  model_flops = flops_lib.count(step_fn, state, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch))
  model = pre.get("model", {})
  return _record(
      topo, mesh, _compile(jitted, state, batch), model_flops,
      protocol.batch_size, margin, params,
      config=f"finetune ({pre.method} backbone)", param_sharding="replicate",
      image_size=size, compute_dtype=str(pre.compute_dtype),
      remat=str(model.get("remat", "none")),
      scan_blocks=bool(model.get("scan_blocks", False)),
      kernels=dataclasses.asdict(platforms.of_config(mconfig)))


def _memory_from_oom(message: str, state) -> dict[str, Any]:
  """What XLA:TPU's out-of-memory refusal says: the temporaries it needed
  ("... HLO temporaries (16.31G) exceeds available HBM (15.75G)"), plus
  the state's bytes per chip; a lower bound on the peak."""
  m = re.search(r"\(([\d.]+)([KMGT])\)", message)
  temp = int(_xla_bytes(m.group(1), m.group(2))) if m else 0
  state = sum(_bytes_per_device(x) for x in jax.tree.leaves(state))
  return {"argument": state, "output": state, "alias": state, "temp": temp,
          "generated_code": 0, "reported_peak": 0,
          "peak_bytes": state + temp,
          "source": "XLA:TPU out-of-memory message (temporaries) + state: "
                    "a lower bound"}


def _bytes_per_device(x: jax.ShapeDtypeStruct) -> int:
  """Bytes of one device's shard of an abstract array."""
  shard = x.sharding.shard_shape(x.shape)
  return math.prod(shard) * x.dtype.itemsize


def _with_batch(config, batch: int):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = int(batch)
  return config


def fits_as_written(record: dict[str, Any], allow_xla_remat: bool = False
                    ) -> bool:
  """The record fits, and (unless `allow_xla_remat`) XLA did not have to
  rematerialise on its own to make it fit (records without the field,
  written before it existed, count as not rematerialised)."""
  return bool(record["fits"]) and (allow_xla_remat
                                   or not record.get("xla_remat"))


def find_max_batch(config, topo: Topology, margin: float = 0.05,
                   step_per_chip: int = 8, log=print,
                   known: dict[int, dict[str, Any]] | None = None,
                   on_probe=None, allow_xla_remat: bool = False
                   ) -> dict[str, Any]:
  """The largest global batch (a multiple of `step_per_chip` per chip) whose
  step fits HBM with `margin`, and the record of that compile. Unless
  `allow_xla_remat`, a compile that fits only because XLA:TPU
  rematerialised on its own (`parse_xla_remat`) counts as not fitting:
  past that batch the program recomputes more than it asks for, and the
  peak stops growing, so "the largest batch that compiles" is neither the
  fastest one nor well defined.

  Memory is close to linear in the per-chip batch b until the chip is
  nearly full: two compiles (b₀, the recipe's, and 2·b₀, or b₀/2 when b₀
  already fills half the chip) fit peak(b) = a + c·b, and the prediction
  is compiled first. Near the limit XLA:TPU rematerialises on its own to
  fit (the peak then stays just under HBM while the batch grows), so the
  search gallops from the prediction (steps of `step_per_chip`, doubling)
  until one compile fits and the next does not, then bisects between them.
  `known`: records of compiles already made of this program, by per-chip
  batch (not redone); `on_probe(b, record)` is called after each new
  compile (to store it: an interrupted search resumes from them).
  """
  devices = topology_devices(topo)
  limit = (1.0 - margin) * topo.chip.hbm_gib * GIB
  per_chip = lambda b: b * topo.chips
  seen: dict[int, dict] = dict(known or {})
  step = int(step_per_chip)

  def probe(b: int) -> dict:
    if b not in seen:
      seen[b] = compile_step(_with_batch(config, per_chip(b)), topo, devices,
                             margin)
      r = seen[b]
      remat = r.get("xla_remat")
      log(f"  batch {per_chip(b)} ({b}/chip): peak "
          f"{r['memory_per_chip']['peak_bytes'] / GIB:.2f} GiB "
          f"{'fits' if r['fits'] else 'does not fit'}"
          + (f" with XLA's rematerialisation (peak "
             f"{remat['before_bytes'] / GIB:.2f} GiB before it)"
             if remat else "")
          + f" (compile {r['compile_s']:.0f} s)")
      if on_probe is not None:
        on_probe(b, r)
    return seen[b]

  fits = lambda b: fits_as_written(probe(b), allow_xla_remat)
  b0 = max(step, int(config.batch_size) // topo.chips // step * step)
  p0 = probe(b0)["memory_per_chip"]["peak_bytes"]
  # The second point on the line: twice the batch, or half of it when
  # twice would not fit anyway (a refused compile gives only a bound).
  b1 = (2 * b0 if p0 < limit / 2 or b0 < 2 * step
        else b0 // 2 // step * step)
  p1 = probe(b1)["memory_per_chip"]["peak_bytes"]
  slope = max((p1 - p0) / (b1 - b0), 1.0)
  guess = int((limit - (p0 - slope * b0)) / slope)
  b = max(step, guess // step * step)
  stride = step
  if fits(b):  # gallop up: lo fits, hi does not
    while fits(b + stride):
      b += stride
      stride *= 2
    lo, hi = b, b + stride
  else:  # gallop down
    hi = b
    while True:
      b = max(step, hi - stride)
      if fits(b):
        break
      if b == step:
        raise ConfigError(f"{config.method} does not fit {topo.name} even "
                          f"at {step} example(s) per chip")
      hi, stride = b, stride * 2
    lo = b
  while hi - lo > step:  # bisect on multiples of `step`
    mid = max(lo + step, (lo + hi) // 2 // step * step)
    if fits(mid):
      lo = mid
    else:
      hi = mid
  b = lo
  best = dict(seen[b])
  best["search"] = {per_chip(k): fits_as_written(v, allow_xla_remat)
                    for k, v in sorted(seen.items())}
  best["allow_xla_remat"] = bool(allow_xla_remat)
  best["probe_peaks"] = {per_chip(k): v["memory_per_chip"]["peak_bytes"]
                         for k, v in sorted(seen.items())
                         if not v.get("compile_error")}
  best["max_batch_per_chip"] = b
  return best


def format_record(r: dict[str, Any]) -> str:
  m = r["memory_per_chip"]
  gib = lambda x: "?" if x is None else f"{x / GIB:.2f}"
  # Refused compiles have no cost analysis (None): "?".
  num = lambda x, scale, spec: "?" if x is None else format(x * scale, spec)
  return "\n".join([
      f"{r['config']} on {r['topology']} ({r['topology_name']}: {r['chips']}"
      f" x {r['chip']}, {r['hosts']} host(s)); global batch "
      f"{r['global_batch']} ({r['batch_per_chip']:g}/chip), "
      f"{r['compute_dtype']}, mesh {r['mesh']}, params "
      f"{r['param_sharding']}, remat {r['remat']}, scan "
      f"{r['scan_blocks']}, attention {r['kernels']['attention']}",
      f"  params {r['params'] / 1e6:.1f} M | per chip: arguments "
      f"{gib(m['argument'])} GiB, outputs {gib(m['output'])}, temp "
      f"{gib(m['temp'])}, code {gib(m['generated_code'])}, peak "
      f"{gib(m['peak_bytes'])} GiB of {r['hbm_bytes'] / GIB:.0f} -> "
      + ("fits" if r["fits"] else "DOES NOT FIT")
      + f" (margin {100 * r['margin']:.0f}%, headroom "
      f"{gib(r['headroom_bytes'])} GiB)",
      f"  {r['model_flops_per_step'] / 1e12:.2f} TFLOP/step (model), "
      f"{r['model_flops_per_chip'] / 1e12:.3f} per chip (XLA "
      f"{num(r['xla_flops_per_chip'], 1e-12, '.3f')}); roofline: matmuls "
      f"at {r['peak_tflops_per_chip']:.0f} TFLOP/s/chip "
      f"{1e3 * r['compute_bound_s']:.1f} ms, XLA's bytes accessed at HBM "
      f"bandwidth {num(r['memory_bound_s'], 1e3, '.1f')} ms -> step >= "
      f"{1e3 * r['roofline_step_s']:.1f} ms, <= "
      f"{r['img_per_s_ceiling']:.0f} img/s",
      f"  compile {r['compile_s']:.0f} s (jax {r['jax']})"]
      + ([f"  fits only with XLA's own rematerialisation: peak "
          f"{gib(r['xla_remat']['before_bytes'])} -> "
          f"{gib(r['xla_remat']['after_bytes'])} GiB (it recomputes "
          "activations the program keeps; set model.remat to choose "
          "what)"] if r.get("xla_remat") else [])
      + ([f"  largest batch that fits: {r['global_batch']} "
          f"({r['max_batch_per_chip']}/chip); tried "
          f"{r['search']}"] if "search" in r else []))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="recipe name or file[:arg]")
  p.add_argument("--topology", required=True,
                 help="TPU slice, e.g. v5e-8, v4-32, v5p-128, v6e-8")
  p.add_argument("--set", action="append", default=[],
                 help="config override key=value (repeatable)")
  p.add_argument("--find_max_batch", action="store_true")
  p.add_argument("--allow_xla_remat", action="store_true",
                 help="with --find_max_batch: count a compile that fits "
                 "only through XLA's own rematerialisation as fitting")
  p.add_argument("--finetune", action="store_true",
                 help="compile the fine-tuning step (configs/finetune.py, "
                 "protocol mae_finetune) of --config's backbone instead")
  p.add_argument("--batch_size", type=int, default=0,
                 help="with --finetune: the global batch (0: the "
                 "protocol's 2048)")
  p.add_argument("--margin", type=float, default=0.05,
                 help="fraction of HBM left for the runtime")
  p.add_argument("--json", default="", help="write the record here")
  args = p.parse_args(argv)
  try:
    topo = parse_topology(args.topology)
    config = step_bench.load_config(args.config, args.set)
    if args.finetune:
      record = compile_finetune(config, topo, args.batch_size,
                                margin=args.margin)
    elif args.find_max_batch:
      record = find_max_batch(config, topo, args.margin,
                              allow_xla_remat=args.allow_xla_remat)
    else:
      record = compile_step(config, topo, margin=args.margin)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  record["command"] = "python -m mi_ssl_jax.bench.aot " + " ".join(
      argv if argv is not None else sys.argv[1:])
  print(format_record(record), flush=True)
  if args.json:
    from mi_ssl_jax import paths  # noqa: PLC0415
    paths.write_text(args.json, json.dumps(record, indent=1, default=str)
                     + "\n")


if __name__ == "__main__":
  main()
