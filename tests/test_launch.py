"""Launch and packaging checks (fast: no training, no cluster).

The launch scripts parse (`bash -n`), the SLURM script runs one task per GPU
and requeues on preemption, pyproject's Python floor and accelerator extras
match jax, the default workdir follows the config file's name, and only
process 0 prints the progress line. The restart paths run for real with
fake `srun` / `scontrol` / `gcloud` / `tmux` and a fake trainer: the SLURM
script requeues on exit status 75 (`errors.EXIT_RESTART`), the TPU worker
loop reruns on it (bounded), and run.sh starts that loop with the run id,
XLA_FLAGS / LIBTPU_INIT_ARGS, and a copy of each worker's log to the
workdir. create.sh queues a request (runtime image per TPU generation) and
waits until it is ACTIVE; FAILED / SUSPENDED / a timeout end it with one
`error:` line and status 2.
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
  assert "scontrol requeue" in text  # run: test_sbatch_requeues_on_...


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


# ------------------------------------------------ restarts (EXIT_RESTART) ----


def _fake_bin(tmp_path, **scripts):
  """Executables `name` with the given bash bodies in tmp_path/bin."""
  folder = tmp_path / "bin"
  folder.mkdir(exist_ok=True)
  for name, body in scripts.items():
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)
  return folder


# A fake trainer: exits with the next status of $STATUSES (one per line) and
# records each call's MI_SSL_RUN_ID, MI_SSL_TEST_FAIL_RESTORE_ON_PROCESS and
# arguments in $CALLS.
FAKE_TRAINER = """fail="${MI_SSL_TEST_FAIL_RESTORE_ON_PROCESS:--}"
echo "$MI_SSL_RUN_ID $fail $*" >> "$CALLS"
n=$(wc -l < "$CALLS")
exit "$(sed -n "${n}p" "$STATUSES")"
"""


def _run_bash(script, args, tmp_path, statuses, **env):
  (tmp_path / "statuses").write_text("".join(f"{s}\n" for s in statuses))
  full = dict(os.environ, CALLS=str(tmp_path / "calls"),
              STATUSES=str(tmp_path / "statuses"), RESTART_DELAY="0",
              **env)
  out = subprocess.run(["bash", script, *args], capture_output=True,
                       text=True, timeout=60, env=full, cwd=tmp_path)
  calls = tmp_path / "calls"
  return out, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("statuses, runs, status", [
    ([75, 75, 0], 3, 0),  # preempted twice, then finished
    ([75, 75, 75, 75], 3, 75),  # MAX_RESTARTS=2: gives up with 75
    ([2], 1, 2),  # a user error is not retried
])
def test_tpu_worker_reruns_on_exit_restart(tmp_path, statuses, runs, status):
  from mi_ssl_jax import errors  # noqa: PLC0415
  assert errors.EXIT_RESTART == 75  # the status worker.sh reruns on
  _fake_bin(tmp_path, python=FAKE_TRAINER)
  out, calls = _run_bash(
      os.path.join(ROOT, "launch", "tpu", "worker.sh"),
      ["--workdir=gs://b/run", "--config=c.py"], tmp_path, statuses,
      PYTHON=str(tmp_path / "bin" / "python"), MAX_RESTARTS="2",
      MI_SSL_RUN_ID="run7")
  assert out.returncode == status, out.stderr
  assert calls == ["run7 - -m mi_ssl_jax.main --workdir=gs://b/run "
                   "--config=c.py"] * runs


# A fake gcloud: records each call in $GCLOUD_CALLS; `tpu-vm ssh` runs its
# --command here, without the XLA settings of this shell (a worker gets only
# what run.sh passes); `queued-resources describe` prints the next line of
# $QR_STATES (a line "ERROR: ..." goes to stderr with status 1); `storage
# cp SRC gs://DEST` copies into $GCS_ROOT/DEST.
FAKE_GCLOUD = r"""echo "$*" >> "$GCLOUD_CALLS"
case "$*" in
  "compute tpus tpu-vm ssh "*)
    while [[ "$1" != --command ]]; do shift; done
    env -u XLA_FLAGS -u LIBTPU_INIT_ARGS bash -c "$2" ;;
  "compute tpus queued-resources describe "*)
    n=$(grep -c "queued-resources describe" "$GCLOUD_CALLS")
    line=$(sed -n "${n}p" "$QR_STATES")
    if [[ "$line" == ERROR* ]]; then echo "$line" >&2; exit 1; fi
    echo "$line" ;;
  "storage cp "*)
    dest="$GCS_ROOT/${*: -1}"; dest="${dest/gs:\/\//}"
    mkdir -p "$(dirname "$dest")" && cp "${@: -2:1}" "$dest" ;;
