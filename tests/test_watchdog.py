"""The hang watchdog (mi_ssl_jax/watchdog.py).

In-process tests replace the exit with a recorder; the end-to-end tests run
the toy trainer (tests/train_toy_method.py) in a subprocess with a stall
injected through `MI_SSL_TEST_STALL`, and check the exit status
(`errors.EXIT_RESTART`), the stack dump in the workdir, and that the rerun
resumes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from mi_ssl_jax import watchdog
from mi_ssl_jax.errors import EXIT_RESTART

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recording(**kw):
  exits = []
  wd = watchdog.Watchdog(exit_fn=exits.append, poll_s=0.02, **kw)
  return wd, exits


def _sleeping_phase_that_stalls(wd, name, seconds):
  with wd.phase(name, 7):
    time.sleep(seconds)


def test_deadline_is_factor_times_median_after_enough_samples():
  wd, _ = _recording(factor=10, min_s=0.5, first_s=30)
  assert wd.deadline("step") == 30  # no history yet: the first ones compile
  for _ in range(watchdog.MIN_SAMPLES):
    with wd.phase("step", 1):
      time.sleep(0.1)
  assert 0.9 < wd.deadline("step") < 2.0  # 10 x median 0.1 s
  for _ in range(watchdog.MIN_SAMPLES):
    with wd.phase("checkpoint", 1):
      pass
  assert wd.deadline("checkpoint") == 0.5  # min_s floor
  with wd.phase("evaluate", 1):
    pass
  assert wd.deadline("evaluate") == 30  # evaluators: first_s always


def test_nested_phase_is_timed_alone():
  wd, _ = _recording(factor=10, min_s=1, first_s=30)
  with wd.phase("log", 3):
    with wd.phase("diagnostics", 3):
      time.sleep(0.3)
  assert wd._durations["diagnostics"][0] >= 0.3
  assert wd._durations["log"][0] < 0.1


def test_a_stalled_phase_dumps_every_thread_and_exits_75(tmp_path):
  wd, exits = _recording(factor=5, min_s=0.2, first_s=30,
                         dump_dir=str(tmp_path))
  with wd:
    for _ in range(watchdog.MIN_SAMPLES):
      with wd.phase("step", 1):
        time.sleep(0.01)
    _sleeping_phase_that_stalls(wd, "step", 1.5)
  assert exits == [EXIT_RESTART]
  assert "phase step of step 7" in wd.fired
  dumps = list(tmp_path.glob("hang-*-p0.txt"))
  assert len(dumps) == 1
  text = dumps[0].read_text()
  assert "_sleeping_phase_that_stalls" in text  # the main thread's stack
  assert "mi_ssl_watchdog" in text or "watchdog.py" in text


def test_remote_run_dir_gets_a_copy_of_the_local_dump(tmp_path, monkeypatch):
  """gs:// run directories: faulthandler needs a local file; the dump is
  copied through the path layer, and a failed copy still names the local
  file (here the path layer is redirected to a local "bucket")."""
  bucket = tmp_path / "bucket"
  bucket.mkdir()
  monkeypatch.setattr(watchdog.tempfile, "gettempdir",
                      lambda: str(tmp_path))
  monkeypatch.setattr(watchdog.paths, "is_remote", lambda p: True)
  monkeypatch.setattr(watchdog.paths, "join",
                      lambda d, name: bucket / name)
  wd, exits = _recording(factor=1, min_s=0.1, first_s=0.1,
                         dump_dir="gs://bucket/run")
  wd.fire("test")
  (copy,) = bucket.glob("hang-*-p0.txt")
  (local,) = tmp_path.glob("hang-*-p0.txt")
  assert copy.read_text() == local.read_text() and "test" in copy.read_text()

  def broken(path, text):
    raise OSError("bucket unreachable")

  monkeypatch.setattr(watchdog.paths, "write_text", broken)
  assert "failed or timed out" in wd._write_dump("again")
  assert exits == [EXIT_RESTART]


def test_healthy_phases_never_fire(tmp_path):
  wd, exits = _recording(factor=5, min_s=0.3, first_s=5,
                         dump_dir=str(tmp_path))
  with wd:
    for i in range(20):
      with wd.phase("step", i + 1):
        time.sleep(0.01)
  assert exits == [] and wd.fired is None
  assert not list(tmp_path.glob("hang-*"))


def test_sigterm_deadline_without_a_checkpoint(tmp_path):
  wd, exits = _recording(factor=0, min_s=1, first_s=30, sigterm_s=0.3,
                         dump_dir=str(tmp_path))
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(a[0]))
  try:
    with wd:
      with wd.phase("step", 4):
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
        time.sleep(1.5)
    assert seen == [signal.SIGTERM]  # the previous handler still ran
    assert signal.getsignal(signal.SIGTERM) is not wd._on_sigterm
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert exits == [EXIT_RESTART] and "SIGTERM" in wd.fired


def test_sigterm_then_a_checkpoint_is_left_alone(tmp_path):
  wd, exits = _recording(factor=0, min_s=1, first_s=30, sigterm_s=0.3,
                         dump_dir=str(tmp_path))
  previous = signal.signal(signal.SIGTERM, lambda *a: None)
  try:
    with wd:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.05)
      with wd.phase("checkpoint", 4):  # the loop reached its save
        time.sleep(0.8)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert exits == [] and wd.fired is None


def test_injected_stall_hook(monkeypatch):
  monkeypatch.setenv(watchdog.STALL_ENV, "log:5:2.5")
  assert watchdog.injected_stall("log", 5) == 2.5
  assert watchdog.injected_stall("log", 4) == 0
  assert watchdog.injected_stall("step", 5) == 0


# ----------------------------------------------------------- end to end ----

# A loop over a jitted step in its own process: no TensorFlow, starts fast.
_LOOP_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from mi_ssl_jax import loop, watchdog
state = loop.init_state({"w": jnp.zeros(())}, {}, {})
step_fn = jax.jit(lambda s, b: ({**s, "step": s["step"] + 1},
                                {"loss": jnp.float32(b)}))
with loop.RunDir(sys.argv[1], 100, async_save=False) as run_dir:
  run_dir.open_writer(20, 0)
  wd = watchdog.Watchdog(factor=5, min_s=2, first_s=60,
                         dump_dir=sys.argv[1], on_fire=run_dir.lock.release)
  loop.Loop(step_fn, 20, 5, run_dir, watchdog=wd).run(state, range(20))
print("finished")
"""


