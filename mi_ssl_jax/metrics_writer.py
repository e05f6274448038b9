"""Metrics: TensorBoard (clu), `metrics.jsonl`, and a console progress line.

The only module that imports clu (docs/design.md §8.2, §8.7). clu 0.0.12
imports TensorFlow and tensorboard when loaded, so it is imported lazily and
only when TensorBoard logging is on (`config.tensorboard`, default True);
with it off, the JSONL file and the console line still work.

Files written by process 0 in the workdir:
* `metrics.jsonl`: one JSON object per logged step, `{"step": ..., "time":
  unix seconds, "<name>": value, ...}`, appended (`paths.JsonlAppender`;
  never rewritten per row). Local: one line per row as it is logged;
  `pandas.read_json(path, lines=True)` reads it. Remote (gs://): rows are
  buffered and written as new objects `metrics.jsonl.parts/*` at most once
  per `REMOTE_FLUSH_SECONDS` and at each checkpoint, merged into
  `metrics.jsonl` every `REMOTE_MAX_PARTS` batches and when the run ends;
  `read_metrics` reads the file and any parts (a running or killed run).
  On a resume, rows past the restored checkpoint's step are dropped before
  training continues, so every step appears once.
* `events.out.tfevents.*`: the same scalars, plus `steps_per_sec` and
  `uptime` from clu's `ReportProgress`, and the config as hparams.
* `config.json`: the resolved config.

The console progress line is also printed by process 0 only; the other
processes of a multi-process run still log their warnings and errors.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging

from mi_ssl_jax import paths
from mi_ssl_jax.errors import UserError, one_line

# Test hook (tests/test_errors_table.py): from this step on, every
# TensorBoard write fails in clu's writer thread as it does on a full disk.
FULL_DISK_VARIABLE = "MI_SSL_TEST_TENSORBOARD_FULL_AT_STEP"


# Remote metrics.jsonl: buffered rows are written at most this often (and at
# every checkpoint; so a killed run loses none up to its last checkpoint),
# and merged into the one file every REMOTE_MAX_PARTS batches.
REMOTE_FLUSH_SECONDS = 60.0
REMOTE_MAX_PARTS = 32


class MetricsWriteError(UserError, RuntimeError):
  """TensorBoard events could not be written (full disk, no permission)."""


class _DropWriterThreadTracebacks:
  """absl-logging filter: clu logs the traceback of a failed background
  write when it happens; `MetricsWriter` reports it in one line when clu
  hands it to the main thread."""

  @staticmethod
  def filter(record) -> bool:
    return not (record.pathname.endswith("asynclib.py") and
                "/clu/" in record.pathname)


_WRITER_THREAD_FILTER = _DropWriterThreadTracebacks()  # added once


class _FullDiskFrom:
  """A clu writer whose writes from `step` on fail like a full disk's (the
  `FULL_DISK_VARIABLE` test hook)."""

  def __init__(self, writer: Any, step: int, path: str):
    self._writer, self._step, self._path = writer, int(step), path

  def write_scalars(self, step: int, scalars: Any) -> None:
    if step >= self._step:
      import tensorflow as tf  # noqa: PLC0415 (clu already imported it)
      raise tf.errors.ResourceExhaustedError(
          None, None, f"{{{{function_node __wrapped__WriteSummary}}}} "
          f"{self._path}; No space left on device\n\tCould not flush "
          "events file. [Op:WriteSummary]")
    self._writer.write_scalars(step, scalars)

  def __getattr__(self, name: str) -> Any:
    return getattr(self._writer, name)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + "."))
    elif isinstance(value, (bool, int, float, str)) or value is None:
      flat[name] = value
    else:
      flat[name] = str(value)
  return flat


def write_config(workdir: str, config: Any) -> None:
  """Writes `workdir/config.json` (process 0 only)."""
  if jax.process_index() != 0:
    return
  paths.write_text(paths.join(workdir, "config.json"),
                   config.to_json_best_effort(indent=2, sort_keys=True))


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of `<workdir>/metrics.jsonl` (local or gs://), one per step.

  The file and, for a remote run still running or killed, its batches in
  `metrics.jsonl.parts/` (`paths.read_appended_lines`). Rows of the same
  step (the train scalars and an evaluator's, written separately) are
  merged; torn lines of a killed run are skipped; a missing file gives [].
  """
  rows: dict[int, dict[str, Any]] = {}
  for line in paths.read_appended_lines(paths.join(workdir, "metrics.jsonl")):
    try:
      row = json.loads(line)
      step = int(row["step"])
    except (ValueError, KeyError, TypeError):
      continue  # a torn last line of a killed run
    rows[step] = {**rows.get(step, {}), **row}
  return [rows[s] for s in sorted(rows)]


def _up_to(step: int):
  """`line -> bool`: a whole row of a step <= `step` (resume: the steps
  after the restored checkpoint will be logged again; a torn line of a
  killed run is dropped with everything after it)."""

  def keep(line: str) -> bool:
    try:
      return int(json.loads(line)["step"]) <= step
    except (ValueError, KeyError, TypeError):
      return False

  return keep


