"""EMI: explicit mutual information from second-order statistics.

Chang et al., "Explicit Mutual Information Maximization for Self-Supervised
Learning", arXiv 2409.04747. No official code exists, and only the abstract
and Theorem 1 of the paper could be read (docs/methods.md §7.1). Everything
below except the MI formula itself is OUR RECONSTRUCTION, following the
specification of docs/methods.md §7.3. The choices, and why:

* MI from covariances (Theorem 1, verified): for jointly Gaussian surrogates,
    I(Z; Z′) = ½ log(det C₁ · det C₂ / det C_joint),
  C₁ = cov(Z), C₂ = cov(Z′), C_joint = cov([Z, Z′]) (2d×2d). The loss is −I.
* Ridge εI on each of the three covariances (choice): for aligned views
  det C_joint → 0 and I → ∞ (docs/methods.md §7.2); with B ≤ 2d the empirical
  joint covariance is singular anyway. Default ε = 1e-3 on unit-variance
  features.
* Feature normalisation before the covariances (choice, configurable):
  ``"batch"`` (default; affine-free BatchNorm over the global batch, so C₁, C₂
  are correlation matrices and the MI is scale-free, as in Barlow Twins /
  VICReg), ``"l2"`` (row L2-normalisation then centring, as in Matrix-SSL /
  MEC), ``"none"`` (centring only).
* Smaller side (exact rewrite, not a choice): when B < n for an n×n
  covariance, log det(εI_n + YᵀY/B) = (n − B) log ε + log det(εI_B + YYᵀ/B)
  (Sylvester), so every log-det is taken on a matrix of size min(n, B).
* Exact path (``method="cholesky"``, the reference): three Cholesky log-dets.
* Taylor path (``method="taylor"``; the paper's "truncated Taylor approximation
  of the log-determinant ... made stable by eigenvalue tracking (moving
  averages) and a rescaling operation", details unverified):
    log det A = n log s + tr log(A/s) ≈ n log s + Σ_{k=1}^{order} (−1)^{k+1}
    tr((A/s − I)^k)/k,
  s a stop-gradient scale. If s ≥ λ_max(A) the spectrum of A/s − I lies in
  (−1, 0] (λ_min ≥ ε > 0), so the series converges and each truncated term
  has the same sign. s = ``safety`` × max(EMA of λ̂, current λ̂), where λ̂ is
  the Rayleigh quotient after ``power_iters`` steps of power iteration on the
  current batch's (stop-gradient) matrix, warm-started from the previous
  step's vector (so a few steps per training step suffice) and floored at
  the mean eigenvalue tr A / n (a guaranteed lower bound of λ_max). The two
  marginal covariances share one scale (the larger). The max with the
  current estimate keeps s above a sudden spectral growth the EMA would lag;
  the EMA keeps s from jumping down between steps. Default order 4 (as MEC /
  Matrix-SSL), EMA momentum 0.9, safety 1.1.
* The tracked eigenvalues and power-iteration vectors are a small state pytree
  (:func:`emi_init_state`) that the caller threads through training and
  checkpoints.
* Convergence check: ``metrics["taylor_radius"]`` is a power-iteration
  estimate of the spectral radius of A/s − I (max over the three matrices);
  the series diverges when it is ≥ 1. Log it; the trainer can raise on it.
* Momentum encoder (docs/methods.md §7.3): :func:`emi_momentum_loss` pairs each
  student view with the other view's EMA-teacher output (stop-gradient) and
  averages the two assignments, as BYOL / MEC do.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mi_ssl_jax import matrix
from mi_ssl_jax.losses._common import (
    as_compute,
    log_series_coeffs,
    matmul,
    trace_series,
)

_SLOTS = ("vec_1", "vec_2", "vec_joint")
_NORMALIZE = ("batch", "l2", "none")


class EMIOutput(NamedTuple):
  """What :func:`emi_loss` returns: ``loss, state, metrics = emi_loss(...)``."""
  loss: jax.Array
  state: dict | None
  metrics: dict[str, jax.Array]


def _side_sizes(batch_size: int, dim: int) -> tuple[int, int, int]:
  return min(dim, batch_size), min(dim, batch_size), min(2 * dim, batch_size)


def emi_init_state(dim: int, batch_size: int) -> dict[str, jax.Array]:
  """Initial EMI eigenvalue-tracking state for features [batch_size, dim].

  Returns:
    ``{"eig_max": [3] tracked λ_max of (C₁, C₂, C_joint), "vec_1", "vec_2",
    "vec_joint": power-iteration vectors, "count": int32 steps seen}``. The
    vectors have the size of the side the log-dets are taken on
    (min(d, B), min(d, B), min(2d, B)).
  """
  sizes = _side_sizes(batch_size, dim)
  state = {"eig_max": jnp.zeros((3,), jnp.float32),
           "count": jnp.zeros((), jnp.int32)}
  # A fixed random start, not the all-ones vector: on the B side the centred
  # Gram matrix has 1 in its null space. The two marginals start from the
  # same vector and the d-side joint from [v; v], so a fresh state gives a
  # loss exactly symmetric under swapping the views.
  key = jax.random.PRNGKey(0)
  v = jax.random.normal(key, (sizes[0],), jnp.float32)
  v = v / jnp.linalg.norm(v)
  state["vec_1"] = v
  state["vec_2"] = v
  if sizes[2] == 2 * dim:
    state["vec_joint"] = jnp.concatenate([v, v]) / jnp.sqrt(2.0)
  else:
    w = jax.random.normal(jax.random.fold_in(key, 1), (sizes[2],),
                          jnp.float32)
    state["vec_joint"] = w / jnp.linalg.norm(w)
  return state


def _prepare(z: jax.Array, normalize: str, bn_eps: float = 1e-5
             ) -> jax.Array:
  """Centred (and normalised) features Y [B, d]; cov(Z) = YᵀY / B."""
  z = as_compute(z)
  if normalize == "l2":
    z = matrix.normalize_rows(z)
  z = z - jnp.mean(z, axis=0, keepdims=True)
  if normalize == "batch":
    var = jnp.mean(z * z, axis=0, keepdims=True)
    z = z / jnp.sqrt(var + bn_eps)
  return z


def _ridged_matrices(y1: jax.Array, y2: jax.Array, ridge: float):
  """[(A, const)] for C₁, C₂, C_joint: log det C = log det A + const."""
  b, d = y1.shape
  out = []
  if d <= b:
    c11 = matmul(y1.T, y1) / b
    c22 = matmul(y2.T, y2) / b
    eye = jnp.eye(d, dtype=c11.dtype)
    out += [(c11 + ridge * eye, 0.0), (c22 + ridge * eye, 0.0)]
  else:
    g11 = matmul(y1, y1.T) / b
    g22 = matmul(y2, y2.T) / b
    eye = jnp.eye(b, dtype=g11.dtype)
    const = (d - b) * jnp.log(ridge)
    out += [(g11 + ridge * eye, const), (g22 + ridge * eye, const)]
  if 2 * d <= b:
    c12 = matmul(y1.T, y2) / b
    joint = jnp.block([[out[0][0], c12], [c12.T, out[1][0]]])
    out.append((joint, 0.0))
  elif d <= b:  # joint on the B side, marginals on the d side
    yj = jnp.concatenate([y1, y2], axis=1)
    gj = matmul(yj, yj.T) / b + ridge * jnp.eye(b, dtype=y1.dtype)
    out.append((gj, (2 * d - b) * jnp.log(ridge)))
  else:  # B×B Gram of [Y1, Y2] is G11 + G22
    gj = out[0][0] + out[1][0] - ridge * jnp.eye(b, dtype=y1.dtype)
    out.append((gj, (2 * d - b) * jnp.log(ridge)))
  return out


def _power_iteration(a: jax.Array, v: jax.Array, iters: int):
  """`iters` power steps from v; returns (Rayleigh quotient, unit vector)."""
  def body(_, v):
    w = matmul(a, v)
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

  v = v / jnp.maximum(jnp.linalg.norm(v), 1e-30)
  v = jax.lax.fori_loop(0, iters, body, v)
  return jnp.vdot(v, matmul(a, v)), v


def _check_args(method, normalize, order, ridge, ema, safety, power_iters):
  if method not in ("cholesky", "taylor"):
    raise ValueError(f"EMI method must be 'cholesky' or 'taylor', got "
                     f"{method!r}")
  if normalize not in _NORMALIZE:
    raise ValueError(f"EMI normalize must be one of {_NORMALIZE}, got "
                     f"{normalize!r}")
  if ridge <= 0:
    raise ValueError(f"EMI ridge must be > 0, got {ridge}")
  if not 0.0 <= ema < 1.0:
    raise ValueError(f"EMI ema must be in [0, 1), got {ema}")
  if safety <= 0:
    raise ValueError(f"EMI safety must be > 0 (> 1 to keep the series "
                     f"convergent), got {safety}")
  if power_iters < 1:
    raise ValueError(f"EMI power_iters must be >= 1, got {power_iters}")
  log_series_coeffs(order)  # validates order


def _emi_pairs(pairs, state, *, method, normalize, ridge, order, ema, safety,
               power_iters, logdet="cholesky") -> EMIOutput:
  """Mean over (z_a, z_b) pairs of −I(z_a; z_b), one shared state update."""
  _check_args(method, normalize, order, ridge, ema, safety, power_iters)
  mats = []
  for z_a, z_b in pairs:
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
      raise ValueError(f"EMI expects two [B, d] arrays of one shape, got "
                       f"{z_a.shape} and {z_b.shape}")
    mats.append(_ridged_matrices(_prepare(z_a, normalize),
                                 _prepare(z_b, normalize), ridge))
  b, d = pairs[0][0].shape
  signs = (0.5, 0.5, -0.5)  # I = ½[log det C₁ + log det C₂ − log det C_j]

  if method == "cholesky":
    mi = [sum(sg * (matrix.logdet_psd(a, logdet) + c)
              for sg, (a, c) in zip(signs, m, strict=True)) for m in mats]
    mi = sum(mi) / len(mi)
    return EMIOutput(-mi, state, {"mutual_information": mi})

  if state is None:
    state = emi_init_state(d, b)
  expected = _side_sizes(b, d)
  for slot, n in zip(_SLOTS, expected, strict=True):
    if state[slot].shape != (n,):
      raise ValueError(
          f"EMI state does not match features [B={b}, d={d}]: {slot} has "
          f"shape {state[slot].shape}, expected ({n},); build it with "
          f"emi_init_state(dim={d}, batch_size={b})")
  coeffs = log_series_coeffs(order)
  new_state = {"count": state["count"] + 1}
  scales, eig_new, currents, radii = [], [], [], []
  for i, slot in enumerate(_SLOTS):
    best_eig, best_vec = None, None
    for m in mats:  # current-batch estimate: max over the pairs
      eig, vec = _power_iteration(jax.lax.stop_gradient(m[i][0]),
                                  state[slot].astype(m[i][0].dtype),
                                  power_iters)
      if best_eig is None:
        best_eig, best_vec = eig, vec
      else:
        best_vec = jnp.where(eig > best_eig, vec, best_vec)
        best_eig = jnp.maximum(eig, best_eig)
    # The mean eigenvalue tr A / n is a guaranteed lower bound of λ_max:
    # it keeps the estimate sane if the start vector is nearly orthogonal
    # to the top eigenvector.
    mean_eig = jnp.max(jnp.stack([
        jnp.trace(jax.lax.stop_gradient(m[i][0])) / m[i][0].shape[0]
        for m in mats]))
    best_eig = jnp.maximum(best_eig, mean_eig)
    old = state["eig_max"][i].astype(best_eig.dtype)
    tracked = jnp.where(state["count"] > 0, ema * old + (1 - ema) * best_eig,
                        best_eig)
    eig_new.append(tracked)
    scales.append(safety * jnp.maximum(tracked, best_eig))
    currents.append(best_eig)
    new_state[slot] = best_vec.astype(state[slot].dtype)
  new_state["eig_max"] = jnp.stack(eig_new).astype(state["eig_max"].dtype)
  # Both marginals share one scale (their spectra are alike), which keeps the
  # loss symmetric under swapping the views.
  scales[0] = scales[1] = jnp.maximum(scales[0], scales[1])

  mi_terms = []
  for m in mats:
    total = 0.0
    for sg, (a, c), s in zip(signs, m, scales, strict=True):
      n = a.shape[0]
      x = a / s - jnp.eye(n, dtype=a.dtype)
      total = total + sg * (n * jnp.log(s) + trace_series(x, coeffs) + c)
    mi_terms.append(total)
  for s, eig in zip(scales, currents, strict=True):
    # Spectrum of A/s − I lies in [ε/s − 1, λ_max/s − 1]; λ_max estimated by
    # the (warm-started) power iteration above.
    radii.append(jnp.maximum(eig / s - 1.0, 1.0 - ridge / s))
  mi = sum(mi_terms) / len(mi_terms)
  metrics = {"mutual_information": mi,
             "taylor_radius": jax.lax.stop_gradient(jnp.max(jnp.stack(radii))),
             "eig_max_joint": new_state["eig_max"][2]}
  return EMIOutput(-mi, new_state, metrics)


def emi_loss(z_1: jax.Array, z_2: jax.Array, state: dict | None = None, *,
             method: str = "cholesky", normalize: str = "batch",
             ridge: float = 1e-3, order: int = 4, ema: float = 0.9,
             safety: float = 1.1, power_iters: int = 5,
             logdet: str = "cholesky") -> EMIOutput:
  """EMI loss −I(Z; Z′) = −½ log(det C₁ · det C₂ / det C_joint).

  A reconstruction of Chang et al. (arXiv 2409.04747; no official code): see
  the module docstring for every choice. C₁ = cov(Z) + εI, C₂ = cov(Z′) + εI,
  C_joint = cov([Z, Z′]) + εI on the normalised global batch.

  Args:
    z_1: [B, d] embeddings of view 1.
    z_2: [B, d] embeddings of view 2.
    state: eigenvalue-tracking state of the Taylor path
      (:func:`emi_init_state`); None starts a fresh one. Unused (returned
      unchanged) by the Cholesky path.
    method: ``"cholesky"`` (exact, reference) or ``"taylor"``.
    normalize: ``"batch"``, ``"l2"`` or ``"none"`` (see module doc).
    ridge: ε.
    order: Taylor order of the log-det series.
    ema: momentum of the tracked largest eigenvalues.
    safety: factor > 1 on the tracked largest eigenvalue.
    power_iters: power-iteration steps per call (warm-started).
    logdet: the exact path's factorisation, ``"cholesky"`` or ``"lu"``
      (`matrix.logdet_psd`; the trainer picks per platform).

  Returns:
    ``EMIOutput(loss, state, metrics)``; metrics has ``mutual_information``
    and, for the Taylor path, ``taylor_radius`` (≥ 1 means the series
    diverged) and ``eig_max_joint``.
  """
  return _emi_pairs([(z_1, z_2)], state, method=method, normalize=normalize,
                    ridge=ridge, order=order, ema=ema, safety=safety,
                    power_iters=power_iters, logdet=logdet)


def emi_momentum_loss(teacher_1: jax.Array, student_1: jax.Array,
                      teacher_2: jax.Array, student_2: jax.Array,
                      state: dict | None = None, **kwargs) -> EMIOutput:
  """EMI with a momentum (EMA) teacher, symmetrised over view assignments.

  L = ½[−I(S1; sg T2) − I(S2; sg T1)] (our reconstruction, docs/methods.md §7.3;
  the pairing follows BYOL / MEC). The Taylor path's state is updated once,
  from the larger estimate of the two pairs, so the loss is symmetric under
  swapping the views. Keyword arguments as :func:`emi_loss`.

  Returns:
    ``EMIOutput(loss, state, metrics)``.
  """
  t1 = jax.lax.stop_gradient(teacher_1)
  t2 = jax.lax.stop_gradient(teacher_2)
  return _emi_pairs([(student_1, t2), (student_2, t1)], state,
                    **{**dict(method="cholesky", normalize="batch",
                              ridge=1e-3, order=4, ema=0.9, safety=1.1,
                              power_iters=5, logdet="cholesky"), **kwargs})
