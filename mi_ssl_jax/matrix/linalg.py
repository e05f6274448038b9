"""Feature normalisation, Gram/covariance matrices, log-det and Taylor log.

These are the building blocks every matrix-information quantity starts from
(``docs/methods.md`` §1.1, §1.5). All of them are written on the
*global* batch: under ``jax.jit`` with a batch-sharded input, XLA inserts the
all-reduce for the contraction over examples, so no manual gathers are needed.

Matrix math runs in at least float32 (float64 stays float64), with
``precision=HIGHEST`` matmuls, even when the backbone produced bf16 features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# PyTorch's F.normalize default; every official matrix loss uses it.
NORMALIZE_EPS = 1e-12
HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype matrix math runs in: float32, or float64 if `x` is float64."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def as_compute(x: jax.Array) -> jax.Array:
  """Casts `x` to :func:`compute_dtype` (bf16/fp16 -> float32)."""
  x = jnp.asarray(x)
  return x.astype(compute_dtype(x))


def normalize_rows(z: jax.Array, eps: float = NORMALIZE_EPS) -> jax.Array:
  """L2-normalises each row: ẑ_i = z_i / max(‖z_i‖₂, eps).

  Same as PyTorch ``F.normalize(z, dim=1)`` (eps 1e-12), used by every official
  Matrix-SSL / MEC / M-MAE / U-MAE loss (docs/methods.md §1.1). A zero row
  stays zero and its gradient is finite.

  Args:
    z: features, shape [..., B, D].
    eps: lower clamp of the norm.

  Returns:
    Row-normalised features, same shape, compute dtype (>= float32).
  """
  z = as_compute(z)
  sq = jnp.sum(z * z, axis=-1, keepdims=True)  # [..., B, 1]
  # max(‖z‖, eps) written as sqrt(max(‖z‖², eps²)): the gradient of sqrt is
  # never evaluated at 0, so zero rows give finite (zero) gradients.
  norm = jnp.sqrt(jnp.maximum(sq, eps * eps))
  return z / norm


def _maybe_normalize(z: jax.Array, normalize: bool) -> jax.Array:
  return normalize_rows(z) if normalize else as_compute(z)


def gram(z: jax.Array, normalize: bool = True) -> jax.Array:
  """Gram matrix K = ẑẑᵀ of the (row-normalised) features.

  With ``normalize=True`` K has unit diagonal and tr K = B
  (docs/methods.md §1.1).

  Args:
    z: features, shape [..., B, D].
    normalize: L2-normalise rows first.

  Returns:
    [..., B, B] Gram matrix.
  """
  zh = _maybe_normalize(z, normalize)  # [..., B, D]
  return jnp.einsum("...id,...jd->...ij", zh, zh, precision=HIGHEST)


def covariance(z: jax.Array, center: bool = False,
               normalize: bool = True) -> jax.Array:
  """Second-moment / covariance matrix C = (1/B) ẑᵀ H ẑ, shape [D, D].

  H = I_B − (1/B)11ᵀ when ``center`` (implemented by subtracting column means,
  never by building the B×B matrix); H = I_B otherwise. With ``normalize=True``
  and no centering, tr C = 1: C is a density matrix (docs/methods.md §1.1).

  Args:
    z: features, shape [..., B, D].
    center: subtract the batch mean (centred covariance).
    normalize: L2-normalise rows first.

  Returns:
    [..., D, D] symmetric PSD matrix.
  """
  zh = _maybe_normalize(z, normalize)  # [..., B, D]
  if center:
    zh = zh - jnp.mean(zh, axis=-2, keepdims=True)
  b = zh.shape[-2]
  return jnp.einsum("...bi,...bj->...ij", zh, zh, precision=HIGHEST) / b


def cross_covariance(z1: jax.Array, z2: jax.Array, center: bool = False,
                     normalize: bool = True) -> jax.Array:
  """Cross-covariance C(Z1, Z2) = (1/B) ẑ1ᵀ H ẑ2, shape [D, D] (not symmetric).

  The Matrix-SSL uniformity term uses the centred form (docs/methods.md §2.2).

  Args:
    z1: features of the first branch, [..., B, D].
    z2: features of the second branch, [..., B, D].
    center: subtract each branch's batch mean.
    normalize: L2-normalise rows first.

  Returns:
    [..., D, D] matrix.
  """
  a = _maybe_normalize(z1, normalize)
  c = _maybe_normalize(z2, normalize)
  if center:
    a = a - jnp.mean(a, axis=-2, keepdims=True)
    c = c - jnp.mean(c, axis=-2, keepdims=True)
  b = a.shape[-2]
  return jnp.einsum("...bi,...bj->...ij", a, c, precision=HIGHEST) / b


def logdet_psd(a: jax.Array, method: str = "cholesky") -> jax.Array:
  """log det A for symmetric positive-definite A.

  Two exact paths (docs/design.md §3.2):
    * ``"cholesky"``: 2 Σ_i log L_ii with A = LLᵀ, with the closed-form
      derivative d log det A = tr(A⁻¹ dA) (A⁻¹ from two triangular solves; a
      custom JVP, cheaper than differentiating the factorisation). NaN for a
      matrix that is not positive definite.
    * ``"lu"``: ``jnp.linalg.slogdet`` (partial-pivoting LU); NaN where the
      determinant is not positive.
  On an idle CPU the two are within ~1.5× of each other
  (``python -m mi_ssl_jax.bench.matrix``), but jaxlib's CPU Cholesky slows
  down by an order of magnitude when other threads compete for the cores (a
  tf.data input pipeline, parallel test workers), while LU degrades
  gracefully; the trainer picks one per run from its devices
  (`mi_ssl_jax.platforms`: LU on CPU, Cholesky on GPU/TPU), never from the
  host that traces the function.
  A must be positive *definite* (add a ridge such as I + cFᵀF); a singular A
  gives −inf or NaN, never a silently wrong finite number.

  Args:
    a: [..., n, n] symmetric positive-definite matrix.
    method: ``"cholesky"`` (default) or ``"lu"``.

  Returns:
    [...] log-determinant, compute dtype.
  """
  if method == "cholesky":
    return _logdet_cholesky(a)
  if method == "lu":
    sign, logabsdet = jnp.linalg.slogdet(as_compute(a))
    return jnp.where(sign > 0, logabsdet, jnp.nan)
  raise ValueError(
      f"logdet_psd method must be 'cholesky' or 'lu', got {method!r}")


@jax.custom_jvp
def _logdet_cholesky(a: jax.Array) -> jax.Array:
  return _logdet_from_chol(jnp.linalg.cholesky(as_compute(a)))


def _logdet_from_chol(chol: jax.Array) -> jax.Array:
  return 2.0 * jnp.sum(
      jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


@_logdet_cholesky.defjvp
def _logdet_cholesky_jvp(primals, tangents):
  (a,), (da,) = primals, tangents
  a = as_compute(a)
  chol = jnp.linalg.cholesky(a)  # [..., n, n]
  eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
  a_inv = jax.scipy.linalg.cho_solve((chol, True), eye)  # [..., n, n]
  # tr(A⁻¹ dA) with A⁻¹ symmetric: Σ_ij A⁻¹_ij dA_ij.
  tangent = jnp.sum(a_inv * da.astype(a.dtype), axis=(-2, -1))
  return _logdet_from_chol(chol), tangent


def taylor_log(a: jax.Array, order: int = 4) -> jax.Array:
  """Truncated series log_T(A) = Σ_{k=1}^{order} (−1)^{k+1} (A − I)^k / k.

  The official Matrix-SSL ``matrix_log`` (order 4 by default;
  docs/methods.md §1.5). It is a polynomial, so it is defined (and
  differentiable) for non-symmetric A, but it approximates log A only when
  the spectral radius of A − I is < 1; see :func:`taylor_log_radius` to
  check.

  Args:
    a: [..., n, n] matrix.
    order: number of series terms (>= 1).

  Returns:
    [..., n, n] matrix.
  """
  if order < 1:
    raise ValueError(f"taylor_log order must be >= 1, got {order}")
  a = as_compute(a)
  n = a.shape[-1]
  x = a - jnp.eye(n, dtype=a.dtype)  # [..., n, n]
  power = x
  out = x
  for k in range(2, order + 1):
    power = jnp.matmul(power, x, precision=HIGHEST)
    out = out + ((-1.0) ** (k + 1) / k) * power
  return out


def spectral_radius(m: jax.Array, iters: int = 20) -> jax.Array:
  """Power-iteration estimate of ρ(M) = max_i |λ_i(M)|, without gradient.

  Starts from a fixed pseudo-random unit vector (deterministic, so jit-cached
  and identical on every device). Not from the all-ones vector: that lies in
  the null space of every batch-centred Gram matrix and would hide the top
  eigenvalue. The estimate is a lower bound that is tight when the dominant
  eigenvalue is well separated in modulus.

  Args:
    m: [..., n, n] matrix (need not be symmetric).
    iters: power-iteration steps.

  Returns:
    [...] estimate of ρ(M), compute dtype, no gradient.
  """
  m = jax.lax.stop_gradient(as_compute(m))
  n = m.shape[-1]
  v = jax.random.normal(jax.random.key(0), (n,), m.dtype)
  v = jnp.broadcast_to(v / jnp.linalg.norm(v), m.shape[:-1])  # [..., n]

  def body(_, v):
    w = jnp.einsum("...ij,...j->...i", m, v, precision=HIGHEST)
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-30)

  v = jax.lax.fori_loop(0, iters, body, v)
  w = jnp.einsum("...ij,...j->...i", m, v, precision=HIGHEST)
  return jnp.linalg.norm(w, axis=-1)


def taylor_log_radius(a: jax.Array, iters: int = 20) -> jax.Array:
  """Estimates the spectral radius ρ(A − I) that governs Taylor-log convergence.

  The series of :func:`taylor_log` converges iff ρ(A − I) < 1. Computed by
  :func:`spectral_radius` (power iteration) on A − I.

  Args:
    a: [..., n, n] matrix.
    iters: power-iteration steps.

  Returns:
    [...] estimate of ρ(A − I), without gradient.
  """
  a = as_compute(a)
  return spectral_radius(a - jnp.eye(a.shape[-1], dtype=a.dtype), iters)
