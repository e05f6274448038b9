"""Spectral primitives with NaN-free derivatives: eigenvalues and matrix log.

JAX's own ``eigh`` derivative builds F_ij = 1 / (λ_j − λ_i) to move the
eigenvectors; at repeated eigenvalues (identity, collapsed features, rank-1
Gram matrices) that is inf·0 = NaN (jax-ml/jax#669, docs/design.md §3.1). The
functions here never differentiate eigenvectors. Their derivatives are written
in spectral (Daleckii–Krein) form, with custom JVPs that JAX transposes for
reverse mode:

* eigenvalues:  dλ_i = (Vᵀ dA V)_ii, exact at any multiplicity for symmetric
  functions of the spectrum (every trace function tr f(A));
* matrix log:   d log A = V (L ∘ (Vᵀ dA V)) Vᵀ with the divided differences
  L_ij = (log λ_i − log λ_j) / (λ_i − λ_j) and L_ii = 1 / λ_i, evaluated in a
  cancellation-free form (log1p), exact for equal or nearly equal eigenvalues.

Eigenvalue clamp: inside logarithms every eigenvalue is replaced by
max(λ, eps) with ``EIG_EPS = 1e-12`` by default (the same constant as PyTorch's
normalisation eps). The clamped function is flat below eps, and its derivative
is taken as such (zero between two clamped eigenvalues), so round-off noise in
the null space of a singular matrix is never amplified by 1/eps.

Inputs are symmetrised, (A + Aᵀ)/2, before ``eigh``; gradients are therefore
symmetric. Matmuls use ``precision=HIGHEST`` (TPU would otherwise use bf16).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mi_ssl_jax.matrix.linalg import (
  HIGHEST,
  as_compute,
  taylor_log,
  taylor_log_radius,
)

# Lower clamp of eigenvalues before any log (absolute, in the units of the
# matrix; trace-normalised matrices have eigenvalues in [0, 1]).
EIG_EPS = 1e-12


def symmetrize(a: jax.Array) -> jax.Array:
  """(A + Aᵀ) / 2 over the last two axes."""
  return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _sandwich(v: jax.Array, da: jax.Array) -> jax.Array:
  """Vᵀ dA V, the tangent in the eigenbasis.  [..., n, n]"""
  return jnp.einsum("...ji,...jk,...kl->...il", v, da, v, precision=HIGHEST)


@jax.custom_jvp
def eigvalsh(a: jax.Array) -> jax.Array:
  """Eigenvalues (ascending) of the symmetric part of `a`, NaN-free derivative.

  Derivative: dλ_i = (Vᵀ sym(dA) V)_ii (first-order perturbation theory). At a
  repeated eigenvalue the individual λ_i are not differentiable, but every
  symmetric function of the spectrum (tr f(A), entropies, log-det) is, and this
  rule gives its exact derivative V diag(f'(λ)) Vᵀ whatever basis eigh picked.

  Args:
    a: [..., n, n] (symmetric) matrix.

  Returns:
    [..., n] eigenvalues, ascending, compute dtype (>= float32).
  """
  return jnp.linalg.eigvalsh(symmetrize(as_compute(a)))


@eigvalsh.defjvp
def _eigvalsh_jvp(primals, tangents):
  (a,), (da,) = primals, tangents
  w, v = jnp.linalg.eigh(symmetrize(as_compute(a)))
  dw = jnp.einsum("...ji,...jk,...ki->...i", v, symmetrize(as_compute(da)), v,
                  precision=HIGHEST)
  return w, dw


def log_divided_differences(w: jax.Array, eps: float = EIG_EPS) -> jax.Array:
  """Daleckii–Krein matrix L_ij of f(λ) = log max(λ, eps).

  L_ij = (f(λ_i) − f(λ_j)) / (λ_i − λ_j), with the limit f'(λ_i) on ties.
  With hi = max, lo = min of the clamped pair and x = (hi − lo)/lo ≥ 0,
  log(hi/lo)/(hi − lo) = log1p(x) / (x · lo): no cancellation, exact at x = 0
  and for hi ≫ lo. Pairs where one eigenvalue is clamped use the raw
  difference (> 0); pairs where both are clamped get 0 (flat function).

  Args:
    w: [..., n] eigenvalues.
    eps: clamp.

  Returns:
    [..., n, n] symmetric matrix of divided differences.
  """
  wc = jnp.maximum(w, eps)
  wi, wj = wc[..., :, None], wc[..., None, :]
  hi, lo = jnp.maximum(wi, wj), jnp.minimum(wi, wj)
  x = (hi - lo) / lo
  tie = x == 0
  xs = jnp.where(tie, 1.0, x)
  dd = jnp.where(tie, 1.0, jnp.log1p(xs) / xs) / lo
  ci, cj = w[..., :, None] <= eps, w[..., None, :] <= eps
  one = ci != cj
  raw = w[..., :, None] - w[..., None, :]
  raw = jnp.where(one, raw, 1.0)
  lw = jnp.log(wc)
  dd = jnp.where(one, (lw[..., :, None] - lw[..., None, :]) / raw, dd)
  return jnp.where(ci & cj, 0.0, dd)


def _from_spectrum(v: jax.Array, fw: jax.Array) -> jax.Array:
  """V diag(f) Vᵀ.  [..., n, n]"""
  return jnp.einsum("...ik,...k,...jk->...ij", v, fw, v, precision=HIGHEST)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _logm_eigh(a: jax.Array, eps: float) -> jax.Array:
  w, v = jnp.linalg.eigh(symmetrize(a))
  return _from_spectrum(v, jnp.log(jnp.maximum(w, eps)))


@_logm_eigh.defjvp
def _logm_eigh_jvp(eps, primals, tangents):
  (a,), (da,) = primals, tangents
  w, v = jnp.linalg.eigh(symmetrize(a))
  out = _from_spectrum(v, jnp.log(jnp.maximum(w, eps)))
  inner = log_divided_differences(w, eps) * _sandwich(v, symmetrize(da))
  dout = jnp.einsum("...ik,...kl,...jl->...ij", v, inner, v, precision=HIGHEST)
  return out, dout


def matrix_log(a: jax.Array, method: str = "eigh", order: int = 4,
               eps: float = EIG_EPS,
               check_convergence: bool = False) -> jax.Array:
  """Matrix logarithm log A.

  * ``method="eigh"`` (exact): log A = V diag(log max(λ, eps)) Vᵀ for symmetric
    PSD A (symmetrised first), derivative in Daleckii–Krein form (finite at
    repeated and zero eigenvalues; see module docstring).
  * ``method="taylor"``: the official Matrix-SSL / MEC series
    log_T(A) = Σ_{k=1}^{order} (−1)^{k+1} (A − I)^k / k (docs/methods.md §1.5),
    a polynomial, valid for non-symmetric A; it approximates log A only when
    the spectral radius ρ(A − I) < 1 (the error of a symmetric A is at most
    Σ_i |x_i|^{order+1}/((order+1)(1−|x_i|)) for eigenvalues x_i of A − I).
    With ``check_convergence=True`` the result is NaN where
    :func:`taylor_log_radius` estimates ρ(A − I) ≥ 1, so a diverging series
    fails loudly instead of giving a silently wrong loss (works under jit);
    log ``taylor_log_radius(a)`` to monitor it during training.

  Args:
    a: [..., n, n] matrix (symmetric PSD for "eigh").
    method: "eigh" or "taylor".
    order: number of series terms for "taylor".
    eps: eigenvalue clamp for "eigh".
    check_convergence: NaN-poison a non-convergent Taylor series.

  Returns:
    [..., n, n] matrix, compute dtype (>= float32).
  """
  a = as_compute(a)
  if method == "eigh":
    return _logm_eigh(a, eps)
  if method == "taylor":
    out = taylor_log(a, order)
    if check_convergence:
      ok = taylor_log_radius(a) < 1.0  # [...]
      out = jnp.where(ok[..., None, None], out, jnp.nan)
    return out
  raise ValueError(
      f"matrix_log method must be 'eigh' or 'taylor', got {method!r}")
