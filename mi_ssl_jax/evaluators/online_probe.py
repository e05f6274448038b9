"""Online linear probe on stop-gradient features, trained during pretraining.

The BYOL / solo-learn / MAE-online-probe pattern for cheap monitoring: a linear
classifier (optionally behind an affine-free BatchNorm, as the M-MAE code's
online ``fc_norm`` + ``fc``) sits on ``stop_gradient(features)``, and its
cross-entropy is ADDED to the SSL loss. Because of the stop-gradient the probe
loss trains only the probe and never changes the encoder, so one optimizer can
update both (give the probe its own learning rate / no weight decay with
``optax.multi_transform`` if wanted; solo-learn does).

Usage inside a method's ``loss_fn`` (the module is an attribute of the model,
so the trainer's functional step carries its parameters and BN statistics)::

  probe_loss, probe_metrics = model.online_probe(feats, batch["label"])
  loss = ssl_loss + probe_loss
  metrics.update(probe_metrics)

Padding rows (``batch["_mask"] == False``) are excluded from loss and accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class OnlineLinearProbe(nnx.Module):
  """[affine-free BN] -> Linear on stop-gradient features."""

  def __init__(self, dim: int, num_classes: int, *, batch_norm: bool = True,
               bn_eps: float = 1e-6, rngs: nnx.Rngs):
    self.norm = (nnx.BatchNorm(dim, use_bias=False, use_scale=False,
                               epsilon=bn_eps, momentum=0.9, rngs=rngs)
                 if batch_norm else None)
    self.fc = nnx.Linear(dim, num_classes,
                         kernel_init=nnx.initializers.normal(0.01),
                         bias_init=nnx.initializers.zeros, rngs=rngs)

  def logits(self, feats: jax.Array, *, train: bool) -> jax.Array:
    x = jax.lax.stop_gradient(feats).astype(jnp.float32)  # [B, D]
    if self.norm is not None:
      x = self.norm(x, use_running_average=not train)
    return self.fc(x)  # [B, C]

  def __call__(self, feats: jax.Array, labels: jax.Array,
               mask: jax.Array | None = None, *, train: bool = True
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Probe loss and metrics.

    Args:
      feats: [B, D] encoder features (gradient is stopped here).
      labels: [B] int labels.
      mask: [B] bool, False for padding rows (default all valid).
      train: use batch statistics and update BN running averages.

    Returns:
      (mean cross-entropy over valid rows, {"online_probe/loss",
      "online_probe/top1" (fraction)}).
    """
    logits = self.logits(feats, train=train)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    w = jnp.ones_like(ce) if mask is None else mask.astype(ce.dtype)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    loss = jnp.sum(ce * w) / denom
    top1 = jnp.sum((jnp.argmax(logits, -1) == labels) * w) / denom
    return loss, {"online_probe/loss": loss, "online_probe/top1": top1}
