"""The hang watchdog: a stalled run dumps its stacks and exits to be rerun.

A run that blocks forever (a deadlocked XLA thread pool, a collective whose
peer died, a storage call that never returns) burns its allocation at 0 %
CPU and never reaches a launcher's restart logic. The training loop
(`mi_ssl_jax.loop.Loop`) therefore runs each phase of an iteration under
`Watchdog.phase(name, step)`:

  step         fetch the batch and dispatch the train step
  log          move the logged metrics to the host, write them
  diagnostics  the method's diagnostics (`config.diagnostics_steps`)
  evaluate     the periodic evaluators
  checkpoint   the save decision and the (asynchronous) save

and a daemon thread checks, every `poll_s`, how long the current phase has
been running. Its deadline is

  max(min_s, factor · median of the phase's last 100 durations)

once the phase has run `MIN_SAMPLES` times; before that (the first step,
diagnostics and log compile) and always for `evaluate` (each evaluator takes
its own time) it is `first_s` (0: no deadline). Past the deadline the
thread writes every Python thread's stack
(`faulthandler.dump_traceback(all_threads=True)`) to
`<workdir>/hang-<UTC time>-p<process>.txt` and to stderr, and ends the
process with `errors.EXIT_RESTART` (75): a launcher that reruns on that
status resumes from the last checkpoint. Native frames (XLA, LAPACK) are not
in a Python dump; attach `py-spy dump --native --pid <pid>` or `gdb` to see
them (docs/known_issues.md).

SIGTERM while blocked: the trainer's SIGTERM handler only sets a flag that
the loop reads after the current step, so a blocked loop would never save
nor exit. With `sigterm_s` > 0 the watchdog notes when SIGTERM arrives (its
handler records the time, then calls the previous one) and, if no
checkpoint phase has started `sigterm_s` seconds later, dumps the stacks
and exits with the same status. Single-process runs only: on multi-host
runs JAX's preemption notifier owns SIGTERM.

The dump goes through `mi_ssl_jax.paths`. `faulthandler` writes only to a
local file, so for a remote run directory (gs://) the stacks are written to
a local temporary file first and copied into the run directory; the copy
and the workdir lock's release are given `FINAL_IO_S` seconds each (the
storage may be what hangs), and the local file's path is printed either way.

Test hook: the environment variable `MI_SSL_TEST_STALL=<phase>:<step>:<s>`
makes that phase of that (1-based) step sleep s seconds (an injected hang;
tests/test_watchdog.py).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import faulthandler
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from absl import logging

from mi_ssl_jax import paths
from mi_ssl_jax.errors import EXIT_RESTART

PHASES = ("step", "log", "diagnostics", "evaluate", "checkpoint")
NO_MEDIAN = ("evaluate",)  # evaluators differ: only `first_s` applies
MIN_SAMPLES = 3  # durations of a phase before its median is trusted
WINDOW = 100  # durations kept per phase for the running median
FINAL_IO_S = 30.0  # bound on the dump copy and the lock release
STALL_ENV = "MI_SSL_TEST_STALL"


def injected_stall(phase: str, step: int) -> float:
  """Seconds to sleep in `phase` of `step` (`MI_SSL_TEST_STALL`), else 0."""
  spec = os.environ.get(STALL_ENV, "")
  if not spec:
    return 0.0
  name, at, seconds = spec.split(":")
  return float(seconds) if (name, int(at)) == (phase, step) else 0.0


def _bounded(fn: Callable[[], object], seconds: float) -> bool:
  """Runs `fn` in a daemon thread; True if it returned (without raising)
  within `seconds`."""
  done, ok = threading.Event(), []

  def body():
    try:
      fn()
      ok.append(True)
    except Exception as e:  # noqa: BLE001 (best effort on the way out)
      logging.warning("watchdog: %s", e)
    done.set()

  threading.Thread(target=body, daemon=True).start()
  return done.wait(seconds) and bool(ok)


class Watchdog:
  """Times the loop's phases and ends a stalled process (module docstring).

  Used as a context manager around the loop; `phase` around each phase::

    with Watchdog(factor=20, min_s=600, first_s=3600, sigterm_s=60,
                  dump_dir=workdir) as wd:
      for ...:
        with wd.phase("step", step):
          ...
  """

  def __init__(self, *, factor: float, min_s: float, first_s: float,
               sigterm_s: float = 0.0, dump_dir: str | None = None,
               process_index: int = 0,
               on_fire: Callable[[], None] | None = None,
               exit_fn: Callable[[int], None] = os._exit,
               poll_s: float | None = None):
    """Configures the watchdog (nothing runs before `__enter__`).

    Args:
      factor: deadline in medians of the phase's past durations (0: no
        stall deadlines; `sigterm_s` still applies).
      min_s: the deadline is at least this many seconds.
      first_s: deadline of a phase without `MIN_SAMPLES` durations yet, and
        of `evaluate` (0: none).
      sigterm_s: after SIGTERM, seconds the loop has to start a checkpoint
        (0: off). Only honoured for single-process runs from the main
        thread.
      dump_dir: where the stack dump goes (the run directory), or None for
        a local temporary directory.
      process_index: this process's index (in the dump's name).
      on_fire: called (bounded by `FINAL_IO_S`) before the exit, e.g. to
        release the workdir lock.
      exit_fn: ends the process (tests replace it).
      poll_s: check interval (default: min_s / 10, between 0.05 and 5 s).
    """
    self.factor = float(factor)
    self.min_s = float(min_s)
    self.first_s = float(first_s)
    self.sigterm_s = float(sigterm_s)
    self.dump_dir = dump_dir
    self.process_index = int(process_index)
    self.on_fire = on_fire
    self.exit_fn = exit_fn
    self.poll_s = (poll_s if poll_s is not None
                   else min(5.0, max(0.05, self.min_s / 10)))
    self._durations = {p: collections.deque(maxlen=WINDOW) for p in PHASES}
    self._lock = threading.Lock()
    # Running phases, innermost last: [name, step, start]. A nested phase
    # (diagnostics inside log) is timed alone, and the outer one's start
    # moves by its duration, so each phase is timed without the other.
    self._stack: list[list] = []
    self._sigterm_at: float | None = None
    self._checkpoint_since_sigterm = False
    self._previous_handler = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.fired: str | None = None  # the reason, once fired

  @property
  def active(self) -> bool:
    return self.factor > 0 or self.sigterm_s > 0

  # ------------------------------------------------------------ phases ----

  @contextlib.contextmanager
  def phase(self, name: str, step: int):
    """Times `name` of `step` (1-based) against its deadline (nestable)."""
    if name not in PHASES:
      raise ValueError(f"unknown watchdog phase {name!r}")
    start = time.monotonic()
    with self._lock:
      self._stack.append([name, step, start])
      if name == "checkpoint" and self._sigterm_at is not None:
        self._checkpoint_since_sigterm = True
    stall = injected_stall(name, step)
    if stall:
      logging.warning("%s: injected stall of %.0f s in phase %s of step %d",
                      STALL_ENV, stall, name, step)
      time.sleep(stall)
    try:
      yield
    finally:
      with self._lock:
        _, _, own_start = self._stack.pop()
        took = time.monotonic() - own_start
        self._durations[name].append(took)
        if self._stack:  # the outer phase does not count this one
          self._stack[-1][2] += time.monotonic() - start

  def deadline(self, name: str) -> float:
    """Seconds the phase `name` may run now (module docstring)."""
    past = self._durations[name]
    if name in NO_MEDIAN or len(past) < MIN_SAMPLES:
      return self.first_s if self.first_s > 0 else float("inf")
    return max(self.min_s, self.factor * statistics.median(past))

  # ----------------------------------------------------------- SIGTERM ----

  def _on_sigterm(self, signum, frame):
    with self._lock:
      if self._sigterm_at is None:
        self._sigterm_at = time.monotonic()
        self._checkpoint_since_sigterm = False
    previous = self._previous_handler
    if callable(previous):
      previous(signum, frame)

  def _watch_sigterm(self) -> None:
    if (self.sigterm_s > 0 and
        threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.getsignal(signal.SIGTERM)
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _unwatch_sigterm(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  # ------------------------------------------------------------ thread ----

  def __enter__(self) -> Watchdog:
    if self.active:
      self._watch_sigterm()
      self._thread = threading.Thread(target=self._run, daemon=True,
                                      name="mi_ssl_watchdog")
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=2 * self.poll_s + 1)
    self._unwatch_sigterm()

  def check(self, now: float | None = None) -> str | None:
    """Why the process should stop now, or None (the thread's test)."""
    now = time.monotonic() if now is None else now
    with self._lock:
      current = tuple(self._stack[-1]) if self._stack else None
      sigterm_at = self._sigterm_at
      reached = self._checkpoint_since_sigterm
    if (self.sigterm_s > 0 and sigterm_at is not None and not reached
        and now - sigterm_at > self.sigterm_s):
      where = (f"in phase {current[0]} of step {current[1]}" if current
               else "between phases")
      return (f"SIGTERM {now - sigterm_at:.0f} s ago and no checkpoint "
              f"started since (limit {self.sigterm_s:g} s; the loop is "
              f"{where})")
    if self.factor > 0 and current is not None:
      name, step, start = current
      limit = self.deadline(name)
      if now - start > limit:
        past = self._durations[name]
        median = (f"median {statistics.median(past):.3g} s of "
                  f"{len(past)}" if past else "no earlier run")
        return (f"phase {name} of step {step} has run {now - start:.0f} s "
                f"(deadline {limit:.0f} s; {median})")
    return None

  def _run(self) -> None:
    while not self._stop.wait(self.poll_s):
      reason = self.check()
      if reason is not None:
        self.fire(reason)
        return

  # -------------------------------------------------------------- fire ----

  def dump_name(self) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y%m%dT%H%M%SZ")
    return f"hang-{stamp}-p{self.process_index}.txt"

  def _write_dump(self, header: str) -> str:
    """Writes the stacks; returns where they are (run dir or local)."""
    name = self.dump_name()
    remote = self.dump_dir is not None and paths.is_remote(self.dump_dir)
    local_dir = (tempfile.gettempdir() if self.dump_dir is None or remote
                 else os.fspath(paths.as_path(self.dump_dir)))
    local = os.path.join(local_dir, name)
    with open(local, "w") as f:
      f.write(header + "\n\n")
      f.flush()
      faulthandler.dump_traceback(file=f, all_threads=True)
    if not remote:
      return local
    target = paths.join(self.dump_dir, name)
    copied = _bounded(
        lambda: paths.write_text(target, pathlib.Path(local).read_text()),
        FINAL_IO_S)
    if copied:
      return f"{paths.to_str(target)} (local copy {local})"
    return f"{local} (copy to {paths.to_str(target)} failed or timed out)"

  def fire(self, reason: str) -> None:
    """Dumps every thread's stack and ends the process (EXIT_RESTART)."""
    self.fired = reason
    header = (f"mi_ssl_jax watchdog: {reason}. Stacks of every Python "
              f"thread follow (pid {os.getpid()}).")
    try:
      where = self._write_dump(header)
    except OSError as e:
      where = f"nowhere ({e})"
    print(f"error: watchdog: {reason}; stacks in {where}; exiting with "
          f"status {EXIT_RESTART} (rerun the same command to resume from "
          "the last checkpoint)", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    if self.on_fire is not None:
      _bounded(self.on_fire, FINAL_IO_S)
    logging.flush()
    self.exit_fn(EXIT_RESTART)
