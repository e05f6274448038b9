"""A process that trains several methods (a notebook) releases each run's
input pipeline when the run ends: no tf.data iterator outlives its run and
the thread count does not grow from run to run.

Before, the trainer kept every pipeline alive until the process exited
(`train._KEEP_ALIVE`; +5 threads and one live iterator per run, measured
on TF 2.21; the end-to-end test below failed with 1, then 2 live
iterators).
"""

import contextlib
import gc
import os

import pytest

from mi_ssl_jax import configs, methods, sharding, train
from mi_ssl_jax.data import sources
from tests import train_toy_method

pytestmark = pytest.mark.usefixtures("fast_compile")

if sources.fashion_mnist_dir() is None:
  pytest.skip("needs the offline Fashion-MNIST files",
              allow_module_level=True)

tf = pytest.importorskip("tensorflow")


def _live_iterators() -> int:
  gc.collect()
  return sum(isinstance(o, tf.data.Iterator) for o in gc.get_objects())


def _threads() -> int:
  return len(os.listdir("/proc/self/task"))


def _toy():
  """The toy method (MLP + covariance term) on 8 x 8 Fashion-MNIST."""
  config = train_toy_method.get_config()
  config.update(dict(image_size=8, num_classes=10))
  return config


def _run(config, workdir):
  config.update(dict(dataset="fashion_mnist", total_steps=2, batch_size=32,
                     log_steps=1, tensorboard=False, diagnostics_steps=0))
  config.evals = type(config.evals)()
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == 2
  return _live_iterators(), _threads()


def test_training_pipeline_is_closed_when_its_block_ends():
  """The trainer's pipeline (`train._train_batches`) is closed when the run
  ends, also when it ends with an error; an injected iterator is the
  caller's and stays open."""
  config = _toy()
  config.update(dict(dataset="fashion_mnist", batch_size=32))
  method = methods.get_method(config.method)
  mesh = sharding.make_mesh()
  for error in (None, RuntimeError("a failed step")):
    with pytest.raises(RuntimeError) if error else contextlib.nullcontext():
      with train._train_batches(config, None, 32, method, mesh, 0) as it:
        batch = next(it)
        assert batch["image"].shape == (32, 8, 8, 1)
        assert _live_iterators() == 1
        if error:
          raise error
    assert _live_iterators() == 0
  mine = iter([{"image": batch["image"], "label": batch["label"]}] * 3)
  with train._train_batches(config, mine, 32, method, mesh, 0) as it:
    next(it)
  assert next(mine)["image"].shape == (32, 8, 8, 1)  # still usable


@pytest.mark.slow  # ~25 s (a ViT compile); run with `make test-all`
def test_two_methods_in_one_process_leave_no_pipeline_behind(tmp_path):
  assert _live_iterators() == 0
  first = _run(_toy(), tmp_path / "toy")
  second = _run(configs.load("quickstart:tiny"), tmp_path / "mmae")
  assert first[0] == second[0] == 0  # no live iterator after either
  # TF's shared thread pools exist after the first run; the second leaves
  # no thread of its own behind.
  assert second[1] <= first[1], (first, second)
