"""Every user-facing failure is one `error:` line, exit status 2, no traceback.

Table-driven: each case runs `python -m mi_ssl_jax.main` as a user would and
checks (1) exit status 2, (2) stderr's last line starts with `error:` and
contains the expected hint, (3) no Python traceback anywhere in the output,
and, for the cases that point at an existing run, (4) its checkpoints are
byte-for-byte unchanged. Faults that are not bad input (unreadable
checkpoints that are skipped, a full disk) have their own tests below.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QS = "configs/quickstart.py:tiny"
SIAMESE = "configs/fmnist_siamese.py:tiny,method=barlow_twins"


def _env(devices=1, **extra):
  # One device unless a case is about devices: these runs test the error
  # path, and a subprocess with 8 simulated devices on a loaded 2-core
  # machine can stall in its collectives for minutes.
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("MI_SSL_DEBUG", None)
  env.update(extra)
  return env


def _main(*args, cwd=ROOT, timeout=600, devices=1, **env):
  return subprocess.run([sys.executable, "-m", "mi_ssl_jax.main", *args],
                        cwd=cwd, env=_env(devices, **env), capture_output=True,
                        text=True, timeout=timeout)


# What a failed orbax read echoes on the console when left alone (hundreds
# of lines per unreadable checkpoint; checkpointing._QuietAsyncReadErrors).
ECHOES = ("Traceback", "Event loop is closed", "Task exception",
          "TensorStore(")


def _corrupt_copy(run, dest, steps):
  """A copy of the run at `run` whose checkpoint `steps` are unreadable
  (their OCDBT manifests overwritten, as a torn copy or bad disk leaves
  them; "all": every step)."""
  shutil.copytree(run, dest)
  folder = os.path.join(dest, "checkpoints")
  if steps == "all":
    steps = [int(d) for d in os.listdir(folder) if d.isdigit()]
  for step in steps:
    for dirpath, _, filenames in os.walk(os.path.join(folder, str(step))):
      for name in filenames:
        if name == "manifest.ocdbt":
          with open(os.path.join(dirpath, name), "wb") as f:
            f.write(b"not a manifest")
  return dest


def _digest(folder):
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in sorted(os.walk(folder)):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      h.update(path.encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished tiny M-MAE run (3 steps, a checkpoint after each) to point
  bad commands at."""
  workdir = str(tmp_path_factory.mktemp("errors") / "run")
  out = _main(f"--config={QS}", f"--workdir={workdir}",
              "--config.tensorboard=False", "--config.total_steps=3",
              "--config.ckpt_steps=1", "--config.keep_ckpts=3")
  assert out.returncode == 0, out.stderr[-2000:]
  return workdir


SYNTAX_ERROR = "def get_config(:\n  pass\n"
RAISES = "def get_config():\n  return 1 / 0\n"
# A user recipe written before `compute_dtype` (the Siamese `model.dtype`).
OLD_DTYPE_RECIPE = (
    "from mi_ssl_jax.configs import fmnist_siamese\n"
    "def get_config(arg=None):\n"
    "  c = fmnist_siamese.get_config('tiny')\n"
    "  c.model.dtype = 'bfloat16'\n"
    "  return c\n")


def _bad_config(tmp_path, text):
  path = os.path.join(tmp_path, "bad_config.py")
  with open(path, "w") as f:
    f.write(text)
  return path


def _folder_with_corrupt_image(tmp_path):
  """20 PNGs of 28x28 noise and one file that is not an image."""
  import numpy as np
  import tensorflow as tf
  folder = os.path.join(tmp_path, "images")
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(20):
    image = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    tf.io.write_file(os.path.join(folder, f"{i:02d}.png"),
                     tf.io.encode_png(image))
  with open(os.path.join(folder, "10_bad.png"), "wb") as f:
    f.write(b"this is not an image")
  return folder