def _format_value(value: float) -> str:
  if value == 0 or (1e-3 <= abs(value) < 1e4):
    return f"{value:.4f}"
  return f"{value:.3e}"


class MetricsWriter:
  """Writes scalars to TensorBoard, `metrics.jsonl` and the console."""

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, console_keys: tuple[str, ...] = (
                   "loss", "learning_rate")):
    """Opens the writers.

    Args:
      workdir: the run directory.
      total_steps: the run's length (for the ETA).
      start_step: the step training starts from (after a resume).
      tensorboard: also write TensorBoard event files (imports clu).
      console_keys: metrics shown on the console line (all go to the files).
    """
    self._lead = jax.process_index() == 0
    self._total = int(total_steps)
    self._console_keys = console_keys
    self._last = (start_step, time.perf_counter())
    self._jsonl = None
    if self._lead:
      # After a resume, rows past the restored step are dropped: each step
      # appears once in the file.
      self._jsonl = paths.JsonlAppender(
          paths.join(workdir, "metrics.jsonl"), keep=_up_to(start_step),
          flush_seconds=REMOTE_FLUSH_SECONDS, max_parts=REMOTE_MAX_PARTS)
    self._workdir = workdir
    self._writer = self._progress = None
    if tensorboard and self._lead:
      from clu import metric_writers, periodic_actions
      logging.get_absl_handler().addFilter(_WRITER_THREAD_FILTER)
      summaries = metric_writers.SummaryWriter(workdir)
      if os.environ.get(FULL_DISK_VARIABLE, ""):
        summaries = _FullDiskFrom(summaries,
                                  int(os.environ[FULL_DISK_VARIABLE]),
                                  paths.to_str(workdir))
      # Not create_default_writer: its LoggingWriter would repeat every row
      # on the console next to our progress line.
      self._writer = metric_writers.AsyncWriter(summaries)
      self._progress = periodic_actions.ReportProgress(
          num_train_steps=self._total, writer=self._writer)

  def _tensorboard(self, fn: Any, *args: Any) -> None:
    """Calls a clu writer method; a failed write (raised here, or in clu's
    writer thread and handed over at this call) becomes one
    `MetricsWriteError` line. The checkpoints are not touched."""
    try:
      fn(*args)
    except Exception as e:  # noqa: BLE001 (TF/clu errors of many types)
      self._writer = self._progress = None  # nothing more to flush
      raise MetricsWriteError(
          f"cannot write TensorBoard events to {paths.to_str(self._workdir)}"
          f" ({one_line(e)}); free space or fix permissions (or set "
          "--config.tensorboard=False), then rerun the same command to "
          "continue from the last checkpoint") from None

  def write_hparams(self, config: Any) -> None:
    if self._writer is not None:
      self._tensorboard(self._writer.write_hparams,
                        _flatten(config.to_dict()))

  def step_done(self, step: int) -> None:
    """Call after every step (cheap): drives clu's steps/s and ETA reports."""
    if self._progress is not None:
      self._tensorboard(self._progress, step)

  def write_scalars(self, step: int, scalars: Mapping[str, float],
                    progress: bool = True) -> None:
    """Writes one row of host scalars (and prints the progress line)."""
    scalars = {k: float(v) for k, v in scalars.items()}
    if not progress:  # e.g. evaluation results: files only
      if self._writer is not None:
        self._tensorboard(self._writer.write_scalars, step, scalars)
      self._write_jsonl(step, scalars)
      return
    now = time.perf_counter()
    last_step, last_time = self._last
    self._last = (step, now)
    rate = (step - last_step) / max(now - last_time, 1e-9)
    if self._writer is not None:
      self._tensorboard(self._writer.write_scalars, step, scalars)
    self._write_jsonl(step, scalars)
    if not self._lead:  # multi-process: one progress line, from process 0
      return
    shown = " | ".join(f"{k} {_format_value(scalars[k])}"
                       for k in self._console_keys if k in scalars)
    eta = (self._total - step) / rate if rate > 0 else float("inf")
    eta_text = (str(datetime.timedelta(seconds=int(eta)))
                if math.isfinite(eta) else "?")
    logging.info("step %d/%d (%.1f%%) | %s | %.2f steps/s | ETA %s", step,
                 self._total, 100.0 * step / max(self._total, 1), shown,
                 rate, eta_text)

  def _write_jsonl(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._jsonl is not None:
      row = {"step": int(step), "time": time.time()}
      row.update({k: (v if math.isfinite(v) else str(v))
                  for k, v in scalars.items()})
      self._jsonl.write(json.dumps(row))

  def flush(self) -> None:
    if self._writer is not None:
      self._tensorboard(self._writer.flush)

  def flush_rows(self) -> None:
    """Writes the buffered `metrics.jsonl` rows now (remote workdirs buffer
    them; the loop calls this at every checkpoint)."""
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    """Flushes and closes the files (the JSONL file even if TensorBoard's
    last write fails: that failure is raised after)."""
    try:
      if self._writer is not None:
        self._tensorboard(self._writer.flush)
      if self._writer is not None:
        self._tensorboard(self._writer.close)
    finally:
      self._writer = self._progress = None
      if self._jsonl is not None:
        self._jsonl.close()
        self._jsonl = None
