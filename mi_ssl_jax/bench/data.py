"""Input-pipeline throughput (images/s) of mi_ssl_jax.data on this machine.

    python -m mi_ssl_jax.bench.data                  # all cases, Markdown table
    python -m mi_ssl_jax.bench.data --cases=mae_28,siamese_224 --seconds=5

Cases (host = tf.data on the CPU; device = the JAX function of
`make_device_augment`, jitted on the default JAX backend):
  mae_<S>            single-view MAE recipe, host.
  siamese_<S>        two-view asymmetric recipe, everything on host.
  siamese_crop_<S>   two-view host part of augment_on="device" (crop + flip).
  device_color_<S>   the on-device colour/blur/solarize/normalise function on
                     batches already in device memory (one "image" = one pair).
  jpeg_mae_224       MAE recipe on synthetic 320x240 JPEG files (decode cost).
S is 28 (Fashion-MNIST) or 224 (Fashion-MNIST upsampled). Images/s counts
examples (pairs for two-view cases) per second, after warm-up batches.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time

import jax
import numpy as np

from mi_ssl_jax import data

ALL_CASES = ("mae_28", "siamese_28", "siamese_crop_28", "device_color_28",
             "mae_224", "siamese_224", "siamese_crop_224", "device_color_224",
             "jpeg_mae_224")


def _machine() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.startswith("Model name")), platform.processor())
  except OSError:
    model = platform.processor()
  return (f"{model}, {os.cpu_count()} CPUs visible, JAX backend "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind})")


def _time_iter(it, batch: int, seconds: float, warmup: int = 3) -> float:
  it = iter(it)
  for _ in range(warmup):
    next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    n += batch
  return n / (time.perf_counter() - start)


def _jpeg_folder(root: str, count: int = 256) -> str:
  import tensorflow as tf
  rng = np.random.default_rng(0)
  for i in range(count):
    path = os.path.join(root, f"{i:04d}.jpg")
    if not os.path.exists(path):
      # Smooth random images so JPEG sizes are realistic (not pure noise).
      small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
      image = tf.image.resize(small, [240, 320], "bicubic")
      image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
      tf.io.write_file(path, tf.io.encode_jpeg(image, quality=90))
  return root


def run_case(case: str, seconds: float, jpeg_dir: str) -> tuple[float, int]:
  """Returns (images per second, batch size) of one case."""
  size = 224 if case.endswith("224") else 28
  batch = 64 if size == 224 else 256
  common = dict(global_batch_size=batch, image_size=size,
                allow_upscale=True, process_index=0, process_count=1,
                num_devices=1)
  if case.startswith("device_color"):
    augment = jax.jit(make_device_augment_for(size))
    rng = np.random.default_rng(0)
    views = {k: jax.device_put(rng.uniform(size=(batch, size, size, 3))
                               .astype(np.float32))
             for k in ("view1", "view2")}
    key = jax.random.key(0)
    jax.block_until_ready(augment(views, key))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      jax.block_until_ready(augment(views, jax.random.fold_in(key, n)))
      n += batch
    return n / (time.perf_counter() - start), batch
  if case == "jpeg_mae_224":
    it = data.make_train_iterator(f"folder:{jpeg_dir}", **common)
  elif case.startswith("mae"):
    it = data.make_train_iterator("fashion_mnist", **common)
  elif case.startswith("siamese_crop"):
    it = data.make_train_iterator(
        "fashion_mnist", augment=data.Augmentation(
            recipe="siamese", augment_on="device"), **common)
  else:
    it = data.make_train_iterator(
        "fashion_mnist", augment=data.Augmentation(recipe="siamese"),
        **common)
  return _time_iter(it, batch, seconds), batch


def make_device_augment_for(size: int):
  del size
  mean, std = data.channel_stats("fashion_mnist", channels=3)
  return data.make_device_augment(mean=mean, std=std)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default=",".join(ALL_CASES))
  parser.add_argument("--seconds", type=float, default=8.0)
  args = parser.parse_args(argv)
  data.hide_gpus_from_tf()
  cases = [c for c in args.cases.split(",") if c]
  unknown = set(cases) - set(ALL_CASES)
  if unknown:
    raise SystemExit(f"unknown cases {sorted(unknown)}; choose from "
                     f"{', '.join(ALL_CASES)}")
  print(f"machine: {_machine()}; load average before: "
        f"{os.getloadavg()[0]:.1f}")
  print("| case | batch | images/s |\n|---|---:|---:|")
  with tempfile.TemporaryDirectory() as tmp:
    jpeg_dir = _jpeg_folder(tmp) if "jpeg_mae_224" in cases else tmp
    for case in cases:
      rate, batch = run_case(case, args.seconds, jpeg_dir)
      print(f"| {case} | {batch} | {rate:,.0f} |", flush=True)
  print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