# (case id, argv builder(run_dir, tmp_path) -> args, expected substring)
CASES = [
    ("unknown_field", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                    "--config.batchsize=8"], "batchsize"),
    ("batch_not_divisible", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                          "--config.batch_size=12"],
     "divisible"),
    ("unknown_dataset", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                      "--config.dataset=nope"],
     "unknown dataset"),
    ("tfds_not_prepared", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w", "--config.dataset=tfds:mnist",
        f"--config.data_dir={t}/empty"], "tfds build"),
    ("corrupt_image_while_training", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w", "--config.channels=3",
        "--config.total_steps=3",
        "--config.dataset=folder:" + _folder_with_corrupt_image(t)],
     "10_bad.png"),
    ("design_card_without_imagenet", lambda r, t: [
        "--config=configs/mmae_vitb.py", f"--config.data_dir={t}/empty"],
     "tfds build imagenet2012"),
    ("bad_split", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                "--config.train_split=valid"], "split"),
    ("bad_slice", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                "--config.train_split=train[a:b]"], "slice"),
    ("mask_ratio", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                 "--config.mask_ratio=1.5"], "mask_ratio"),
    ("missing_init_from", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                        f"--config.init_from={t}/nothing"],
     "does not exist"),
    ("total_steps_zero", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                       "--config.total_steps=0"], "positive"),
    ("total_steps_negative", lambda r, t: [f"--config={QS}",
                                           f"--workdir={t}/w",
                                           "--config.total_steps=-3"],
     "positive"),
    ("epochs_negative", lambda r, t: [
        "--config=configs/quickstart.py:epochs=-1",
                                      f"--workdir={t}/w"], "negative"),
    ("log_steps_zero", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                     "--config.log_steps=0"], "positive"),
    ("ckpt_steps_zero", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                      "--config.ckpt_steps=0"], "positive"),
    ("empty_workdir", lambda r, t: [f"--config={QS}", "--workdir="],
     "--workdir is empty"),
    ("workdir_under_file", lambda r, t: [f"--config={QS}",
                                         f"--workdir={r}/config.json/run"],
     "workdir"),
    ("workdir_under_proc", lambda r, t: [f"--config={QS}",
                                         "--workdir=/proc/mi_ssl_run"],
     "workdir"),
    ("config_syntax_error", lambda r, t: [
        "--config=" + _bad_config(t, SYNTAX_ERROR), f"--workdir={t}/w"],
     "bad_config.py:1"),
    ("config_raises", lambda r, t: [
        "--config=" + _bad_config(t, RAISES), f"--workdir={t}/w"],
     "division"),
    ("config_missing", lambda r, t: ["--config=configs/nope.py",
                                     f"--workdir={t}/w"], "nope.py"),
    ("config_arg_unknown", lambda r, t: ["--config=configs/quickstart.py:bogus",
                                         f"--workdir={t}/w"], "bogus"),
    ("config_arg_type", lambda r, t: ["--config=configs/quickstart.py:epochs=x",
                                      f"--workdir={t}/w"], "number"),
    ("positional_argument", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                          "extra"], "unexpected"),
    ("unknown_job", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                  "--config.job=nope"], "unknown config.job"),
    ("unknown_method", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                     "--config.method=nope"], "nope"),
    ("bad_nonfinite_policy", lambda r, t: [f"--config={QS}",
                                           f"--workdir={t}/w",
                                           "--config.nonfinite=maybe"],
     "nonfinite"),
    ("bad_optimizer", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                    "--config.optimizer=adamx"], "adamx"),
    ("bad_compute_dtype", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                        "--config.compute_dtype=float16"],
     "compute_dtype"),
    ("renamed_dtype_override", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w", "--config.dtype=bfloat16"],
     "use --config.compute_dtype=bfloat16"),
    ("renamed_model_dtype_in_recipe", lambda r, t: [
        f"--config={_bad_config(t, OLD_DTYPE_RECIPE)}", f"--workdir={t}/w"],
     "config.model.dtype was renamed: set config.compute_dtype='bfloat16'"),
    ("image_not_multiple_of_patch", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w", "--config.image_size=30"],
     "multiple"),
    ("coupled_accumulation", lambda r, t: [f"--config={QS}",
                                           f"--workdir={t}/w",
                                           "--config.batch_size=64",
                                           "--config.grad_accum_steps=2"],
     "batch-coupled"),
    ("mesh_axis_type_explicit", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w",
        "--config.mesh_axis_type=explicit"], "mesh_axis_type=auto"),
    ("bad_feature_pool", lambda r, t: [f"--config={QS}", f"--workdir={t}/w",
                                       "--config.feature_pool=max"],
     "feature_pool"),
    ("bad_eval_ks", lambda r, t: ["--config=configs/quickstart.py",
                                  f"--workdir={t}/w", "--config.total_steps=1",
                                  "--config.evals.knn.ks=(0,)"], "ks"),
    ("siamese_bad_depth", lambda r, t: [f"--config={SIAMESE}",
                                        f"--workdir={t}/w",
                                        "--config.model.depth=19"], "depth"),
    ("resume_shape_mismatch", lambda r, t: [f"--config={QS}",
                                            f"--workdir={r}",
                                            "--config.model.width=48",
                                            "--config.model.mlp_dim=96"],
     "model.width 32 -> 48"),
    ("resume_batch_size_changed", lambda r, t: [
        f"--config={QS}", f"--workdir={r}", "--config.total_steps=3",
        "--config.batch_size=32"], "config.batch_size 16 -> 32"),
    ("resume_warmup_changed", lambda r, t: [
        f"--config={QS}", f"--workdir={r}", "--config.total_steps=3",
        "--config.warmup_steps=1"], "config.warmup_steps None -> 1"),
    ("all_checkpoints_corrupt", lambda r, t: [
        f"--config={QS}", "--workdir=" + _corrupt_copy(r, f"{t}/c", "all"),
        "--config.total_steps=4"], "no readable checkpoint"),
    ("knn_job_corrupt_checkpoint", lambda r, t: [
        "--config=configs/knn.py", f"--workdir={t}/w",
        "--config.init_from=" + _corrupt_copy(r, f"{t}/c", [3])],
     "damaged"),
    ("init_from_shape_mismatch", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w", f"--config.init_from={r}",
        "--config.model.width=48"], "different model"),
    ("diagnostics_steps_not_multiple_of_log", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w", "--config.log_steps=2",
        "--config.diagnostics_steps=3"], "multiple of the log interval"),
    ("diagnostics_steps_negative", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w",
        "--config.diagnostics_steps=-1"], "diagnostics_steps"),
    ("diagnostics_examples_too_few", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w",
        "--config.diagnostics_examples=2"], "diagnostics_examples"),
    ("watchdog_negative", lambda r, t: [
        f"--config={QS}", f"--workdir={t}/w",
        "--config.watchdog_factor=-1"], "watchdog_factor"),
    ("knn_job_no_init_from", lambda r, t: ["--config=configs/knn.py",
                                           f"--workdir={t}/w"], "init_from"),
    ("knn_job_bad_ks", lambda r, t: ["--config=configs/knn.py",
                                     f"--config.init_from={r}",
                                     f"--workdir={t}/w", "--config.ks=(0,)"],
     "ks"),
    ("knn_job_missing_run", lambda r, t: ["--config=configs/knn.py",
                                          f"--config.init_from={t}/none",
                                          f"--workdir={t}/w"], "config.json"),
    ("linear_job_bad_protocol", lambda r, t: [
        "--config=configs/linear_probe.py:protocol=nope",
        f"--config.init_from={r}", f"--workdir={t}/w"], "protocol"),
    ("linear_job_zero_epochs", lambda r, t: [
        "--config=configs/linear_probe.py", f"--config.init_from={r}",
        f"--workdir={t}/w", "--config.overrides.epochs=0"], "epochs"),
    ("eval_bad_baseline", lambda r, t: ["--config=configs/evaluate.py",
                                        f"--config.init_from={r}",
                                        f"--workdir={t}/w",
                                        "--config.baseline=noise"],
     "baseline"),
    ("eval_bad_protocols", lambda r, t: ["--config=configs/evaluate.py",
                                         f"--config.init_from={r}",
                                         f"--workdir={t}/w",
                                         "--config.protocols=('svm',)"],
     "protocols"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(case, run_dir, tmp_path):
  name, build, expected = case
  before = _digest(os.path.join(run_dir, "checkpoints"))
  out = _main(*build(run_dir, str(tmp_path)),
              devices=8 if name == "batch_not_divisible" else 1)
  text = out.stdout + out.stderr
  assert out.returncode == 2, (name, out.returncode, text[-3000:])
  assert not [e for e in ECHOES if e in text], (name, text[-3000:])
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), (name, last)
  assert expected in last, (name, last)
  assert len(last) <= 620, (name, len(last))
  assert _digest(os.path.join(run_dir, "checkpoints")) == before, name


