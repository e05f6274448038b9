r"""Attention kernels side by side: equality with float32 and time per call.

  python -m mi_ssl_jax.bench.attention            # on a GPU (cuDNN rows)
  python -m mi_ssl_jax.bench.attention --tiny     # CPU check (XLA rows only)

For the two attention shapes of the ViT-B/16 M-MAE step at batch 256
(encoder: 1 + 49 visible tokens, 12 heads of 64; decoder: 1 + 196 tokens,
16 heads of 32), in bfloat16, this compares

* ``xla``: ``jax.nn.dot_product_attention(implementation="xla")`` (float32
  logits and probabilities, [B, N, T, T] materialised);
* ``cudnn/m``: `mi_ssl_jax.models.vit.attention_padded` with cuDNN's fused
  flash attention, tokens padded to a multiple of m (m = 1: no padding) and
  masked by sequence lengths,

against float32 attention on the same (upcast) inputs: the relative error
‖out − ref‖ / ‖ref‖ of the output and of the gradient of ⟨w, out⟩ with
respect to q, k, v (fresh random inputs, never zeros), and the median time
of a forward + backward call. A kernel cuDNN refuses is reported with its
message. `check_cudnn` is the GPU test's assertion
(tests/test_attention_kernels.py).

Needs only jax (no TensorFlow, no clu): runs on the GPU machines as they are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mi_ssl_jax.models import vit

# (name, B, T, N, H): the ViT-B/16 M-MAE step at batch 256, 224 px.
SHAPES = (("encoder B/16, 25% of 196 patches + CLS", 256, 50, 12, 64),
          ("decoder 512-d, 196 patches + CLS", 256, 197, 16, 32))
TINY_SHAPES = (("tiny", 2, 17, 2, 8),)
MULTIPLES = (64, 16, 8, 1)


def _inputs(b, t, n, h, seed):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v, w = (jax.random.normal(kk, (b, t, n, h), jnp.float32)
                for kk in keys)
  return q, k, v, w


def _attention_fn(kind: str, multiple: int):
  if kind == "xla":
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, implementation="xla")
  return lambda q, k, v: vit.attention_padded(
      q, k, v, implementation=kind, seq_multiple=multiple)


def _fwd_bwd(fn):
  """(q, k, v, w) -> (out, (dq, dk, dv)) of ⟨w, fn(q, k, v)⟩."""

  def run(q, k, v, w):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(w.astype(out.dtype))

  return jax.jit(run)


def _rel(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(kind: str, multiple: int, shape: tuple[int, int, int, int],
            dtype=jnp.bfloat16, seed: int = 0) -> dict[str, float]:
  """Relative errors of `kind` in `dtype` against float32 XLA attention.

  Returns {"out": err, "dq": err, "dk": err, "dv": err}.
  """
  q, k, v, w = _inputs(*shape, seed)
  ref_out, ref_grads = _fwd_bwd(_attention_fn("xla", 1))(q, k, v, w)
  cast = lambda x: x.astype(dtype)
  out, grads = _fwd_bwd(_attention_fn(kind, multiple))(
      cast(q), cast(k), cast(v), w)
  errs = {"out": _rel(out, ref_out)}
  for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
    errs[name] = _rel(g, r)
  return errs


def check_cudnn(shape=(4, 197, 16, 32), multiple: int = 64,
                seed: int = 0) -> dict[str, Any]:
  """cuDNN vs XLA attention in bf16, both against float32.

  Raises AssertionError if cuDNN's error (output or any gradient) exceeds
  max(2 × the XLA bf16 path's error, 1e-2): the fused kernel must be as
  accurate as bf16 attention done by XLA.
  """
  cudnn = compare("cudnn", multiple, shape, seed=seed)
  xla = compare("xla", 1, shape, seed=seed)
  for name, err in cudnn.items():
    bound = max(2.0 * xla[name], 1e-2)
    assert err <= bound, (f"cuDNN attention {name}: relative error {err:.2e}"
                          f" > {bound:.2e} (XLA bf16: {xla[name]:.2e})")
  return {"shape": list(shape), "multiple": multiple, "cudnn": cudnn,
          "xla_bf16": xla}


def time_call(kind: str, multiple: int, shape, dtype=jnp.bfloat16,
              seconds: float = 1.0) -> float:
  """Median seconds of one forward + backward call (after a warm-up)."""
  q, k, v, w = (x.astype(dtype) for x in _inputs(*shape, 1))
  fn = _fwd_bwd(_attention_fn(kind, multiple))
  jax.block_until_ready(fn(q, k, v, w))
  times = []
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or len(times) < 5:
    t = time.perf_counter()
    jax.block_until_ready(fn(q, k, v, w))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def attention_flops(b: int, t: int, n: int, h: int) -> float:
  """Model FLOPs of attention forward + backward on T real tokens:
  forward q·kᵀ and p·v, 2·(2·B·N·T²·H); backward twice that (no
  recomputation counted)."""
  return 3 * 4.0 * b * n * t * t * h


def run(shapes=SHAPES, multiples=MULTIPLES, kinds=("xla", "cudnn"),
        seconds: float = 1.0) -> list[dict[str, Any]]:
  """One row per (shape, kernel): errors, ms per call, TFLOP/s or refusal."""
  rows = []
  for name, *shape in shapes:
    shape = tuple(shape)
    for kind in kinds:
      for multiple in ((1,) if kind == "xla" else multiples):
        row: dict[str, Any] = {"shape": name, "bthn": list(shape),
                               "kernel": kind if kind == "xla"
                               else f"{kind}/{multiple}"}
        try:
          row["rel_err"] = compare(kind, multiple, shape)
          s = time_call(kind, multiple, shape, seconds=seconds)
          row["ms"] = 1e3 * s
          row["tflops_per_s"] = attention_flops(*shape) / s / 1e12
        except Exception as e:  # noqa: BLE001 (a refused kernel is a row)
          row["refused"] = f"{type(e).__name__}: {str(e)[:160]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
  return rows


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| shape | kernel | fwd+bwd ms | TFLOP/s | rel. err out / dq |",
           "|---|---|---:|---:|---|"]
  for r in rows:
    if "refused" in r:
      lines.append(f"| {r['shape']} | {r['kernel']} | refused | | "
                   f"{r['refused'][:80]} |")
      continue
    e = r["rel_err"]
    lines.append(f"| {r['shape']} | {r['kernel']} | {r['ms']:.2f} | "
                 f"{r['tflops_per_s']:.0f} | {e['out']:.1e} / "
                 f"{e['dq']:.1e} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="tiny shapes, XLA rows only (CPU check)")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  if args.tiny:
    rows = run(TINY_SHAPES, (8,), kinds=("xla",), seconds=0.2)
  else:
    rows = run()
  print(markdown(rows), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
