r"""Command-line entry point.

  python -m mi_ssl_jax.main --config=configs/mmae_vitb.py:runlocal \
      [--workdir=/tmp/mmae] [--config.batch_size=64 ...]
  python -m mi_ssl_jax.main --config=quickstart:tiny   # from any directory

`--config` is a packaged recipe's name (`mmae_vitb`, `quickstart:tiny`: the
files of `mi_ssl_jax/configs/`) or a path to a `.py` file;
`configs/<name>.py` falls back to the packaged recipe where no such file
exists (`mi_ssl_jax.configs.resolve`). Without --workdir the run directory is
`workdirs/<config name>` (relative to the current directory;
`workdirs/mmae_vitb` above, also for `quickstart:tiny` and
`configs/quickstart.py:tiny` -> `workdirs/quickstart`); the chosen directory
is logged. Rerunning the same command resumes from the newest checkpoint in
the workdir. Multi-host runs need a workdir that every host sees (a shared
file system or gs://bucket/path).
`config.job`: "pretrain" (default) runs `mi_ssl_jax.train`, any other name
`mi_ssl_jax.jobs.<job>.run`. User errors (bad config, missing data,
unreadable checkpoint, NaN loss) print one `error:` line and exit with 2. A
job stopped by a preemption (SIGTERM; JAX's preemption notice on multi-host
jobs) saves its state, prints one `preempted:` line and exits with
`errors.EXIT_RESTART` (75) on every process: rerun the same command (the
launch scripts do) to continue.
"""

import glob
import importlib
import os
import re
import sys

import jax
import ml_collections
from absl import app, flags, logging

from mi_ssl_jax import config_lib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no TF C++ INFO lines

_CONFIG = config_lib.define_config_flag(
    "config", "Recipe: a packaged recipe's name (quickstart, mmae_vitb, "
    "...; mi_ssl_jax/configs/) or a path to a .py file, optionally with an "
    "argument: name:arg or file.py:arg.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics); a local path or "
    "gs://bucket/path. Rerunning with the same workdir resumes. Default: "
    "workdirs/<config name> (workdirs/quickstart for quickstart:tiny).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Multi-host setup: auto-detect (SLURM with >1 task, Cloud TPU VMs, "
    "JAX_COORDINATOR_ADDRESS), force on, or off.")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show the full traceback of a failure (also: "
    "MI_SSL_DEBUG=1).")
flags.mark_flags_as_required(["config"])


def _debug() -> bool:
  if os.environ.get("MI_SSL_DEBUG", "") not in ("", "0"):
    return True
  try:
    return bool(_DEBUG.value)
  except flags.UnparsedFlagAccessError:
    return "--debug" in sys.argv


def _fail(message) -> None:
  """Prints `error: <one line>` and raises SystemExit(2).

  The command-line entry point then leaves with `os._exit` after flushing
  (`_main_then_exit`): interpreter teardown with live orbax / tf.data
  threads only adds noise (or hangs) after a failure, and nothing is left to
  save (checkpoints are written atomically).
  """
  if _debug():
    import traceback  # noqa: PLC0415
    traceback.print_exc()
  text = " ".join(str(message).replace("\\n", " ").split())  # one line
  # ml_collections embeds the config module's whole traceback in its flag
  # error; keep only the exception's own message.
  tb = re.search(r"Traceback \(most recent call last\):.*?"
                 r"[\w.]*(?:Error|Exception): (.*)$", text)
  if tb:
    text = text[:tb.start()] + tb.group(1)
  if len(text) > 600:
    text = text[:597] + "..."
  print(f"error: {text}", file=sys.stderr, flush=True)
  raise SystemExit(2)


def _describe(e: BaseException) -> str:
  """One line for an exception raised while loading a config file."""
  if isinstance(e, SyntaxError):
    return (f"{e.filename}:{e.lineno}: {e.msg} (syntax error in the config "
            "file)")
  return f"{type(e).__name__}: {e}" if not str(e) else str(e)


def default_workdir(config_arg: str) -> str:
  """`workdirs/<config name>` for a `--config` value (`name_or_file[:arg]`).

  `configs/mmae_vitb.py` and `mmae_vitb` -> `workdirs/mmae_vitb`; the config
  argument is ignored (`quickstart:tiny` -> `workdirs/quickstart`).
  """
  path = str(config_arg).split(":", 1)[0].rstrip("/")
  stem = os.path.splitext(os.path.basename(path))[0]
  return f"workdirs/{stem or 'run'}"


def resolve_workdir(workdir: str | None, config_arg: str) -> str:
  """The run directory: --workdir, or `default_workdir` when it is omitted.

  An explicitly empty `--workdir=` is a user error (`_fail`), not a request
  for the default.
  """
  if workdir is None:
    return default_workdir(config_arg)
  if not workdir:
    _fail("--workdir is empty; give the run directory, e.g. "
          "--workdir=workdirs/my_run, or leave the flag out for "
          f"{default_workdir(config_arg)}")
  return workdir


