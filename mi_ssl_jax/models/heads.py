"""Projector / predictor MLP heads for the Siamese recipes, in NNX.

One configurable :class:`MLPHead` (Linear -> BN -> ReLU blocks, then a last
Linear with optional BN) and named recipes (:data:`HEAD_RECIPES`) copied from
the official code of each method:

=============  ==============================================================
recipe         projector / predictor
=============  ==============================================================
matrix_ssl,    projector: Lin(d,2048,nobias)-BN-ReLU-Lin(2048,2048,nobias)-
mec, simsiam   BN-ReLU-Lin(2048,2048)-BN(affine=False); predictor:
               Lin(2048,512,nobias)-BN-ReLU-Lin(512,2048) (MEC/Matrix-SSL
               ``builder.py``, SimSiam ``simsiam/builder.py``). The official
               last projector bias is frozen; here it is a normal parameter,
               which the affine-free BN right after cancels exactly in train
               mode.
byol           projector: Lin(d,4096)-BN-ReLU-Lin(4096,256); predictor the
               same MLP 256->4096->256 (deepmind-research ``byol``).
barlow_twins   projector: Lin(d,8192,nobias)-BN-ReLU x2 - Lin(8192,8192,
               nobias) (facebookresearch/barlowtwins); the affine-free BN of
               the loss lives in the loss/method, not here. No predictor.
vicreg         projector: Lin(d,8192)-BN-ReLU x2 - Lin(8192,8192,nobias)
               (facebookresearch/vicreg ``Projector``). No predictor.
simclr         projector: Lin(d,2048)-BN-ReLU-Lin(2048,128) (SimCLR v2 style,
               2 layers). No predictor.
lejepa         projector: Lin(d,2048,nobias)-BN-ReLU-Lin(2048,2048,nobias)-
               BN-ReLU-Lin(2048,64) (lightly 1.6.0 ``LeJEPAProjectionHead``;
               the official MINIMAL.md example uses the same MLP with
               output 16). No predictor.
=============  ==============================================================

Linears use PyTorch's default init (U(+-1/sqrt(fan_in)) for weight and bias)
because these recipes never re-initialise their heads. BatchNorm uses the
array it sees: under ``jit`` with a batch-sharded input the statistics are over
the global batch (SyncBatchNorm semantics, as all these recipes use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mi_ssl_jax.models import norm

HEAD_RECIPES: dict[str, dict[str, Any]] = {
    "matrix_ssl": dict(
        projector=dict(hidden_dims=(2048, 2048), out_dim=2048,
                       hidden_bias=False, out_bias=True,
                       out_norm="bn_affine_free"),
        predictor=dict(hidden_dims=(512,), out_dim=2048, hidden_bias=False,
                       out_bias=True, out_norm=None)),
    "byol": dict(
        projector=dict(hidden_dims=(4096,), out_dim=256, hidden_bias=True,
                       out_bias=True, out_norm=None),
        predictor=dict(hidden_dims=(4096,), out_dim=256, hidden_bias=True,
                       out_bias=True, out_norm=None)),
    "barlow_twins": dict(
        projector=dict(hidden_dims=(8192, 8192), out_dim=8192,
                       hidden_bias=False, out_bias=False, out_norm=None),
        predictor=None),
    "vicreg": dict(
        projector=dict(hidden_dims=(8192, 8192), out_dim=8192,
                       hidden_bias=True, out_bias=False, out_norm=None),
        predictor=None),
    "simclr": dict(
        projector=dict(hidden_dims=(2048,), out_dim=128, hidden_bias=True,
                       out_bias=True, out_norm=None),
        predictor=None),
}
HEAD_RECIPES["lejepa"] = dict(
    projector=dict(hidden_dims=(2048, 2048), out_dim=64, hidden_bias=False,
                   out_bias=True, out_norm=None),
    predictor=None)
HEAD_RECIPES["mec"] = HEAD_RECIPES["matrix_ssl"]
HEAD_RECIPES["simsiam"] = HEAD_RECIPES["matrix_ssl"]
HEAD_RECIPES["emi"] = HEAD_RECIPES["matrix_ssl"]


def torch_linear_init(fan_in: int):
  """PyTorch ``nn.Linear`` default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1)**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class MLPHead(nnx.Module):
  """[Linear -> BN -> ReLU] * len(hidden_dims) -> Linear [-> BN].

  Args:
    in_dim: input feature width.
    hidden_dims: widths of the hidden layers (each followed by BN + ReLU).
    out_dim: output width.
    hidden_bias: bias on hidden linears (False when a BN follows, as in
      SimSiam/MEC/Barlow Twins).
    out_bias: bias on the last linear.
    out_norm: None, ``"bn"`` (affine BN) or ``"bn_affine_free"`` after the
      last linear.
    bn_momentum, bn_eps: Flax-convention momentum (0.9 = PyTorch 0.1), eps.
    dtype, param_dtype: compute and parameter dtypes. BatchNorm runs in
      float32 (`norm.BatchNorm`) and the last Linear accumulates and returns
      float32 (`preferred_element_type`), so the output the loss sees is
      float32, not a bfloat16 value cast up.
    rngs: used only at construction.
  """

  def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, *,
               hidden_bias: bool = False, out_bias: bool = True,
               out_norm: str | None = None, bn_momentum: float = 0.9,
               bn_eps: float = 1e-5, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if out_norm not in (None, "bn", "bn_affine_free"):
      raise ValueError(f"out_norm must be None, 'bn' or 'bn_affine_free', "
                       f"got {out_norm!r}.")
    self.dtype = dtype

    def linear(i, o, bias, out_dtype=None):
      return nnx.Linear(i, o, use_bias=bias, kernel_init=torch_linear_init(i),
                        bias_init=torch_linear_init(i), dtype=dtype,
                        param_dtype=param_dtype,
                        preferred_element_type=out_dtype, rngs=rngs)

    def bn(c, affine=True, out_dtype=dtype):
      return norm.BatchNorm(c, momentum=bn_momentum, epsilon=bn_eps,
                            use_bias=affine, use_scale=affine,
                            dtype=out_dtype, param_dtype=param_dtype,
                            rngs=rngs)

    dims = [in_dim, *hidden_dims]
    self.hidden = nnx.List([
        nnx.List([linear(i, o, hidden_bias), bn(o)])
        for i, o in zip(dims[:-1], dims[1:], strict=True)])
    # The output layer writes float32 (the loss's input).
    self.out = linear(dims[-1], out_dim, out_bias, out_dtype=jnp.float32)
    self.out_norm = (None if out_norm is None
                     else bn(out_dim, affine=out_norm == "bn",
                             out_dtype=jnp.float32))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, in_dim] -> float32 [B, out_dim]; ``train`` selects BN batch stats
    (and running-average updates) vs running averages."""
    ura = not train
    x = x.astype(self.dtype)
    for lin, bn in self.hidden:
      x = jax.nn.relu(bn(lin(x), use_running_average=ura))
    x = self.out(x)
    if self.out_norm is not None:
      x = self.out_norm(x, use_running_average=ura)
    return x.astype(jnp.float32)


def _recipe(recipe: str) -> dict[str, Any]:
  if recipe not in HEAD_RECIPES:
    raise ValueError(f"unknown head recipe {recipe!r}; use one of "
                     f"{sorted(HEAD_RECIPES)} or build MLPHead directly.")
  return HEAD_RECIPES[recipe]


def projector(recipe: str, in_dim: int, *, rngs: nnx.Rngs,
              **overrides: Any) -> MLPHead:
  """The projector of a named recipe (see module docstring).

  Args:
    recipe: key of :data:`HEAD_RECIPES`.
    in_dim: backbone feature width (2048 for ResNet-50, 512 for ResNet-18).
    rngs: construction RNGs.
    **overrides: any :class:`MLPHead` argument (e.g. smaller ``hidden_dims``
      and ``out_dim`` for CIFAR or tests, ``dtype``).
  """
  return MLPHead(in_dim, **{**_recipe(recipe)["projector"], **overrides},
                 rngs=rngs)


def predictor(recipe: str, dim: int | None = None, *, rngs: nnx.Rngs,
              **overrides: Any) -> MLPHead:
  """The predictor of a named recipe (input width = projector output).

  Args:
    recipe: key of :data:`HEAD_RECIPES` that has a predictor.
    dim: input width; defaults to the recipe's projector ``out_dim``
      (or ``overrides['out_dim']``).
    rngs: construction RNGs.
    **overrides: any :class:`MLPHead` argument.
  """
  spec = _recipe(recipe)["predictor"]
  if spec is None:
    with_predictor = sorted(
        k for k, v in HEAD_RECIPES.items() if v["predictor"])
    raise ValueError(f"recipe {recipe!r} has no predictor; only "
                     f"{with_predictor} use one.")
  kwargs = {**spec, **overrides}
  if dim is None:
    dim = kwargs["out_dim"]
  return MLPHead(dim, **kwargs, rngs=rngs)
