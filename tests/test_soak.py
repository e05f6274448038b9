"""Soak: the quick start survives 30 random interruptions bit for bit.

The real CLI trains the quick start's tiny M-MAE on 512 Fashion-MNIST
training images (batch 16: 32 steps per epoch) for 400 steps with a
checkpoint every 5 steps (saved asynchronously). The run is interrupted 30
times, each at a random moment after it has started training again, by
kill -9 or SIGTERM (chosen at random), and rerun with the same command
until it finishes. Checked: the final state equals an uninterrupted run's bit
for bit, `metrics.jsonl` has every step exactly once, and each SIGTERM
ended in a clean "Preempted" exit (status 75, errors.EXIT_RESTART).

Slow (~10 minutes on 2 CPU cores, most of it process start-up): not in
`make test`; run with `pytest -m slow tests/test_soak.py`. The result of the
last run is in docs/benchmarks.md ("Soak").
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from mi_ssl_jax import checkpointing, errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
STEPS, INTERRUPTIONS = 400, 30

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.path.exists(FMNIST) or os.environ.get("MI_SSL_DATA_DIR")),
        reason="Fashion-MNIST not installed (make fashion-mnist)"),
]


def _command(workdir):
  return [sys.executable, "-m", "mi_ssl_jax.main",
          "--config=configs/quickstart.py:tiny", f"--workdir={workdir}",
          f"--config.total_steps={STEPS}", "--config.ckpt_steps=5",
          "--config.train_split=train[:512]", "--config.tensorboard=False"]


def _env():
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("MI_SSL_DEBUG", None)
  return env


def _stored_arrays(workdir, step):
  """All arrays of checkpoint `step` of the run in `workdir`, as numpy."""
  return checkpointing.read_arrays(str(workdir / "checkpoints" / str(step)))


def _interrupted_run(workdir, rng):
  """Starts the command, interrupts it once training runs; returns what
  happened: ("kill"|"term"|"finished", returncode, output)."""
  proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(proc.stdout),
                            daemon=True)
  reader.start()
  kind = "kill" if rng.random() < 0.5 else "term"
  delay = rng.uniform(0.0, 0.6)
  try:
    deadline = time.monotonic() + 300
    while not any(re.search(r"\bstep \d+/", line) for line in lines):
      if proc.poll() is not None or time.monotonic() > deadline:
        break
      time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
    else:
      kind = "finished"
    proc.wait(timeout=300)
  finally:
    proc.kill()
  reader.join(timeout=10)
  return kind, proc.returncode, "".join(lines)


def test_thirty_random_interruptions_end_bit_identical(tmp_path):
  straight = tmp_path / "straight"
  out = subprocess.run(_command(straight), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]

  workdir = tmp_path / "soak"
  rng = np.random.default_rng(0)
  events, started = [], time.monotonic()
  while sum(kind != "finished" for kind, *_ in events) < INTERRUPTIONS:
    kind, code, text = _interrupted_run(workdir, rng)
    stopped = re.findall(r"Preempted at step (\d+)", text)
    resumed = re.findall(r"Resuming from checkpoint step (\d+)", text)
    events.append((kind, code, resumed[-1] if resumed else "-",
                   stopped[-1] if stopped else "-"))
    if kind == "kill":
      assert code == -signal.SIGKILL, text[-3000:]
    else:  # SIGTERM: a clean preemption (or, rarely, a normal finish).
      assert code == (errors.EXIT_RESTART if stopped else 0), text[-3000:]
      assert stopped or "Done at step" in text, text[-3000:]
    if kind == "finished":
      break
  final = subprocess.run(_command(workdir), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=900)
  assert final.returncode == 0, final.stderr[-3000:]
  print(f"soak: {len(events)} runs, "
        f"{sum(k == 'kill' for k, *_ in events)} kill -9, "
        f"{sum(k == 'term' for k, *_ in events)} SIGTERM, "
        f"{time.monotonic() - started:.0f} s; (kind, rc, resumed from, "
        f"preempted at): {events}")
  interrupted = sum(kind != "finished" for kind, *_ in events)
  assert interrupted == INTERRUPTIONS, (
      f"the run finished after {interrupted} interruptions; raise STEPS")

  a, b = _stored_arrays(straight, STEPS), _stored_arrays(workdir, STEPS)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  rows = [json.loads(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [row["step"] for row in rows]
  assert steps == list(range(1, STEPS + 1))