def test_loop_with_a_stalled_step_exits_75_with_a_dump(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             **{watchdog.STALL_ENV: "step:12:600"})
  start = time.monotonic()
  out = subprocess.run([sys.executable, "-c", _LOOP_SCRIPT, str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == EXIT_RESTART, out.stderr[-3000:]
  assert "finished" not in out.stdout
  last_error = [line for line in out.stderr.splitlines()
                if line.startswith("error: watchdog:")]
  assert last_error and "phase step of step 12" in last_error[0]
  assert "rerun the same command" in last_error[0]
  (dump,) = tmp_path.glob("hang-*-p0.txt")
  assert "loop.py" in dump.read_text()
  assert not (tmp_path / ".lock").exists()
  assert time.monotonic() - start < 280  # not the 600 s stall


def _toy(workdir, *overrides, env=None):
  full_env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                  JAX_DISABLE_MOST_OPTIMIZATIONS="true",
                  XLA_FLAGS="--xla_force_host_platform_device_count=1",
                  **(env or {}))
  return subprocess.Popen(
      [sys.executable, "-m", "mi_ssl_jax.main",
       "--config=tests/train_toy_method.py:steps=12,ckpt=4,log=2",
       "--config.async_checkpointing=False",
       f"--workdir={workdir}", *overrides],
      cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # two trainer processes: 19–76 s here, by load
def test_trainer_with_a_stalled_step_exits_75_and_the_rerun_resumes(tmp_path):
  workdir = tmp_path / "run"
  proc = _toy(workdir, "--config.watchdog_factor=5",
              "--config.watchdog_min_s=3",
              env={watchdog.STALL_ENV: "step:9:600"})
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == EXIT_RESTART, out[-3000:]
  assert "error: watchdog: phase step of step 9" in out
  dumps = list(workdir.glob("hang-*-p0.txt"))
  assert len(dumps) == 1, out[-2000:]
  text = dumps[0].read_text()
  assert "phase step of step 9" in text.splitlines()[0]
  # The main thread, stalled inside the loop's step phase:
  assert re.search(r"watchdog\.py\", line \d+ in phase\n.*\n.*loop\.py", text)
  assert not (workdir / ".lock").exists()  # released on the way out
  proc = _toy(workdir)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert "Resuming from checkpoint step 8" in out


@pytest.mark.slow  # a trainer process: 16–38 s here, by load
def test_sigterm_while_blocked_exits_75_after_the_deadline(tmp_path):
  workdir = tmp_path / "run"
  proc = _toy(workdir, "--config.watchdog_factor=0",
              "--config.watchdog_sigterm_s=3",
              env={watchdog.STALL_ENV: "log:6:600"})
  lines = []
  for line in proc.stdout:  # until the injected stall has begun
    lines.append(line)
    if "injected stall" in line:
      break
  else:
    pytest.fail("".join(lines[-50:]))
  start = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=120)
  waited = time.monotonic() - start
  out = "".join(lines) + rest
  assert proc.returncode == EXIT_RESTART, out[-3000:]
  assert "SIGTERM" in out and "no checkpoint started" in out
  assert 3 <= waited < 60, waited
  assert list(workdir.glob("hang-*-p0.txt"))
