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


def test_sigterm_stops_the_running_task_and_exits_75_to_be_rerun(tmp_path):
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
  # Like every job: a SIGTERM is a preemption, 75 tells the launcher to
  # rerun (the rerun resumes from the saved checkpoint).
  assert proc.returncode == 75, err[-2000:]
  assert err.strip().splitlines()[-1].startswith(
      "preempted: interrupted"), err
  assert "Traceback" not in err
  # The task's trainer stopped with the runner (no orphan holds the lock).
  ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True)
  assert f"{tmp_path}/w/" not in ps.stdout


def test_a_preempted_task_stops_the_study_unmarked(tmp_path):
  """A task that exits 75 (preempted, checkpoint saved) is neither done
  nor failed: the study stops with errors.Preempted (exit 75 from main), so
  a launcher reruns it and the task resumes; the tasks after it wait.
  (In-process with an injected runner: the study's modules define no
  flags, only its `cli` does.)"""
  from mi_ssl_jax import errors, study  # noqa: PLC0415
  root = str(tmp_path)
  tasks = [study.Task(id=f"t{i}", kind="pretrain", family="mae",
                      label="mae", seed=i, fraction=1.0,
                      workdir=f"{root}/t{i}", argv=()) for i in range(3)]
  ran = []

  def runner(task, root):
    ran.append(task.id)
    return (0 if task.id == "t0" else errors.EXIT_RESTART), 1.0, "log"

  with pytest.raises(errors.Preempted, match="task t1 was preempted"):
    study.execute(tasks, root, echo=lambda line: None, runner=runner)
  assert ran == ["t0", "t1"]
  assert [t.id for t in tasks
          if study.read_marker(root, t) is not None] == ["t0"]
