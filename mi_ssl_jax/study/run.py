"""Running the study's tasks: one `python -m mi_ssl_jax.main` subprocess per
task, a marker per finished task (`<root>/tasks/<id>.json`), progress and
ETA lines, and the preemption protocol (a task that exits 75 stops the
study, which exits 75 to be rerun)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mi_ssl_jax import errors
from mi_ssl_jax.study.common import StudyError, fmt_duration, now
from mi_ssl_jax.study.plan import Task

# (task, root) -> (exit status, seconds, log path)
Runner = Callable[[Task, str], tuple[int, float, str]]


def _marker_path(root: str, task: Task) -> str:
  return os.path.join(root, "tasks", task.id + ".json")


def _read(root: str, task: Task) -> dict[str, Any] | None:
  try:
    with open(_marker_path(root, task)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def read_marker(root: str, task: Task) -> dict[str, Any] | None:
  """The marker of a task finished under its current key (None: not
  finished, or finished with another config or code version)."""
  marker = _read(root, task)
  if marker is None or marker.get("status") != "done":
    return None
  return marker if marker.get("key") == task.key else None


def _argv_changes(old: Sequence[str], new: Sequence[str]) -> str:
  split = lambda argv: dict(a.partition("=")[::2] for a in argv)
  a, b = split(old), split(new)
  changed = [f"{k}={a.get(k, '(unset)')} -> {b.get(k, '(unset)')}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  return (", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
          if changed else "same flags; its recipe, the package version or "
          "STUDY_CODE_VERSION changed")


def check_markers(tasks: Sequence[Task], root: str) -> None:
  """Refuses a workdir where a task was started or finished under another
  key (config or code version): reusing it would report old numbers under
  the new config, and resuming it would continue an old schedule.

  Raises:
    StudyError: one line naming the first such task, what changed and what
      to do.
  """
  stale = [(t, m) for t in tasks if (m := _read(root, t)) is not None
           and m.get("key") != t.key]
  if not stale:
    return
  task, marker = stale[0]
  changes = _argv_changes(marker.get("argv", ()), task.argv)
  raise StudyError(
      f"{len(stale)} task(s) in {root} ran with another config or code "
      f"version, e.g. {task.id} ({changes}); use a new --workdir for the new "
      f"config (or delete {os.path.join(root, 'tasks')} and the runs to redo "
      "them there)")


def write_marker(root: str, task: Task, **fields: Any) -> None:
  path = _marker_path(root, task)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"id": task.id, "argv": list(task.argv), **fields}, f,
              indent=2, sort_keys=True)
  os.replace(tmp, path)


class Progress:
  """Progress and ETA over the whole grid from the measured task durations.

  A task's expected time is the mean duration of finished tasks with the
  same kind, family and budget fraction (from this and earlier invocations);
  a pre-training at another fraction of the same family is scaled by the
  fraction; tasks of a kind never timed yet are counted apart.
  """

  def __init__(self, tasks: Sequence[Task], root: str):
    self.tasks, self.root = list(tasks), root
    self.start = time.time()
    self.durations: dict[str, list[float]] = {}
    self.done: set[str] = set()
    for t in self.tasks:
      marker = read_marker(root, t)
      if marker is not None:
        self.record(t, marker.get("seconds", 0.0))

  def record(self, task: Task, seconds: float) -> None:
    self.done.add(task.id)
    self.durations.setdefault(task.cost_key, []).append(float(seconds))

  def estimate(self, task: Task) -> float | None:
    if task.cost_key in self.durations:
      return float(np.mean(self.durations[task.cost_key]))
    if task.kind == "pretrain":
      full = self.durations.get(f"pretrain/{task.family}/1")
      if full:
        return float(np.mean(full)) * task.fraction
    return None

  def line(self, message: str) -> str:
    remaining = [t for t in self.tasks if t.id not in self.done]
    estimates = [self.estimate(t) for t in remaining]
    known = sum(e for e in estimates if e is not None)
    unknown = sum(e is None for e in estimates)
    eta = fmt_duration(known) if remaining else "0s"
    if unknown:
      eta = f"≥ {eta} ({unknown} tasks of kinds not timed yet)"
    return (f"[study {len(self.done)}/{len(self.tasks)}] {message} | "
            f"elapsed {fmt_duration(time.time() - self.start)} | ETA {eta}")


def error_line(log_path: str) -> str:
  """The last `error:` line of a task's log (else its last line)."""
  try:
    with open(log_path, errors="replace") as f:
      lines = f.read().splitlines()
  except OSError:
    return "no log"
  for line in reversed(lines):
    if line.startswith("error:"):
      return line[len("error:"):].strip()
  tail = [ln for ln in lines if ln.strip()][-1:] or ["(empty log)"]
  return tail[0][:300]


def run_task(task: Task, root: str, python: str = sys.executable,
             env: Mapping[str, str] | None = None) -> tuple[int, float, str]:
  """Runs one task as `python -m mi_ssl_jax.main ...`; returns (exit
  status, seconds, log path)."""
  log_path = os.path.join(root, "logs", task.id + ".log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  start = time.time()
  cmd = [python, "-m", "mi_ssl_jax.main", *task.argv]
  with open(log_path, "a") as log:
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(env or os.environ),
                            start_new_session=True)
    try:
      code = proc.wait()
    except KeyboardInterrupt:
      # SIGTERM: a pre-training saves a checkpoint and stops cleanly, so the
      # next invocation resumes it.
      proc.send_signal(signal.SIGTERM)
      proc.wait()
      raise
  return code, time.time() - start, log_path


def execute(tasks: Sequence[Task], root: str, echo=None,
            runner: Runner = run_task) -> list[Task]:
  """Runs the unfinished tasks in order with `runner` (tests inject a fake
  one); returns the ones that failed. Call `check_markers` first.

  Raises:
    errors.Preempted: a task exited 75 (its checkpoint saved); it is left
      unmarked, so the next invocation resumes it.
  """
  echo = echo or (lambda line: print(line, flush=True))
  progress = Progress(tasks, root)
  failed: list[Task] = []
  echo(progress.line(f"{len(progress.done)} tasks already done in {root}"))
  for task in tasks:
    if task.id in progress.done:
      continue
    blocked = [n for n in task.needs if n not in progress.done]
    if blocked:
      echo(progress.line(f"skip {task.id}: needs {', '.join(blocked)}"))
      failed.append(task)
      continue
    echo(f"[study] start {task.id} (log {os.path.join(root, 'logs', task.id)}"
         ".log)")
    write_marker(root, task, status="started", key=task.key)
    code, seconds, log_path = runner(task, root)
    if code == errors.EXIT_RESTART:  # preempted, its checkpoint saved
      raise errors.Preempted(
          f"task {task.id} was preempted after {fmt_duration(seconds)} "
          f"(its checkpoint is saved; log {log_path}); rerun the same "
          "command to resume")
    if code == 0:
      write_marker(root, task, status="done", key=task.key,
                   seconds=round(seconds, 1), finished_utc=now())
      progress.record(task, seconds)
      echo(progress.line(f"done {task.id} in {fmt_duration(seconds)}"))
    else:
      failed.append(task)
      echo(progress.line(f"FAILED {task.id} after {fmt_duration(seconds)}: "
                         f"{error_line(log_path)} (log {log_path})"))
  return failed
