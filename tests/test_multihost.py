"""Multi-host, for real: two JAX processes on this machine.

Each process gets 4 simulated CPU devices; they join through
`jax.distributed.initialize` on a localhost coordinator (the environment
variables `mi_ssl_jax.main` reads: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) and use gloo CPU collectives, so the global mesh has 8
devices over 2 processes, as on a 2-host pod slice. The real CLI trains the
quick start's tiny M-MAE on Fashion-MNIST into one shared workdir. Checked:
* the losses of every step and the final parameters equal those of a
  1-process 8-device run (the global batches do not depend on the process
  count: `data.pipeline._training_stream`; that each process reads a
  disjoint half of every batch is tested in tests/test_data.py);
* only process 0 writes metrics and prints progress; each step is logged
  once;
* the 2-process checkpoint resumes in a 1-process 8-device run and that
  run's checkpoint resumes in 2 processes again;
* the hosts agree on what to restore: a read failure injected on process 1
  only (`checkpointing.FAIL_RESTORE_VARIABLE`) makes both processes move
  the newest checkpoint aside and resume from the same older step;
* the offline jobs run on 2 processes: the kNN job and the linear probe
  (`configs/evaluate.py`) on a checkpoint give the numbers of a 1-process
  run (kNN and every diagnostic equal; the probe's training loss to 1e-5
  relative, its accuracy within one test image: its gradient all-reduces
  sum in another order);
* FSDP with its `fsdp` axis across the two processes trains as 1-process
  data parallelism does, and its checkpoint resumes in 1 process (slow);
* SIGTERM to both processes (a preemption) stops both at the same step
  with one checkpoint of that step and exit status 75
  (`errors.EXIT_RESTART`), which a 1-process run resumes;
* a process that finishes after process 0 (which hosts JAX's coordination
  service) exits with 0 instead of aborting.
"""

import json
import os
import pathlib
import re
import signal
import socket
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
pytestmark = pytest.mark.skipif(
    not (os.path.exists(FMNIST) or os.environ.get("MI_SSL_DATA_DIR")),
    reason="Fashion-MNIST not installed (make fashion-mnist)")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "SLURM_"))}
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             **extra)
  return env


def _args(workdir, steps, ckpt_steps=2):
  return [sys.executable, "-m", "mi_ssl_jax.main",
          "--config=configs/quickstart.py:tiny", f"--workdir={workdir}",
          f"--config.total_steps={steps}", f"--config.ckpt_steps={ckpt_steps}",
          "--config.tensorboard=False"]


def _start_two(workdir, steps, ckpt_steps=2, args=None, **env):
  """Two processes of `args` (default: the tiny quick start's training)."""
  port = _free_port()
  return [subprocess.Popen(
      args or _args(workdir, steps, ckpt_steps), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i), **env))
          for i in range(2)]


def _two_processes(workdir, steps, args=None, **env):
  procs = _start_two(workdir, steps, args=args, **env)
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    finally:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
    assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
  return outs