def initialize_distributed(mode: str = "auto") -> None:
  """Calls `jax.distributed.initialize()` when this is a multi-process job.

  One wrapper because the recipe changes between JAX versions (MaxText's
  lesson). JAX auto-detects the cluster (coordinator, process id and count)
  on SLURM and on Cloud TPU VMs; a single process needs no initialisation.
  """
  if mode == "off" or jax.distributed.is_initialized():
    return
  env = os.environ
  slurm = int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env
  tpu_vm = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
  # Hand-made clusters: JAX reads JAX_COORDINATOR_ADDRESS itself; we add the
  # process count and id from JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  manual = {k: int(env[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                        ("process_id", "JAX_PROCESS_ID"))
            if env.get(v)}
  if mode == "on" or slurm or env.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(**manual)
  elif tpu_vm:
    try:  # A single-host TPU VM may have no cluster to join.
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      logging.info("Single TPU host (%s); no multi-host setup.", e)


def _renamed_override(argv) -> str | None:
  """The rename hint for a `--config.<old>=` override of a renamed field."""
  for arg in argv[1:]:
    for old, new in config_lib.RENAMED_FIELDS.items():
      if arg.startswith(f"--config.{old}="):
        value = arg.partition("=")[2]
        return (f"--config.{old} was renamed: use --config.{new}={value} "
                "(one field for every recipe)")
  return None


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 (config files can raise anything)
    _fail(_renamed_override(argv) or _describe(e))


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; overrides look like "
          "--config.field=value")
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    _fail(f"cannot load config {flags.FLAGS['config'].config_filename!r}: "
          "check the path")
  config_arg = flags.FLAGS["config"].config_filename
  workdir = resolve_workdir(_WORKDIR.value, config_arg)
  from mi_ssl_jax import checkpointing, errors, train  # after flags
  checkpointing.quiet_orbax_info_logs()
  initialize_distributed(_DISTRIBUTED.value)
  if _WORKDIR.value is None and jax.process_index() == 0:
    logging.info("No --workdir given; using %s", workdir)
  job = config.get("job", "pretrain")
  try:
    if job == "pretrain":
      result = train.train_and_evaluate(config, workdir)
      if result["preempted"]:
        errors.exit_preempted(
            f"training stopped at step {result['step']} with a checkpoint "
            f"in {workdir}; rerun the same command to continue")
      if jax.process_index() == 0:  # one summary per run, not per process
        for line in train.eval_summary_lines(result["evals"], result["step"]):
          print(line, flush=True)
    else:
      module = f"mi_ssl_jax.jobs.{job}"
      try:
        runner = importlib.import_module(module)
      except ModuleNotFoundError as e:
        if e.name != module:
          raise
        runner = None
      if runner is None or not callable(getattr(runner, "run", None)):
        _fail(f"unknown config.job {job!r}: no job {module}.run; the jobs "
              "are pretrain, linear_probe, knn, evaluate and finetune")
      runner.run(config, workdir)
  except errors.Preempted as e:
    errors.exit_preempted(e)
  except errors.UserError as e:
    _fail(e)
  except OSError as e:  # a workdir/file problem (permissions, full disk)
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    _fail(f"{where}{e.strerror or e}; check the path, its permissions and "
          "free space")
  except KeyboardInterrupt:
    _fail("interrupted; rerun the same command to resume from the last "
          "checkpoint")


def _leave(code: int) -> None:
  """Flushes, leaves the JAX cluster, and exits without interpreter teardown.

  Skipping teardown (`os._exit`): destroying live tf.data pipelines can hang
  in TF 2.21, and checkpoints and metrics are already flushed and closed.
  Leaving the cluster first (`jax.distributed.shutdown`, a barrier of every
  process) matters on several hosts: process 0 runs the coordination
  service, and a process that still talks to it after process 0 has exited
  aborts (SIGABRT, "the JAX distributed service detected fatal errors"),
  which is how a finished 2-process run once failed on its second process.
  """
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  if jax.distributed.is_initialized():
    try:
      jax.distributed.shutdown()
    except Exception as e:  # noqa: BLE001 (a peer already gone: exit anyway)
      print(f"warning: leaving the JAX cluster failed: {e}", file=sys.stderr,
            flush=True)
  os._exit(code)


def _main_then_exit(argv) -> None:
  try:
    main(argv)
  except SystemExit as e:
    _leave(e.code if isinstance(e.code, int) else 2)
  _leave(0)


if __name__ == "__main__":
  app.run(_main_then_exit, flags_parser=_parse_flags)
