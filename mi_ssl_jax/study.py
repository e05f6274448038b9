r"""Study runner: a grid of methods × seeds at equal budgets, evaluated alike.

  python -m mi_ssl_jax.study --config=configs/study/fmnist.py
  make study                         # the same command
  python -m mi_ssl_jax.study --config=study/fmnist   # from any directory

`--config` and the recipes a study names take packaged recipe names or
paths to `.py` files (`mi_ssl_jax.configs.resolve`).

Trains every (method, seed) of `config.families` with `mi_ssl_jax.main`,
evaluates each run with the `evaluate` job (kNN and linear probe on one
feature extraction, `mi_ssl_jax/jobs/evaluate.py`), evaluates the
baselines (`raw_pixels`, and `random_init` of each family's architecture per
seed) with the same protocols, runs the optional budget sweep, and writes

* `config.results_md` (e.g. docs/results.md): mean ± std over seeds of every
  method and baseline, the budget, the paper orderings and whether they
  hold, the command, the machine and the wall time;
* figures in `config.figures_dir`: accuracy per method, accuracy vs training
  budget, and the information-flow curves (matrix mutual information and
  joint entropy of the two views during training);
* `<figures_dir>/<name>.json`: the numbers behind the document.

Every run is its own `python -m mi_ssl_jax.main` process with its own workdir
under `--workdir` (default `config.workdir`), so the study is resumable:
rerunning the command skips finished tasks (a marker in `<workdir>/tasks/`)
and resumes an interrupted pre-training from its newest checkpoint. A
progress line with an ETA over the whole grid follows every task. Bigger
budgets (a GPU/TPU box) are config overrides, e.g.
`--config.families.siamese.overrides.total_epochs=100`.

Flags: `--report_only` rewrites the document from finished tasks without
running anything; `--dry_run` prints the task list.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags

from mi_ssl_jax import config_lib, configs, errors

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

BASELINE_LABELS = {"raw_pixels": "raw pixels", "random_init": "random init"}


class StudyError(ValueError):
  """A user-facing study problem (printed as one `error:` line, exit 2)."""


# ------------------------------------------------------------------- plan ----


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
  role: str = "main"  # "main" (tables) or "checkpoint" (correlations only)

  @property
  def cost_key(self) -> str:
    return f"{self.kind}/{self.family}/{self.fraction:g}"


def _safe(text: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def _flag_value(value: Any) -> str:
  if isinstance(value, Mapping):
    return "{}"
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(
        value) == 1 else "") + ")"
  return str(value)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:  # an empty mapping clears a field, e.g. evals={}
      out[f"{prefix}{key}"] = value
  return out


def _override_flags(overrides: Mapping[str, Any]) -> list[str]:
  return [f"--config.{k}={_flag_value(v)}"
          for k, v in sorted(_flatten(overrides).items())]


def _as_dict(value: Any) -> dict[str, Any]:
  if value is None:
    return {}
  return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def _scaled_budget(overrides: dict[str, Any], fraction: float
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


def plan(config: ml_collections.ConfigDict, root: str) -> list[Task]:
  """All tasks of the study in execution order."""
  tasks: list[Task] = []
  families = _as_dict(config.families)
  splits = _as_dict(config.get("splits"))
  train_split = splits.get("pretrain", "")
  eval_flags = [f"--config.{k}={v}" for k, v in (
      ("train_split", splits.get("train", "")),
      ("eval_split", splits.get("eval", ""))) if v]
  evaluate = _as_dict(config.evaluate)
  eval_overrides = _override_flags(evaluate.get("overrides", {}))
  eval_config = evaluate.get("config", "configs/evaluate.py")
  seeds = tuple(int(s) for s in config.seeds)

  def pretrain(family_name, family, method, seed, fraction, variant=""):
    label = f"{method}@{variant}" if variant else method
    run = os.path.join(root, "runs", family_name, label,
                       f"seed{seed}" + (f"-x{fraction:g}" if fraction != 1.0
                                        else ""))
    overrides = _scaled_budget(
        {**_as_dict(family.get("overrides")),
         **_as_dict(_as_dict(family.get("variants")).get(variant))}, fraction)
    overrides["seed"] = seed
    if train_split:
      overrides["train_split"] = train_split
    task_id = f"pretrain-{family_name}-{_safe(label)}-seed{seed}" + (
        f"-x{fraction:g}" if fraction != 1.0 else "")
    argv = (f"--config={_recipe(family, method)}", f"--workdir={run}",
            *_override_flags(overrides))
    return Task(task_id, "pretrain", family_name, label, seed, fraction, run,
                argv)

  def evaluations(of: Task, family) -> list[Task]:
    """One evaluate task per evaluation variant of the family (readouts)."""
    variants = _as_dict(family.get("eval_variants")) or {"": {}}
    out = []
    for name, extra in variants.items():
      workdir = of.workdir if not name else os.path.join(of.workdir,
                                                         f"eval_{name}")
      argv = (f"--config={eval_config}", f"--config.init_from={of.workdir}",
              f"--workdir={workdir}", *eval_flags, *eval_overrides,
              *_override_flags(_as_dict(extra)))
      out.append(Task("eval" + of.id[len("pretrain"):] + (
          f"-{_safe(name)}" if name else ""), "evaluate", of.family,
          of.label + (f"#{name}" if name else ""), of.seed, of.fraction,
          workdir, argv, (of.id,)))
    return out

  def baseline(name, family_name=None, seed=None, of=None, readout="",
               extra=None):
    parts = [name] + ([family_name] if family_name else []) + (
        [f"seed{seed}"] if seed is not None else []) + (
        [_safe(readout)] if readout else [])
    workdir = os.path.join(root, "baselines", *parts)
    argv = [f"--config={eval_config}", f"--config.baseline={name}",
            f"--workdir={workdir}", *eval_flags, *eval_overrides,
            *_override_flags(_as_dict(extra))]
    if of is not None:
      argv.insert(1, f"--config.init_from={of.workdir}")
      argv.append(f"--config.seed={seed}")
    else:
      argv.append(f"--config.dataset={config.dataset}")
    label = name if family_name is None else f"{name}/{family_name}"
    return Task("baseline-" + "-".join(parts), "evaluate", "baseline",
                label + (f"#{readout}" if readout else ""), seed,
                1.0, workdir, tuple(argv), (of.id,) if of else ())

  ckpt_evals = _as_dict(config.get("checkpoint_evals"))
  ckpt_seeds = tuple(int(x) for x in ckpt_evals.get("seeds", ()))
  ckpt_count = int(ckpt_evals.get("count", 0))

  def with_checkpoints(t: Task, family) -> list[Task]:
    """Keep `count` evenly spaced checkpoints of `t` and evaluate each."""
    total = _total_steps(t)
    every = total // (ckpt_count + 1)
    if every < 1:
      return [t]
    argv = tuple(a for a in t.argv if not a.startswith(
        ("--config.ckpt_steps=", "--config.keep_ckpt_steps=")))
    t = dataclasses.replace(t, argv=argv + (
        f"--config.ckpt_steps={every}", f"--config.keep_ckpt_steps={every}"))
    out = [t]
    for i in range(1, ckpt_count + 1):
      step = i * every
      workdir = os.path.join(t.workdir, "checkpoint_evals", f"step{step}")
      for e in evaluations(t, family):
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

  def budget_sweep() -> list[Task]:
    sweep = _as_dict(config.get("budget_sweep"))
    if not sweep:
      return []
    family = families.get(sweep["family"])
    if family is None:
      raise StudyError(f"budget_sweep.family={sweep['family']!r} is not in "
                       f"config.families ({', '.join(families)})")
    out = []
    for fraction in sweep["fractions"]:
      for seed in sweep.get("seeds", seeds[:1]):
        for method in family["methods"]:
          t = pretrain(sweep["family"], family, method, int(seed),
                       float(fraction))
          out += [t, *evaluations(t, family)]
    return out

  wanted = tuple(config.get("baselines", ()))
  if "raw_pixels" in wanted:
    tasks.append(baseline("raw_pixels"))
  def grid(family_name, family, seed, methods=None) -> list[Task]:
    out = []
    variants = list(_as_dict(family.get("variants"))) or [""]
    for method in methods or family["methods"]:
      i = list(family["methods"]).index(method)
      for j, variant in enumerate(variants):
        t = pretrain(family_name, family, method, seed, 1.0, variant)
        extra = []
        if ckpt_count and seed in ckpt_seeds:
          t, *extra = with_checkpoints(t, family)
        out += [t, *evaluations(t, family), *extra]
        if i == 0 and j == 0 and "random_init" in wanted:
          for readout, extra in (_as_dict(family.get("eval_variants"))
                                 or {"": {}}).items():
            out.append(baseline("random_init", family_name, seed, t,
                                readout, extra))
    return out

  # Order: the first seed of every family, then the budget sweep, then the
  # other seeds method by method; an interrupted study has every figure and
  # complete seeds for the methods it reached (rerun to finish).
  for family_name, family in families.items():
    tasks += grid(family_name, family, seeds[0]) if seeds else []
  tasks += budget_sweep()
  for family_name, family in families.items():
    for method in family["methods"]:
      for seed in seeds[1:]:
        tasks += grid(family_name, family, seed, (method,))
  ids = [t.id for t in tasks]
  if len(ids) != len(set(ids)):
    raise StudyError("config.families lists a method twice")
  return tasks


def _parse_flag_value(text: str) -> Any:
  import ast  # noqa: PLC0415
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return {"True": True, "False": False}.get(text, text)


def _total_steps(task: Task) -> int:
  """Training steps of a pretrain task, resolved as the trainer does."""
  from mi_ssl_jax import train_inputs  # noqa: PLC0415
  c = _load_recipe(task.argv[0][len("--config="):])
  with c.unlocked():
    for flag in task.argv[1:]:
      if not flag.startswith("--config."):
        continue
      name, _, text = flag[len("--config."):].partition("=")
      node, parts = c, name.split(".")
      for part in parts[:-1]:
        node = node[part]
      value = _parse_flag_value(text)
      node[parts[-1]] = (ml_collections.ConfigDict() if value == {} else value)
  size = train_inputs.dataset_size(c)
  return int(config_lib.steps("total", c, size, c.batch_size))


def _load_recipe(path_and_arg: str) -> ml_collections.ConfigDict:
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


def validate(config: ml_collections.ConfigDict, tasks: Sequence[Task]) -> None:
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
    c = _load_recipe(recipe)
    for flag in overrides:
      name = flag[len("--config."):].split("=", 1)[0]
      node = c
      parts = name.split(".")
      try:
        for part in parts[:-1]:
          node = node[part]
        if parts[-1] not in node:
          raise KeyError(parts[-1])
      except (KeyError, AttributeError, TypeError):
        raise StudyError(f"override {flag!r}: recipe {recipe!r} has no field "
                         f"{name!r}") from None


# ----------------------------------------------------------------- markers ----


def _marker_path(root: str, task: Task) -> str:
  return os.path.join(root, "tasks", task.id + ".json")


def read_marker(root: str, task: Task) -> dict[str, Any] | None:
  try:
    with open(_marker_path(root, task)) as f:
      marker = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return marker if marker.get("status") == "done" else None


def _write_marker(root: str, task: Task, **fields: Any) -> None:
  path = _marker_path(root, task)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"id": task.id, "argv": list(task.argv), **fields}, f,
              indent=2, sort_keys=True)
  os.replace(tmp, path)


# ------------------------------------------------------------------- run ----


def _fmt_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
  """Progress and ETA over the whole grid from the measured task durations.

  A task's expected time is the mean duration of finished tasks with the
  same kind, family and budget fraction (from this and earlier invocations);
  a pre-training at another fraction of the same family is scaled by the
  fraction; tasks of a kind never timed yet are counted apart.
  """

  def __init__(self, tasks: Sequence[Task], root: str,
               echo=lambda line: print(line, flush=True)):
    self.tasks, self.root, self.echo = list(tasks), root, echo
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
    eta = _fmt_duration(known) if remaining else "0s"
    if unknown:
      eta = f"≥ {eta} ({unknown} tasks of kinds not timed yet)"
    return (f"[study {len(self.done)}/{len(self.tasks)}] {message} | "
            f"elapsed {_fmt_duration(time.time() - self.start)} | ETA {eta}")


def _error_line(log_path: str) -> str:
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
             env: Mapping[str, str] | None = None) -> tuple[bool, float, str]:
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


def execute(tasks: Sequence[Task], root: str, echo=None) -> list[Task]:
  """Runs the unfinished tasks in order; returns the ones that failed."""
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
    code, seconds, log_path = run_task(task, root)
    if code == errors.EXIT_RESTART:  # preempted, its checkpoint saved
      raise errors.Preempted(
          f"task {task.id} was preempted after {_fmt_duration(seconds)} "
          f"(its checkpoint is saved; log {log_path}); rerun the same "
          "command to resume")
    if code == 0:
      _write_marker(root, task, status="done", seconds=round(seconds, 1),
                    finished_utc=_now())
      progress.record(task, seconds)
      echo(progress.line(f"done {task.id} in {_fmt_duration(seconds)}"))
    else:
      failed.append(task)
      echo(progress.line(f"FAILED {task.id} after {_fmt_duration(seconds)}: "
                         f"{_error_line(log_path)} (log {log_path})"))
  return failed


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


# --------------------------------------------------------------- results ----


def _eval_results(workdir: str) -> dict[str, dict[str, Any]]:
  """Newest result JSON per protocol in `<workdir>/eval/`."""
  out: dict[str, tuple[float, dict[str, Any]]] = {}
  folder = os.path.join(workdir, "eval")
  if not os.path.isdir(folder):
    return {}
  for name in os.listdir(folder):
    if not name.endswith(".json") or name.startswith("diagnostics"):
      continue
    path = os.path.join(folder, name)
    try:
      with open(path) as f:
        result = json.load(f)
    except (OSError, json.JSONDecodeError):
      continue
    if "protocol" not in result:
      continue
    mtime = os.path.getmtime(path)
    if result["protocol"] not in out or mtime > out[result["protocol"]][0]:
      out[result["protocol"]] = (mtime, result)
  return {k: v for k, (_, v) in out.items()}


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  values = [float(v) for v in values if v is not None]
  if not values:
    return math.nan, math.nan, 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), std, len(values)


def collect(config: ml_collections.ConfigDict, tasks: Sequence[Task],
            root: str) -> dict[str, Any]:
  """Gathers the finished tasks' metrics into one JSON-able summary."""
  linear_protocol = _as_dict(config.evaluate).get("protocol_name",
                                                  "simclr_linear")
  rows: dict[tuple[str, str, float], dict[str, Any]] = {}
  points = []
  for task in tasks:
    if task.kind != "evaluate" or read_marker(root, task) is None:
      continue
    results = _eval_results(task.workdir)
    if task.family != "baseline":
      knn_result = results.get("knn", {})
      points.append({
          "family": task.family, "label": task.label, "seed": task.seed,
          "step": knn_result.get("checkpoint_step"),
          "knn": knn_result.get("metrics", {}).get(f"top1_k{config.knn_k}"),
          "linear": results.get(linear_protocol, {}).get("metrics", {}).get(
              "top1"),
          **(knn_result.get("extra", {}).get("diagnostics") or {})})
    if task.role != "main":
      continue
    knn = results.get("knn", {}).get("metrics", {})
    linear = results.get(linear_protocol, {}).get("metrics", {})
    key = (task.family, task.label, task.fraction)
    row = rows.setdefault(key, {"family": task.family, "label": task.label,
                                "fraction": task.fraction, "seeds": [],
                                "knn": [], "linear": [], "pretrain_s": [],
                                "diagnostics": [], "steps": []})
    row["seeds"].append(task.seed)
    row["knn"].append(knn.get(f"top1_k{config.knn_k}"))
    row["linear"].append(linear.get("top1"))
    diag = results.get("knn", {}).get("extra", {}).get("diagnostics")
    row["diagnostics"].append(diag)
    row["steps"].append(results.get("knn", {}).get("checkpoint_step"))
    pre = next((t for t in tasks if t.id in task.needs and
                t.kind == "pretrain"), None)
    if pre is not None and task.family != "baseline":
      marker = read_marker(root, pre) or {}
      row["pretrain_s"].append(marker.get("seconds"))
  summary_rows = []
  for row in rows.values():
    row = dict(row)
    for metric in ("knn", "linear"):
      mean, std, n = _mean_std(row[metric])
      row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = (
          mean, std, n)
    row["pretrain_s_mean"] = _mean_std([s for s in row["pretrain_s"]
                                        if s is not None])[0]
    summary_rows.append(row)
  markers = [read_marker(root, t) for t in tasks]
  done = [m for m in markers if m]
  return {
      "name": config.name, "rows": summary_rows,
      "tasks_done": len(done), "tasks_total": len(tasks),
      "task_seconds": round(sum(m.get("seconds", 0.0) for m in done), 1),
      "first_finished": min((m["finished_utc"] for m in done), default=None),
      "last_finished": max((m["finished_utc"] for m in done), default=None),
      "info_flow": _info_flow(config, tasks, root),
      "layer_entropy": _layer_entropy(tasks, root),
      "points": points,
      "correlations": correlations(points),
  }


