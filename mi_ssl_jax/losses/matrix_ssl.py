"""Matrix-SSL loss (Zhang et al., ICML 2024) with the official code's semantics.

Follows ``yifanzhang-pro/Matrix-SSL/main_pretrain.py`` at b8164df (functions
``train``, ``mce_loss_func``, ``matrix_log``; methods.md §2.2). Differences
from the paper (methods.md §2.2 "Consequences"), all following the CODE:
  * the ``+tr Q`` term of the matrix cross-entropy is dropped (with it the
    uniformity term would anti-align the views);
  * the paper's 1/d weight of P in the uniformity term is λ;
  * every covariance gets the ridge μI, and log is the order-n Taylor series
    about I (``--mce_order 4``), not an exact matrix logarithm.
``log_method="eigh"`` replaces the series by exact logarithms: the exact matrix
log (eigh) of the symmetric alignment argument, and for the uniformity term
tr log Q_U = log det Q_U by LU, because Q_U is not symmetric.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax import matrix
from mi_ssl_jax.losses._common import log_series_coeffs, trace_series


def _uniformity(t: jax.Array, s: jax.Array, lamb, mu, coeffs, log_method):
  """U(T, S) = −λ · tr log(Q_U), Q_U = (1/B) T̂ᵀ H_B Ŝ + μ I_d."""
  c = matrix.cross_covariance(t, s, center=True)  # [d, d], non-symmetric
  d = c.shape[-1]
  if log_method == "taylor":
    # log_T(Q) = Σ c_k (Q − I)^k and Q − I = C + (μ − 1) I.
    x = c + (mu - 1.0) * jnp.eye(d, dtype=c.dtype)
    return -lamb * trace_series(x, coeffs)
  q = c + mu * jnp.eye(d, dtype=c.dtype)
  return -lamb * jnp.linalg.slogdet(q)[1]  # tr log Q = log det Q


def _alignment(t: jax.Array, s: jax.Array, mu, coeffs, log_method):
  """A(T, S) = −tr(P_A · log Q_A), P_A = C(T,T) + μI, Q_A = C(S,S) + μI."""
  eye = jnp.eye(t.shape[-1], dtype=jnp.promote_types(t.dtype, jnp.float32))
  p = matrix.covariance(t, center=True) + mu * eye  # [d, d] (teacher)
  c_s = matrix.covariance(s, center=True)  # [d, d]
  if log_method == "taylor":
    return -trace_series(c_s + (mu - 1.0) * eye, coeffs, weight=p)
  log_q = matrix.matrix_log(c_s + mu * eye, method="eigh")  # [d, d]
  return -jnp.sum(p * log_q.T)


def matrix_ssl_terms(teacher_1: jax.Array, student_1: jax.Array,
                     teacher_2: jax.Array, student_2: jax.Array, *,
                     lamb: float = 1.0, mu: float = 1.0, gamma: float = 1.0,
                     order: int = 4,
                     log_method: str = "taylor") -> dict[str, jax.Array]:
  """Matrix-SSL loss and its parts; see :func:`matrix_ssl_loss`.

  Returns:
    Dict with ``loss``, ``uniformity`` (½[U(T2,S1) + U(T1,S2)]),
    ``alignment`` (½[A(T2,S1) + A(T1,S2)], before γ) and ``taylor_radius``
    (largest spectral-radius estimate of Q − I over the four log arguments,
    no gradient: the Taylor series converges iff it is < 1).
  """
  if log_method not in ("taylor", "eigh"):
    raise ValueError(
        f"log_method must be 'taylor' or 'eigh', got {log_method!r}")
  for name, x in (("teacher_1", teacher_1), ("student_1", student_1),
                  ("teacher_2", teacher_2), ("student_2", student_2)):
    if x.ndim != 2 or x.shape != teacher_1.shape:
      raise ValueError(f"matrix_ssl_loss expects four [B, d] arrays of one "
                       f"shape; {name} has {x.shape}, teacher_1 "
                       f"{teacher_1.shape}")
  coeffs = log_series_coeffs(order)
  t1 = jax.lax.stop_gradient(teacher_1)
  t2 = jax.lax.stop_gradient(teacher_2)
  uni = 0.5 * (_uniformity(t2, student_1, lamb, mu, coeffs, log_method)
               + _uniformity(t1, student_2, lamb, mu, coeffs, log_method))
  ali = 0.5 * (_alignment(t2, student_1, mu, coeffs, log_method)
               + _alignment(t1, student_2, mu, coeffs, log_method))
  eye = jnp.eye(teacher_1.shape[-1], dtype=uni.dtype)
  args = [matrix.cross_covariance(t2, student_1, center=True),
          matrix.cross_covariance(t1, student_2, center=True),
          matrix.covariance(student_1, center=True),
          matrix.covariance(student_2, center=True)]
  radius = jnp.max(jnp.stack(
      [matrix.taylor_log_radius(a + mu * eye) for a in args]))
  return {"loss": uni + gamma * ali, "uniformity": uni, "alignment": ali,
          "taylor_radius": jax.lax.stop_gradient(radius)}


def matrix_ssl_loss(teacher_1: jax.Array, student_1: jax.Array,
                    teacher_2: jax.Array, student_2: jax.Array, *,
                    lamb: float = 1.0, mu: float = 1.0, gamma: float = 1.0,
                    order: int = 4, log_method: str = "taylor") -> jax.Array:
  """Matrix-SSL loss: uniformity + γ·alignment, official code semantics.

  With T = teacher (EMA branch, stop-gradient) and S = student (predictor
  output) features of one view, row-L2-normalised, H_B the centring matrix
  and log_T the order-n Taylor series Σ_k (−1)^{k+1}(Q − I)^k / k
  (``Matrix-SSL/main_pretrain.py::mce_loss_func``, methods.md §2.2):
    U(T, S) = −λ · tr log_T((1/B) T̂ᵀ H_B Ŝ + μ I_d)
    A(T, S) = −tr((T̂ᵀ H_B T̂ / B + μ I_d) · log_T(Ŝᵀ H_B Ŝ / B + μ I_d))
    L = ½ [U(T2,S1) + U(T1,S2) + γ A(T2,S1) + γ A(T1,S2)]
  (cross-view pairing: the teacher of one view against the student of the
  other). The README's best run uses λ = μ = γ = 1, order 4 (the defaults
  here); the official argparse defaults are λ = μ = 0.5.

  The traces are computed without materialising the fourth power (one d×d
  matmul for the uniformity term, two for the alignment term), which is the
  same polynomial as the official code.

  Args:
    teacher_1: [B, d] teacher features of view 1 (no gradient flows in).
    student_1: [B, d] student features of view 1.
    teacher_2: [B, d] teacher features of view 2 (no gradient flows in).
    student_2: [B, d] student features of view 2.
    lamb: λ, weight of the uniformity term (``--mce_lambd``).
    mu: μ, ridge added to every covariance (``--mce_mu``).
    gamma: γ, alignment weight (``--gamma``).
    order: Taylor order (``--mce_order``).
    log_method: ``"taylor"`` (official) or ``"eigh"`` (exact logarithms:
      eigh matrix log of the symmetric alignment argument, LU log-det for the
      uniformity trace).

  Returns:
    Scalar loss.
  """
  return matrix_ssl_terms(teacher_1, student_1, teacher_2, student_2,
                          lamb=lamb, mu=mu, gamma=gamma, order=order,
                          log_method=log_method)["loss"]
