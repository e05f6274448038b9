"""The GPU study's grid and its sizing: which runs, how long, in what order.

Pure Python and numpy (no JAX, no TensorFlow), so the arithmetic is tested
without a device: `size_grid` turns the calibration's measured costs into
the number of epochs (and, when even `min_epochs` does not fit, fewer
seeds, then fewer methods), `epoch_batches` is the runs' data order, and
`run_key` the identity a finished run's JSON is checked against.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

# Method -> (family, packaged recipe). Priority order: when the deadline
# cannot hold every method, the last ones are dropped first.
RECIPES = {
    "mmae": ("mae", "fmnist_mae:method=mmae"),
    "mae": ("mae", "fmnist_mae:method=mae"),
    "matrix_ssl": ("siamese", "fmnist_siamese:method=matrix_ssl"),
    "umae": ("mae", "fmnist_mae:method=umae"),
    "mec": ("siamese", "fmnist_siamese:method=mec"),
    # The pre-registered positive control (docs/results.md, "Pre-registered
    # experiment"): VICReg on the small ViT, chosen on the validation split.
    "vicreg_vit": ("vit_siamese", "fmnist_siamese:method=vicreg,vit"),
}
DEFAULT_METHODS = tuple(RECIPES)
# Evaluation readouts per family (the MAE family: the papers' CLS token and
# all patch tokens, as the CPU study; `mi_ssl_jax/methods/mae.py`).
READOUTS = {"mae": ("cls", "tokens"), "siamese": ("",), "vit_siamese": ("",)}
# Bumped when the driver's training or evaluation changes what a run means:
# finished runs of another version are not reused.
CODE_VERSION = 1


def family(method: str) -> str:
  return RECIPES[method][0]


def run_name(method: str, seed: int) -> str:
  """"mmae_s0": the file name (without .json) of a run's result."""
  return f"{method}_s{seed}"


def total_steps(epochs: float, steps_per_epoch: int, steps_per_call: int
                ) -> int:
  """Steps of a run: `epochs` × steps per epoch, rounded to a whole number
  of jitted calls of `steps_per_call` steps (at least one call), so one
  compiled program runs the whole run."""
  calls = max(1, round(epochs * steps_per_epoch / steps_per_call))
  return calls * steps_per_call


def epoch_batches(n: int, batch: int, seed: int, start: int, count: int
                  ) -> np.ndarray:
  """Example indices [count, batch] of steps start .. start+count−1.

  Epoch e is `default_rng([seed, e]).permutation(n)` cut into n // batch
  batches (the remainder dropped, `DataLoader(drop_last=True)`), so any
  step's batch is known without replaying the steps before it.
  """
  spe = n // batch
  rows = []
  for step in range(start, start + count):
    epoch, pos = divmod(step, spe)
    perm = _permutation(n, seed, epoch)
    rows.append(perm[pos * batch:(pos + 1) * batch])
  return np.stack(rows).astype(np.int32)


_PERMS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  key = (n, seed, epoch)
  if key not in _PERMS:
    _PERMS.clear()  # one epoch at a time
    _PERMS[key] = np.random.default_rng([seed, epoch]).permutation(n)
  return _PERMS[key]


def chunks(n: int, batch: int, seed: int, steps: int, steps_per_call: int
           ) -> Iterator[np.ndarray]:
  """The run's index chunks [steps_per_call, batch], in step order."""
  for start in range(0, steps, steps_per_call):
    yield epoch_batches(n, batch, seed, start, steps_per_call)


def run_key(config_json: str, extra: Mapping[str, Any]) -> str:
  """SHA-1 of a run's resolved config (JSON text) and the study settings
  that change its numbers (`extra`: data sizes, probe recipe, ...)."""
  blob = json.dumps({"config": json.loads(config_json), "extra": extra,
                     "code_version": CODE_VERSION}, sort_keys=True,
                    default=str)
  return hashlib.sha1(blob.encode()).hexdigest()


# ------------------------------------------------------------- sizing ----


