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

import dataclasses

import jax.numpy as jnp
from flax import nnx

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.methods import _siamese as siamese

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


@dataclasses.dataclass(frozen=True)
class Hparams:
  """Teacher or not, the log-det method ("cholesky" exact, "taylor" with
  tracked eigenvalues), the normalisation of the features, the ridge, the
  Taylor order, and the eigenvalue tracker's EMA, safety factor and power
  iterations (`losses.emi_loss`)."""

  emi_teacher: bool = True
  emi_method: str = "cholesky"
  emi_normalize: str = "batch"
  emi_ridge: float = 1e-3
  emi_order: int = 4
  emi_ema: float = 0.9
  emi_safety: float = 1.1
  emi_power_iters: int = 5

  def __post_init__(self):
    config_lib.check_choice(self.emi_method, "emi_method",
                            ("cholesky", "taylor"))
    config_lib.check_choice(self.emi_normalize, "emi_normalize",
                            ("batch", "l2", "none"))
    config_lib.check_positive(dataclasses.asdict(self), "emi_ridge")

  def loss_kwargs(self) -> dict:
    return dict(method=self.emi_method, normalize=self.emi_normalize,
                ridge=self.emi_ridge, order=self.emi_order, ema=self.emi_ema,
                safety=self.emi_safety, power_iters=self.emi_power_iters)


def configure(model, config) -> None:
  """The eigenvalue-tracking state of the Taylor log-det (else None)."""
  dim = (model.predictor.out.out_features if model.predictor is not None
         else model.encoder.projector.out.out_features)
  model.emi_state = (EMIState(dim, int(config.batch_size))
                     if model.hp.emi_method == "taylor" else None)


def objective(model, v, step):
  del step
  state = model.emi_state.get() if model.emi_state is not None else None
  kwargs = {**model.hp.loss_kwargs(), "logdet": model.logdet}
  if model.teacher is not None:
    out = losses.emi_momentum_loss(v.t1, v.student(1), v.t2, v.student(2),
                                   state, **kwargs)
  else:
    out = losses.emi_loss(v.student(1), v.student(2), state, **kwargs)
  if model.emi_state is not None:
    model.emi_state.set(out.state)
  metrics = {k: jnp.asarray(x, jnp.float32) for k, x in out.metrics.items()}
  return out.loss, metrics


METHOD = siamese.SiameseMethod(objective, Hparams, predictor=True,
                               teacher=lambda hp: hp.emi_teacher,
                               configure=configure)
