"""Launch and packaging checks (fast: no training, no cluster).

The launch scripts parse (`bash -n`), the SLURM script runs one task per GPU
and requeues on preemption, pyproject's Python floor and accelerator extras
match jax, the default workdir follows the config file's name, and only
process 0 prints the progress line.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from mi_ssl_jax import main, metrics_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "**", "*.sh"),
                           recursive=True)
                 + glob.glob(os.path.join(ROOT, "launch", "**", "*.sbatch"),
                             recursive=True))
SBATCH = os.path.join(ROOT, "launch", "gpu", "slurm.sbatch")


def _pyproject():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _sbatch_options():
  options = {}
  with open(SBATCH) as f:
    for line in f:
      m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
      if m:
        options[m.group(1)] = m.group(2)
  return options


def test_launch_scripts_found():
  names = {os.path.relpath(p, ROOT) for p in SCRIPTS}
  assert {"launch/gpu/slurm.sbatch", "launch/tpu/setup.sh",
          "launch/tpu/run.sh", "launch/tpu/create.sh",
          "launch/tpu/tail.sh"} <= names


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", SCRIPTS,
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_launch_script_parses(script):
  out = subprocess.run(["bash", "-n", script], capture_output=True, text=True,
                       timeout=30)
  assert out.returncode == 0, out.stderr


def test_sbatch_one_task_per_gpu_and_requeue():
  options = _sbatch_options()
  gpus = options.get("gpus-per-node")
  assert gpus is not None, "the sbatch script must request --gpus-per-node"
  gpus = gpus.split(":")[-1]  # --gpus-per-node=[type:]count
  # JAX's SLURM auto-detection drives GPU SLURM_LOCALID with each process:
  # one task per GPU, each task seeing all GPUs of its node.
  assert options.get("ntasks-per-node") == gpus
  assert "gpus-per-task" not in options
  assert "requeue" in options
  assert re.fullmatch(r"B:TERM@\d+", options.get("signal") or ""), options
  with open(SBATCH) as f:
    text = f.read()
  assert "trap " in text and "kill -TERM" in text  # SIGTERM is forwarded
  assert "scontrol requeue" in text


def test_pyproject_python_floor_and_accelerator_extras():
  project = _pyproject()["project"]
  assert re.match(r">=3\.11\b", project["requires-python"])
  jax_pin = next(d for d in project["dependencies"]
                 if re.match(r"jax[<>=]", d))
  jax_range = jax_pin[len("jax"):]
  extras = project["optional-dependencies"]
  assert extras["tpu"][0] == f"jax[tpu]{jax_range}"
  # TPU pods need gs:// workdirs: orbax asks google-cloud-storage there.
  assert extras["tpu"][1:] == extras["gcs"]
  assert extras["gcs"][0].startswith("google-cloud-storage>=")
  assert extras["cuda12"] == [f"jax[cuda12]{jax_range}"]
  assert "<" in jax_range  # upper-bounded like the jax pin
  assert "test" in extras


@pytest.mark.parametrize("config_arg, expected", [
    ("configs/mmae_vitb.py", "workdirs/mmae_vitb"),
    ("configs/quickstart.py:tiny", "workdirs/quickstart"),
    ("configs/fmnist_siamese.py:tiny,method=barlow_twins",
     "workdirs/fmnist_siamese"),
    ("/abs/path/my_config.py", "workdirs/my_config"),
    ("mmae_vitb.py", "workdirs/mmae_vitb"),
    ("mmae_vitb", "workdirs/mmae_vitb"),  # packaged recipe names
    ("quickstart:tiny", "workdirs/quickstart"),
    ("study/fmnist:tiny", "workdirs/fmnist"),
])
def test_default_workdir_is_config_stem(config_arg, expected):
  assert main.default_workdir(config_arg) == expected
  assert main.resolve_workdir(None, config_arg) == expected


def test_explicit_workdir_kept_and_empty_workdir_is_an_error(capsys):
  assert main.resolve_workdir("gs://b/run", "configs/x.py") == "gs://b/run"
  with pytest.raises(SystemExit) as e:
    main.resolve_workdir("", "configs/quickstart.py:tiny")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --workdir is empty")
  assert "Traceback" not in err[0]


def test_workdir_flag_not_required():
  assert main.flags.FLAGS["workdir"].default is None
  assert not main.flags.FLAGS["workdir"].validators


@pytest.mark.parametrize("process_index, printed", [(0, True), (1, False)])
def test_progress_line_only_on_process_0(tmp_path, monkeypatch,
                                         process_index, printed):
  monkeypatch.setattr(metrics_writer.jax, "process_index",
                      lambda: process_index)
  lines = []
  monkeypatch.setattr(metrics_writer.logging, "info",
                      lambda fmt, *args: lines.append(fmt % args))
  writer = metrics_writer.MetricsWriter(str(tmp_path), total_steps=10,
                                        tensorboard=False)
  writer.write_scalars(5, {"loss": 1.5, "learning_rate": 0.1})
  writer.close()
  assert any(line.startswith("step 5/10") for line in lines) == printed
  assert (tmp_path / "metrics.jsonl").exists() == printed
