"""The study's tasks: every (family, method, variant, seed) pre-training, its
evaluations, the baselines, the budget sweep and the checkpoint evaluations,
each a `python -m mi_ssl_jax.main` command line (`Task.argv`)."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

import mi_ssl_jax
from mi_ssl_jax import config_lib, configs
from mi_ssl_jax.study.common import StudyError, as_dict, flatten, safe

# The version of what a task computes, beside the package version: bump it
# with any change of the trainer, a method, a model or an evaluation job
# that changes the numbers a given config produces, so finished tasks are
# not reused across it. Not the git commit: most commits (docs, tests,
# benchmarks) change no number, and discarding hours of runs for each would
# push users to bypass the check; the protocols' own versions (`knn` v1,
# `simclr_linear` v1) are recorded in every result besides.
STUDY_CODE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Task:
  """One subprocess of the study.

  Attributes:
    id: unique, filesystem-safe name (its marker is `tasks/<id>.json`).
    kind: "pretrain" or "evaluate".
    family: the method family ("mae", "siamese", ...) or "baseline".
    label: method name or baseline name.
    seed: seed of the run (None for seed-free baselines).
    fraction: budget fraction (1.0 for the main grid).
    workdir: the run (pretrain) or job (evaluate) directory.
    argv: the `mi_ssl_jax.main` arguments.
    needs: ids of the tasks that must have finished first.
    role: "main" (tables) or "checkpoint" (correlations only).
    key: hash of what the task computes (`task_key`); a finished task is
      reused only under the same key.
  """
  id: str
  kind: str
  family: str
  label: str
  seed: int | None
  fraction: float
  workdir: str
  argv: tuple[str, ...]
  needs: tuple[str, ...] = ()
  role: str = "main"
  key: str = ""

  @property
  def cost_key(self) -> str:
    return f"{self.kind}/{self.family}/{self.fraction:g}"


def flag_value(value: Any) -> str:
  """A value as `--config.x=<text>` parses it back."""
  if isinstance(value, Mapping):
    return "{}"
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(flag_value(v) for v in value) + ("," if len(
        value) == 1 else "") + ")"
  return str(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  return [f"--config.{k}={flag_value(v)}"
          for k, v in sorted(flatten(overrides).items())]


def scaled_budget(overrides: dict[str, Any], fraction: float
                  ) -> dict[str, Any]:
  """The family budget times `fraction` (total_epochs/steps/examples)."""
  out = dict(overrides)
  if fraction == 1.0:
    return out
  for key in ("total_epochs", "total_steps", "total_examples"):
    if out.get(key) is not None:
      value = out[key] * fraction
      out[key] = value if key == "total_epochs" else max(1, int(value))
      return out
  raise StudyError("budget_sweep needs total_epochs, total_steps or "
                   "total_examples in the family's overrides")


def _recipe(family: Mapping[str, Any], method: str) -> str:
  recipe = family["recipe"]
  sep = "," if ":" in recipe else ":"
  return f"{recipe}{sep}method={method}"


class _Planner:
  """Builds the task list of one study config under `root`."""

  def __init__(self, config: ml_collections.ConfigDict, root: str):
    self.config, self.root = config, root
    self.families = as_dict(config.families)
    splits = as_dict(config.get("splits"))
    self.train_split = splits.get("pretrain", "")
    self.eval_flags = [f"--config.{k}={v}" for k, v in (
        ("train_split", splits.get("train", "")),
        ("eval_split", splits.get("eval", ""))) if v]
    evaluate = as_dict(config.evaluate)
    self.eval_overrides = override_flags(evaluate.get("overrides", {}))
    self.eval_config = evaluate.get("config", "configs/evaluate.py")
    self.seeds = tuple(int(s) for s in config.seeds)
    self.wanted = tuple(config.get("baselines", ()))
    ckpt_evals = as_dict(config.get("checkpoint_evals"))
    self.ckpt_seeds = tuple(int(x) for x in ckpt_evals.get("seeds", ()))
    self.ckpt_count = int(ckpt_evals.get("count", 0))

  def pretrain(self, family_name, method, seed, fraction, variant=""):
    family = self.families[family_name]
    label = f"{method}@{variant}" if variant else method
    suffix = f"-x{fraction:g}" if fraction != 1.0 else ""
    run = os.path.join(self.root, "runs", family_name, label,
                       f"seed{seed}{suffix}")
    overrides = scaled_budget(
        {**as_dict(family.get("overrides")),
         **as_dict(as_dict(family.get("variants")).get(variant))}, fraction)
    overrides["seed"] = seed
    if self.train_split:
      overrides["train_split"] = self.train_split
    argv = (f"--config={_recipe(family, method)}", f"--workdir={run}",
            *override_flags(overrides))
    return Task(f"pretrain-{family_name}-{safe(label)}-seed{seed}{suffix}",
                "pretrain", family_name, label, seed, fraction, run, argv)

  def readouts(self, family_name) -> dict[str, Any]:
    """The family's evaluation variants ({"": {}} when it has none)."""
    return as_dict(self.families[family_name].get("eval_variants")) or {
        "": {}}

  def evaluations(self, of: Task) -> list[Task]:
    """One evaluate task per evaluation variant of the family (readouts)."""
    out = []
    for name, extra in self.readouts(of.family).items():
      workdir = (of.workdir if not name
                 else os.path.join(of.workdir, f"eval_{name}"))
      argv = (f"--config={self.eval_config}",
              f"--config.init_from={of.workdir}", f"--workdir={workdir}",
              *self.eval_flags, *self.eval_overrides,
              *override_flags(as_dict(extra)))
      out.append(Task("eval" + of.id[len("pretrain"):] + (
          f"-{safe(name)}" if name else ""), "evaluate", of.family,
          of.label + (f"#{name}" if name else ""), of.seed, of.fraction,
          workdir, argv, (of.id,)))
    return out

  def baseline(self, name, family_name=None, seed=None, of=None, readout="",
               extra=None):
    parts = [name] + ([family_name] if family_name else []) + (
        [f"seed{seed}"] if seed is not None else []) + (
        [safe(readout)] if readout else [])
    workdir = os.path.join(self.root, "baselines", *parts)
    argv = [f"--config={self.eval_config}", f"--config.baseline={name}",
            f"--workdir={workdir}", *self.eval_flags, *self.eval_overrides,
            *override_flags(as_dict(extra))]
    if of is not None:
      argv.insert(1, f"--config.init_from={of.workdir}")
      argv.append(f"--config.seed={seed}")
    else:
      argv.append(f"--config.dataset={self.config.dataset}")
    label = name if family_name is None else f"{name}/{family_name}"
    return Task("baseline-" + "-".join(parts), "evaluate", "baseline",
                label + (f"#{readout}" if readout else ""), seed,
                1.0, workdir, tuple(argv), (of.id,) if of else ())

  def with_checkpoints(self, t: Task) -> list[Task]:
    """Keep `ckpt_count` evenly spaced checkpoints of `t`, evaluate each."""
    every = total_steps(t) // (self.ckpt_count + 1)
    if every < 1:
      return [t]
    argv = tuple(a for a in t.argv if not a.startswith(
        ("--config.ckpt_steps=", "--config.keep_ckpt_steps=")))
    t = dataclasses.replace(t, argv=argv + (
        f"--config.ckpt_steps={every}", f"--config.keep_ckpt_steps={every}"))
    out = [t]
    for i in range(1, self.ckpt_count + 1):
      step = i * every
      workdir = os.path.join(t.workdir, "checkpoint_evals", f"step{step}")
      for e in self.evaluations(t):
        argv = [a for a in e.argv if not a.startswith(
            ("--config.init_from=", "--workdir="))]
        argv[1:1] = [f"--config.init_from="
                     f"{os.path.join(t.workdir, 'checkpoints', str(step))}",
                     f"--workdir={workdir}" + (
                         e.workdir[len(t.workdir):] if e.workdir != t.workdir
                         else "")]
        out.append(dataclasses.replace(
            e, id=f"{e.id}-step{step}", argv=tuple(argv),
            workdir=argv[2][len("--workdir="):], role="checkpoint"))
    return out

  def budget_sweep(self) -> list[Task]:
    sweep = as_dict(self.config.get("budget_sweep"))
    if not sweep:
      return []
    if sweep["family"] not in self.families:
      raise StudyError(f"budget_sweep.family={sweep['family']!r} is not in "
                       f"config.families ({', '.join(self.families)})")
    out = []
    for fraction in sweep["fractions"]:
      for seed in sweep.get("seeds", self.seeds[:1]):
        for method in self.families[sweep["family"]]["methods"]:
          t = self.pretrain(sweep["family"], method, int(seed),
                            float(fraction))
          out += [t, *self.evaluations(t)]
    return out

  def grid(self, family_name, seed, methods=None) -> list[Task]:
    """Pre-training, evaluations (and the first method's random-init
    baselines) of every method × variant of a family for one seed."""
    family = self.families[family_name]
    out = []
    variants = list(as_dict(family.get("variants"))) or [""]
    for method in methods or family["methods"]:
      first = list(family["methods"]).index(method) == 0
      for j, variant in enumerate(variants):
        t = self.pretrain(family_name, method, seed, 1.0, variant)
        extra = []
        if self.ckpt_count and seed in self.ckpt_seeds:
          t, *extra = self.with_checkpoints(t)
        out += [t, *self.evaluations(t), *extra]
        if first and j == 0 and "random_init" in self.wanted:
          out += [self.baseline("random_init", family_name, seed, t, readout,
                                extra_)
                  for readout, extra_ in self.readouts(family_name).items()]
    return out

  def tasks(self) -> list[Task]:
    """Order: the first seed of every family, then the budget sweep, then
    the other seeds method by method; an interrupted study has every figure
    and complete seeds for the methods it reached (rerun to finish)."""
    tasks = [self.baseline("raw_pixels")] if "raw_pixels" in self.wanted \
        else []
    for family_name in self.families:
      tasks += self.grid(family_name, self.seeds[0]) if self.seeds else []
    tasks += self.budget_sweep()
    for family_name, family in self.families.items():
      for method in family["methods"]:
        for seed in self.seeds[1:]:
          tasks += self.grid(family_name, seed, (method,))
    ids = [t.id for t in tasks]
    if len(ids) != len(set(ids)):
      raise StudyError("config.families lists a method twice")
    return tasks


