"""Flax NNX models: ViT, MAE, ResNet, projector/predictor heads, EMA teacher.

No loss code and no config objects live here (docs/design.md §8.2). Modules hold
no RNG state after construction; stochastic ops take a PRNG ``key`` at call
time (a plain key, or a `ChunkKey` when the trainer runs a batch in chunks,
`rng.py`). Every public model returns float32 outputs, whatever its compute
``dtype``.
"""

from mi_ssl_jax.models.ema import (
    EMAParam,
    cosine_ema_momentum,
    ema_update,
    make_teacher,
)
from mi_ssl_jax.models.heads import (
    HEAD_RECIPES,
    MLPHead,
    predictor,
    projector,
)
from mi_ssl_jax.models.mae import (
    MAEOutput,
    MaskedAutoencoder,
    num_kept,
    patchify,
    random_masking,
    unpatchify,
)
from mi_ssl_jax.models.resnet import RESNET_LAYOUTS, ResNet
from mi_ssl_jax.models.rng import ChunkKey
from mi_ssl_jax.models.vit import (
    VIT_VARIANTS,
    VisionTransformer,
    decode_variant,
    sincos_pos_embed_2d,
)

__all__ = [
    "ChunkKey",
    "EMAParam",
    "HEAD_RECIPES",
    "MAEOutput",
    "MLPHead",
    "MaskedAutoencoder",
    "RESNET_LAYOUTS",
    "ResNet",
    "VIT_VARIANTS",
    "VisionTransformer",
    "cosine_ema_momentum",
    "decode_variant",
    "ema_update",
    "make_teacher",
    "num_kept",
    "patchify",
    "predictor",
    "projector",
    "random_masking",
    "sincos_pos_embed_2d",
    "unpatchify",
]