def test_at_least_thirty_cases():
  assert len(CASES) >= 30


def test_second_trainer_on_a_live_workdir_is_refused(run_dir, tmp_path):
  """A live lock (this test process) stops a second trainer in one line;
  a stale one (a pid that does not exist) is taken over."""
  workdir = tmp_path / "locked"
  workdir.mkdir()
  lock = workdir / ".lock"
  lock.write_text(json.dumps({"pid": os.getpid(),
                              "host": socket.gethostname(),
                              "started": "now", "heartbeat_unix": 0}))
  out = _main(f"--config={QS}", f"--workdir={workdir}")
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(os.getpid()) in last, last
  assert "Traceback" not in out.stderr
  assert not (workdir / "checkpoints").exists()
  lock.write_text(json.dumps({"pid": 2**22 + 12345,
                              "host": socket.gethostname()}))
  out = _main(f"--config={QS}", f"--workdir={workdir}",
              "--config.tensorboard=False")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "stale lock" in out.stderr
  assert not lock.exists()  # released at the end


def test_documented_eval_override_works(tmp_path):
  """README: `--config.evals.knn.log_steps=...` is a valid override."""
  out = _main("--config=configs/quickstart.py", f"--workdir={tmp_path}/w",
              "--config.total_steps=1", "--config.evals.knn.log_steps=100",
              "--config.evals.knn.train_data.split=train[:1000]",
              "--config.evals.knn.test_data.split=test[:500]",
              "--config.evals.linear.train_data.split=train[:1000]",
              "--config.evals.linear.test_data.split=test[:500]",
              "--config.evals.linear.overrides.epochs=1",
              "--config.tensorboard=False")
  assert out.returncode == 0, out.stderr[-2000:]