def plan(config: ml_collections.ConfigDict, root: str) -> list[Task]:
  """All tasks of the study in execution order, each with its `key`."""
  keys: dict[str, str] = {}
  out = []
  for task in _Planner(config, root).tasks():
    keys[task.id] = task_key(task, root, [keys[n] for n in task.needs])
    out.append(dataclasses.replace(task, key=keys[task.id]))
  return out


def task_key(task: Task, root: str, needs: Sequence[str]) -> str:
  """12 hex digits of SHA-1 over what the task computes: its resolved
  config (recipe + overrides; paths relative to the study root), the keys
  of the tasks it reads, the package version and STUDY_CODE_VERSION."""
  config = resolved_config(task.argv).to_json_best_effort(sort_keys=True)
  config = config.replace(os.path.join(root, ""), "<root>/")
  identity = {"config": config, "needs": list(needs),
              "code": [mi_ssl_jax.__version__, STUDY_CODE_VERSION]}
  return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()
                      ).hexdigest()[:12]


def _parse_flag_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return {"True": True, "False": False}.get(text, text)


def resolved_config(argv: Sequence[str]) -> ml_collections.ConfigDict:
  """The config a task's `mi_ssl_jax.main` builds: its recipe with the
  `--config.*` flags applied (values parsed as Python literals)."""
  c = load_recipe(argv[0][len("--config="):])
  with c.unlocked():
    for flag in argv[1:]:
      if not flag.startswith("--config."):
        continue
      name, _, text = flag[len("--config."):].partition("=")
      node, parts = c, name.split(".")
      for part in parts[:-1]:
        node = node[part]
      value = _parse_flag_value(text)
      node[parts[-1]] = (ml_collections.ConfigDict() if value == {} else value)
  return c


