"""Matrix-SSL loss (Zhang et al., ICML 2024) with the official code's semantics.

Follows ``yifanzhang-pro/Matrix-SSL/main_pretrain.py`` at b8164df (functions
``train``, ``mce_loss_func``, ``matrix_log``; docs/methods.md §2.2). Differences
from the paper (docs/methods.md §2.2 "Consequences"), all following the CODE:
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

import math

import jax
import jax.numpy as jnp

from mi_ssl_jax import matrix
from mi_ssl_jax.losses._common import (
    log_series_coeffs,
    matmul,
    trace_series,
)


def _centered(z: jax.Array) -> jax.Array:
  """H_B Ẑ: row-normalised, then batch-centred features [B, d]."""
  zh = matrix.normalize_rows(z)
  return zh - jnp.mean(zh, axis=0, keepdims=True)


def _binomial_coeffs(coeffs, shift: float) -> list[float]:
  """e_j with Σ_k c_k tr(W (C + aI)^k) = Σ_j e_j tr(W C^j), a = `shift`.

  (C + aI)^k = Σ_j binom(k, j) a^{k−j} C^j since I commutes with C, so
  e_j = Σ_{k≥j} c_k binom(k, j) a^{k−j}, j = 0..n.
  """
  n = len(coeffs)
  return [sum(coeffs[k - 1] * math.comb(k, j) * shift ** (k - j)
              for k in range(max(j, 1), n + 1)) for j in range(n + 1)]


def _gram_side(b: int, d: int, log_method: str) -> bool:
  return log_method == "taylor" and b < d


def _uniformity(t: jax.Array, s: jax.Array, lamb, mu, coeffs, log_method):
  """U(T, S) = −λ · tr log(Q_U), Q_U = (1/B) T̂ᵀ H_B Ŝ + μ I_d."""
  tc, sc = _centered(t), _centered(s)  # [B, d]
  b, d = tc.shape
  if _gram_side(b, d, log_method):
    # tr(C^j) = tr(G^j) with G = Ŝc T̂cᵀ / B (B×B), and the binomial
    # expansion of (C + (μ − 1)I)^k: B³ instead of d³ work when B < d.
    e = _binomial_coeffs(coeffs, mu - 1.0)
    g = matmul(sc, tc.T) / b  # [B, B]
    return -lamb * (e[0] * d + trace_series(g, e[1:]))
  c = matmul(tc.T, sc) / b  # [d, d], non-symmetric cross-covariance
  if log_method == "taylor":
    # log_T(Q) = Σ c_k (Q − I)^k and Q − I = C + (μ − 1) I.
    x = c + (mu - 1.0) * jnp.eye(d, dtype=c.dtype)
    return -lamb * trace_series(x, coeffs)
  q = c + mu * jnp.eye(d, dtype=c.dtype)
  return -lamb * jnp.linalg.slogdet(q)[1]  # tr log Q = log det Q


def _alignment(t: jax.Array, s: jax.Array, mu, coeffs, log_method):
  """A(T, S) = −tr(P_A · log Q_A), P_A = C(T,T) + μI, Q_A = C(S,S) + μI."""
  tc, sc = _centered(t), _centered(s)  # [B, d]
  b, d = tc.shape
  if _gram_side(b, d, log_method):
    # With K = Ŝc Ŝcᵀ / B and A = T̂c Ŝcᵀ / B (both B×B):
    #   tr(C_S^j) = tr(K^j),  tr(C_T C_S^j) = tr(AᵀA K^{j−1}) (j ≥ 1),
    # and tr(P_A X^k) expands binomially in tr(P_A C_S^j).
    e = _binomial_coeffs(coeffs, mu - 1.0)
    k = matmul(sc, sc.T) / b  # [B, B]
    a = matmul(tc, sc.T) / b  # [B, B]
    w = matmul(a.T, a)  # [B, B]
    total = e[0] * (jnp.sum(tc * tc) / b + mu * d)  # j = 0: tr P_A
    total = total + e[1] * jnp.trace(w)  # tr(C_T C_S)
    if len(e) > 2:
      total = total + trace_series(k, e[2:], weight=w)
    total = total + mu * trace_series(k, e[1:])
    return -total
  eye = jnp.eye(d, dtype=tc.dtype)
  p = matmul(tc.T, tc) / b + mu * eye  # [d, d] (teacher)
  c_s = matmul(sc.T, sc) / b  # [d, d]
  if log_method == "taylor":
    return -trace_series(c_s + (mu - 1.0) * eye, coeffs, weight=p)
  log_q = matrix.matrix_log(c_s + mu * eye, method="eigh")  # [d, d]
  return -jnp.sum(p * log_q.T)


def _taylor_radius(t: jax.Array, s: jax.Array, mu, cross: bool):
  """ρ(Q − I) = ρ(C + (μ − 1)I) for C = C(T, S) (cross) or C(S, S).

  On the B side when B < d: the spectrum of C + aI is that of the B×B
  matrix G + aI plus the value a (d − B zero eigenvalues of C).
  """
  tc, sc = _centered(t), _centered(s)
  b, d = tc.shape
  a = mu - 1.0
  if b < d:
    g = matmul(sc, tc.T) / b if cross else matmul(sc, sc.T) / b
    shifted = g + a * jnp.eye(b, dtype=g.dtype)
    return jnp.maximum(matrix.spectral_radius(shifted), abs(a))
  c = matmul(tc.T, sc) / b if cross else matmul(sc.T, sc) / b
  return matrix.spectral_radius(c + a * jnp.eye(d, dtype=c.dtype))


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
  radius = jnp.max(jnp.stack([
      _taylor_radius(t2, student_1, mu, cross=True),
      _taylor_radius(t1, student_2, mu, cross=True),
      _taylor_radius(student_1, student_1, mu, cross=False),
      _taylor_radius(student_2, student_2, mu, cross=False)]))
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
  (``Matrix-SSL/main_pretrain.py::mce_loss_func``, docs/methods.md §2.2):
    U(T, S) = −λ · tr log_T((1/B) T̂ᵀ H_B Ŝ + μ I_d)
    A(T, S) = −tr((T̂ᵀ H_B T̂ / B + μ I_d) · log_T(Ŝᵀ H_B Ŝ / B + μ I_d))
    L = ½ [U(T2,S1) + U(T1,S2) + γ A(T2,S1) + γ A(T1,S2)]
  (cross-view pairing: the teacher of one view against the student of the
  other). The README's best run uses λ = μ = γ = 1, order 4 (the defaults
  here); the official argparse defaults are λ = μ = 0.5.

  The traces are computed without materialising the fourth power (one d×d
  matmul for the uniformity term, two for the alignment term), and when
  B < d on the B×B side (tr(T̂ᵀŜ)^j = tr(ŜT̂ᵀ)^j, binomial expansion of the μ
  shift): the same polynomial as the official code at a fraction of its
  cost (B = 1024, d = 2048: 8× fewer flops).

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
