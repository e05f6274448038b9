"""Evaluation: kNN, few-shot ridge, linear probes, fine-tuning, diagnostics.

Every evaluator follows big_vision's protocol
``Evaluator(predict_fn, **cfg).run(state) -> Iterator[(name, value)]`` and is
built from ``config.evals`` by :func:`mi_ssl_jax.evaluators.common.from_config`.
Standalone jobs (linear probe, fine-tuning, kNN) write results through
:mod:`mi_ssl_jax.evaluators.results`, which names the protocol and its version.
"""

from mi_ssl_jax.evaluators.common import from_config

__all__ = ["from_config"]
