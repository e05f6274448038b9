"""Parameter counts without materialising weights (``nnx.eval_shape``).

``python -m mi_ssl_jax.models.param_count`` prints the README's table of
variants and their parameter counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from flax import nnx

from mi_ssl_jax.models import heads, mae, resnet, vit


def count_params(build: Callable[[nnx.Rngs], nnx.Module],
                 variable_type=nnx.Param) -> int:
  """Number of scalars in ``variable_type`` variables of ``build(rngs)``.

  The module is built abstractly with ``nnx.eval_shape`` (no memory, no
  FLOPs), so this is cheap even for ViT-H.
  """
  abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
  state = nnx.state(abstract, variable_type)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def _table() -> list[tuple[str, int]]:
  rows = []
  for size in ("Ti", "S", "M", "B", "L", "H"):
    patch = 14 if size == "H" else 16
    name = f"{size}/{patch}"
    rows.append((f"VisionTransformer('{name}'), 224 px, learned pos, no head",
                 count_params(lambda r, n=name: vit.VisionTransformer(
                     n, img_size=224, rngs=r))))
  for name, img in (("Ti/4", 32), ("S/4", 32), ("Ti/4", 28)):
    rows.append((f"VisionTransformer('{name}'), {img} px, learned pos",
                 count_params(lambda r, n=name, i=img: vit.VisionTransformer(
                     n, img_size=i, rngs=r))))
  for name in ("B/16", "L/16", "H/14"):
    rows.append((f"MaskedAutoencoder('{name}'), 224 px, trainable",
                 count_params(lambda r, n=name: mae.MaskedAutoencoder(
                     n, img_size=224, rngs=r))))
  rows.append(("MaskedAutoencoder('Ti/4'), 32 px, decoder 128x2x4, trainable",
               count_params(lambda r: mae.MaskedAutoencoder(
                   "Ti/4", img_size=32, decoder_width=128, decoder_depth=2,
                   decoder_heads=4, rngs=r))))
  for depth in (18, 34, 50):
    for stem in ("imagenet", "cifar"):
      rows.append((f"ResNet({depth}, stem='{stem}'), no fc",
                   count_params(lambda r, d=depth, s=stem: resnet.ResNet(
                       d, stem=s, rngs=r))))
  for recipe, in_dim in (("matrix_ssl", 2048), ("byol", 2048),
                         ("barlow_twins", 2048), ("vicreg", 2048),
                         ("simclr", 2048)):
    rows.append((f"projector('{recipe}', {in_dim})",
                 count_params(lambda r, c=recipe, i=in_dim: heads.projector(
                     c, i, rngs=r))))
    if heads.HEAD_RECIPES[recipe]["predictor"]:
      rows.append((f"predictor('{recipe}')",
                   count_params(lambda r, c=recipe: heads.predictor(
                       c, rngs=r))))
  return rows


def main() -> None:
  print("| model | parameters |")
  print("|---|---:|")
  for name, n in _table():
    print(f"| `{name}` | {n:,} |")


if __name__ == "__main__":
  main()
