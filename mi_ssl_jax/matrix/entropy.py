"""Matrix entropies, KL, cross-entropy, joint entropy and mutual information.

Definitions (docs/methods.md §1.2, §1.3):

* ρ = A / tr A (trace-normalised PSD matrix);
  von Neumann S(ρ) = −tr ρ log ρ = −Σ λ_i log λ_i;
  Rényi-α H_α(ρ) = log tr ρ^α / (1 − α) (matrix power: Σ λ_i^α).
* Matrix-SSL: MKL(P‖Q) = tr(P log P − P log Q − P + Q),
  MCE(P, Q) = tr(−P log Q + Q).
* Information Flow (M-MAE paper): H_α(K1, K2) = H_α(K1 ⊙ K2),
  I_α(K1; K2) = H_α(K1) + H_α(K2) − H_α(K1 ⊙ K2), K_v Gram matrices of unit
  vectors.

Entropy methods:

* ``"eigh"``: exact, via :func:`eigvalsh` (derivative V diag(f'(λ)) Vᵀ, no
  eigenvector derivative, finite at repeated/zero eigenvalues). Eigenvalues
  ≤ eps (and, for α < 1, ≤ n·ε_machine·λ_max) count as exact zeros.
* ``"chebyshev"``: eigh-free, matmuls only. The spectrum of ρ lies in [0, b]
  with the guaranteed bound b = (tr ρ⁴)^{1/4} = ‖ρ²‖_F^{1/2} ≥ λ_max (from the
  ρ² the series needs anyway). f(λ) = −λ log λ (or λ^α) is replaced by its
  degree-``order`` Chebyshev interpolant on [0, b], shifted so p(0) = 0 (zero
  eigenvalues contribute exactly 0), and tr p(ρ) = Σ_k c_k tr T_k(2ρ/b − I).
  tr T_k for k ≤ order needs only ⌈order/2⌉ − 1 matmuls, through
  T_2j = 2T_j² − I and T_2j+1 = 2T_j T_j+1 − T_1 (traces of products are
  elementwise sums). Integer α ≤ order/2 is exact. For α = 1 the interpolation
  error of −u log u is ≈ 0.07/order² per eigenvalue (in units of b); a free
  Richardson step (degrees order and order/2) cancels its leading term.
  Measured entropy errors are in docs/benchmarks.md
  (``python -m mi_ssl_jax.bench.matrix``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mi_ssl_jax.matrix.linalg import HIGHEST, as_compute, taylor_log
from mi_ssl_jax.matrix.spectral import EIG_EPS, eigvalsh, matrix_log, symmetrize

DEFAULT_CHEBYSHEV_ORDER = 32
ENTROPY_METHODS = ("eigh", "chebyshev")


def _trace(a: jax.Array) -> jax.Array:
  return jnp.trace(a, axis1=-2, axis2=-1)


def _inner(a: jax.Array, b: jax.Array) -> jax.Array:
  """tr(A B) for symmetric A, B: Σ_ij A_ij B_ij (no matmul).  [...]"""
  return jnp.sum(a * b, axis=(-2, -1))


def _spectral_sum(w: jax.Array, alpha: float, eps: float) -> jax.Array:
  """−Σ λ log λ (alpha = 1) or Σ λ^α over the non-zero spectrum.  [...]

  Eigenvalues ≤ tol count as exact zeros (contribute 0, zero gradient):
  tol = eps for α ≥ 1, where round-off eigenvalues (|δλ| ~ ε_machine·λ_max)
  contribute only ~δλ·log δλ; tol = max(eps, n·ε_machine·λ_max) (the
  numerical-rank threshold of ``numpy.linalg.matrix_rank``) for α < 1, where
  λ^α would amplify them (float32 noise 1e-7 → 3e-4 each at α = ½).
  """
  if alpha < 1:
    n = w.shape[-1]
    tol = jax.lax.stop_gradient(jnp.maximum(
        eps, n * jnp.finfo(w.dtype).eps * jnp.max(jnp.abs(w), axis=-1)))
  else:
    tol = jnp.full(w.shape[:-1], eps, w.dtype)
  keep = w > tol[..., None]
  ws = jnp.where(keep, w, 1.0)
  if alpha == 1:
    terms = -ws * jnp.log(ws)
  else:
    terms = ws**alpha
  return jnp.sum(jnp.where(keep, terms, 0.0), axis=-1)


@functools.lru_cache(maxsize=64)
def chebyshev_coefficients(alpha: float, order: int) -> np.ndarray:
  """Chebyshev coefficients c_k of f on [0, 1] mapped to t = 2u − 1 ∈ [−1, 1].

  f(u) = −u log u for alpha = 1, u^α otherwise. Interpolation at the
  order + 1 Chebyshev points of the first kind (float64, at trace time).

  Args:
    alpha: entropy order.
    order: polynomial degree.

  Returns:
    [order + 1] float64 coefficients.
  """
  def f(t):
    u = np.clip((t + 1.0) / 2.0, 0.0, 1.0)
    if alpha == 1:
      return -u * np.log(np.where(u > 0, u, 1.0))
    return u ** alpha
  return np.polynomial.chebyshev.chebinterpolate(f, order)


def _extrapolated_coefficients(alpha: float, order: int,
                               extrapolate: bool) -> np.ndarray:
  """c^(order), or the Richardson combination (r c^(m) − c^(m/2)) / (r − 1).

  The interpolation error of −u log u (α = 1) and u^α decays as order^(−2α)
  with a stable sign on SSL-like spectra, so with r = 4^α the leading term
  cancels. It costs nothing: tr T_k for k ≤ m/2 are computed anyway.
  """
  coef = chebyshev_coefficients(alpha, order)
  if not extrapolate or order < 4:
    return coef
  low = np.zeros_like(coef)
  low[: order // 2 + 1] = chebyshev_coefficients(alpha, order // 2)
  r = 4.0**alpha
  return (r * coef - low) / (r - 1.0)


def chebyshev_trace(rho: jax.Array, alpha: float, order: int,
                    extrapolate: bool = True) -> jax.Array:
  """tr f(ρ) for trace-1 PSD ρ without eigh: −tr ρ log ρ or tr ρ^α.

  See the module docstring for the method. Gradient: automatic, through the
  matmuls (the derivative of the polynomial, exact for the approximation).

  Args:
    rho: [..., n, n] symmetric PSD, trace 1.
    alpha: entropy order.
    order: Chebyshev degree (>= 2).
    extrapolate: Richardson-combine degrees order and order/2 (free; see
      :func:`_extrapolated_coefficients`).

  Returns:
    [...] approximation of tr f(ρ).
  """
  if order < 2:
    raise ValueError(f"chebyshev order must be >= 2, got {order}")
  n = rho.shape[-1]
  eye = jnp.eye(n, dtype=rho.dtype)
  rho2 = jnp.matmul(rho, rho, precision=HIGHEST)  # [..., n, n]
  # b >= λ_max: (Σ λ⁴)^{1/4}; constant for the gradient (it only picks the
  # interval); the 1e-3 margin absorbs round-off.
  b = jax.lax.stop_gradient(
      jnp.sqrt(jnp.sqrt(_inner(rho2, rho2))) * (1.0 + 1e-3))  # [...]
  bb = b[..., None, None]
  x = 2.0 * rho / bb - eye  # T_1
  half = max(2, -(-order // 2))
  ts = [eye, x, 8.0 * rho2 / bb**2 - 8.0 * rho / bb + eye]  # T_0, T_1, T_2
  for _ in range(3, half + 1):
    ts.append(2.0 * jnp.matmul(x, ts[-1], precision=HIGHEST) - ts[-2])
  traces = [jnp.full(b.shape, float(n), rho.dtype)]
  traces += [_trace(t) for t in ts[1:]]
  for k in range(half + 1, order + 1):
    j = k // 2
    if k % 2 == 0:
      traces.append(2.0 * _inner(ts[j], ts[j]) - n)
    else:
      traces.append(2.0 * _inner(ts[j], ts[j + 1]) - traces[1])
  traces = jnp.stack(traces[: order + 1], axis=-1)  # [..., order + 1]
  coef = _extrapolated_coefficients(float(alpha), order, extrapolate)
  # Σ_i p(u_i) with p(u) = p̃(2u − 1) − p̃(−1): zero eigenvalues contribute 0.
  shift = (-1.0) ** np.arange(order + 1)
  total = traces @ jnp.asarray(coef, rho.dtype) - n * float(coef @ shift)
  if alpha == 1:
    # −λ log λ = b(−u log u) − λ log b and Σ λ = 1.
    return b * total - jnp.log(b)
  return b**alpha * total


def _check_method(method: str) -> None:
  if method not in ENTROPY_METHODS:
    raise ValueError(
        f"entropy method must be one of {ENTROPY_METHODS}, got {method!r}")


def matrix_entropy(a: jax.Array, alpha: float = 1.0, method: str = "eigh",
                   order: int = DEFAULT_CHEBYSHEV_ORDER,
                   eps: float = EIG_EPS) -> jax.Array:
  """Matrix entropy of ρ = A / tr A: von Neumann (α = 1) or Rényi-α.

  S(ρ) = −tr ρ log ρ = −Σ λ_i log λ_i;  H_α(ρ) = log tr ρ^α / (1 − α), with
  the matrix power tr ρ^α = Σ λ_i^α (Information Flow paper, Def. 1;
  docs/methods.md §1.3). For a Gram matrix K of unit vectors, ρ = K / n.
  Closed forms: S(I/n) = log n, rank 1 → 0, H_2 = −log ‖ρ‖_F².

  Args:
    a: [..., n, n] symmetric PSD matrix with positive trace (Gram or
      covariance; use the smaller of B×B and D×D, the non-zero spectra agree).
    alpha: order α > 0 (1 = von Neumann).
    method: "eigh" (exact) or "chebyshev" (eigh-free, matmuls only).
    order: Chebyshev degree (error ~ 1/order² for α = 1; exact for integer
      α ≤ order).
    eps: absolute floor of the zero-eigenvalue threshold ("eigh").

  Returns:
    [...] entropy in nats, compute dtype.
  """
  _check_method(method)
  if alpha <= 0:
    raise ValueError(f"entropy order alpha must be > 0, got {alpha}")
  a = symmetrize(as_compute(a))
  trace = _trace(a)[..., None, None]
  # An all-zero A (e.g. zero embeddings) has no ρ: it is given entropy 0 and a
  # zero gradient instead of 0/0 (the double-where keeps the backward finite).
  rho = a / jnp.where(trace > 0, trace, 1.0)  # [..., n, n]
  if method == "eigh":
    s = _spectral_sum(eigvalsh(rho), alpha, eps)
  else:
    s = chebyshev_trace(rho, alpha, order)
  if alpha == 1:
    return s
  return jnp.log(s) / (1.0 - alpha)


def matrix_joint_entropy(k1: jax.Array, k2: jax.Array, alpha: float = 1.0,
                         method: str = "eigh",
                         order: int = DEFAULT_CHEBYSHEV_ORDER,
                         eps: float = EIG_EPS) -> jax.Array:
  """Matrix joint entropy H_α(K1, K2) = H_α(K1 ⊙ K2) (Hadamard product).

  Information Flow paper (docs/methods.md §1.3); K1, K2 are [..., B, B] Gram
  matrices of unit vectors, so K1 ⊙ K2 is PSD (Schur) with unit diagonal.
  Arguments as :func:`matrix_entropy`.

  Returns:
    [...] joint entropy in nats.
  """
  return matrix_entropy(as_compute(k1) * as_compute(k2), alpha, method, order,
                        eps)


def matrix_mutual_information(k1: jax.Array, k2: jax.Array,
                              alpha: float = 1.0, method: str = "eigh",
                              order: int = DEFAULT_CHEBYSHEV_ORDER,
                              eps: float = EIG_EPS) -> jax.Array:
  """Matrix mutual information I_α(K1; K2) = H_α(K1) + H_α(K2) − H_α(K1 ⊙ K2).

  Information Flow paper (docs/methods.md §1.3); K_v = ẐvẐvᵀ are the [..., B, B]
  Gram matrices of the L2-normalised embeddings of view v. Arguments as
  :func:`matrix_entropy`.

  Returns:
    [...] mutual information in nats.
  """
  k1, k2 = as_compute(k1), as_compute(k2)
  h = functools.partial(matrix_entropy, alpha=alpha, method=method,
                        order=order, eps=eps)
  return h(k1) + h(k2) - h(k1 * k2)


def _trace_product(p: jax.Array, q: jax.Array) -> jax.Array:
  """tr(P Q) for general (possibly non-symmetric) P, Q.  [...]"""
  return jnp.einsum("...ij,...ji->...", p, q, precision=HIGHEST)


def _tr_p_log(p: jax.Array, q: jax.Array, method: str, order: int,
              eps: float) -> jax.Array:
  """tr(P log Q) with the eigh (exact) or Taylor (official code) log."""
  if method == "eigh":
    return _trace_product(p, matrix_log(q, "eigh", eps=eps))
  if method == "taylor":
    return _trace_product(p, taylor_log(q, order))
  raise ValueError(f"method must be 'eigh' or 'taylor', got {method!r}")


def matrix_cross_entropy(p: jax.Array, q: jax.Array,
                         include_trace: bool = True, method: str = "eigh",
                         order: int = 4, eps: float = EIG_EPS) -> jax.Array:
  """Matrix cross-entropy MCE(P, Q) = tr(−P log Q + Q) (Matrix-SSL paper).

  ``include_trace=False`` gives the official Matrix-SSL code's form
  −tr(P log Q) (``mce_loss_func``; the tr Q term is dropped there), and
  ``method="taylor"`` its order-``order`` series log (docs/methods.md §1.5,
  §2.2), which also accepts a non-symmetric Q.

  Args:
    p: [..., n, n] PSD matrix.
    q: [..., n, n] PSD matrix (any square matrix for "taylor").
    include_trace: add tr Q (paper definition).
    method: "eigh" (exact log, Daleckii–Krein gradient) or "taylor".
    order: Taylor order.
    eps: eigenvalue clamp of log Q ("eigh").

  Returns:
    [...] cross-entropy.
  """
  p, q = as_compute(p), as_compute(q)
  out = -_tr_p_log(p, q, method, order, eps)
  if include_trace:
    out = out + _trace(q)
  return out


def matrix_kl(p: jax.Array, q: jax.Array, method: str = "eigh",
              order: int = 4, eps: float = EIG_EPS) -> jax.Array:
  """Matrix KL divergence MKL(P‖Q) = tr(P log P − P log Q − P + Q).

  Matrix-SSL definition (docs/methods.md §1.2); ≥ 0 for PSD P, Q, = 0 iff P = Q.
  With tr P = tr Q = 1 it is the quantum relative entropy; for a density
  matrix ρ of size d, MKL(ρ‖I/d) = log d − S(ρ). tr(P log P) is a spectral
  trace of P; tr(P log Q) uses :func:`matrix_log`.

  Args:
    p: [..., n, n] PSD matrix.
    q: [..., n, n] PSD matrix.
    method: "eigh" (exact) or "taylor" (both logs by the official series).
    order: Taylor order.
    eps: eigenvalue clamp of the logs ("eigh").

  Returns:
    [...] divergence.
  """
  p, q = as_compute(p), as_compute(q)
  if method == "eigh":
    tr_plogp = -_spectral_sum(eigvalsh(p), 1.0, eps)
  else:
    tr_plogp = _tr_p_log(p, p, method, order, eps)
  return tr_plogp - _tr_p_log(p, q, method, order, eps) - _trace(p) + _trace(q)
