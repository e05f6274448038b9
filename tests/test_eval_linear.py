"""Linear probes on fixed features: vs scikit-learn, protocols, padding."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mi_ssl_jax import errors, loop
from mi_ssl_jax.evaluators import common, linear


def _gaussian_classes(rng, n, c, d, spread):
  centers = rng.normal(size=(c, d))
  y = rng.integers(0, c, n)
  x = centers[y] + spread * rng.normal(size=(n, d))
  return x.astype(np.float32), y.astype(np.int32)


def _split(x, y):
  return x[:3000], y[:3000], x[3000:], y[3000:]


@pytest.fixture(scope="module")
def datasets():
  rng = np.random.default_rng(0)
  x, y = _gaussian_classes(rng, 4000, 8, 24, 1.6)
  # "shifted": an offset and uneven scales, as real backbones give; the
  # affine-free BN of mae_linear removes them.
  shifted = x * rng.uniform(0.5, 2.0, size=(1, 24)).astype(np.float32) + 3.0
  return {"raw": _split(x, y), "shifted": _split(shifted, y)}


# LARS moves each weight matrix by lr·trust·‖W‖ per step whatever the gradient
# size, so a probe of only ~300 steps (instead of ImageNet's thousands) needs a
# larger base_lr; recorded as an override like every deviation.
RUNS = {
    "simclr_linear": ("raw", dict(epochs=30, batch_size=256, base_lr=0.5)),
    "mae_linear": ("shifted", dict(epochs=30, batch_size=256, warmup_epochs=3,
                                   base_lr=8.0)),
}


@pytest.fixture(scope="module")
def trained(datasets):
  out = {}
  for name, (features, overrides) in RUNS.items():
    xtr, ytr, xte, yte = datasets[features]
    protocol, changed = linear.get_protocol(name, **overrides)
    metrics, head = linear.train_linear_probe(
        xtr, ytr, {"test": (xte, yte)}, num_classes=8, protocol=protocol)
    out[name] = (metrics, head, changed)
  return out


@pytest.mark.parametrize("name", sorted(RUNS))
def test_probe_matches_sklearn_logistic_regression(datasets, trained, name):
  features, overrides = RUNS[name]
  xtr, ytr, xte, yte = datasets[features]
  # Standardised for lbfgs (the raw shifted features converge slowly).
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
  clf.fit(xtr, ytr)
  sklearn_acc = 100.0 * clf.score(xte, yte)
  metrics, _, changed = trained[name]
  assert changed == {k: v for k, v in overrides.items()
                     if getattr(linear.PROTOCOLS[name], k) != v}
  assert 50.0 < sklearn_acc < 95.0  # a task where the probe can be wrong
  assert abs(metrics["test/top1"] - sklearn_acc) <= 1.0, (metrics, sklearn_acc)


def test_protocol_recipes_and_overrides():
  mae, simclr = linear.MAE_LINEAR, linear.SIMCLR_LINEAR
  assert (mae.batch_norm, mae.optimizer, mae.weight_decay) == (
      True, "lars", 0.0)
  assert mae.lr == pytest.approx(0.05 * 8192 / 256)
  assert (simclr.batch_norm, simclr.optimizer, simclr.init_std) == (
      False, "sgd_nesterov", 0.0)
  assert simclr.lr == pytest.approx(0.1 * 4096 / 256)
  with pytest.raises(ValueError, match="unknown linear-probe fields"):
    linear.get_protocol("mae_linear", epoch=3)
  with pytest.raises(ValueError, match="cannot be overridden"):
    linear.get_protocol("mae_linear", version=2)
  with pytest.raises(ValueError, match="unknown linear-probe protocol"):
    linear.get_protocol("byol_linear")


def test_head_evaluation_padded_equals_unpadded(datasets, trained):
  _, _, xte, yte = datasets["shifted"]
  head = trained["mae_linear"][1]
  # 1000 rows: one full batch of 1000 vs batches of 48 with a padded tail.
  full = linear.evaluate_head(head, xte, yte, num_classes=8, batch_size=1000)
  padded = linear.evaluate_head(head, xte, yte, num_classes=8, batch_size=48)
  assert full == padded
  # An explicit mask drops rows exactly like slicing them away.
  mask = np.arange(len(yte)) < 700
  masked = linear.evaluate_head(head, xte, yte, mask, num_classes=8,
                                batch_size=64)
  sliced = linear.evaluate_head(head, xte[:700], yte[:700], num_classes=8)
  assert masked == sliced


def test_evaluator_runs_through_predict_fn():
  rng = np.random.default_rng(5)
  x, y = _gaussian_classes(rng, 600, 3, 6, 0.2)
  ev = linear.Evaluator(
      common.identity_predict_fn, train_data=common.array_source(x, y, 100),
      test_data=common.array_source(x[:200], y[:200], 100), num_classes=3,
      protocol="simclr_linear", overrides=dict(epochs=5, batch_size=64))
  metrics = dict(ev.run(None))
  assert metrics["test/top1"] > 95.0
  assert np.isfinite(metrics["train/loss"])


def _small_probe(tmp_path=None, feats=None, **kw):
  rng = np.random.default_rng(7)
  x, y = _gaussian_classes(rng, 600, 3, 6, 0.5)
  if feats is not None:
    x = feats(x)
  protocol, _ = linear.get_protocol("mae_linear", epochs=5, batch_size=64,
                                    base_lr=2.0)
  return linear.train_linear_probe(
      x, y, {"test": (x[:200], y[:200])}, num_classes=3, protocol=protocol,
      steps_per_call=4,
      workdir=None if tmp_path is None else str(tmp_path), **kw)


def test_probe_trains_through_the_loop_and_resumes_exactly(tmp_path,
                                                           monkeypatch):
  """A probe with a run directory checkpoints, logs and resumes to the same
  head as one trained in memory (9 steps per epoch in calls of 4, 4, 1)."""
  from mi_ssl_jax import checkpointing  # noqa: PLC0415
  ref_metrics, ref_head = _small_probe()
  real = checkpointing.Checkpointer.reached_preemption
  monkeypatch.setattr(checkpointing.Checkpointer, "reached_preemption",
                      lambda self, step: step >= 13 or real(self, step))
  with pytest.raises(loop.Preempted, match="step 13"):
    _small_probe(tmp_path)
  assert checkpointing.checkpoint_steps(str(tmp_path)) == [13]
  monkeypatch.setattr(checkpointing.Checkpointer, "reached_preemption", real)
  metrics, head = _small_probe(tmp_path)
  assert metrics == ref_metrics
  for a, b in zip(jax.tree.leaves(nnx.state(head)),
                  jax.tree.leaves(nnx.state(ref_head)), strict=True):
    np.testing.assert_array_equal(a, b)
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [4, 9, 17, 18, 27, 36, 45]  # first call, each epoch
  # Rerunning a finished probe only restores it: same result, no training.
  assert _small_probe(tmp_path)[0] == ref_metrics


def test_nonfinite_features_stop_the_probe_with_a_user_error():
  bad = lambda x: np.where(np.arange(len(x))[:, None] == 5, np.nan, x)
  with pytest.raises(loop.NonFiniteError, match="base_lr") as info:
    _small_probe(feats=bad)
  assert isinstance(info.value, errors.UserError)
