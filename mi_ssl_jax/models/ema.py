"""EMA ("momentum") teacher helpers for BYOL / MEC / Matrix-SSL / EMI.

The teacher is a copy of the student whose parameters live in
:class:`EMAParam`, a ``nnx.Variable`` type that is *not* ``nnx.Param``. Hence
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` builds no optimizer state for it
and ``nnx.grad`` / ``nnx.value_and_grad`` (which differentiate ``nnx.Param``)
never produce gradients for it, even when student and teacher sit in one
module. Teacher BatchNorm statistics stay ``nnx.BatchStat`` and evolve from
the teacher's own forward passes; :func:`ema_update` touches parameters only
(MEC/Matrix-SSL ``builder.py``; BYOL).

Schedule (MEC, Matrix-SSL, BYOL): per step ``i`` of ``N``,
``m_i = 1 - (1 - base) * (1 + cos(pi * i / N)) / 2``, from ``base`` (0.996)
at ``i = 0`` to 1 at ``i = N``; update ``teacher <- m * teacher + (1 - m) *
student``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class EMAParam(nnx.Variable):
  """A teacher (EMA) parameter: updated by :func:`ema_update`, never by the
  optimizer or by gradients (it is not an ``nnx.Param``)."""


def make_teacher(student: nnx.Module) -> nnx.Module:
  """Deep copy of ``student`` with every ``nnx.Param`` turned into EMAParam.

  Args:
    student: any NNX module (e.g. backbone + projector, no predictor).

  Returns:
    A new module with the same structure and values; its parameters are
    :class:`EMAParam`, its BatchNorm statistics ordinary ``nnx.BatchStat``.
  """
  teacher = nnx.clone(student)
  for _, module in nnx.iter_modules(teacher):
    for name, value in list(vars(module).items()):
      if isinstance(value, nnx.Param):
        setattr(module, name, EMAParam(value.get_value()))
  return teacher


def cosine_ema_momentum(step, total_steps, base: float = 0.996):
  """``1 - (1 - base) * (1 + cos(pi * step / total_steps)) / 2``.

  Works on Python numbers and (traced) jax arrays; float32 for arrays.
  """
  if isinstance(step, (int, float)) and isinstance(total_steps, (int, float)):
    # Pure-Python path, exact in float64.
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * step / total_steps)
                                 ) / 2.0
  frac = jnp.asarray(step, jnp.float32) / jnp.asarray(total_steps, jnp.float32)
  return 1.0 - (1.0 - base) * (1.0 + jnp.cos(jnp.pi * frac)) / 2.0


def _blend(t, s, momentum):
  """m * t + (1 - m) * s in float32, cast back to the teacher's dtype."""
  t32 = jnp.asarray(t, jnp.float32)
  out = momentum * t32 + (1.0 - momentum) * jnp.asarray(s, jnp.float32)
  return out.astype(jnp.asarray(t).dtype)


def _check_same_structure(t_tree, s_tree):
  t_def, s_def = jax.tree.structure(t_tree), jax.tree.structure(s_tree)
  if t_def != s_def:
    raise ValueError(
        "ema_update: teacher and student parameter trees differ; build the "
        "teacher with make_teacher(student) from the same architecture.\n"
        f"teacher: {t_def}\nstudent: {s_def}")


def ema_update(teacher: Any, student: Any, momentum) -> Any:
  """``teacher <- m * teacher + (1 - m) * student`` on parameters only.

  Args:
    teacher: an NNX module from :func:`make_teacher` (updated in place and
      returned), or a parameter pytree / ``nnx.State`` (a new one is
      returned).
    student: the student module (its ``nnx.Param`` are read), or a pytree /
      ``nnx.State`` of the same structure as ``teacher``.
    momentum: scalar m (e.g. :func:`cosine_ema_momentum`).

  Returns:
    The updated teacher (same kind as the input).
  """
  if isinstance(teacher, nnx.Module):
    if not isinstance(student, nnx.Module):
      raise TypeError("ema_update: teacher is a module, so student must be "
                      "one too.")
    t_state = nnx.state(teacher, EMAParam)
    new = ema_update(t_state, nnx.state(student, nnx.Param), momentum)
    nnx.update(teacher, new)
    return teacher
  if isinstance(teacher, nnx.State):
    t_pure = nnx.to_pure_dict(teacher)
    s_pure = (nnx.to_pure_dict(student) if isinstance(student, nnx.State)
              else student)
    _check_same_structure(t_pure, s_pure)
    new = jax.tree.map(lambda t, s: _blend(t, s, momentum), t_pure, s_pure)
    out = jax.tree.map(lambda x: x, teacher)  # new Variables, same arrays.
    nnx.replace_by_pure_dict(out, new)
    return out
  _check_same_structure(teacher, student)
  return jax.tree.map(lambda t, s: _blend(t, s, momentum), teacher, student)
