"""Periodic evaluators: what the trainer runs every `log_steps` and at the end.

Every evaluator follows big_vision's protocol
``Evaluator(predict_fn, **cfg).run(state) -> Iterator[(name, value)]`` and is
built from ``config.evals`` by :func:`mi_ssl_jax.evaluators.common.from_config`:
``knn``, ``fewshot``, ``linear`` (the named linear-probe protocols, trained
through :mod:`mi_ssl_jax.loop`) and ``diagnostics``, plus the ``baselines``
they can run beside the model. The offline jobs built on them
(``config.job``: linear probe, kNN, evaluate, fine-tuning) live in
:mod:`mi_ssl_jax.jobs`, the fine-tuning recipe in :mod:`mi_ssl_jax.finetune`.
"""

from mi_ssl_jax.evaluators.common import from_config

__all__ = ["from_config"]