DIAGNOSTICS = ("rankme", "lidar", "alpha_req", "effective_rank", "vn_entropy")


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman rank correlation (average ranks for ties)."""
  def ranks(v):
    v = np.asarray(v, np.float64)
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for value in np.unique(v):  # ties: average rank
      tie = v == value
      r[tie] = r[tie].mean()
    return r
  if len(x) < 3:
    return math.nan
  rx, ry = ranks(x), ranks(y)
  if rx.std() == 0 or ry.std() == 0:
    return math.nan
  return float(np.corrcoef(rx, ry)[0, 1])


def correlations(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Spearman ρ of each diagnostic with kNN / linear accuracy, per family
  and pooled, over every evaluated checkpoint with both values."""
  out: dict[str, Any] = {}
  groups = {"all": list(points)}
  for p in points:
    groups.setdefault(p["family"], []).append(p)
  for group, pts in groups.items():
    out[group] = {"n": len(pts)}
    for diag in DIAGNOSTICS:
      for metric in ("knn", "linear"):
        pairs = [(p[diag], p[metric]) for p in pts
                 if p.get(diag) is not None and p.get(metric) is not None
                 and math.isfinite(p[diag])]
        out[group][f"{diag}/{metric}"] = (
            _spearman(*zip(*pairs, strict=True)) if len(pairs) >= 3
            else math.nan)
        out[group][f"{diag}/n"] = len(pairs)
  return out


