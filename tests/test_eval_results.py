"""Result JSON, summary line, and building evaluators from config.evals."""

import json

import ml_collections
import numpy as np
import pytest

from mi_ssl_jax.evaluators import common
from mi_ssl_jax.jobs import results


def test_result_json_carries_protocol_and_summary(tmp_path):
  r = results.make_result(
      protocol="mae_linear", version=1, metrics={"top1": np.float32(84.25),
                                                 "top5": 99.0},
      step=np.int64(2000), dataset="fashion_mnist", split="test",
      recipe={"epochs": 10}, overrides={"epochs": 10})
  path = results.write_result(str(tmp_path), r)
  assert path.endswith("eval/mae_linear-fashion_mnist-test-step2000.json")
  back = results.read_result(path)
  assert back["protocol"] == "mae_linear" and back["protocol_version"] == 1
  assert back["checkpoint_step"] == 2000
  assert (back["dataset"], back["split"]) == ("fashion_mnist", "test")
  assert back["metrics"]["top1"] == pytest.approx(84.25)
  line = results.summary_line(back)
  assert line == ("mae_linear@v1 step=2000 fashion_mnist:test top1=84.25 "
                  "top5=99.00 overrides=epochs")
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"metrics": {}}))
  with pytest.raises(ValueError, match="missing 'protocol'"):
    results.read_result(str(bad))


def test_from_config_builds_evaluators_with_log_steps():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 4)).astype(np.float32)
  y = rng.integers(0, 2, 64).astype(np.int32)
  config = ml_collections.ConfigDict()
  config.evals = dict(
      knn=dict(type="knn", log_steps=100, num_classes=2, ks=(5,),
               train_data=dict(dataset="toy", split="train"),
               test_data=dict(dataset="toy", split="test")),
      few=dict(type="fewshot", log_steps=50, num_classes=2, shots=(2,),
               l2_regs=(1.0,), train_data=dict(dataset="toy", split="train"),
               test_data=dict(dataset="toy", split="test")))
  calls = []

  def data_fn(dataset, split, batch_size):
    calls.append((dataset, split, batch_size))
    return common.array_source(x, y, batch_size)

  evals = common.from_config(config, common.identity_predict_fn,
                             data_fn=data_fn)
  assert sorted((n, s, p) for n, _, s, p in evals) == [
      ("few", 50, "few/"), ("knn", 100, "knn/")]
  assert ("toy", "train", 256) in calls
  knn_eval = {n: e for n, e, _, _ in evals}["knn"]
  names = [k for k, _ in knn_eval.run(None)]
  assert names == ["top1_k5"]
  config.evals = dict(bad=dict(type="nope", log_steps=1))
  with pytest.raises(ValueError, match="unknown evaluator type 'nope'"):
    common.from_config(config, common.identity_predict_fn)
