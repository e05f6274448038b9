"""SIGReg and the LeJEPA objective (Balestriero & LeCun 2025, arXiv
2511.08544, "LeJEPA: Provable and Scalable Self-Supervised Learning Without
the Heuristics").

SIGReg (Sketched Isotropic Gaussian Regularization) pushes the distribution
of the embeddings towards the isotropic Gaussian N(0, I): it projects the
embeddings on M random unit directions a_m and, on each projection, takes
the Epps–Pulley statistic against N(0, 1):

    EP_m = N · ∫ |φ̂_m(t) − φ(t)|² w(t) dt,   φ(t) = w(t) = exp(−t²/2),
    φ̂_m(t) = (1/N) Σ_n exp(i t ⟨a_m, z_n⟩)   (empirical characteristic fn.)
    SIGReg = mean over the M directions (and any leading view axis).

With |φ̂ − φ|² = (mean cos(t x) − φ(t))² + (mean sin(t x))², even in t, the
integral over [−t_max, t_max] is twice that over [0, t_max]; it is taken by
the trapezoid rule on `knots` equispaced points of [0, t_max] with weights
(dt, 2dt, …, 2dt, dt), i.e. the trapezoid rule on 2·knots − 1 points of
[−t_max, t_max].

What was read, and where the defaults come from:
* the official code `rbalestr-lab/lejepa`: `lejepa/univariate/epps_pulley.py`
  (`EppsPulley(t_max=3, n_points=17)`: t = linspace(0, t_max, n_points),
  weights 2dt with dt at both ends, times φ(t); statistic
  `(err @ weights) * N`), `lejepa/multivariate/slicing.py` (directions
  A = randn(D, M) / column norms, statistic mean over slices), MINIMAL.md
  (the paper's minimal ViT example: the same SIGReg, 256 slices, λ = 0.02
  on Imagenette) and README.md (`num_slices=1024` in its quick start);
* lightly 1.6.0 (PyPI wheel), `lightly/loss/lejepa_loss.py`: `SIGReg(knots=17,
  t_max=3.0, num_vectors=1024)`, the same formula with the sums over the
  batch all-reduced across ranks; `LeJEPALoss(lambda_param=0.05)` ("matches
  the reference implementation; the paper explores 0.01 to 0.1");
* the paper's own listing integrates over t ∈ linspace(−5, 5, 17) — we know
  this from a third-party transcription (not from the PDF, which we could
  not read here); `sigreg(..., t_max=5.0, knots=9)` is that grid.
Defaults here: knots 17, t_max 3 (official code and lightly), 1024 slices
(official README, lightly), λ = 0.05 (lightly, stated as the reference).

Sharding: every mean over examples is written on the GLOBAL batch, so under
a batch-sharded jit XLA all-reduces the per-direction sums (what the
official code's `all_reduce` and lightly's `gather_distributed` do) and the
loss and gradients equal the single-device ones. The directions come from a
PRNG key passed in (the trainer's step key: the same on every device, a new
draw every step, as the official code's seed = global step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax.losses._common import as_compute, matmul

# Defaults (module docstring: sources).
SIGREG_SLICES = 1024
SIGREG_KNOTS = 17
SIGREG_T_MAX = 3.0
LEJEPA_LAMBDA = 0.05


def sigreg_directions(key: jax.Array, dim: int, num_slices: int,
                      dtype=jnp.float32) -> jax.Array:
  """M random unit directions: [dim, M] Gaussian columns / their norms."""
  a = jax.random.normal(key, (dim, num_slices), dtype)  # [D, M]
  return a / jnp.linalg.norm(a, axis=0, keepdims=True)


def epps_pulley_grid(knots: int = SIGREG_KNOTS, t_max: float = SIGREG_T_MAX,
                     dtype=jnp.float32) -> tuple[jax.Array, jax.Array,
                                                 jax.Array]:
  """(t, φ(t), weights) of the half-line trapezoid rule, each [knots].

  t = linspace(0, t_max, knots); weights = (dt, 2dt, …, 2dt, dt)·φ(t), the
  trapezoid weights of the symmetric integral times the window w = φ.
  """
  if knots < 2 or t_max <= 0:
    raise ValueError(f"SIGReg needs knots >= 2 and t_max > 0, got knots="
                     f"{knots}, t_max={t_max}")
  t = jnp.linspace(0.0, t_max, knots, dtype=dtype)
  dt = t_max / (knots - 1)
  trap = jnp.full((knots,), 2.0 * dt, dtype).at[0].set(dt).at[-1].set(dt)
  phi = jnp.exp(-0.5 * t * t)
  return t, phi, trap * phi


def epps_pulley(x: jax.Array, *, knots: int = SIGREG_KNOTS,
                t_max: float = SIGREG_T_MAX) -> jax.Array:
  """Epps–Pulley statistic of each column of x against N(0, 1).

  Args:
    x: [..., N, M] samples (axis −2) of M univariate distributions.
    knots, t_max: the quadrature grid (`epps_pulley_grid`).

  Returns:
    [..., M] statistics N·∫|φ̂(t) − φ(t)|² φ(t) dt (module docstring).
  """
  x = as_compute(x)
  t, phi, weights = epps_pulley_grid(knots, t_max, x.dtype)
  xt = x[..., None] * t  # [..., N, M, T]
  cos_mean = jnp.mean(jnp.cos(xt), axis=-3)  # [..., M, T]
  sin_mean = jnp.mean(jnp.sin(xt), axis=-3)  # [..., M, T]
  err = (cos_mean - phi) ** 2 + sin_mean ** 2  # [..., M, T]
  return jnp.sum(err * weights, axis=-1) * x.shape[-2]


def sigreg(z: jax.Array, key: jax.Array, *, num_slices: int = SIGREG_SLICES,
           knots: int = SIGREG_KNOTS, t_max: float = SIGREG_T_MAX
           ) -> jax.Array:
  """SIGReg: mean Epps–Pulley statistic of `num_slices` random projections.

  Args:
    z: [..., N, D] embeddings (leading axes, e.g. views, are averaged over
      like the official code and lightly: each view is its own sample of N).
    key: PRNG key of the directions (`sigreg_directions`); pass the same key
      on every device (the trainer's step key is).
    num_slices, knots, t_max: see the module docstring.

  Returns:
    Scalar, float32 (float64 for float64 input).
  """
  z = as_compute(z)
  if z.ndim < 2:
    raise ValueError(f"sigreg expects [..., N, D] embeddings, got {z.shape}")
  a = sigreg_directions(key, z.shape[-1], num_slices, z.dtype)  # [D, M]
  proj = matmul(z, a)  # [..., N, M]
  return jnp.mean(epps_pulley(proj, knots=knots, t_max=t_max))


def lejepa_terms(global_z: jax.Array, key: jax.Array,
                 local_z: jax.Array | None = None, *,
                 lamb: float = LEJEPA_LAMBDA, num_slices: int = SIGREG_SLICES,
                 knots: int = SIGREG_KNOTS, t_max: float = SIGREG_T_MAX
                 ) -> dict[str, jax.Array]:
  """LeJEPA: (1 − λ)·prediction + λ·SIGReg over all views.

  The prediction (invariance) term pulls every view's embedding to the
  centre of the global views' embeddings of the same image:
  mean_{v,n,k} (c_{n,k} − z_{v,n,k})², c = mean over global views; SIGReg
  is `sigreg` of all views, each view its own sample (lightly 1.6.0
  `LeJEPALoss.forward` and `lejepa_invariance_loss`; official MINIMAL.md
  `inv_loss = (proj.mean(0) - proj).square().mean()` with all views
  global). Nothing is stop-gradient: the centres are differentiated too.

  Args:
    global_z: [Vg, N, K] embeddings of the global views.
    key: PRNG key of SIGReg's directions.
    local_z: optional [Vl, N, K] embeddings of local views (multi-crop).
    lamb: λ in [0, 1].
    num_slices, knots, t_max: SIGReg's (module docstring).

  Returns:
    {"loss", "invariance", "sigreg"}: float32 scalars.
  """
  global_z = as_compute(global_z)
  if global_z.ndim != 3:
    raise ValueError(f"lejepa expects global views [Vg, N, K], got "
                     f"{global_z.shape}")
  all_z = global_z
  if local_z is not None:
    local_z = as_compute(local_z)
    if local_z.ndim != 3 or local_z.shape[1:] != global_z.shape[1:]:
      raise ValueError(f"lejepa: local views {local_z.shape} do not match "
                       f"global views {global_z.shape}")
    all_z = jnp.concatenate([global_z, local_z], axis=0)  # [V, N, K]
  if all_z.shape[0] < 2:
    raise ValueError("lejepa needs at least two views")
  centers = jnp.mean(global_z, axis=0)  # [N, K]
  invariance = jnp.mean((centers - all_z) ** 2)
  reg = sigreg(all_z, key, num_slices=num_slices, knots=knots, t_max=t_max)
  return {"loss": (1.0 - lamb) * invariance + lamb * reg,
          "invariance": invariance, "sigreg": reg}


def lejepa_loss(global_z: jax.Array, key: jax.Array,
                local_z: jax.Array | None = None, **kwargs) -> jax.Array:
  """The LeJEPA loss alone (`lejepa_terms`)."""
  return lejepa_terms(global_z, key, local_z, **kwargs)["loss"]
