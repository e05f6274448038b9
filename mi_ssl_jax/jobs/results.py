"""Evaluation results as JSON that always names the protocol that produced them.

"I can't reproduce the reported accuracy" usually means two probes that differ
(MAE's affine-free BN + LARS probe vs SimCLR's plain SGD probe). Every result
written here therefore carries the protocol name, its version, the effective
recipe and any field overridden relative to the canonical recipe, plus the
checkpoint step, dataset and split. A version is bumped whenever a change can
move the numbers.

Layout: ``<workdir>/eval/<protocol>-<dataset>-<split>-step<step>.json`` (one
file per evaluation) and one summary line printed per result, e.g.::

  mae_linear@v1 step=2000 fashion_mnist:test top1=84.21 top5=99.12
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from mi_ssl_jax import paths

RESULTS_DIR = "eval"


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.generic, jax.Array)):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


def make_result(*, protocol: str, version: int, metrics: Mapping[str, Any],
                step: int | None, dataset: str, split: str,
                recipe: Mapping[str, Any] | None = None,
                overrides: Mapping[str, Any] | None = None,
                checkpoint: str | None = None,
                extra: Mapping[str, Any] | None = None,
                features: str = "pretrained",
                seed: int | None = None) -> dict[str, Any]:
  """Builds the result record (a JSON-serialisable dict).

  Args:
    protocol: protocol name, e.g. ``"mae_linear"``.
    version: protocol version (int).
    metrics: metric name -> value (accuracies in percent).
    step: training step of the evaluated checkpoint (None: not from one).
    dataset: dataset name as given to ``mi_ssl_jax.data``.
    split: evaluated split.
    recipe: the effective recipe (all hyper-parameters).
    overrides: fields of ``recipe`` that differ from the canonical protocol.
    checkpoint: path of the evaluated checkpoint / pretraining workdir.
    extra: anything else worth keeping (timings, feature dim, ...).
    features: "pretrained" (the checkpoint) or a baseline name
      ("raw_pixels", "random_init"; `mi_ssl_jax.evaluators.baselines`).
    seed: the initialisation seed of a "random_init" baseline.
  """
  return _jsonable({
      "protocol": protocol,
      "protocol_version": int(version),
      "checkpoint_step": None if step is None else int(step),
      "checkpoint": checkpoint,
      "features": features,
      **({} if seed is None else {"seed": int(seed)}),
      "dataset": dataset,
      "split": split,
      "metrics": dict(metrics),
      "recipe": dict(recipe or {}),
      "overrides": dict(overrides or {}),
      "extra": dict(extra or {}),
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "device_count": jax.device_count(),
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  })


def _safe(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def result_path(workdir: str, result: Mapping[str, Any]) -> str:
  step = result.get("checkpoint_step")
  name = (f"{_safe(result['protocol'])}-{_safe(result['dataset'])}-"
          f"{_safe(result['split'])}-step{'none' if step is None else step}")
  features = result.get("features", "pretrained")
  if features != "pretrained":  # baselines: knn-fashion_mnist-test-raw_pixels
    name = (f"{_safe(result['protocol'])}-{_safe(result['dataset'])}-"
            f"{_safe(result['split'])}-{_safe(features)}")
    if result.get("seed") is not None:
      name += f"-seed{result['seed']}"
  return os.path.join(workdir, RESULTS_DIR, name + ".json")


def write_result(workdir: str, result: Mapping[str, Any]) -> str | None:
  """Writes ``result`` as JSON under ``<workdir>/eval/`` (process 0 only).

  Local files are written to a temporary name and renamed, remote ones (gs://)
  as one object, so a reader never sees a half-written result.

  Returns:
    The path written (None on processes other than 0).
  """
  if jax.process_index() != 0:
    return None
  path = result_path(workdir, result)
  paths.write_json(path, result)
  return path


def read_result(path: str) -> dict[str, Any]:
  """Reads a result JSON; a clear error if it is not one of ours."""
  try:
    result = paths.read_json(path)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read evaluation result {path}: {e}") from e
  for key in ("protocol", "protocol_version", "metrics"):
    if key not in result:
      raise ValueError(f"{path} is not an mi_ssl_jax evaluation result "
                       f"(missing '{key}')")
  return result


def summary_line(result: Mapping[str, Any]) -> str:
  """One line: ``<protocol>@v<version> step=<s> <dataset>:<split> k=v ...``."""
  features = result.get("features", "pretrained")
  parts = [f"{result['protocol']}@v{result['protocol_version']}",
           (f"step={result.get('checkpoint_step')}" if features ==
            "pretrained" else f"features={features}"),
           f"{result['dataset']}:{result['split']}"]
  for k, v in result["metrics"].items():
    parts.append(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}")
  if result.get("overrides"):
    parts.append("overrides=" + ",".join(sorted(result["overrides"])))
  return " ".join(parts)