INFO_KEYS = ("matrix_mutual_information", "matrix_joint_entropy")


def _info_flow(config, tasks, root) -> dict[str, Any]:
  """Per method of `config.info_flow`: steps and per-seed MI / joint entropy
  curves from the runs' metrics.jsonl (logged by the trainer)."""
  from mi_ssl_jax import metrics_writer  # noqa: PLC0415 (imports jax)
  out = {}
  for method in config.get("info_flow", ()):
    curves = []
    for task in tasks:
      if (task.kind == "pretrain" and task.label == method and
          task.fraction == 1.0 and read_marker(root, task) is not None):
        rows = [r for r in metrics_writer.read_metrics(task.workdir)
                if all(k in r for k in INFO_KEYS)]
        if rows:
          curves.append({"seed": task.seed,
                         "step": [r["step"] for r in rows],
                         **{k: [r[k] for r in rows] for k in INFO_KEYS}})
    if curves:
      out[method] = curves
  return out


_LAYER_KEY = re.compile(r"^(block|stage)(\d+)_token_entropy$")


def _layer_entropy(tasks, root) -> dict[str, Any]:
  """Per family and method: the token entropy of every ViT block / ResNet
  stage (`<block|stage><i>_token_entropy`, logged by the trainer) at the
  first and the last logged step of each main-budget run, mean over seeds."""
  from mi_ssl_jax import metrics_writer  # noqa: PLC0415 (imports jax)
  out: dict[str, Any] = {}
  for task in tasks:
    if (task.kind != "pretrain" or task.fraction != 1.0 or
        read_marker(root, task) is None):
      continue
    rows = [r for r in metrics_writer.read_metrics(task.workdir)
            if any(_LAYER_KEY.match(k) for k in r)]
    if not rows:
      continue

    def layers(row):
      found = sorted((int(m.group(2)), row[k]) for k in row
                     if (m := _LAYER_KEY.match(k)))
      return [v for _, v in found]

    entry = out.setdefault(task.family, {}).setdefault(
        task.label, {"first": [], "last": [], "seeds": [], "last_step": []})
    entry["first"].append(layers(rows[0]))
    entry["last"].append(layers(rows[-1]))
    entry["seeds"].append(task.seed)
    entry["last_step"].append(rows[-1].get("step"))
  for family in out.values():
    for entry in family.values():
      for key in ("first", "last"):
        n = min(len(v) for v in entry[key])
        entry[key + "_mean"] = np.mean(
            [v[:n] for v in entry[key]], axis=0).tolist()
  return out


