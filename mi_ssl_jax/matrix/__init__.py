"""Matrix-information core: exact, NaN-free, differentiable matrix functions.

Imports only jax and numpy. Public names here are a contract used by
``mi_ssl_jax.losses``, the trainer, notebooks and users.
"""

from mi_ssl_jax.matrix.linalg import (
    covariance,
    cross_covariance,
    gram,
    logdet_psd,
    normalize_rows,
    taylor_log,
    taylor_log_radius,
)

__all__ = [
    "covariance",
    "cross_covariance",
    "gram",
    "logdet_psd",
    "normalize_rows",
    "taylor_log",
    "taylor_log_radius",
]
