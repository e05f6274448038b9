"""Evaluators run inside the trainer's jax.transfer_guard("disallow")."""

import jax
import numpy as np

from mi_ssl_jax.evaluators import common, diagnostics, fewshot, knn, linear


def test_evaluators_make_no_implicit_transfers():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 6)).astype(np.float32)
  y = (np.arange(96) % 3).astype(np.int32)
  src = common.array_source(x, y, 40)
  evaluators = [
      knn.Evaluator(common.identity_predict_fn, train_data=src, test_data=src,
                    num_classes=3, ks=(5,)),
      fewshot.Evaluator(common.identity_predict_fn, train_data=src,
                        test_data=src, num_classes=3, shots=(2,),
                        l2_regs=(1.0, 10.0), val_per_class=4),
      linear.Evaluator(common.identity_predict_fn, train_data=src,
                       test_data=src, num_classes=3, protocol="simclr_linear",
                       overrides=dict(epochs=1, batch_size=16)),
      diagnostics.Evaluator(common.identity_predict_fn, data=src),
  ]
  with jax.transfer_guard("disallow"):
    for ev in evaluators:
      values = dict(ev.run(None, 0))
      assert values and all(np.isfinite(v) for v in values.values())