# ---------------------------------------------------------------- report ----


def _pm(mean: float, std: float, n: int) -> str:
  if n == 0 or math.isnan(mean):
    return "—"
  return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def _machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import jax  # noqa: PLC0415
  dev = jax.devices()[0]
  accel = ("" if dev.platform == "cpu" else
           f", {jax.device_count()} × {dev.device_kind}")
  return f"{model}, {os.cpu_count()} CPU cores{accel}"


def _versions() -> str:
  import flax  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import optax  # noqa: PLC0415
  return (f"Python {platform.python_version()}, jax {jax.__version__}, "
          f"flax {flax.__version__}, optax {optax.__version__}")


def _row_name(config, row) -> str:
  names = _as_dict(config.get("display_names"))
  label = row["label"]
  if row["family"] == "baseline":
    label, _, readout = label.partition("#")
    base, _, fam = label.partition("/")
    text = BASELINE_LABELS.get(base, base)
    text = (f"{text} ({_as_dict(config.families)[fam]['title']})" if fam
            else text)
    return text + (f" ({readout} readout)" if readout else "")
  label, _, readout = label.partition("#")
  method, _, variant = label.partition("@")
  return (names.get(method, method) + (f" [{variant}]" if variant else "")
          + (f" ({readout} readout)" if readout else ""))


