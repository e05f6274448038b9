"""The error base class for everything a user can be at fault for.

`UserError` subclasses (bad config, missing data, unreadable or mismatched
checkpoint, non-finite loss, a workdir in use, an evaluation job's bad
input) carry a one-line message that says what to do. `mi_ssl_jax.main`
catches `UserError` once, prints `error: <message>` and exits with status 2
(no traceback; set `MI_SSL_DEBUG=1` or pass `--debug` to see one). Anything
else is a bug and keeps its traceback.

Exit statuses of `python -m mi_ssl_jax.main` (launch/README.md):
* 0: finished;
* 2: a `UserError` (fix what the `error:` line says, then rerun);
* `EXIT_RESTART` = 75 (EX_TEMPFAIL of sysexits.h): stopped early with its
  state saved, e.g. preempted (SIGTERM, or JAX's preemption notice on a
  multi-host job): rerun the same command to continue. Every job (pre-
  training, linear probe, fine-tuning) uses it; launch/gpu/slurm.sbatch
  requeues the job on it and launch/tpu/run.sh reruns the command;
* anything else: a crash (a bug, or the process was killed).
"""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_RESTART = 75


def exit_preempted(message) -> NoReturn:
  """Prints `preempted: <message on one line>` to stderr and exits with
  `EXIT_RESTART` (the command line's way out of a `Preempted` run)."""
  text = " ".join(str(message).split())
  print(f"preempted: {text}", file=sys.stderr, flush=True)
  raise SystemExit(EXIT_RESTART)


def one_line(e: BaseException, limit: int = 200) -> str:
  """The root cause of an (I/O) exception as one short line.

  Libraries wrap the error a user can act on: orbax wraps TensorStore's
  ("Encountered error while reading array index ... See full TensorStore
  details: <spec>" from "DATA_LOSS: Error reading ... in OCDBT database"),
  clu wraps TensorFlow's ("Error '...' occurred ASYNCHRONOUSLY" from
  "{{function_node ...}} <file>; No space left on device"). The innermost
  cause is kept, without TensorFlow's op prefix and TensorStore's spec.
  """
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(getattr(e, "message", "") or e)
  text = text.split("}} ", 1)[-1] if text.startswith("{{") else text
  text = " ".join(text.split()) or type(e).__name__
  text = text.split(" See full TensorStore details")[0]
  return text if len(text) <= limit else text[:limit - 3] + "..."


class UserError(Exception):
  """A failure caused by the user's input or environment (exit status 2)."""


class DatasetError(UserError, ValueError):
  """A user-facing data problem; its message is one line saying what to do.

  Raised by `mi_ssl_jax.data` (unknown dataset, missing files, corrupt
  image, a bad augmentation setting, a batch the devices cannot split).
  """


class Preempted(Exception):
  """A job saved its state and stopped early; rerunning it continues.

  Not a `UserError`: nothing is wrong. `mi_ssl_jax.main` prints the message
  as one `preempted:` line and exits with `EXIT_RESTART`.
  """
