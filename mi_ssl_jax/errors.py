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

EXIT_RESTART = 75


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
