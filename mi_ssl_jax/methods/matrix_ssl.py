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

import dataclasses

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """λ (uniformity), μ (alignment), γ (the MCE's trace weight), the Taylor
  order of the matrix log and how it is taken ("taylor" = official code,
  "eigh" = exact)."""

  mce_lambda: float = 1.0
  mce_mu: float = 1.0
  mce_gamma: float = 1.0
  mce_order: int = 4
  mce_log_method: str = "taylor"

  def __post_init__(self):
    config_lib.check_choice(self.mce_log_method, "mce_log_method",
                            ("taylor", "eigh"))
    if self.mce_order < 1:
      raise config_lib.ConfigError(
          f"config.mce_order must be >= 1, got {self.mce_order!r}")


def objective(model, v, step):
  del step
  hp = model.hp
  terms = losses.matrix_ssl_terms(
      v.t1, v.student(1), v.t2, v.student(2), lamb=hp.mce_lambda,
      mu=hp.mce_mu, gamma=hp.mce_gamma, order=hp.mce_order,
      log_method=hp.mce_log_method)
  return terms["loss"], {"uniformity": terms["uniformity"],
                         "alignment": terms["alignment"],
                         "taylor_radius": terms["taylor_radius"]}


METHOD = siamese.SiameseMethod(objective, Hparams, predictor=True,
                               teacher=True)