def total_steps(task: Task) -> int:
  """Training steps of a pretrain task, resolved as the trainer does."""
  from mi_ssl_jax import train_inputs  # noqa: PLC0415 (imports TensorFlow)
  c = resolved_config(task.argv)
  size = train_inputs.dataset_size(c)
  return int(config_lib.steps("total", c, size, c.batch_size))


def load_recipe(path_and_arg: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a recipe name or file (`path[:arg]`)."""
  path, _, arg = path_and_arg.partition(":")
  try:
    path = configs.resolve(path)
  except configs.RecipeNotFoundError as e:
    raise StudyError(f"recipe: {e}") from None
  spec = importlib.util.spec_from_file_location("_study_recipe", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg or None)
  except Exception as e:  # a recipe's own error, shown as one line
    raise StudyError(f"recipe {path_and_arg!r}: {e}") from None


def validate(tasks: Sequence[Task]) -> None:
  """Loads every recipe and applies its overrides (unknown fields fail here,
  before anything runs)."""
  seen = set()
  for task in tasks:
    if task.kind != "pretrain":
      continue
    recipe = task.argv[0][len("--config="):]
    overrides = [a for a in task.argv if a.startswith("--config.")]
    key = (recipe, tuple(o.split("=")[0] for o in overrides))
    if key in seen:
      continue
    seen.add(key)
    c = load_recipe(recipe)
    for flag in overrides:
      name = flag[len("--config."):].split("=", 1)[0]
      node, parts = c, name.split(".")
      try:
        for part in parts[:-1]:
          node = node[part]
        if parts[-1] not in node:
          raise KeyError(parts[-1])
      except (KeyError, AttributeError, TypeError):
        raise StudyError(f"override {flag!r}: recipe {recipe!r} has no field "
                         f"{name!r}") from None
