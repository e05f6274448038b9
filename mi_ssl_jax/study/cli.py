"""`python -m mi_ssl_jax.study`: flags, and plan -> run -> collect ->
report, with the jobs' exit protocol (an `error:` line and exit 2 for a
user error, exit 75 on preemption)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Iterable, Sequence

import ml_collections
from absl import flags

from mi_ssl_jax import config_lib, errors
from mi_ssl_jax.study import parts
from mi_ssl_jax.study.common import StudyError
from mi_ssl_jax.study.parts import plan_study
from mi_ssl_jax.study.report import write_parts_report, write_report
from mi_ssl_jax.study.results import collect

_CONFIG = config_lib.define_config_flag(
    "config", "Study config: a packaged name (study/fmnist[:arg]) or a .py "
    "file, e.g. configs/study/fmnist.py[:arg].")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Root of the study's run directories (default: "
    "config.workdir).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Only rewrite the results document and figures "
    "from the tasks that have finished.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the tasks and exit.")


def _command(argv: Sequence[str]) -> str:
  args = [a for a in argv[1:] if not a.startswith(("--report_only",
                                                   "--dry_run"))]
  return shlex.join(["python", "-m", "mi_ssl_jax.study", *args])


def _fail(message: str) -> None:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr,
        flush=True)
  sys.exit(2)


def _interrupt(signum, frame) -> None:
  """SIGTERM to the runner: stop like Ctrl-C (the running task is sent
  SIGTERM too and saves its checkpoint; see `run.run_task`)."""
  del signum, frame
  raise KeyboardInterrupt


def _report(config: ml_collections.ConfigDict, root: str, tasks: list
            ) -> list[str]:
  if not parts.is_composite(config):
    return write_report(config, collect(config, tasks, root),
                        _command(sys.argv))
  planned = parts.plan_parts(config, root)
  return write_parts_report(config, planned,
                            parts.collect_parts(planned, root),
                            _command(sys.argv))


def _run(config: ml_collections.ConfigDict, root: str) -> tuple[list, list]:
  """Plans, runs (unless --report_only / --dry_run) and reports; returns
  (tasks, failed tasks)."""
  tasks = plan_study(config, root)
  if _DRY_RUN.value:
    for t in tasks:
      print(f"{t.id}: python -m mi_ssl_jax.main {shlex.join(t.argv)}")
    if parts.is_composite(config):
      for line in parts.pending(parts.plan_parts(config, root)):
        print(f"# {line}")
    return tasks, []
  failed = []
  if not _REPORT_ONLY.value:
    tasks, failed = parts.execute_study(config, root, tasks)
  for path in _report(config, root, tasks):
    print(f"[study] wrote {path}", flush=True)
  return tasks, failed


def main(argv: Sequence[str]) -> None:
  signal.signal(signal.SIGTERM, _interrupt)
  if len(argv) > 1:
    _fail(f"unexpected arguments {list(argv[1:])}")
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    _fail("cannot load the study config; check --config")
  root = _WORKDIR.value or config.workdir
  if not root:
    _fail("set --workdir (or config.workdir)")
  try:
    tasks, failed = _run(config, os.path.abspath(root))
  except StudyError as e:
    _fail(str(e))
  except KeyboardInterrupt:  # SIGTERM / Ctrl-C to the runner: a restart
    errors.exit_preempted(
        "interrupted; the running task was stopped (a pre-training saved "
        "its checkpoint); rerun the same command to resume")
  except errors.Preempted as e:
    errors.exit_preempted(str(e))
  if failed:
    _fail(f"{len(failed)} of {len(tasks)} tasks did not finish "
          f"({', '.join(t.id for t in failed[:5])}"
          f"{', ...' if len(failed) > 5 else ''}); see {root}/logs and rerun "
          "the same command to retry them")


def flags_parser(argv: Iterable[str]):
  try:
    return flags.FLAGS(list(argv))
  except (flags.Error, errors.UserError, AttributeError, KeyError, TypeError,
          ValueError) as e:
    _fail(str(e).splitlines()[-1] if str(e) else type(e).__name__)
