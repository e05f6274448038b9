"""Model FLOPs of a function from its jaxpr: matmuls and convolutions.

Why by hand: XLA's `compiled.cost_analysis()` is complete on CPU and in a TPU
ahead-of-time compile, but on GPUs it skips the library calls that do most
of the work (cuBLAS GEMMs and cuDNN convolutions and attention are custom
calls there): on an H200 it reported 0.65 TFLOP for a ViT-B/16 M-MAE step
of about 15 TFLOP (docs/benchmarks.md, "GPU"). The jaxpr is the program
before any backend rewrites it, so counting its `dot_general` and
`conv_general_dilated` equations gives the same number on every platform.

Conventions (those of MFU as usually reported, e.g. PaLM, Appendix B):

* a dot or convolution costs 2 FLOPs per multiply-add; elementwise work,
  reductions, sorts and factorisations (eigh, Cholesky) are not counted;
* nested jaxprs (jit, remat, custom_jvp/vjp, scan bodies × length, cond:
  the costliest branch) are walked; a `while` body counts once (its trip
  count is not static);
* the count is of the program as traced: rematerialised forwards count
  again. For *model* FLOPs, trace the step with `attention="xla"` (no
  padded tokens; `mi_ssl_jax.bench.step` does) and without remat.
* cuDNN attention (a custom primitive) is counted from its operand shapes
  as 4·B·N·T·S·H forward and twice that backward, i.e. with its padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jcore

_ATTENTION_FWD = ("dot_product_attention_fwd",)
_ATTENTION_BWD = ("dot_product_attention_bwd",)


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  contract = math.prod(lhs[i] for i in lhs_contract)
  return 2.0 * math.prod(out) * contract


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  dn = eqn.params["dimension_numbers"]
  out_feature_dim = dn.rhs_spec[0]  # the kernel's output-feature axis
  per_output = math.prod(rhs) / rhs[out_feature_dim]
  # With batch_group_count > 1 (weight gradients of grouped convolutions),
  # each output sees 1/groups of the kernel's input features.
  per_output /= eqn.params.get("batch_group_count", 1)
  return 2.0 * math.prod(out) * per_output


def _attention_flops(eqn, backward: bool) -> float:
  q, k = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  layout = eqn.params.get("layout", 0)
  if getattr(layout, "value", layout) == 1:  # BNTH
    b, n, t, h = q
    s = k[2]
  else:  # BTNH
    b, t, n, h = q
    s = k[1]
  fwd = 4.0 * b * n * t * s * h
  return 2 * fwd if backward else fwd


def _sub_jaxprs(value) -> list:
  if isinstance(value, jcore.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jcore.Jaxpr):
    return [value]
  if isinstance(value, (list, tuple)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def jaxpr_flops(jaxpr) -> float:
  """Matmul + convolution FLOPs of a (closed) jaxpr (module docstring)."""
  if isinstance(jaxpr, jcore.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif any(name.startswith(p) for p in _ATTENTION_FWD):
      total += _attention_flops(eqn, backward=False)
    elif any(name.startswith(p) for p in _ATTENTION_BWD):
      total += _attention_flops(eqn, backward=True)
    elif name == "cond":
      total += max((jaxpr_flops(b) for b in eqn.params["branches"]),
                   default=0.0)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
    else:
      for key, value in eqn.params.items():
        if name.startswith("custom_vjp") and key != "call_jaxpr":
          continue  # the primal once; fwd/bwd thunks are not separate work
        for sub in _sub_jaxprs(value):
          total += jaxpr_flops(sub)
  return total


def count(fn: Callable[..., Any], *args: Any) -> float:
  """Matmul + convolution FLOPs of `fn(*args)` (args may be abstract)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))
