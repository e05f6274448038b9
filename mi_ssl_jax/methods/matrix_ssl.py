"""Matrix-SSL (Zhang, Tan, Yang, Huang, Yuan; ICML 2024): the trainer method.

Network (official `Matrix-SSL/mec/builder.py`, docs/methods.md §2.3): ResNet +
3-layer projector (student h, teacher h̄ = EMA copy) + predictor g on the
student only. For view v: student s_v = g(h(x_v)), teacher t_v = h̄(x_v)
(stop-gradient). Loss (`mi_ssl_jax.losses.matrix_ssl_loss`, official code
semantics, docs/methods.md §2.2):

    U(T, S) = −λ · tr log_T((1/B) T̂ᵀ H_B Ŝ + μ I)
    A(T, S) = −tr((T̂ᵀ H_B T̂ / B + μ I) · log_T(Ŝᵀ H_B Ŝ / B + μ I))
    L = ½ [U(T2,S1) + U(T1,S2) + γ A(T2,S1) + γ A(T1,S2)]

with log_T the order-n Taylor series (code) or, with
`config.mce_log_method="eigh"`, exact logarithms. Defaults are the README's
best 100-epoch command: λ = μ = γ = 1, order 4 (the argparse defaults
λ = μ = 0.5 are what `pretrain.sh` runs). Like the code, the paper's
`+tr Q` term is dropped and the paper's 1/d on P is λ.

Config fields: `mce_lambda`, `mce_mu`, `mce_gamma`, `mce_order`,
`mce_log_method`, plus the shared Siamese fields (`methods/_siamese.py`).
Recipe: `configs/matrix_ssl_r50.py`; offline: `configs/fmnist_siamese.py:
method=matrix_ssl`.
"""

from __future__ import annotations

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.methods import _siamese as siamese
from mi_ssl_jax.methods._siamese import (  # noqa: F401 (method interface)
    diagnostics_fn,
    post_update,
    predict_fn,
)

INPUT = siamese.INPUT
BATCH_COUPLED = True


def validate_config(config) -> None:
  siamese.validate_model_config(config)
  if config.get("mce_log_method", "taylor") not in ("taylor", "eigh"):
    raise config_lib.ConfigError(
        f"config.mce_log_method must be 'taylor' or 'eigh', got "
        f"{config.mce_log_method!r}")
  if int(config.get("mce_order", 4)) < 1:
    raise config_lib.ConfigError(
        f"config.mce_order must be >= 1, got {config.mce_order!r}")


def init(config, rngs):
  model = siamese.build(config, rngs, predictor=True, teacher=True)
  model.lamb = float(config.get("mce_lambda", 1.0))
  model.mu = float(config.get("mce_mu", 1.0))
  model.gamma = float(config.get("mce_gamma", 1.0))
  model.order = int(config.get("mce_order", 4))
  model.log_method = str(config.get("mce_log_method", "taylor"))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  terms = losses.matrix_ssl_terms(
      v.t1, v.student(1), v.t2, v.student(2), lamb=model.lamb, mu=model.mu,
      gamma=model.gamma, order=model.order, log_method=model.log_method)
  return terms["loss"], {"uniformity": terms["uniformity"],
                         "alignment": terms["alignment"],
                         "taylor_radius": terms["taylor_radius"]}