def _one_process(workdir, steps):
  out = subprocess.run(_args(workdir, steps), cwd=ROOT, env=_env(8),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


def _rows(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def _logged_steps(workdir):
  return [row["step"] for row in _rows(workdir)]


def _losses(workdir):
  return {row["step"]: row["loss"] for row in _rows(workdir) if "loss" in row}


def _stored_arrays(workdir, step):
  """All arrays of checkpoint `step` of the run in `workdir`, as numpy."""
  return checkpointing.read_arrays(str(workdir / "checkpoints" / str(step)))


_LEAVE_LATE = """
import sys, time
import jax
from mi_ssl_jax import main
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
if sys.argv[2] == "1":
  time.sleep(3)  # process 0 (the coordination service) is done first
print("leaving", flush=True)
main._leave(0)
"""


def test_the_last_process_to_finish_exits_cleanly(tmp_path):
  """Process 0 hosts JAX's coordination service; a process still connected
  when it exits aborts (SIGABRT). The command line's exit (`main._leave`)
  leaves the cluster first, so a host that finishes later exits with 0."""
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-c", _LEAVE_LATE, address, str(i)], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(1)) for i in range(2)]
  for i, p in enumerate(procs):
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0 and "leaving" in out, (
        f"process {i}:\n{out[-3000:]}")


def test_two_processes_train_checkpoint_and_resume_across_topologies(
    tmp_path):
  workdir = tmp_path / "run"
  out0, out1 = _two_processes(workdir, 4)
  assert "step 4/4" in out0 and "step 4/4" not in out1  # process 0 prints
  assert "Done at step 4" in out0 and "Done at step 4" in out1
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "4"]
  assert _logged_steps(workdir) == [1, 2, 3, 4]

  # The same 4 steps in one process with 8 devices: same losses, same state.
  # Not bit for bit: all-reduces over gloo and inside one process sum in
  # different orders, and Adam's m/√v turns that float32 roundoff of
  # near-zero gradients into differences of up to ~5e-6 in a few parameters
  # (updates are ~1.6e-4 at this step), hence the absolute tolerance.
  single = tmp_path / "single"
  _one_process(single, 4)
  two, one = _losses(workdir), _losses(single)
  assert sorted(two) == sorted(one) == [1, 2, 3, 4]
  np.testing.assert_allclose([two[s] for s in sorted(two)],
                             [one[s] for s in sorted(one)], rtol=1e-5)
  state_two, state_one = _stored_arrays(workdir, 4), _stored_arrays(single, 4)
  assert jax.tree.structure(state_two) == jax.tree.structure(state_one)
  for a, b in zip(jax.tree.leaves(state_two), jax.tree.leaves(state_one),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)

  # The 2-process checkpoint in one process with 8 devices (a longer run:
  # accepted on resume, with a warning) ...
  log = _one_process(workdir, 8)
  assert "Resuming from checkpoint step 4" in log
  assert "config.total_steps 4 -> 8 changed" in log
  assert _logged_steps(workdir) == list(range(1, 9))
  # ... and that one back in two processes, whose restore agrees: process 1
  # alone fails to read the newest checkpoint (step 8), so both move it
  # aside and resume from step 6 (written by the 1-process run).
  outs = _two_processes(workdir, 10, **{
      checkpointing.FAIL_RESTORE_VARIABLE: "1"})
  for out in outs:
    assert "unreadable on process 1" in out, out[-3000:]
    assert "Resuming from checkpoint step 6" in out, out[-3000:]
    assert "Done at step 10" in out
  assert "injected read failure" in outs[1]
  assert [p.name for p in (workdir / "checkpoints").iterdir()
          if p.name.startswith("corrupt-8-")]
  assert _logged_steps(workdir) == list(range(1, 11))


FSDP_ARGS = ("--config.param_sharding=fsdp", "--config.fsdp_min_size=256",
             "--config.mesh=(('data', 1), ('fsdp', -1))")


@pytest.mark.slow  # ~2-3 min (three trainer runs); run with `make test-all`
def test_fsdp_over_two_processes_matches_data_parallel_and_resumes(
    tmp_path):
  """FSDP whose `fsdp` axis spans both processes (fsdp=8 over 2 hosts of 4
  devices: each host holds half of every split parameter) trains
  as 1-process data parallelism does, and its checkpoint (shards written by
  both hosts) resumes in one process under data parallelism."""
  fsdp, single = tmp_path / "fsdp", tmp_path / "single"
  _two_processes(fsdp, 4, args=_args(fsdp, 4) + list(FSDP_ARGS))
  _one_process(single, 4)
  two, one = _losses(fsdp), _losses(single)
  assert sorted(two) == sorted(one) == [1, 2, 3, 4]
  np.testing.assert_allclose([two[s] for s in sorted(two)],
                             [one[s] for s in sorted(one)], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(_stored_arrays(fsdp, 4)),
                  jax.tree.leaves(_stored_arrays(single, 4)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
  log = _one_process(fsdp, 6)  # the FSDP checkpoint, data parallel
  assert "Resuming from checkpoint step 4" in log
  assert _logged_steps(fsdp) == list(range(1, 7))


@pytest.mark.slow  # CI time budget; run with `make test-all`
def test_sigterm_to_both_processes_saves_one_consistent_checkpoint(tmp_path):
  """A preemption: both processes get SIGTERM mid-run, agree on a step
  through JAX's preemption sync point, save that step once and exit with
  the restart status (75)."""
  workdir = tmp_path / "run"
  procs = _start_two(workdir, 10_000, ckpt_steps=100_000)
  outs = [[], []]
  threads = [threading.Thread(target=lambda p=p, o=o: o.extend(p.stdout),
                              daemon=True)
             for p, o in zip(procs, outs, strict=True)]
  for t in threads:
    t.start()
  try:
    deadline = time.monotonic() + 400
    while not re.search(r"step ([3-9]|\d\d+)/", "".join(outs[0])):
      assert time.monotonic() < deadline, "".join(outs[0])[-3000:]
      assert all(p.poll() is None for p in procs), "".join(outs[0])[-3000:]
      time.sleep(0.5)
    for p in procs:
      p.send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=300)
  finally:
    for p in procs:
      p.kill()
  for t in threads:
    t.join(timeout=10)
  texts = ["".join(o) for o in outs]
  for i, (p, text) in enumerate(zip(procs, texts, strict=True)):
    assert p.returncode == errors.EXIT_RESTART, f"process {i}:\n{text[-3000:]}"
    assert "preempted: training stopped at step" in text
  stopped = [re.findall(r"Preempted at step (\d+)", t) for t in texts]
  assert stopped[0] and stopped[0] == stopped[1], texts[0][-3000:]
  step = int(stopped[0][0])
  assert [p.name for p in (workdir / "checkpoints").iterdir()
          if p.name.isdigit()] == [str(step)]
  assert _logged_steps(workdir) == list(range(1, step + 1))
  log = _one_process(workdir, step + 2)
  assert f"Resuming from checkpoint step {step}" in log
  assert _logged_steps(workdir)[-1] == step + 2


@pytest.mark.usefixtures("fast_compile")  # and the same in the subprocesses
@pytest.mark.parametrize("lidar", [
    False,
    # The kNN job's multi-crop diagnostics (LiDAR, DiME) on the first
    # evaluation images, sent from process 0 (`FeatureJob.eval_images`):
    # twice the CPU time, so with `make test-all`.
    pytest.param(True, marks=pytest.mark.slow)])
def test_knn_and_linear_probe_jobs_on_two_processes_match_one(tmp_path,
                                                               lidar):
  """The offline jobs restore onto every host's devices and see the same
  examples in the same order (`evaluators.common.dataset_order`, the same
  LiDAR images), so the kNN job and the linear probe of a checkpoint give
  the 1-process numbers."""
  from mi_ssl_jax import configs, train  # noqa: PLC0415
  from mi_ssl_jax.jobs import evaluate  # noqa: PLC0415
  run = tmp_path / "run"
  config = configs.load("quickstart", "tiny")
  config.tensorboard = False
  train.train_and_evaluate(config, str(run))  # 8 devices, this process
  job = {"init_from": str(run), "train_split": "train[:1024]",
         "eval_split": "test[:256]", "batch_size": 128, "lidar": lidar,
         "overrides.epochs": 2, "overrides.batch_size": 256}
  one = configs.load("evaluate")  # the same job, in this process
  for key, value in job.items():
    *parents, leaf = key.split(".")
    target = one
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  evaluate.run(one, str(tmp_path / "one"))
  _two_processes(tmp_path / "two", 0, JAX_DISABLE_MOST_OPTIMIZATIONS="true",
                 args=[
      sys.executable, "-m", "mi_ssl_jax.main", "--config=configs/evaluate.py",
      f"--workdir={tmp_path / 'two'}",
      *(f"--config.{k}={v}" for k, v in job.items())])
  names = sorted(p.name for p in (tmp_path / "one" / "eval").glob("*.json"))
  assert len(names) == 3  # kNN, its diagnostics, the linear probe
  for name in names:
    a, b = (json.loads((tmp_path / w / "eval" / name).read_text())
            for w in ("one", "two"))
    if name.startswith("knn"):
      assert a["metrics"] == b["metrics"], name
      assert ("lidar" in a["extra"]["diagnostics"]) == lidar
      for k, v in a["extra"]["diagnostics"].items():
        np.testing.assert_allclose(b["extra"]["diagnostics"][k], v,
                                   rtol=1e-5, err_msg=k)
      assert a["extra"]["num_eval"] == b["extra"]["num_eval"] == 256
      assert a["device_count"] == b["device_count"] == 8
    elif name.startswith("simclr_linear"):
      np.testing.assert_allclose(b["metrics"]["train_loss"],
                                 a["metrics"]["train_loss"], rtol=1e-5)
      for k in ("top1", "top5"):  # one test image is 1/256 = 0.39 points
        assert abs(a["metrics"][k] - b["metrics"][k]) <= 100 / 256, k
    else:  # the spectrum diagnostics of the evaluation features
      assert sorted(a) == sorted(b)
      for k, v in a.items():
        np.testing.assert_allclose(b[k], v, rtol=1e-5, atol=1e-7,
                                   err_msg=k)
