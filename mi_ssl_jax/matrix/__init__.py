"""Matrix-information core: exact, NaN-free, differentiable matrix functions.

Imports only jax and numpy. Public names here are a contract used by
``mi_ssl_jax.losses``, the trainer, notebooks and users. Formulas and sources
are in each docstring and in README.md ("Matrix core API").
"""

from mi_ssl_jax.matrix.diagnostics import (
    alpha_req,
    dime,
    lidar,
    map_matrices,
    token_entropy,
)
from mi_ssl_jax.matrix.entropy import (
    chebyshev_trace,
    matrix_cross_entropy,
    matrix_entropy,
    matrix_joint_entropy,
    matrix_kl,
    matrix_mutual_information,
)
from mi_ssl_jax.matrix.features import (
    effective_rank,
    feature_entropy,
    rankme,
    singular_values,
    total_coding_rate,
)
from mi_ssl_jax.matrix.linalg import (
    covariance,
    cross_covariance,
    gram,
    logdet_psd,
    normalize_rows,
    spectral_radius,
    taylor_log,
    taylor_log_radius,
)
from mi_ssl_jax.matrix.spectral import (
    EIG_EPS,
    eigvalsh,
    log_divided_differences,
    matrix_log,
    symmetrize,
)

__all__ = [
    "EIG_EPS",
    "alpha_req",
    "chebyshev_trace",
    "covariance",
    "dime",
    "cross_covariance",
    "effective_rank",
    "eigvalsh",
    "feature_entropy",
    "gram",
    "lidar",
    "log_divided_differences",
    "logdet_psd",
    "map_matrices",
    "matrix_cross_entropy",
    "matrix_entropy",
    "matrix_joint_entropy",
    "matrix_kl",
    "matrix_log",
    "matrix_mutual_information",
    "normalize_rows",
    "rankme",
    "singular_values",
    "spectral_radius",
    "symmetrize",
    "taylor_log",
    "taylor_log_radius",
    "token_entropy",
    "total_coding_rate",
]