def test_unreadable_newest_checkpoints_fall_back_in_one_line_each(
    run_dir, tmp_path):
  """Steps 3 and 2 unreadable: each is moved aside with one warning line
  (orbax's asynchronous read errors are not echoed), training resumes
  from step 1."""
  workdir = _corrupt_copy(run_dir, str(tmp_path / "run"), [3, 2])
  out = _main(f"--config={QS}", f"--workdir={workdir}",
              "--config.tensorboard=False", "--config.total_steps=4",
              "--config.ckpt_steps=1", "--config.keep_ckpts=3")
  text = out.stdout + out.stderr
  assert out.returncode == 0, text[-3000:]
  assert not [e for e in ECHOES if e in text], text[-3000:]
  unreadable = [line for line in text.splitlines() if " is unreadable" in line]
  assert [line.split("Checkpoint ")[1][:2] for line in unreadable] == [
      "3 ", "2 "], unreadable
  assert all(len(line) < 700 for line in unreadable)
  assert "Restored older checkpoint 1 instead" in text
  assert "Resuming from checkpoint step 1" in text
  moved = sorted(d[:9] for d in os.listdir(f"{workdir}/checkpoints")
                 if d.startswith("corrupt-"))
  assert moved == ["corrupt-2", "corrupt-3"]  # kept, never deleted


def test_full_disk_is_one_error_line_and_keeps_the_checkpoints(tmp_path):
  """TensorBoard's writer fails in its background thread from step 4 on,
  as on a full disk (the `metrics_writer.FULL_DISK_VARIABLE` hook; a real
  full tmpfs gives the same line): one `error:` line, exit 2, and every
  checkpoint written before it is intact."""
  from mi_ssl_jax import checkpointing, metrics_writer  # noqa: PLC0415
  workdir = tmp_path / "run"
  out = _main(f"--config={QS}", f"--workdir={workdir}",
              "--config.total_steps=8", "--config.ckpt_steps=2",
              "--config.keep_ckpts=8", "--config.tensorboard=True",
              **{metrics_writer.FULL_DISK_VARIABLE: "4"})
  text = out.stdout + out.stderr
  assert out.returncode == 2, text[-3000:]
  assert not [e for e in ECHOES if e in text], text[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: cannot write TensorBoard events"), last
  assert "No space left on device" in last, last
  steps = checkpointing.checkpoint_steps(str(workdir))
  assert steps and set(steps) <= {2, 4}, steps
  for step in steps:
    checkpointing.read_arrays(str(workdir / "checkpoints" / str(step)))
