"""Fine-tuning recipe pieces: protocol ``mae_finetune``, Mixup/CutMix, layer
decay.

* :mod:`.classifier`: the protocol, the backbone + head network and
  :func:`train_classifier` (which trains through :mod:`mi_ssl_jax.loop`);
* :mod:`.mixup`: timm-style batch Mixup / CutMix with label smoothing;
* :mod:`.layer_decay`: MAE's layer-wise learning-rate decay for ViTs.

The job that fine-tunes a pretrained run is :mod:`mi_ssl_jax.jobs.finetune`.
"""

from mi_ssl_jax.finetune.classifier import (
  MAE_FINETUNE,
  Classifier,
  FinetuneProtocol,
  backbone_features,
  evaluate,
  find_backbone,
  make_optimizer,
  make_schedule,
  make_train_step,
  train_classifier,
)

__all__ = [
    "MAE_FINETUNE", "Classifier", "FinetuneProtocol", "backbone_features",
    "evaluate", "find_backbone", "make_optimizer", "make_schedule",
    "make_train_step", "train_classifier",
]