esac
"""


def _tpu_script(name, tmp_path, *, states=(), args=(), **env):
  """Runs launch/tpu/<name> with the fake gcloud; (result, gcloud calls)."""
  bin_dir = _fake_bin(tmp_path, gcloud=FAKE_GCLOUD)
  (tmp_path / "states").write_text("".join(f"{s}\n" for s in states))
  full = {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "LIBTPU_INIT_ARGS", "VERSION", "SPOT",
                       "QUEUED", "WAIT", "EXTRA_ENV")}
  full.update(PATH=f"{bin_dir}:{os.environ['PATH']}",
              GCLOUD_CALLS=str(tmp_path / "gcloud_calls"),
              QR_STATES=str(tmp_path / "states"),
              GCS_ROOT=str(tmp_path / "gcs"), POLL_SECONDS="0", **env)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu", name),
                        *args], capture_output=True, text=True, timeout=60,
                       env=full, cwd=tmp_path)
  calls = tmp_path / "gcloud_calls"
  return out, calls.read_text().splitlines() if calls.exists() else []


def _describe(name="pod1"):
  return (f"compute tpus queued-resources describe {name} --zone=z "
          "--format=value(state.state)")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("accelerator, runtime", [
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"), ("v4-32", "tpu-ubuntu2204-base")])
def test_tpu_create_queues_and_waits_until_active(tmp_path, accelerator,
                                                  runtime):
  out, calls = _tpu_script(
      "create.sh", tmp_path, NAME="pod1", ZONE="z", TYPE=accelerator,
      states=["WAITING_FOR_RESOURCES", "WAITING_FOR_RESOURCES",
              "PROVISIONING", "ACTIVE", "ACTIVE"])
  assert out.returncode == 0, out.stderr
  assert calls == [
      f"compute tpus queued-resources create pod1 --node-id=pod1 --zone=z "
      f"--accelerator-type={accelerator} --runtime-version={runtime} --spot",
      *[_describe()] * 4]
  states = [line.split(": ")[-1] for line in out.stdout.splitlines()[:-1]]
  assert states == ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]
  assert f"TPU VM pod1 ({accelerator}, {runtime}) is ready" in out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_tpu_create_options(tmp_path):
  out, calls = _tpu_script("create.sh", tmp_path, NAME="pod1", ZONE="z",
                           TYPE="v5p-8", SPOT="0", VERSION="v2-alpha-tpuv5",
                           WAIT="0")
  assert out.returncode == 0, out.stderr
  assert calls == [
      "compute tpus queued-resources create pod1 --node-id=pod1 --zone=z "
      "--accelerator-type=v5p-8 --runtime-version=v2-alpha-tpuv5"]
  assert "launch/tpu/wait.sh" in out.stdout
  (tmp_path / "gcloud_calls").unlink()
  out, calls = _tpu_script("create.sh", tmp_path, NAME="pod1", ZONE="z",
                           TYPE="v6e-16", QUEUED="0")
  assert out.returncode == 0, out.stderr
  assert calls == ["compute tpus tpu-vm create pod1 --zone=z "
                   "--accelerator-type=v6e-16 --version=v2-alpha-tpuv6e "
                   "--spot"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script, env, states, message", [
    ("create.sh", dict(TYPE="v5litepod-8"),
     ["WAITING_FOR_RESOURCES", "FAILED"],
     "error: queued resource pod1 is FAILED (see: gcloud compute tpus "
     "queued-resources describe pod1 --zone=z); delete it"),
    ("wait.sh", {}, ["PROVISIONING", "SUSPENDED"],
     "error: queued resource pod1 is SUSPENDED"),
    ("wait.sh", dict(WAIT_SECONDS="0"), ["WAITING_FOR_RESOURCES"],
     "error: queued resource pod1 still WAITING_FOR_RESOURCES after 0 s"),
    ("wait.sh", {}, ["ERROR: (gcloud) NOT_FOUND: pod1"] * 5,
     "error: gcloud cannot describe queued resource pod1 in z: ERROR: "
     "(gcloud) NOT_FOUND: pod1"),
    ("create.sh", dict(TYPE="v9-8"), [],
     "error: unknown TYPE=v9-8: use v4-N, v5p-N, v5litepod-N or v6e-N"),
    ("create.sh", dict(NAME=""), [], "error: set NAME"),
    ("run.sh", {}, [], "error: set WORKDIR"),
])
def test_tpu_scripts_fail_with_one_error_line(tmp_path, script, env, states,
                                              message):
  env = dict(dict(NAME="pod1", ZONE="z"), **env)
  out, calls = _tpu_script(script, tmp_path, states=states, **env)
  assert out.returncode == 2, out
  err = out.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(message), err
  assert not any("create" in c for c in calls) or script == "create.sh"


# A fake trainer for run.sh: FAKE_TRAINER plus the passed-through XLA
# settings of each call in $CALLS.env.
ENV_TRAINER = """echo "XLA_FLAGS=${XLA_FLAGS-unset}" >> "$CALLS.env"
echo "LIBTPU_INIT_ARGS=${LIBTPU_INIT_ARGS-unset}" >> "$CALLS.env"
""" + FAKE_TRAINER


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_tpu_run_sh_starts_the_worker_loop_with_a_run_id(tmp_path):
  """run.sh's remote command, run here: fake gcloud (runs --command, copies
  to a folder standing for gs://), tmux (runs its command) and curl; the
  checkout is ROOT, the trainer a fake that is preempted once. EXTRA_ENV,
  XLA_FLAGS and LIBTPU_INIT_ARGS reach the trainer; the worker's log lands
  in WORKDIR/logs/<start>/worker0.log."""
  home = tmp_path / "home"
  (home / "mi_ssl_jax" / ".venv" / "bin").mkdir(parents=True)
  (home / "mi_ssl_jax" / "launch").symlink_to(os.path.join(ROOT, "launch"))
  trainer = home / "mi_ssl_jax" / ".venv" / "bin" / "python"
  trainer.write_text("#!/usr/bin/env bash\n" + ENV_TRAINER)
  trainer.chmod(0o755)
  _fake_bin(tmp_path,
            tmux='[[ "$1" == new ]] && bash -c "${@: -1}"; exit 0',
            curl="exit 7")
  (tmp_path / "statuses").write_text("75\n0\n")
  xla = "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x y"
  out, calls = _tpu_script(
      "run.sh", tmp_path, args=["--config=configs/mmae_vitb.py"],
      HOME=str(home), NAME="pod1", ZONE="z", WORKDIR="gs://b/run",
      CALLS=str(tmp_path / "calls"), STATUSES=str(tmp_path / "statuses"),
      RESTART_DELAY="0", XLA_FLAGS=xla,
      LIBTPU_INIT_ARGS="--xla_tpu_enable_latency_hiding_scheduler=true",
      EXTRA_ENV="MI_SSL_TEST_FAIL_RESTORE_ON_PROCESS=1")
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "calls").read_text().splitlines() == [
      "pod1 1 -m mi_ssl_jax.main --workdir=gs://b/run "
      "--config=configs/mmae_vitb.py"] * 2
  assert (tmp_path / "calls.env").read_text().splitlines() == [
      f"XLA_FLAGS={xla}",
      "LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true"] * 2
  assert "restart 1 of 20" in (home / "mi_ssl_jax" / "log.w0").read_text()
  logs = sorted((tmp_path / "gcs" / "b" / "run" / "logs").glob("*/*"))
  assert [p.name for p in logs] == ["worker0.log"]
  assert "restart 1 of 20" in logs[0].read_text()
  dest = f"gs://b/run/logs/{logs[0].parent.name}/worker0.log"
  assert re.fullmatch(r"\d{8}T\d{6}Z", logs[0].parent.name)
  # Copied after the preempted run and when the loop ended.
  assert [c for c in calls if c.startswith("storage")] == [
      f"storage cp --quiet log.w0 {dest}"] * 2
  assert f"worker logs are copied to gs://b/run/logs/{logs[0].parent.name}/" \
      in out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_tpu_run_sh_without_xla_settings_passes_none(tmp_path):
  home = tmp_path / "home"
  (home / "mi_ssl_jax" / ".venv" / "bin").mkdir(parents=True)
  (home / "mi_ssl_jax" / "launch").symlink_to(os.path.join(ROOT, "launch"))
  trainer = home / "mi_ssl_jax" / ".venv" / "bin" / "python"
  trainer.write_text("#!/usr/bin/env bash\n" + ENV_TRAINER)
  trainer.chmod(0o755)
  _fake_bin(tmp_path,
            tmux='[[ "$1" == new ]] && bash -c "${@: -1}"; exit 0',
            curl="exit 7")
  (tmp_path / "statuses").write_text("2\n")
  out, _ = _tpu_script(
      "run.sh", tmp_path, args=["--config=c.py"], HOME=str(home),
      NAME="pod1", ZONE="z", WORKDIR=str(tmp_path / "local_run"),
      CALLS=str(tmp_path / "calls"), STATUSES=str(tmp_path / "statuses"))
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "calls.env").read_text().splitlines() == [
      "XLA_FLAGS=unset", "LIBTPU_INIT_ARGS=unset"]
  # A local (non gs://) workdir gets the log copied with cp.
  assert len(list((tmp_path / "local_run" / "logs").glob("*/worker0.log"))) \
      == 1


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("status, restarts, requeued, script_status", [
    (75, 0, True, 0), (75, 50, False, 75),  # MAX_REQUEUES (50) reached
    (0, 0, False, 0), (2, 0, False, 2), (1, 0, False, 1)])
def test_sbatch_requeues_on_exit_restart(tmp_path, status, restarts,
                                         requeued, script_status):
  bin_dir = _fake_bin(tmp_path, srun=f"exit {status}",
                      scontrol='echo "$*" >> "$CALLS"')
  out = subprocess.run(
      ["bash", SBATCH, "--config=configs/quickstart.py"], capture_output=True,
      text=True, timeout=60, cwd=tmp_path,
      env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               CALLS=str(tmp_path / "calls"), SLURM_JOB_ID="4242",
               SLURM_RESTART_COUNT=str(restarts),
               SLURM_SUBMIT_DIR=str(tmp_path)))
  assert out.returncode == script_status, out.stderr
  calls = tmp_path / "calls"
  assert (calls.read_text().split() if calls.exists() else []) == (
      ["requeue", "4242"] if requeued else [])