def _order_verdicts(config, rows) -> list[str]:
  by_label = {r["label"]: r for r in rows
              if r["fraction"] == 1.0 and r["family"] != "baseline"}
  lines = []
  for claim in config.get("orderings", ()):
    claim = _as_dict(claim)
    order = list(claim["order"])
    if not all(m in by_label for m in order):
      lines.append(f"* **{claim['claim']}** — not all runs finished yet.")
      continue
    parts = []
    for metric, name in (("knn", f"kNN (k = {config.knn_k})"),
                         ("linear", "linear probe")):
      vals = [by_label[m] for m in order]
      means = [v[f"{metric}_mean"] for v in vals]
      stds = [v[f"{metric}_std"] for v in vals]
      if any(math.isnan(m) for m in means):
        parts.append(f"{name}: not measured")
        continue
      holds = all(a > b for a, b in zip(means, means[1:], strict=False))
      # "Within noise": some adjacent gap smaller than the larger seed std.
      noisy = any(abs(a - b) <= max(sa, sb) for a, b, sa, sb in
                  zip(means, means[1:], stds, stds[1:], strict=False))
      shown = " vs ".join(
          f"{_as_dict(config.get('display_names')).get(m, m)} "
          f"{_pm(v[f'{metric}_mean'], v[f'{metric}_std'], v[f'{metric}_n'])}"
          for m, v in zip(order, vals, strict=False))
      if holds:
        verdict = ("holds in the means, but a gap is within one seed std, so "
                   "not significantly" if noisy else "holds")
      else:
        verdict = "does not hold" + (
            " (a gap is within one seed std)" if noisy else "")
      parts.append(f"{name}: {shown} → **{verdict}**")
    lines.append(f"* **{claim['claim']}** (paper: {claim['paper']}).  \n  "
                 + ";  \n  ".join(parts))
  return lines


