"""The study runner end to end on the `tiny` grid (2 methods × 1 seed, a few
steps, small evaluation sets): every task runs, the report has the rows,
baselines, figures and JSON summary; a rerun skips every finished task; a
failing task is reported as one `error:` line with exit status 2."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(FMNIST) or os.environ.get("MI_SSL_DATA_DIR")),
    reason="Fashion-MNIST not installed (make fashion-mnist)")


def _study(tmp_path, *extra):
  # One device per task process: the runner's subprocesses inherit it.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
      [sys.executable, "-m", "mi_ssl_jax.study",
       "--config=configs/study/fmnist.py:tiny", f"--workdir={tmp_path}/w",
       f"--config.results_md={tmp_path}/results.md",
       f"--config.figures_dir={tmp_path}/figures", *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def test_tiny_study_runs_reports_and_resumes(tmp_path):
  first = _study(tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  md = (tmp_path / "results.md").read_text()
  for text in ("raw pixels", "random init", "M-MAE", "Barlow Twins",
               "kNN top-1", "linear top-1", "M-MAE > Barlow Twins",
               "python -m mi_ssl_jax.study", "finished",
               "Matrix entropy across depth"):
    assert text in md, text
  figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
  for name in ("study_tiny_accuracy.png", "study_tiny_budget.png",
               "study_tiny_info_flow.png", "study_tiny_layer_entropy.png",
               "study_tiny.json"):
    assert name in figures, figures
  summary = json.loads((tmp_path / "figures" / "study_tiny.json").read_text())
  text = json.dumps(summary)
  assert "raw_pixels" in text and "barlow_twins" in text
  done = sorted((tmp_path / "w" / "tasks").glob("*.json"))
  assert len(done) >= 8, done  # pretrains, evals, baselines, sweep, ckpts

  # A rerun skips every finished task: no new pretraining log lines.
  second = _study(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "[study] start" not in second.stdout + second.stderr
  assert sorted((tmp_path / "w" / "tasks").glob("*.json")) == done


def test_bad_override_is_one_error_line(tmp_path):
  bad = _study(tmp_path, "--config.families.mae.overrides.no_such_field=1")
  assert bad.returncode == 2, bad.stderr[-2000:]
  lines = [line for line in bad.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error:"), bad.stderr[-2000:]
  assert "Traceback" not in bad.stderr


def test_sigterm_stops_the_running_task_and_is_one_error_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "mi_ssl_jax.study",
       "--config=configs/study/fmnist.py:tiny", f"--workdir={tmp_path}/w",
       f"--config.results_md={tmp_path}/results.md",
       f"--config.figures_dir={tmp_path}/figures"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  try:
    for line in proc.stdout:
      if line.startswith("[study] start pretrain"):
        break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 2, err[-2000:]
  assert err.strip().splitlines()[-1].startswith("error: interrupted"), err
  assert "Traceback" not in err
  # The task's trainer stopped with the runner (no orphan holds the lock).
  ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True)
  assert f"{tmp_path}/w/" not in ps.stdout
