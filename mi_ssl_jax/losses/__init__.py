"""SSL objectives of Matrix-SSL, M-MAE / U-MAE, MEC, EMI, LeJEPA (SIGReg) and
the baselines.

Every loss is a pure function of GLOBAL [B, d] arrays (no manual gathers: under
a batch-sharded ``jax.jit`` XLA inserts the collectives), computes its matrix
math in float32 or wider, and documents the formula and the paper or official
file it follows. Imports only jax and ``mi_ssl_jax.matrix``.
"""

from mi_ssl_jax.losses.baselines import (
    barlow_twins_loss,
    info_nce_loss,
    negative_cosine_loss,
    spectral_contrastive_loss,
    vicreg_loss,
)
from mi_ssl_jax.losses.diagnostics import view_diagnostics
from mi_ssl_jax.losses.emi import (
    EMIOutput,
    emi_init_state,
    emi_loss,
    emi_momentum_loss,
)
from mi_ssl_jax.losses.lejepa import (
    epps_pulley,
    lejepa_loss,
    lejepa_terms,
    sigreg,
    sigreg_directions,
)
from mi_ssl_jax.losses.mae import (
    mae_loss,
    mae_loss_terms,
    mmae_regularizer,
    umae_uniformity,
)
from mi_ssl_jax.losses.matrix_ssl import matrix_ssl_loss, matrix_ssl_terms
from mi_ssl_jax.losses.mec import (
    mec_lambda,
    mec_lambda_schedule,
    mec_loss,
    mec_terms,
)
from mi_ssl_jax.losses.spectrum import (
    frossl_loss,
    frossl_terms,
    ivne_loss,
    ivne_terms,
    mmcr_loss,
    mmcr_terms,
)

__all__ = [
    "EMIOutput",
    "barlow_twins_loss",
    "emi_init_state",
    "emi_loss",
    "emi_momentum_loss",
    "epps_pulley",
    "frossl_loss",
    "frossl_terms",
    "info_nce_loss",
    "ivne_loss",
    "ivne_terms",
    "lejepa_loss",
    "lejepa_terms",
    "mae_loss",
    "mae_loss_terms",
    "matrix_ssl_loss",
    "matrix_ssl_terms",
    "mec_lambda",
    "mec_lambda_schedule",
    "mec_loss",
    "mec_terms",
    "mmcr_loss",
    "mmcr_terms",
    "mmae_regularizer",
    "negative_cosine_loss",
    "sigreg",
    "sigreg_directions",
    "spectral_contrastive_loss",
    "umae_uniformity",
    "vicreg_loss",
    "view_diagnostics",
]
