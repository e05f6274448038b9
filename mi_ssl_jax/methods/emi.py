"""EMI, explicit mutual information maximisation (Chang et al., arXiv
2409.04747): the trainer method.

No official code exists; the loss is OUR RECONSTRUCTION
(`mi_ssl_jax.losses.emi`, docs/methods.md §7.3, every choice documented there):

    I(Z; Z′) = ½ [log det C₁ + log det C₂ − log det C_joint]

from ridged covariances of the (batch-normalised) global batch. Network
(docs/methods.md §7.3: weight-sharing Siamese branches "plus momentum (EMA)
encoders"): ResNet + projector (+ predictor, `config.model.predictor`) on
the student and an EMA teacher of backbone + projector; the loss pairs each
student view with the other view's teacher output and averages,
L = ½[−I(S1; sg T2) − I(S2; sg T1)] (`losses.emi_momentum_loss`). With
`config.emi_teacher=False` there is no teacher and L = −I(S1; S2)
(`losses.emi_loss`).

`config.emi_method`: "cholesky" (exact log-dets; our default, the reference)
or "taylor" (the paper's truncated Taylor log-det with eigenvalue tracking
and rescaling). The Taylor path's tracked eigenvalues / power-iteration
vectors are loss state (`EMIState`, not `nnx.Param`), checkpointed with the
model. Their shapes depend on the global batch, so gradient accumulation
(refused for this batch-coupled loss anyway) would not fit them.

Config fields: `emi_teacher`, `emi_method`, `emi_normalize`, `emi_ridge`,
`emi_order`, `emi_ema`, `emi_safety`, `emi_power_iters`, plus the shared
Siamese fields. Recipe: `configs/emi_r18_cifar.py`; offline:
`configs/fmnist_siamese.py:method=emi`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.methods import _siamese as siamese
from mi_ssl_jax.methods._siamese import (  # noqa: F401 (method interface)
    diagnostics_fn,
    post_update,
    predict_fn,
)

INPUT = siamese.INPUT
BATCH_COUPLED = True

_STATE_KEYS = ("eig_max", "vec_1", "vec_2", "vec_joint", "count")


class LossState(nnx.Variable):
  """EMI's eigenvalue-tracking state: saved, never differentiated."""


class EMIState(nnx.Module):
  """`losses.emi_init_state(dim, batch_size)` held as NNX variables."""

  def __init__(self, dim: int, batch_size: int):
    for k, v in losses.emi_init_state(dim, batch_size).items():
      setattr(self, k, LossState(v))

  def get(self) -> dict:
    return {k: getattr(self, k)[...] for k in _STATE_KEYS}

  def set(self, state: dict) -> None:
    for k in _STATE_KEYS:
      getattr(self, k)[...] = state[k]


def validate_config(config) -> None:
  siamese.validate_model_config(config)
  if config.get("emi_method", "cholesky") not in ("cholesky", "taylor"):
    raise config_lib.ConfigError(
        f"config.emi_method must be 'cholesky' or 'taylor', got "
        f"{config.emi_method!r}")
  if config.get("emi_normalize", "batch") not in ("batch", "l2", "none"):
    raise config_lib.ConfigError(
        f"config.emi_normalize must be 'batch', 'l2' or 'none', got "
        f"{config.emi_normalize!r}")
  config_lib.check_positive(config, "emi_ridge")


def _loss_kwargs(config) -> dict:
  return dict(method=str(config.get("emi_method", "cholesky")),
              normalize=str(config.get("emi_normalize", "batch")),
              ridge=float(config.get("emi_ridge", 1e-3)),
              order=int(config.get("emi_order", 4)),
              ema=float(config.get("emi_ema", 0.9)),
              safety=float(config.get("emi_safety", 1.1)),
              power_iters=int(config.get("emi_power_iters", 5)))


def init(config, rngs):
  model = siamese.build(config, rngs, predictor=True,
                        teacher=bool(config.get("emi_teacher", True)))
  kwargs = _loss_kwargs(config)
  # Static hyperparameters as a tuple of pairs (hashable graph metadata).
  model.loss_kwargs = tuple(sorted(kwargs.items()))
  dim = (model.predictor.out.out_features if model.predictor is not None
         else model.encoder.projector.out.out_features)
  model.emi_state = (EMIState(dim, int(config.batch_size))
                     if kwargs["method"] == "taylor" else None)
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  state = model.emi_state.get() if model.emi_state is not None else None
  kwargs = dict(model.loss_kwargs)
  if model.teacher is not None:
    out = losses.emi_momentum_loss(v.t1, v.student(1), v.t2, v.student(2),
                                   state, **kwargs)
  else:
    out = losses.emi_loss(v.student(1), v.student(2), state, **kwargs)
  if model.emi_state is not None:
    model.emi_state.set(out.state)
  metrics = {k: jnp.asarray(x, jnp.float32) for k, x in out.metrics.items()}
  return out.loss, metrics
