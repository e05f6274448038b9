"""Multi-host, for real: two JAX processes on this machine.

Each process gets 4 simulated CPU devices; they join through
`jax.distributed.initialize` on a localhost coordinator (the environment
variables `mi_ssl_jax.main` reads: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) and use gloo CPU collectives, so the global mesh has 8
devices over 2 processes, as on a 2-host pod slice. The real CLI trains the
quick start's tiny M-MAE on Fashion-MNIST into one shared workdir. Checked:
both processes finish; only process 0 writes metrics and prints progress;
each step is logged once; the 2-process checkpoint resumes in a 1-process
8-device run and that run's checkpoint resumes in 2 processes again.

Not checked here: equality of the 2-process losses with a 1-process run.
Each process reads its own share of the split (`data.process_split`,
disjointness tested in tests/test_data.py), so the global batches of a
2-process run are not those of a 1-process run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

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


def _args(workdir, steps):
  return [sys.executable, "-m", "mi_ssl_jax.main",
          "--config=configs/quickstart.py:tiny", f"--workdir={workdir}",
          f"--config.total_steps={steps}", "--config.ckpt_steps=2",
          "--config.tensorboard=False"]


def _two_processes(workdir, steps):
  port = _free_port()
  procs = [subprocess.Popen(
      _args(workdir, steps), cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True,
      env=_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
           for i in range(2)]
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


def _logged_steps(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["step"] for line in lines]


def test_two_processes_train_checkpoint_and_resume_across_topologies(
    tmp_path):
  workdir = tmp_path / "run"
  out0, out1 = _two_processes(workdir, 4)
  assert "step 4/4" in out0 and "step 4/4" not in out1  # process 0 prints
  assert "Done at step 4" in out0 and "Done at step 4" in out1
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "4"]
  assert _logged_steps(workdir) == [1, 2, 3, 4]

  # The 2-process checkpoint in one process with 8 devices ...
  log = _one_process(workdir, 6)
  assert "Resuming from checkpoint step 4" in log
  assert _logged_steps(workdir) == [1, 2, 3, 4, 5, 6]
  # ... and that one back in two processes.
  out0, _ = _two_processes(workdir, 8)
  assert "Resuming from checkpoint step 6" in out0
  assert _logged_steps(workdir) == list(range(1, 9))
