"""U-MAE (Zhang, Wang, Wang, NeurIPS 2022): MAE + uniformity regulariser.

  L = L_MAE + λ·L_unif(F) + L_CE(probe),  L_unif = ‖F̂F̂ᵀ‖²_F / B²

with F̂ the row-normalised CLS features of the masked input over the GLOBAL
batch, diagonal included (official `U-MAE/loss_func.py`, docs/methods.md §4);
λ = 0.01. The paper pairs the masked view with an independent unmasked view;
the code (followed here) uses in-batch pairs of the same masked features
(author's reply in zhangq327/U-MAE#12). Everything else is shared with MAE
(`mi_ssl_jax/methods/mae.py`); config: `configs/umae_vitb.py`.
"""

from mi_ssl_jax.methods import mae

# The uniformity term couples all examples of the batch.
METHOD = mae.MAEMethod(regularizer="uniformity", BATCH_COUPLED=True)
