"""The error base class for everything a user can be at fault for.

`UserError` subclasses (bad config, missing data, unreadable or mismatched
checkpoint, non-finite loss, a workdir in use, an evaluation job's bad
input) carry a one-line message that says what to do. `mi_ssl_jax.main`
catches `UserError` once, prints `error: <message>` and exits with status 2
(no traceback; set `MI_SSL_DEBUG=1` or pass `--debug` to see one). Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """A failure caused by the user's input or environment (exit status 2)."""


class DatasetError(UserError, ValueError):
  """A user-facing data problem; its message is one line saying what to do.

  Raised by `mi_ssl_jax.data` (unknown dataset, missing files, corrupt
  image, a bad augmentation setting, a batch the devices cannot split).
  """

EXIT_RESTART = 75  # EX_TEMPFAIL (sysexits.h): stopped early, rerun to resume
