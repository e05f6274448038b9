r"""Everything that needs an accelerator, in one run: JSON + markdown table.

  bash bench/accelerator.sh               # on a GPU/TPU host (≤ 8 minutes)
  python -m mi_ssl_jax.bench.accelerator --tiny --out=/tmp/acc   # CPU check

Sections, in order of importance (each skipped with a note when the time
budget is spent; the JSON is rewritten after every section, so a time-out
loses nothing already measured):

1. `attention`: cuDNN vs XLA attention at the ViT-B/16 M-MAE step's two
   shapes (`mi_ssl_jax.bench.attention`): accuracy against float32 and
   time, per token-padding multiple;
2. `vit`: the ViT-B/16 M-MAE step (`configs/mmae_vitb.py`, synthetic data,
   batch 256, bf16, attention and log-det as the platform picks them) with
   its profiled split;
3. `torch`: the PyTorch reference of the same step
   (`mi_ssl_jax.bench.torch_mmae --preset=vitb`, batch 256, bf16 autocast),
   eager and under `torch.compile`, each in its own process (skipped where
   torch or timm is missing);
4. `resnet`: the Matrix-SSL ResNet-50 step (batch 256, bf16 backbone) with
   its split, and MEC's;
5. `vit_extra`: MAE at the M-MAE settings (the regulariser's share) and
   M-MAE with XLA attention (the step before the cuDNN path);
6. `matrix`: the matrix functions (`mi_ssl_jax.bench.matrix`): eigh vs
   Cholesky/LU vs Chebyshev vs Taylor at n = 256 ... 4096;
7. `augment`: the on-device two-view colour recipe and the MAE crop + flip
   at 224 px (img/s), and the host tf.data recipe when TensorFlow is
   installed (it is not on the lent GPU machines).

Every step row has img/s, model FLOPs (jaxpr count, `bench/flops.py`) and
MFU, XLA's memory analysis of that executable, and compile time; the table
puts ours beside the PyTorch reference eager and compiled.

Needs jax, flax, optax, orbax and ml-collections; never imports TensorFlow
or clu unless section 6 finds TensorFlow (tested with both blocked, at
`--tiny` sizes, by tests/test_bench_accelerator.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Any

import jax
import numpy as np

from mi_ssl_jax.bench import step as step_bench

FULL = dict(
    mmae="configs/mmae_vitb.py", mae="configs/mae_vitb.py", vit_batch=256,
    vit_sets=("compute_dtype='bfloat16'", "image_size=224"),
    resnet=("configs/matrix_ssl_r50.py", "configs/mec_r50.py"),
    resnet_batch=256, resnet_sets=("compute_dtype='bfloat16'",),
    sizes=(256, 512, 1024, 2048, 4096), orders=(8, 16, 32),
    aug_size=224, aug_batch=256, steps=20, profile_steps=2, budget_s=420.0,
    torch_preset="vitb", torch_steps=20, torch_device="cuda",
    torch_amp="bf16", torch_modes=("eager", "compiled"), attention="full")
TINY = dict(
    mmae="configs/mmae_vitb.py:tiny", mae="configs/mae_vitb.py:tiny",
    vit_batch=16, vit_sets=(),
    resnet=("configs/matrix_ssl_r50.py:tiny", "configs/mec_r50.py:tiny"),
    resnet_batch=16, resnet_sets=(), sizes=(32, 64), orders=(8,),
    aug_size=32, aug_batch=16, steps=2, profile_steps=1, budget_s=900.0,
    torch_preset="parity", torch_steps=2, torch_device="cpu",
    torch_amp="none", torch_modes=("eager",), attention="tiny")


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or (
      "out of memory" in text.lower())


def _step(spec: str, sets: list[str], steps: int, profile: int = 2
          ) -> dict[str, Any]:
  config = step_bench.load_config(spec, sets)
  return step_bench.benchmark(config, steps=steps, warmup=2,
                              profile_steps=profile)


def _name(spec: str) -> str:
  return os.path.basename(spec.split(":")[0])[:-3]


def torch_section(p: dict, deadline: float) -> dict[str, Any]:
  """The PyTorch reference, eager then compiled, one process each."""
  missing = [m for m in ("torch", "timm") if importlib.util.find_spec(m)
             is None]
  if missing:
    return {"note": f"{', '.join(missing)} not installed: not measured"}
  out: dict[str, Any] = {}
  for key in p["torch_modes"]:
    extra = ["--compile"] if key == "compiled" else []
    left = deadline - time.time()
    if left < 30:
      out[key] = "time budget spent"
      continue
    path = os.path.join(p["out"], f"torch_{key}.json")
    cmd = [sys.executable, "-m", "mi_ssl_jax.bench.torch_mmae",
           f"--preset={p['torch_preset']}", f"--device={p['torch_device']}",
           f"--amp={p['torch_amp']}", f"--steps={p['torch_steps']}",
           "--warmup=3", f"--threads={os.cpu_count()}", f"--json={path}",
           *extra]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True,
                            timeout=min(left, 200))
    except subprocess.TimeoutExpired:
      out[key] = "timed out"
      continue
    if proc.returncode != 0:
      out[key] = f"failed: {proc.stderr.strip()[-300:]}"
      continue
    with open(path) as f:
      out[key] = json.load(f)
    print(proc.stdout.strip(), flush=True)
  return out


def attention_section(p: dict) -> list[dict[str, Any]]:
  from mi_ssl_jax.bench import attention  # noqa: PLC0415
  if p["attention"] == "tiny":
    return attention.run(attention.TINY_SHAPES, (8,), kinds=("xla",),
                         seconds=0.2)
  return attention.run(attention.SHAPES, (64, 8, 1), seconds=0.5)


def vit_section(p: dict, deadline: float, result: dict,
                extra: bool = False) -> dict[str, Any]:
  """The M-MAE step (profiled); with `extra`, MAE (the regulariser's share)
  and M-MAE with XLA attention (the step before the cuDNN path)."""
  out: dict[str, Any] = result.setdefault("vit", {})
  sets = [f"batch_size={p['vit_batch']}", *p["vit_sets"]]
  runs = (((_name(p["mae"]), p["mae"], [], 0),
           (_name(p["mmae"]) + "_xla_attention", p["mmae"],
            ["attention='xla'"], 0)) if extra else
          ((_name(p["mmae"]), p["mmae"], [], p["profile_steps"]),))
  for name, spec, sets_extra, profile in runs:
    if time.time() > deadline:
      out[name] = "time budget spent"
      continue
    out[name] = _step(spec, sets + sets_extra, p["steps"], profile)
    _write(p, result)
  mae, mmae = out.get("mae_vitb"), out.get("mmae_vitb")
  if isinstance(mae, dict) and isinstance(mmae, dict):
    split = {k: v for k, v in mmae["split_s"].items()
             if isinstance(v, float)}
    total = sum(split.values()) or float("nan")
    out["regulariser_share"] = {
        "loss_regulariser_split": split.get("loss/regulariser", 0.0) / total,
        "mmae_minus_mae_step": (mmae["step_s"] - mae["step_s"]) /
                               mmae["step_s"]}
  return out


def resnet_section(p: dict, deadline: float, result: dict
                   ) -> dict[str, Any]:
  out: dict[str, Any] = result.setdefault("resnet", {})
  for i, spec in enumerate(p["resnet"]):
    name = _name(spec)
    if time.time() > deadline:
      out[name] = "time budget spent"
      continue
    sets = [f"batch_size={p['resnet_batch']}", *p["resnet_sets"]]
    out[name] = _step(spec, sets, p["steps"],
                      p["profile_steps"] if i == 0 else 0)
    _write(p, result)
  return out


def matrix_section(p: dict) -> list[dict[str, Any]]:
  from mi_ssl_jax.bench import matrix as matrix_bench  # noqa: PLC0415
  return matrix_bench.run(p["sizes"], p["orders"], reps=3)


def augment_section(p: dict) -> dict[str, Any]:
  from mi_ssl_jax.data import augment_jax  # noqa: PLC0415 (jax only)
  size, batch = p["aug_size"], p["aug_batch"]
  rng = np.random.default_rng(0)
  views = jax.device_put(rng.random((batch, size, size, 3), np.float32))
  two_view = jax.jit(augment_jax.make_device_augment(
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
  crop = jax.jit(lambda x, k: augment_jax.crop_and_flip(x, k, size))
  out = {}
  for name, fn, args in (
      ("device_two_view_colour", two_view,
       ({"view1": views, "view2": views},)),
      ("device_mae_crop_flip", crop, (views,))):
    jax.block_until_ready(fn(*args, jax.random.key(0)))
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3.0 or n < 3:
      jax.block_until_ready(fn(*args, jax.random.key(n)))
      n += 1
    per_s = n * batch / (time.perf_counter() - t)
    out[name] = {"img_per_s": per_s, "batch": batch, "size": size}
  try:
    import tensorflow  # noqa: F401, PLC0415 (only to know if it is there)
    have_tf = True
  except ImportError:
    have_tf = False
  if not have_tf:
    out["host"] = "TensorFlow not installed: host pipeline not measured here"
  else:
    from mi_ssl_jax.bench import data as data_bench  # noqa: PLC0415
    try:
      rate, b = data_bench.run_case("fashion_mnist_siamese_224"
                                    if size >= 224 else "fashion_mnist_mae",
                                    3.0, "")
      out["host"] = {"img_per_s": rate, "batch": b}
    except Exception as e:  # noqa: BLE001
      out["host"] = f"not measured: {str(e)[:200]}"
  return out


def _write(p: dict, result: dict) -> None:
  """accelerator.json and .md as they stand (after every section)."""
  result["seconds"] = time.time() - p["start"]
  os.makedirs(p["out"], exist_ok=True)
  with open(os.path.join(p["out"], "accelerator.json"), "w") as f:
    json.dump(result, f, indent=1, default=str)
  with open(os.path.join(p["out"], "accelerator.md"), "w") as f:
    f.write(markdown(result))


def _step_rows(result: dict) -> list[tuple[str, dict]]:
  rows = []
  for section in ("vit", "resnet"):
    for name, value in result.get(section, {}).items():
      if isinstance(value, dict) and "img_per_s" in value:
        rows.append((name, value))
  return rows


def markdown(result: dict[str, Any]) -> str:
  lines = [f"# Accelerator benchmark ({result.get('device', '?')})", "",
           f"{result['date']}; jax {result['jax']}; "
           f"{result.get('seconds', 0):.0f} s in all.", ""]
  torch = result.get("torch", {})
  mmae = result.get("vit", {}).get("mmae_vitb")
  if isinstance(mmae, dict) and isinstance(torch, dict):
    lines += ["| ViT-B/16 M-MAE step | img/s | step ms | vs PyTorch eager "
              "| vs torch.compile |", "|---|---:|---:|---:|---:|"]
    ref = {k: torch[k] for k in ("eager", "compiled")
           if isinstance(torch.get(k), dict)}
    cells = lambda ips: " | ".join(
        f"{ips / r['img_per_s']:.2f}×" if k in ref else "not measured"
        for k, r in (("eager", ref.get("eager")),
                     ("compiled", ref.get("compiled"))))
    lines.append(f"| mi_ssl_jax (batch {mmae['batch_size']}, attention "
                 f"{mmae['kernels']['attention']}) | "
                 f"{mmae['img_per_s']:.0f} | {1e3 * mmae['step_s']:.1f} | "
                 f"{cells(mmae['img_per_s'])} |")
    for key, r in ref.items():
      extra = (f" (compile {r['compile_s']:.0f} s)" if r.get("compile_s")
               else "")
      lines.append(f"| PyTorch {r['torch']} {key}{extra} | "
                   f"{r['img_per_s']:.0f} | {1e3 * r['step_s']:.1f} | | |")
    lines.append("")
  lines += ["| step | batch | attention | img/s | step ms | TFLOP/s | MFU | "
            "peak MiB | compile s |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
  for name, r in _step_rows(result):
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    mem = r.get("memory", {}).get("peak_bytes")
    mem = f"{mem / 2**20:.0f}" if mem else "—"
    lines.append(f"| {name} | {r['batch_size']} | "
                 f"{r['kernels']['attention']} | {r['img_per_s']:.0f} | "
                 f"{1e3 * r['step_s']:.1f} | {r['tflops_per_s']:.2f} | {mfu} "
                 f"| {mem} | {r['compile_s']:.0f} |")
  for name, r in _step_rows(result):
    split = {k: v for k, v in r.get("split_s", {}).items()
             if isinstance(v, float)}
    if split:
      info = r.get("profile", {})
      lines += ["", f"{name} split ({100 * info.get('attributed_share', 1):.0f}"
                f"% of device time attributed; command buffers "
                f"{info.get('command_buffers')}): "
                + step_bench._shares(split),  # noqa: SLF001
                "op kinds: " + step_bench._shares(  # noqa: SLF001
                    r.get("op_kinds_s") or {"none": 0.0})]
  share = result.get("vit", {}).get("regulariser_share")
  if share:
    lines += ["", "M-MAE regulariser: "
              f"{100 * share['loss_regulariser_split']:.1f}% of the profiled "
              "step (loss/regulariser ops); M-MAE step "
              f"{100 * share['mmae_minus_mae_step']:+.1f}% vs MAE."]
  if result.get("attention"):
    from mi_ssl_jax.bench import attention  # noqa: PLC0415
    lines += ["", attention.markdown(result["attention"])]
  if result.get("matrix"):
    lines += ["", "| n | method | quantity | fwd ms | fwd+bwd ms | rel. err |",
              "|---:|---|---|---:|---:|---:|"]
    for r in result["matrix"]:
      lines.append(f"| {r['n']} | {r['method']} | {r['quantity']} | "
                   f"{r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | "
                   f"{r['rel_err']:.1e} |")
  aug = result.get("augment", {})
  if aug:
    lines += ["", "| augmentation | img/s |", "|---|---:|"]
    for name, r in aug.items():
      lines.append(f"| {name} | " + (f"{r['img_per_s']:.0f}" if isinstance(
          r, dict) else str(r)) + " |")
  for k, v in result.get("errors", {}).items():
    lines.append(f"\n* {k}: {v}")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true",
                      help="tiny sizes (CPU check of the script)")
  parser.add_argument("--out", default="bench_results")
  parser.add_argument("--budget_s", type=float, default=None)
  parser.add_argument("--only", default="",
                      help="comma-separated sections to run (default all)")
  args = parser.parse_args(argv)
  p = dict(TINY if args.tiny else FULL)
  start = time.time()
  p["start"], p["out"] = start, args.out
  os.makedirs(args.out, exist_ok=True)
  deadline = start + (args.budget_s or p["budget_s"])
  result: dict[str, Any] = {
      "host": f"{platform.node()}, {os.cpu_count()} CPU cores",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "jax": jax.__version__, "tiny": bool(args.tiny), "errors": {}}

  def device_info():
    dev = jax.devices()[0]
    result["device"] = (f"{jax.device_count()} x {dev.device_kind} "
                        f"({dev.platform})")
    return result["device"]

  # Most important first. JAX keeps a fraction of the GPU's memory
  # (bench/accelerator.sh sets XLA_PYTHON_CLIENT_MEM_FRACTION) and the
  # PyTorch reference runs in its own processes beside it.
  sections = (("device", device_info),
              ("attention", lambda: attention_section(p)),
              ("vit", lambda: vit_section(p, deadline, result)),
              ("torch", lambda: torch_section(p, deadline)),
              ("resnet", lambda: resnet_section(p, deadline, result)),
              ("vit_extra", lambda: vit_section(p, deadline, result, True)),
              ("matrix", lambda: matrix_section(p)),
              ("augment", lambda: augment_section(p)))
  only = {s for s in args.only.split(",") if s} | {"device"}
  for name, run in sections:
    if args.only and name not in only:
      continue
    if time.time() > deadline:
      result["errors"][name] = "skipped: time budget spent"
      continue
    t = time.time()
    try:
      value = run()
      if name != "vit_extra":  # it adds to result["vit"]
        result[name] = value
    except Exception as e:  # noqa: BLE001 (record, go on with the rest)
      result["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
      traceback.print_exc()
    print(f"[accelerator] {name} done in {time.time() - t:.0f} s", flush=True)
    _write(p, result)
  _write(p, result)
  print(markdown(result), flush=True)


if __name__ == "__main__":
  main()
