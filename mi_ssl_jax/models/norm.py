"""BatchNorm that normalises in float32 whatever the compute dtype.

`flax.nnx.BatchNorm(dtype=jnp.bfloat16)` computes the batch statistics in
float32 (`_compute_stats` promotes its input) but first casts its running
averages, scale and bias to the compute dtype (`promote_dtype`), so in eval
mode (`use_running_average=True`: the features of every evaluator) it
normalises with bfloat16-rounded statistics (a relative error up to 2⁻⁸ in
the mean and the variance), and its scale and bias are rounded in both
modes. :class:`BatchNorm` runs the whole layer in float32 (statistics,
running averages, normalisation, scale and bias: what PyTorch autocast does
for batch norm, whose fp32 parameters and statistics are never cast down)
and casts only its output to ``dtype``, the compute dtype of the next layer.
Its variables (``scale``, ``bias``, ``mean``, ``var``) are those of
`nnx.BatchNorm`, all float32, so checkpoints are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` in float32 with its output cast to ``dtype``.

  Args:
    num_features: C, the size of the last axis.
    dtype: dtype of the output (the compute dtype of the next layer); the
      layer itself always computes in float32.
    **kwargs: every other `nnx.BatchNorm` argument (momentum, epsilon,
      param_dtype, use_bias, use_scale, scale_init, rngs, ...).
  """

  def __init__(self, num_features: int, *, dtype=jnp.float32, **kwargs):
    super().__init__(num_features, dtype=jnp.float32, **kwargs)
    self.out_dtype = dtype

  def __call__(self, x: jax.Array, use_running_average: bool | None = None,
               *, mask: jax.Array | None = None) -> jax.Array:
    """[..., C] -> [..., C] in ``dtype``: (x − μ) / √(σ² + ε) · γ + β, with
    μ, σ² the batch statistics (train) or the running averages (eval), all
    in float32. While ``collect_stats`` is set on the layer (by
    `mi_ssl_jax.evaluators.baselines.recompute_batch_stats`), every call
    uses and accumulates the batch statistics, whatever the caller asks."""
    if getattr(self, "collect_stats", False):
      use_running_average = False
    y = super().__call__(x, use_running_average=use_running_average,
                         mask=mask)
    return y.astype(self.out_dtype)