def write_report(config: ml_collections.ConfigDict, summary: dict[str, Any],
                 command: str) -> list[str]:
  """Writes the results document, its figures and JSON; returns the paths."""
  figdir = config.figures_dir
  os.makedirs(figdir, exist_ok=True)
  prefix = os.path.join(figdir, config.name)
  rows = summary["rows"]
  written = []
  with open(prefix + ".json", "w") as f:
    json.dump({**summary, "command": command}, f, indent=1, sort_keys=True,
              default=float)
    f.write("\n")
  written.append(prefix + ".json")
  figures = {}
  from mi_ssl_jax.evaluators import plots  # noqa: PLC0415
  if rows:
    figures["accuracy"] = plots.study_accuracy(
        rows, prefix + "_accuracy.png", names=lambda r: _row_name(config, r),
        knn_k=config.knn_k)
  sweep_cfg = _as_dict(config.get("budget_sweep"))
  sweep_rows = [r for r in rows if sweep_cfg and
                r["family"] == sweep_cfg["family"] and
                r["label"].partition("#")[2] == sweep_cfg.get("readout", "")]
  if len({r["fraction"] for r in sweep_rows}) > 1:
    family = _as_dict(config.families)[config.budget_sweep.family]
    budget = _as_dict(family["overrides"])
    unit, base = next((k, v) for k, v in budget.items()
                      if k.startswith("total_") and v is not None)
    figures["budget"] = plots.study_budget(
        sweep_rows, prefix + "_budget.png", base_budget=float(base),
        unit=unit.replace("total_", ""), seeds=tuple(
            config.budget_sweep.get("seeds", (config.seeds[0],))),
        names=lambda r: _row_name(config, r), knn_k=config.knn_k)
  if summary["info_flow"]:
    figures["info_flow"] = plots.study_info_flow(
        summary["info_flow"], prefix + "_info_flow.png",
        names=_as_dict(config.get("display_names")))
  if summary.get("layer_entropy"):
    figures["layer_entropy"] = plots.study_layer_entropy(
        summary["layer_entropy"], prefix + "_layer_entropy.png",
        names=_as_dict(config.get("display_names")),
        titles={k: v.get("title", k) for k, v in _as_dict(
            config.families).items()})
  if len(summary["points"]) >= 3:
    figures["correlation"] = plots.study_correlation(
        summary["points"], prefix + "_diagnostics.png", DIAGNOSTICS,
        knn_k=config.knn_k)
  written += [p for p in figures.values() if p]
  md = _markdown(config, summary, command, figures)
  os.makedirs(os.path.dirname(config.results_md) or ".", exist_ok=True)
  with open(config.results_md, "w") as f:
    f.write(md)
  written.append(config.results_md)
  return written


def _rel(path: str, start: str) -> str:
  return os.path.relpath(path, os.path.dirname(start) or ".")


def _image(alt: str, path: str, config) -> str:
  return f"![{alt}]({_rel(path, config.results_md)})"