@dataclasses.dataclass(frozen=True)
class Costs:
  """What the calibration measured (seconds).

  Attributes:
    step_s: method -> seconds per training step (median over timed calls).
    compile_s: method -> seconds to compile its run's program (paid again
      when the sized run length differs from the calibrated one).
    eval_s: seconds of one evaluation (kNN + linear probe of one readout).
    steps_per_epoch: training steps per epoch.
  """
  step_s: Mapping[str, float]
  compile_s: Mapping[str, float]
  eval_s: float
  steps_per_epoch: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """The sized grid: every method × seed for `epochs` epochs."""
  epochs: int
  methods: tuple[str, ...]
  seeds: tuple[int, ...]
  estimate_s: float  # predicted seconds of the whole grid
  dropped: tuple[str, ...] = ()  # what was left out to fit, in words


def _evals(methods: Sequence[str], seeds: Sequence[int]) -> int:
  """Evaluations of a grid: each run's readouts and each (family, seed)'s
  random-init baseline's readouts."""
  runs = sum(len(READOUTS[family(m)]) for m in methods) * len(seeds)
  fams = {family(m) for m in methods}
  return runs + sum(len(READOUTS[f]) for f in fams) * len(seeds)


def grid_seconds(costs: Costs, methods: Sequence[str], seeds: Sequence[int],
                 epochs: float, recompile: bool) -> float:
  """Predicted seconds of the grid at `epochs` epochs per run (`recompile`:
  the calibrated programs cannot be reused, the length differs)."""
  train = sum(costs.step_s[m] * costs.steps_per_epoch * epochs
              for m in methods) * len(seeds)
  # The program holds the seed's keys and the schedule's length: each run
  # compiles its own, except the calibrated ones (first seed, max epochs).
  compiles = len(seeds) if recompile else len(seeds) - 1
  compile_s = sum(costs.compile_s[m] for m in methods) * compiles
  return train + compile_s + _evals(methods, seeds) * costs.eval_s


def _epochs_that_fit(costs, methods, seeds, budget_s, max_epochs) -> int:
  """The most whole epochs <= max_epochs whose grid fits `budget_s`
  (0 when not even one does). At `max_epochs` the calibrated programs are
  reused; any other length compiles each run's program again."""
  if grid_seconds(costs, methods, seeds, max_epochs, False) <= budget_s:
    return int(max_epochs)
  per_epoch = grid_seconds(costs, methods, seeds, 1, False) - \
      grid_seconds(costs, methods, seeds, 0, False)
  fixed = grid_seconds(costs, methods, seeds, 0, True)
  if per_epoch <= 0:
    return int(max_epochs)
  return max(0, min(int(max_epochs) - 1,
                    math.floor((budget_s - fixed) / per_epoch)))


def size_grid(costs: Costs, methods: Sequence[str], seeds: Sequence[int],
              budget_s: float, max_epochs: int, min_epochs: int) -> Plan:
  """The largest grid that fits `budget_s` seconds.

  First every method × seed with the most epochs <= `max_epochs`; if that is
  below `min_epochs`, one seed; then methods dropped from the end of
  `methods` (the priority order) until `min_epochs` fit.

  Raises:
    ValueError: not even the first method, one seed, `min_epochs` fits.
  """
  methods, seeds = tuple(methods), tuple(seeds)
  dropped = []
  while methods:
    epochs = _epochs_that_fit(costs, methods, seeds, budget_s, max_epochs)
    if epochs >= min_epochs:
      return Plan(epochs, methods, seeds, grid_seconds(
          costs, methods, seeds, epochs, epochs != max_epochs),
                  tuple(dropped))
    if len(seeds) > 1:
      dropped.append(f"seeds {', '.join(map(str, seeds[1:]))}")
      seeds = seeds[:1]
    else:
      dropped.append(f"method {methods[-1]}")
      methods = methods[:-1]
  raise ValueError(
      f"the deadline ({budget_s:.0f} s left after calibration) holds not even "
      f"{min_epochs} epoch(s) of one method; raise --deadline_min or lower "
      "--min_epochs")
