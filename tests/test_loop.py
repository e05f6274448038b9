"""The step loop shared by pre-training, probes and fine-tuning (loop.py).

A toy state w ∈ R, loss (w − x)² per step, several steps per call (a scan,
as the linear probe runs), so the tests exercise what only chunked calls
do: log and checkpoint steps that are crossed rather than hit.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mi_ssl_jax import checkpointing, errors, loop

TX = optax.sgd(0.1, momentum=0.9)


def _state():
  params = {"w": jnp.zeros(())}
  return loop.init_state(params, {}, TX.init(params))


def _one(state, x):
  loss, grads = jax.value_and_grad(
      lambda p: (p["w"] - x) ** 2)(state["params"])
  new, grad_norm, _ = loop.apply_gradients(state, TX, loss, grads, {})
  return new, {"loss": loss, "grad_norm": grad_norm}


STEP = jax.jit(lambda s, xs: jax.lax.scan(_one, s, xs))


def _chunks(start=0, total=10, k=3, nan_at=None):
  """Chunks of k steps (the last one shorter); x_s = sin(s)."""
  xs = np.sin(np.arange(total, dtype=np.float32))
  if nan_at is not None:
    xs[nan_at] = np.nan
  for i in range(0, total, k):
    lo = max(i, start)
    if lo < min(i + k, total):
      yield jnp.asarray(xs[lo:min(i + k, total)])


def _loop(run_dir, **kw):
  return loop.Loop(STEP, 10, 4, run_dir, steps_in=lambda xs: xs.shape[0],
                   **kw)


def _steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def test_crossed_log_and_checkpoint_steps(tmp_path):
  with loop.RunDir(str(tmp_path), 4, keep=10) as run_dir:
    run_dir.open_writer(10, 0)
    out = _loop(run_dir).run(_state(), _chunks())
    steps = run_dir.ckpt.all_steps()
  assert out.step == 10 and not out.preempted
  # Calls end at 3, 6, 9, 10: the first call, crossing 4, crossing 8, last.
  assert _steps(str(tmp_path)) == [3, 6, 9, 10]
  assert steps == [6, 9, 10]  # saved where a multiple of 4 was crossed
  assert out.metrics["skipped_steps"] == 0.0


def test_preempted_run_resumes_to_the_same_state(tmp_path, monkeypatch):
  with loop.RunDir(str(tmp_path / "ref"), 4) as run_dir:
    run_dir.open_writer(10, 0)
    ref = _loop(run_dir).run(_state(), _chunks())
  workdir = str(tmp_path / "run")
  with loop.RunDir(workdir, 4) as run_dir:
    run_dir.open_writer(10, 0)
    monkeypatch.setattr(run_dir.ckpt, "reached_preemption",
                        lambda step: step >= 6)
    cut = _loop(run_dir).run(_state(), _chunks())
  assert cut.preempted and cut.step == 6
  with loop.RunDir(workdir, 4) as run_dir:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=x.sharding), _state())
    start, state, restored = run_dir.restore_or_init(abstract, _state)
    assert (start, restored) == (6, True)
    run_dir.open_writer(10, start)
    out = _loop(run_dir).run(state, _chunks(start), start)
  for a, b in zip(jax.tree.leaves(out.state), jax.tree.leaves(ref.state),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert _steps(workdir) == [3, 6, 9, 10]  # each logged step once
  assert out.metrics == {**ref.metrics}


def test_nonfinite_stop_raises_a_user_error_and_saves_nothing_bad(tmp_path):
  with loop.RunDir(str(tmp_path), 4) as run_dir:
    run_dir.open_writer(10, 0)
    with pytest.raises(loop.NonFiniteError, match="step 5") as info:
      _loop(run_dir, nonfinite_hint="Do X.").run(_state(),
                                                  _chunks(nan_at=4))
    assert run_dir.ckpt.all_steps() == []  # raised before saving step 6
  assert isinstance(info.value, errors.UserError)
  assert "Do X." in str(info.value)


def test_nonfinite_skip_goes_on_without_applying_the_update():
  out = _loop(None, nonfinite="skip").run(_state(), _chunks(nan_at=4))
  assert out.step == 10 and out.metrics["skipped_steps"] == 1.0
  assert np.isfinite(float(out.state["params"]["w"]))
  assert int(out.state["last_nonfinite"]) == 4
  with pytest.raises(errors.UserError, match="'stop' or 'skip'"):
    _loop(None, nonfinite="ignore").run(_state(), _chunks())


def test_window_mean_and_data_running_out():
  def run(window_mean):  # calls end at 3, 6, 9
    return loop.Loop(STEP, 9, 4, steps_in=lambda xs: xs.shape[0],
                     window_mean=window_mean).run(_state(),
                                                  _chunks(total=9))
  window, last = run(True), run(False)
  losses = np.asarray(jax.device_get(jax.lax.scan(
      _one, _state(), jnp.sin(jnp.arange(9.0)))[1]["loss"]))
  assert last.metrics["loss"] == pytest.approx(float(losses[8]))
  assert window.metrics["loss"] == pytest.approx(float(losses[6:].mean()))
  with pytest.raises(loop.TrainingError, match="ran out at step 7 of 10"):
    _loop(None).run(_state(), list(_chunks())[:2])


def test_run_dir_releases_its_lock_on_errors(tmp_path):
  with pytest.raises(RuntimeError, match="boom"):
    with loop.RunDir(str(tmp_path), 4):
      raise RuntimeError("boom")
  with loop.RunDir(str(tmp_path), 4):  # not WorkdirInUse
    pass
  assert checkpointing.checkpoint_steps(str(tmp_path)) == []
