r"""Everything that needs an accelerator, in one run: JSON + markdown table.

  bash bench/accelerator.sh               # on a GPU/TPU host (≤ 8 minutes)
  python -m mi_ssl_jax.bench.accelerator --tiny --out=/tmp/acc   # CPU check

Sections (each skipped with a note when the time budget is spent):
1. ViT-B/16 MAE and M-MAE train steps at 224 px in bf16
   (`configs/{mae,mmae}_vitb.py`, synthetic data): img/s, MFU, memory and the
   profiled step split at batch 256, then the largest batch that fits
   (doubling until the allocator fails);
2. the share of M-MAE's regulariser: the loss/regulariser part of the split,
   and M-MAE's step time minus MAE's;
3. Matrix-SSL and MEC ResNet-50 steps (batch 256, bf16 backbone);
4. the matrix functions (`mi_ssl_jax.bench.matrix`): eigh vs Cholesky/LU vs
   Chebyshev vs Taylor at n = 256 ... 4096, forward and forward+backward;
5. augmentation throughput: the on-device two-view colour recipe and the MAE
   crop + flip at 224 px (img/s), and the host tf.data recipe when
   TensorFlow is installed (it is not on the lent GPU machines).

Needs jax, flax, optax, orbax and ml-collections; never imports TensorFlow
or clu unless section 5 finds TensorFlow (tested with both blocked, at
`--tiny` sizes, by tests/test_bench_accelerator.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import traceback
from typing import Any

import jax
import numpy as np

from mi_ssl_jax.bench import step as step_bench

FULL = dict(
    vit=("configs/mae_vitb.py", "configs/mmae_vitb.py"), vit_batch=256,
    vit_max_batches=(512, 1024, 2048),
    resnet=("configs/matrix_ssl_r50.py", "configs/mec_r50.py"),
    resnet_batch=256, sizes=(256, 512, 1024, 2048, 4096), orders=(8, 16, 32),
    aug_size=224, aug_batch=256, steps=10, budget_s=420.0)
TINY = dict(
    vit=("configs/mae_vitb.py:tiny", "configs/mmae_vitb.py:tiny"),
    vit_batch=16, vit_max_batches=(32,),
    resnet=("configs/matrix_ssl_r50.py:tiny", "configs/mec_r50.py:tiny"),
    resnet_batch=16, sizes=(32, 64), orders=(8,), aug_size=32, aug_batch=16,
    steps=2, budget_s=600.0)


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or (
      "out of memory" in text.lower())


def _step(spec: str, sets: list[str], steps: int, profile: int = 2
          ) -> dict[str, Any]:
  config = step_bench.load_config(spec, sets)
  return step_bench.benchmark(config, steps=steps, warmup=2,
                              profile_steps=profile)


def vit_section(p: dict, deadline: float) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for spec in p["vit"]:
    name = os.path.basename(spec.split(":")[0])[:-3]
    sets = [f"batch_size={p['vit_batch']}"]
    if ":tiny" not in spec:
      sets += ["dtype='bfloat16'", "image_size=224"]
    out[name] = {"batch": _step(spec, sets, p["steps"])}
    largest = p["vit_batch"]
    for b in p["vit_max_batches"]:
      if time.time() > deadline:
        out[name]["largest_note"] = "time budget spent"
        break
      try:
        r = _step(spec, [s for s in sets if not s.startswith("batch_size")]
                  + [f"batch_size={b}"], max(2, p["steps"] // 3), profile=0)
        out[name][f"batch{b}"] = r
        largest = b
      except Exception as e:  # noqa: BLE001 (OOM ends the search)
        if not _is_oom(e):
          raise
        out[name]["oom_at"] = b
        break
    out[name]["largest_batch"] = largest
  mae = out.get("mae_vitb", {}).get("batch")
  mmae = out.get("mmae_vitb", {}).get("batch")
  if mae and mmae:
    split = {k: v for k, v in mmae["split_s"].items() if isinstance(v, float)}
    total = sum(split.values()) or float("nan")
    out["regulariser_share"] = {
        "loss_regulariser_split": split.get("loss/regulariser", 0.0) / total,
        "mmae_minus_mae_step": (mmae["step_s"] - mae["step_s"]) /
                               mmae["step_s"]}
  return out


def resnet_section(p: dict, deadline: float) -> dict[str, Any]:
  out = {}
  for spec in p["resnet"]:
    if time.time() > deadline:
      out["note"] = "time budget spent"
      break
    name = os.path.basename(spec.split(":")[0])[:-3]
    sets = [f"batch_size={p['resnet_batch']}"]
    if ":tiny" not in spec:
      sets += ["model.dtype='bfloat16'"]
    out[name] = _step(spec, sets, p["steps"])
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


def markdown(result: dict[str, Any]) -> str:
  lines = [f"# Accelerator benchmark ({result['device']})", "",
           f"{result['date']}; jax {result['jax']}; "
           f"{result['seconds']:.0f} s in all.", ""]
  lines += ["| step | batch | img/s | step ms | TFLOP/s | MFU | peak MiB |",
            "|---|---:|---:|---:|---:|---:|---:|"]

  def row(name, r):
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    mem = r.get("memory", {}).get("peak_bytes")
    mem = f"{mem / 2**20:.0f}" if mem else "—"
    lines.append(f"| {name} | {r['batch_size']} | {r['img_per_s']:.0f} | "
                 f"{1e3 * r['step_s']:.1f} | {r['tflops_per_s']:.2f} | {mfu} "
                 f"| {mem} |")

  for section in ("vit", "resnet"):
    for name, value in result.get(section, {}).items():
      if isinstance(value, dict) and "img_per_s" in value:
        row(name, value)
      elif isinstance(value, dict):
        for key, r in value.items():
          if isinstance(r, dict) and "img_per_s" in r:
            row(f"{name} ({key})", r)
  share = result.get("vit", {}).get("regulariser_share")
  if share:
    lines += ["", "M-MAE regulariser: "
              f"{100 * share['loss_regulariser_split']:.1f}% of the profiled "
              "step (loss/regulariser ops); M-MAE step "
              f"{100 * share['mmae_minus_mae_step']:+.1f}% vs MAE."]
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
  args = parser.parse_args(argv)
  p = dict(TINY if args.tiny else FULL)
  start = time.time()
  deadline = start + (args.budget_s or p["budget_s"])
  dev = jax.devices()[0]
  result: dict[str, Any] = {
      "device": f"{jax.device_count()} x {dev.device_kind} ({dev.platform})",
      "host": f"{platform.node()}, {os.cpu_count()} CPU cores",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "jax": jax.__version__, "tiny": bool(args.tiny), "errors": {}}
  sections = (("vit", lambda: vit_section(p, deadline)),
              ("resnet", lambda: resnet_section(p, deadline)),
              ("matrix", lambda: matrix_section(p)),
              ("augment", lambda: augment_section(p)))
  for name, run in sections:
    if time.time() > deadline:
      result["errors"][name] = "skipped: time budget spent"
      continue
    t = time.time()
    try:
      result[name] = run()
    except Exception as e:  # noqa: BLE001 (record, go on with the rest)
      result["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
      traceback.print_exc()
    print(f"[accelerator] {name} done in {time.time() - t:.0f} s", flush=True)
  result["seconds"] = time.time() - start
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "accelerator.json"), "w") as f:
    json.dump(result, f, indent=1, default=str)
  with open(os.path.join(args.out, "accelerator.md"), "w") as f:
    f.write(markdown(result))
  print(markdown(result), flush=True)


if __name__ == "__main__":
  main()
