"""M-MAE, matrix variational MAE (Tan et al., "Information Flow in SSL", ICML
2024): MAE + a matrix-entropy (total coding rate) regulariser.

Official code (`M-MAE/loss_func.py::uniformity_loss_TCR`, docs/methods.md §3.2),
followed by default:

  L = L_MAE + λ·R(F) + L_CE(probe),  R = −log det(I_d + (μ/d)·F̂ᵀ Ĵ F̂)

* F̂: row-normalised CLS features of the masked input (final LayerNorm applied
  twice, as the code), GLOBAL batch; Ĵ = I (default) or the centring matrix
  (`reg_centering=True`, the code's `--centering`).
* μ/d normaliser (not μ/B), no ½; λ = 0.01, μ = 1 (ViT-B) or 3 (ViT-L).
* Paper form: `reg_form="tcr"` gives −½ log det(I + d/(Bμ)·F̂ᵀĴF̂) (−TCR with
  ε² = μ; the paper's exact scale is unverified, docs/methods.md §11).
* The released runs' effective weight is λ/8 (gather gradient, §3.2 item 7):
  the ImageNet recipes set `official_world_size=8` to match them.

The model, masking, probe and features are shared with MAE
(`mi_ssl_jax/methods/mae.py`); configs: `configs/mmae_vitb.py`,
`configs/mmae_vitl.py`, `configs/quickstart.py`.
"""

from mi_ssl_jax.methods import mae

# The log-det couples all examples of the batch (a smaller batch changes R).
METHOD = mae.MAEMethod(regularizer="tcr", BATCH_COUPLED=True)