def _markdown(config, summary, command, figures) -> str:
  rows = summary["rows"]
  families = _as_dict(config.families)
  main_rows = [r for r in rows if r["fraction"] == 1.0]
  order = {("baseline", "raw_pixels"): 0}
  for i, (f, fam) in enumerate(families.items()):
    for r, readout in enumerate(list(_as_dict(fam.get("eval_variants")))
                                or [""]):
      order[("baseline", f"random_init/{f}" + (
          f"#{readout}" if readout else ""))] = 1 + 10 * i + r
  for i, (fname, fam) in enumerate(families.items()):
    variants = list(_as_dict(fam.get("variants"))) or [""]
    for j, m in enumerate(fam["methods"]):
      readouts = list(_as_dict(fam.get("eval_variants"))) or [""]
      for v, variant in enumerate(variants):
        for r, readout in enumerate(readouts):
          label = (f"{m}@{variant}" if variant else m) + (
              f"#{readout}" if readout else "")
          order[(fname, label)] = 10000 * (i + 1) + 100 * j + 10 * v + r
  main_rows.sort(key=lambda r: order.get((r["family"], r["label"]), 10**6))
  raw = next((r for r in main_rows if r["label"] == "raw_pixels"), None)
  k = config.knn_k
  out = [f"# {config.title}", ""]
  out += [str(config.description).strip(), ""] if config.get(
      "description") else []
  out += ["## How this was produced", "",
          "Every number below comes from this command (rerunnable; finished "
          "runs are skipped):", "", "```bash", command, "```", "",
          f"* Machine: {_machine()}.",
          f"* Software: {_versions()}.",
          f"* Tasks: {summary['tasks_done']} of {summary['tasks_total']} "
          f"finished; {_fmt_duration(summary['task_seconds'])} of task time "
          f"(runs one after another; last finished "
          f"{summary['last_finished']}).",
          f"* Seeds: {', '.join(str(s) for s in config.seeds)}; mean ± "
          "sample std over seeds.",
          ""]
  out += ["## Budget and protocols", ""]
  for fam in families.values():
    budget = ", ".join(f"`{k_}={v}`" for k_, v in sorted(_as_dict(
        fam.get("overrides")).items()))
    out.append(f"* **{fam['title']}** (`{fam['recipe']}`): {budget}. "
               f"{fam.get('note', '')}".rstrip())
    for variant, extra in _as_dict(fam.get("variants")).items():
      flags_ = ", ".join(f"`{k_}={v}`" for k_, v in sorted(_flatten(
          _as_dict(extra)).items())) or "the recipe as is"
      out.append(f"  * variant `{variant}`: {flags_}")
    for readout, extra in _as_dict(fam.get("eval_variants")).items():
      flags_ = ", ".join(f"`{k_}={v}`" for k_, v in sorted(_flatten(
          _as_dict(extra)).items())) or "the method's default features"
      out.append(f"  * evaluated with readout `{readout}`: {flags_}")
  out += [f"* {line}" for line in config.get("protocol_notes", ())]
  out += [""]
  out += ["## Results", "",
          f"| features | family | kNN top-1 (k = {k}) | linear top-1 | "
          f"kNN − raw pixels | seeds | pre-train time / run |",
          "|---|---|---:|---:|---:|---:|---:|"]
  for r in main_rows:
    delta = "—"
    if raw and r is not raw and not math.isnan(r["knn_mean"]):
      delta = f"{r['knn_mean'] - raw['knn_mean']:+.2f}"
    fam = ("baseline" if r["family"] == "baseline"
           else families[r["family"]]["title"])
    t = r.get("pretrain_s_mean")
    out.append(
        f"| {_row_name(config, r)} | {fam} | "
        f"{_pm(r['knn_mean'], r['knn_std'], r['knn_n'])} | "
        f"{_pm(r['linear_mean'], r['linear_std'], r['linear_n'])} | {delta} | "
        f"{r['knn_n'] if r['seeds'][0] is not None else '—'} | "
        f"{_fmt_duration(t) if t and not math.isnan(t) else '—'} |")
  out += ["", "Pre-train time: wall time of the invocation that finished the "
          "run, mean over seeds (a run resumed after an interruption counts "
          "only its last part; the machine was shared with other jobs at "
          "times, so compare times only roughly).", ""]
  if figures.get("accuracy"):
    out += [_image("accuracy per method", figures["accuracy"], config), ""]
  selection = _selection_table(config, main_rows)
  if selection:
    out += ["## Setting per family (validation mean over the family's "
            "methods)", ""] + selection + [""]
  if config.get("orderings"):
    out += ["## Do the papers' orderings hold here?", ""]
    out += _order_verdicts(config, rows) + [""]
  if figures.get("budget"):
    out += ["## Accuracy vs training budget", "",
            str(config.budget_sweep.get("note", "")).strip(), "",
            _image("accuracy vs budget", figures["budget"], config),
            ""]
    out += _budget_table(config, rows) + [""]
  if figures.get("info_flow"):
    out += ["## Information flow during training", "",
            str(config.get("info_flow_note", "")).strip(), "",
            _image("information flow", figures["info_flow"], config),
            ""]
    out += _info_table(config, summary["info_flow"]) + [""]
  if figures.get("layer_entropy"):
    out += ["## Matrix entropy across depth", "",
            "Von Neumann entropy of each image's token Gram matrix (patch "
            "tokens after every ViT block; spatial positions at the end of "
            "every ResNet stage), mean over a training batch, logged by the "
            "trainer (`mi_ssl_jax.matrix.token_entropy`): dashed = first "
            "logged step (≈ initialisation), solid = end of training; mean "
            "over seeds. The per-layer view of Skean et al. 2025 (\"Layer by "
            "Layer\"), here for vision encoders.", "",
            _image("token entropy across depth", figures["layer_entropy"],
                   config), ""]
    out += _layer_table(config, summary["layer_entropy"]) + [""]
  if figures.get("correlation"):
    out += ["## Which label-free diagnostic predicts accuracy?", "",
            str(config.get("correlation_note", "")).strip(), "",
            _image("diagnostics vs accuracy", figures["correlation"], config),
            ""]
    out += _correlation_table(summary["correlations"]) + [""]
  for title, text in _as_dict(config.get("sections")).items():
    out += [f"## {title}", "", str(text).strip(), ""]
  out += [f"Generated by `mi_ssl_jax.study` from "
          f"`{os.path.basename(config.figures_dir)}/{config.name}.json`.", ""]
  return "\n".join(out)


def _selection_table(config, rows) -> list[str]:
  """For families with variants: mean kNN / linear over the family's
  methods per (variant, readout); the best kNN mean is marked."""
  out = []
  for fname, fam in _as_dict(config.families).items():
    variants = list(_as_dict(fam.get("variants")))
    if not variants:
      continue
    readouts = list(_as_dict(fam.get("eval_variants"))) or [""]
    cells = {}
    for v in variants:
      for r in readouts:
        sel = [x for x in rows if x["family"] == fname and
               x["label"].partition("#")[0].partition("@")[2] == v and
               x["label"].partition("#")[2] == r]
        knn = [x["knn_mean"] for x in sel if not math.isnan(x["knn_mean"])]
        lin = [x["linear_mean"] for x in sel
               if not math.isnan(x["linear_mean"])]
        cells[(v, r)] = (float(np.mean(knn)) if knn else math.nan,
                         float(np.mean(lin)) if lin else math.nan, len(sel))
    finite = {k: c for k, c in cells.items() if not math.isnan(c[0])}
    best = max(finite, key=lambda k: finite[k][0]) if finite else None
    out += [f"**{fam['title']}** ({len(fam['methods'])} methods; "
            f"kNN top-1 / linear top-1, mean over methods):", "",
            "| variant | " + " | ".join(f"{r or 'default'} readout"
                                       for r in readouts) + " |",
            "|---|" + "---:|" * len(readouts)]
    for v in variants:
      row = []
      for r in readouts:
        k, lin, n = cells[(v, r)]
        text = "—" if math.isnan(k) else f"{k:.2f} / {lin:.2f} (n={n})"
        row.append(f"**{text}**" if (v, r) == best else text)
      out.append(f"| `{v}` | " + " | ".join(row) + " |")
    out.append("")
  return out


