"""Hand counts of model FLOPs, for the FLOP-counting tests."""


def mae_train_step_flops(config) -> float:
  """Matmul FLOPs of one MAE train step (no online probe), by hand.

  Forward: patch embedding on all N patches; encoder blocks on the 1 + K
  visible tokens (qkv, q·kᵀ, p·v, projection, two MLP layers); the decoder
  embedding; decoder blocks on 1 + N tokens; the pixel head. The backward
  costs twice the forward, except the patch embedding's (no gradient for
  the images: once). 2 FLOPs per multiply-add.
  """
  m, b = config.model, config.batch_size
  n = (config.image_size // m.patch_size) ** 2
  pix = m.patch_size**2 * config.channels
  k = int(n * (1 - config.mask_ratio))
  dec_mlp = m.get("decoder_mlp_dim") or 4 * m.decoder_width

  def block(t, d, mlp):
    return 2 * b * t * (3 * d * d + 2 * t * d + d * d + 2 * d * mlp)

  patch = 2 * b * n * pix * m.width
  fwd = (patch + m.depth * block(1 + k, m.width, m.mlp_dim)
         + 2 * b * (1 + k) * m.width * m.decoder_width
         + m.decoder_depth * block(1 + n, m.decoder_width, dec_mlp)
         + 2 * b * (1 + n) * m.decoder_width * pix)
  return 3 * fwd - patch
