"""A study in parts: several study configs run one after another in one
workdir, a later part taking its method from an earlier part's result.

The pre-registered experiment (`configs/study/prereg.py`) is one: a
selection among candidate methods on a validation split, a positive
control with the selected method on the test split, and an ordering test.
Its config has `parts` ({name: a study config}, each planned by
`plan.plan` under `<root>/<name>`, its task ids prefixed `<name>-`) and
`part_order` (ConfigDict sorts its keys, so the order is given apart).

A family of a part may carry `select=dict(part=..., family=..., metric=...,
readout="")`: its `methods` become the one method of that earlier part's
family with the best mean `metric` over the earlier part's seeds (ties: the
first in the family's list), once every candidate has a finished
evaluation for every seed. Until then the family has no method, and the
part plans only its seed-free baselines; the runner re-plans after each
pass (`cli`), so one invocation runs the selection, then the runs it chose.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import ml_collections

from mi_ssl_jax.study.common import StudyError, as_dict
from mi_ssl_jax.study.plan import Task, plan, validate
from mi_ssl_jax.study.results import collect, summary_rows
from mi_ssl_jax.study.run import Runner, check_markers, execute, run_task


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of a study in parts.

  Attributes:
    name: the part's name (its subdirectory and task-id prefix).
    config: the part's study config, with selected methods filled in.
    tasks: its planned tasks (ids prefixed with `name-`).
    selection: per family with a `select` rule, the outcome
      (`select_method`).
  """
  name: str
  config: ml_collections.ConfigDict
  tasks: tuple[Task, ...]
  selection: dict[str, dict[str, Any]] = dataclasses.field(
      default_factory=dict)


def is_composite(config: ml_collections.ConfigDict) -> bool:
  return bool(config.get("parts"))


def _ordered(config) -> list[tuple[str, ml_collections.ConfigDict]]:
  order = tuple(config.get("part_order", ()))
  if sorted(order) != sorted(config.parts.keys()):
    raise StudyError(f"config.part_order {order} must name every part of "
                     f"config.parts ({', '.join(config.parts.keys())}) once")
  return [(name, config.parts[name]) for name in order]


def _prefixed(tasks: list[Task], name: str) -> tuple[Task, ...]:
  return tuple(dataclasses.replace(
      t, id=f"{name}-{t.id}", needs=tuple(f"{name}-{n}" for n in t.needs))
               for t in tasks)


def select_method(source: Part, root: str, rule: dict[str, Any]
                  ) -> dict[str, Any]:
  """The rule's outcome on `source`'s finished evaluations: {"method": the
  candidate with the best mean `rule["metric"]` over the source part's
  seeds, or None while a candidate lacks a finished evaluation of a seed;
  "scores": {candidate: mean}; "rule": the rule; "source": the part}.
  A non-finite score never wins; ties go to the first candidate listed."""
  family = rule["family"]
  if family not in source.config.families:
    raise StudyError(f"select rule {rule}: part {source.name!r} has no "
                     f"family {family!r}")
  candidates = tuple(source.config.families[family].methods)
  metric, readout = rule.get("metric", "knn"), rule.get("readout", "")
  rows, _ = summary_rows(source.config, source.tasks, root)
  by_label = {r["label"]: r for r in rows
              if r["family"] == family and r["fraction"] == 1.0}
  scores: dict[str, float] = {}
  for method in candidates:
    row = by_label.get(method + (f"#{readout}" if readout else ""))
    if row is not None and row[f"{metric}_n"] >= len(source.config.seeds):
      scores[method] = row[f"{metric}_mean"]
  done = len(scores) == len(candidates) and any(
      math.isfinite(s) for s in scores.values())
  best = max(candidates, key=lambda m: scores[m] if math.isfinite(
      scores[m]) else -math.inf) if done else None
  return {"method": best, "scores": scores, "rule": dict(rule),
          "source": source.name, "candidates": candidates}


def plan_parts(config: ml_collections.ConfigDict, root: str) -> list[Part]:
  """Every part's tasks, in `part_order`; a family with a `select` rule
  gets the method its source part selected (none while undecided)."""
  out: list[Part] = []
  for name, part_config in _ordered(config):
    part_config = part_config.copy_and_resolve_references()
    selection = {}
    for family_name, family in part_config.families.items():
      rule = as_dict(family.get("select"))
      if not rule:
        continue
      source = next((p for p in out if p.name == rule["part"]), None)
      if source is None:
        raise StudyError(f"part {name!r}: its select rule names part "
                         f"{rule['part']!r}, which is not an earlier part")
      selection[family_name] = select_method(source, root, rule)
      chosen = selection[family_name]["method"]
      family.methods = (chosen,) if chosen else ()
    tasks = _prefixed(plan(part_config, os.path.join(root, name)), name)
    out.append(Part(name, part_config, tasks, selection))
  ids = [t.id for p in out for t in p.tasks]
  if len(ids) != len(set(ids)):
    raise StudyError("two parts plan the same task id; rename a part")
  return out


def plan_study(config: ml_collections.ConfigDict, root: str) -> list[Task]:
  """The tasks of a study, in parts or not, in execution order.

  Parts run in `part_order`: a part still waiting for its selection is the
  last one planned (its seed-free baselines only), so no later part runs
  before the runs of an earlier one (the runner re-plans after each pass).
  """
  if not is_composite(config):
    return plan(config, root)
  out: list[Task] = []
  for part in plan_parts(config, root):
    out += part.tasks
    if any(s["method"] is None for s in part.selection.values()):
      break
  return out


def execute_study(config: ml_collections.ConfigDict, root: str,
                  tasks: list[Task], echo=None, runner: Runner = run_task
                  ) -> tuple[list[Task], list[Task]]:
  """Runs `tasks` (`run.execute`), then re-plans and runs again while the
  plan grows (a part whose method was just selected plans its runs).
  Returns (the last plan's tasks, failed tasks)."""
  while True:
    validate(tasks)
    check_markers(tasks, root)
    failed = execute(tasks, root, echo=echo, runner=runner)
    more = plan_study(config, root)
    if failed or {t.id for t in more} <= {t.id for t in tasks}:
      return tasks, failed
    tasks = more


def pending(parts: list[Part]) -> list[str]:
  """One line per family still waiting for its selection."""
  return [f"{p.name}/{family}: waits for part {s['source']!r} to evaluate "
          f"every candidate ({len(s['scores'])} of {len(s['candidates'])} "
          "done)"
          for p in parts for family, s in p.selection.items()
          if s["method"] is None]


def collect_parts(parts: list[Part], root: str) -> dict[str, Any]:
  """Each part's summary (`results.collect`) and selection outcomes."""
  return {p.name: {**collect(p.config, list(p.tasks), root),
                   "selection": p.selection} for p in parts}