def _budget_table(config, rows) -> list[str]:
  sweep = [r for r in rows if r["family"] == config.budget_sweep.family]
  fractions = sorted({r["fraction"] for r in sweep})
  seeds = set(int(s) for s in config.budget_sweep.get(
      "seeds", (config.seeds[0],)))
  head = "| method | " + " | ".join(f"× {f:g}" for f in fractions) + " |"
  out = [f"kNN top-1 (k = {config.knn_k}) / linear top-1 at each budget "
         f"fraction, seed(s) {sorted(seeds)}:", "", head,
         "|---|" + "---:|" * len(fractions)]
  names = _as_dict(config.get("display_names"))
  for method in _as_dict(config.families)[config.budget_sweep.family][
      "methods"]:
    cells = []
    for f in fractions:
      readout = config.budget_sweep.get("readout", "")
      label = method + (f"#{readout}" if readout else "")
      r = next((r for r in sweep if r["label"] == label and
                r["fraction"] == f), None)
      if r is None:
        cells.append("—")
        continue
      pick = [i for i, s in enumerate(r["seeds"]) if s in seeds]
      knn = _mean_std([r["knn"][i] for i in pick])
      lin = _mean_std([r["linear"][i] for i in pick])
      cells.append(f"{knn[0]:.2f} / {lin[0]:.2f}")
    out.append(f"| {names.get(method, method)} | " + " | ".join(cells) + " |")
  return out


def _correlation_table(corr: Mapping[str, Any]) -> list[str]:
  groups = list(corr)
  head = "| diagnostic | " + " | ".join(
      f"{g} (n = {corr[g]['n']}): kNN / linear" for g in groups) + " |"
  out = ["Spearman rank correlation with the accuracy of the same "
         "checkpoint:", "", head, "|---|" + "---:|" * len(groups)]
  for diag in DIAGNOSTICS:
    cells = []
    for g in groups:
      a, b = corr[g].get(f"{diag}/knn"), corr[g].get(f"{diag}/linear")
      cells.append(" / ".join("—" if v is None or math.isnan(v) else
                              f"{v:+.2f}" for v in (a, b)))
    out.append(f"| {diag} | " + " | ".join(cells) + " |")
  return out


def _layer_table(config, layer) -> list[str]:
  names = _as_dict(config.get("display_names"))
  out = []
  for family, methods in layer.items():
    depth = max(len(e["last_mean"]) for e in methods.values())
    unit = "block" if family == "mae" else "stage"
    out += [f"| {family}: method (end of training) | " + " | ".join(
        f"{unit} {i + 1}" for i in range(depth)) + " |",
            "|---|" + "---:|" * depth]
    for method, e in methods.items():
      vals = [f"{v:.2f}" for v in e["last_mean"]]
      vals += ["—"] * (depth - len(vals))
      n = len(e["seeds"])
      out.append(f"| {names.get(method, method)} ({n} seed"
                 f"{'s' if n != 1 else ''}) | " + " | ".join(vals) + " |")
    out.append("")
  return out


def _info_table(config, info) -> list[str]:
  names = _as_dict(config.get("display_names"))
  out = ["| method | matrix MI first → last log step | joint entropy first "
         "→ last |", "|---|---:|---:|"]
  for method, curves in info.items():
    mi0 = np.mean([c[INFO_KEYS[0]][0] for c in curves])
    mi1 = np.mean([c[INFO_KEYS[0]][-1] for c in curves])
    h0 = np.mean([c[INFO_KEYS[1]][0] for c in curves])
    h1 = np.mean([c[INFO_KEYS[1]][-1] for c in curves])
    out.append(f"| {names.get(method, method)} | {mi0:.3f} → {mi1:.3f} | "
               f"{h0:.3f} → {h1:.3f} |")
  return out


# ------------------------------------------------------------------ main ----


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
  SIGTERM too and saves its checkpoint; see `run_task`)."""
  del signum, frame
  raise KeyboardInterrupt


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
    tasks = plan(config, os.path.abspath(root))
    if _DRY_RUN.value:
      for t in tasks:
        print(f"{t.id}: python -m mi_ssl_jax.main {shlex.join(t.argv)}")
      return
    if not _REPORT_ONLY.value:
      validate(config, tasks)
      failed = execute(tasks, os.path.abspath(root))
    else:
      failed = []
    summary = collect(config, tasks, os.path.abspath(root))
    for path in write_report(config, summary, _command(sys.argv)):
      print(f"[study] wrote {path}", flush=True)
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


def _flags_parser(argv: Iterable[str]):
  try:
    return flags.FLAGS(list(argv))
  except (flags.Error, errors.UserError, AttributeError, KeyError, TypeError,
          ValueError) as e:
    _fail(str(e).splitlines()[-1] if str(e) else type(e).__name__)


if __name__ == "__main__":
  app.run(main, flags_parser=_flags_parser)
