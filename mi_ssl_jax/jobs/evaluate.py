"""Evaluation job running several protocols on ONE feature extraction.

  python -m mi_ssl_jax.main --config=configs/evaluate.py \\
      --config.init_from=<pretraining workdir> --workdir=<out>

``config.protocols`` lists what to run: ``"knn"`` (the kNN job,
:mod:`mi_ssl_jax.jobs.knn`) and/or ``"linear"`` (the linear-probe job,
:mod:`mi_ssl_jax.jobs.linear_probe`, protocol ``config.protocol``).
Each writes the same result JSON as its own job would; the features of the
training and evaluation splits are computed once and shared, which halves
the cost of evaluating a run (the study runner uses this job).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mi_ssl_jax import config_lib
from mi_ssl_jax.jobs import base, knn, linear_probe

PROTOCOL_JOBS = {"knn": knn.evaluate_features,
                 "linear": linear_probe.evaluate_features}


def run(config: ml_collections.ConfigDict, workdir: str
        ) -> dict[str, dict[str, Any]]:
  """Runs ``config.protocols``; returns ``{protocol: result record}``."""
  protocols = tuple(config.protocols)
  unknown = [p for p in protocols if p not in PROTOCOL_JOBS]
  if unknown or not protocols:
    raise config_lib.ConfigError(
        f"config.protocols={protocols}: use one or more of "
        f"{', '.join(PROTOCOL_JOBS)}")
  job = base.FeatureJob.load(config)
  return {p: PROTOCOL_JOBS[p](config, workdir, job) for p in protocols}
