"""Gathering the finished tasks' numbers: evaluation results per row (method
or baseline × budget fraction), the diagnostics of every evaluated
checkpoint, the information-flow curves and the layer entropies."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from mi_ssl_jax.study.common import as_dict, flatten
from mi_ssl_jax.study.plan import Task
from mi_ssl_jax.study.run import read_marker
from mi_ssl_jax.study.stats import mean_std, spearman

DIAGNOSTICS = ("rankme", "lidar", "alpha_req", "effective_rank", "vn_entropy")
INFO_KEYS = ("matrix_mutual_information", "matrix_joint_entropy")
_LAYER_KEY = re.compile(r"^(block|stage)(\d+)_token_entropy$")


def eval_results(workdir: str) -> dict[str, dict[str, Any]]:
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


def _point(task: Task, results, knn_k: int, linear_protocol: str) -> dict:
  """One evaluated checkpoint: its accuracies and diagnostics."""
  knn_result = results.get("knn", {})
  return {
      "family": task.family, "label": task.label, "seed": task.seed,
      "step": knn_result.get("checkpoint_step"),
      "knn": knn_result.get("metrics", {}).get(f"top1_k{knn_k}"),
      "linear": results.get(linear_protocol, {}).get("metrics", {}).get(
          "top1"),
      **(knn_result.get("extra", {}).get("diagnostics") or {})}


def _add_to_row(rows, task, results, knn_k, linear_protocol,
                pretrain_seconds) -> None:
  knn = results.get("knn", {})
  key = (task.family, task.label, task.fraction)
  row = rows.setdefault(key, {"family": task.family, "label": task.label,
                              "fraction": task.fraction, "seeds": [],
                              "knn": [], "linear": [], "pretrain_s": [],
                              "diagnostics": [], "steps": []})
  row["seeds"].append(task.seed)
  row["knn"].append(knn.get("metrics", {}).get(f"top1_k{knn_k}"))
  row["linear"].append(results.get(linear_protocol, {}).get(
      "metrics", {}).get("top1"))
  row["diagnostics"].append(knn.get("extra", {}).get("diagnostics"))
  row["steps"].append(knn.get("checkpoint_step"))
  if pretrain_seconds is not None:
    row["pretrain_s"].append(pretrain_seconds)


def summarise(row: dict[str, Any]) -> dict[str, Any]:
  row = dict(row)
  for metric in ("knn", "linear"):
    mean, std, n = mean_std(row[metric])
    row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = (
        mean, std, n)
  row["pretrain_s_mean"] = mean_std([s for s in row["pretrain_s"]
                                     if s is not None])[0]
  return row


def linear_protocol_of(config: ml_collections.ConfigDict) -> str:
  return as_dict(config.evaluate).get("protocol_name", "simclr_linear")


def summary_rows(config: ml_collections.ConfigDict, tasks: Sequence[Task],
                 root: str) -> tuple[list[dict[str, Any]], list[dict]]:
  """(rows, points) of the finished evaluations: one summarised row per
  (family, label, budget fraction) of the main-role tasks (values per seed,
  mean, std, n), and one point per evaluated checkpoint (non-baselines)."""
  linear_protocol = linear_protocol_of(config)
  by_id = {t.id: t for t in tasks}
  rows: dict[tuple[str, str, float], dict[str, Any]] = {}
  points = []
  for task in tasks:
    if task.kind != "evaluate" or read_marker(root, task) is None:
      continue
    results = eval_results(task.workdir)
    if task.family != "baseline":
      points.append(_point(task, results, config.knn_k, linear_protocol))
    if task.role != "main":
      continue
    pre = next((by_id[n] for n in task.needs if n in by_id and
                by_id[n].kind == "pretrain"), None)
    seconds = None
    if pre is not None and task.family != "baseline":
      seconds = (read_marker(root, pre) or {}).get("seconds")
    _add_to_row(rows, task, results, config.knn_k, linear_protocol, seconds)
  return [summarise(r) for r in rows.values()], points


def collect(config: ml_collections.ConfigDict, tasks: Sequence[Task],
            root: str) -> dict[str, Any]:
  """Gathers the finished tasks' metrics into one JSON-able summary."""
  rows, points = summary_rows(config, tasks, root)
  done = [m for m in (read_marker(root, t) for t in tasks) if m]
  return {
      "name": config.name, "rows": rows,
      "tasks_done": len(done), "tasks_total": len(tasks),
      "task_seconds": round(sum(m.get("seconds", 0.0) for m in done), 1),
      "first_finished": min((m["finished_utc"] for m in done), default=None),
      "last_finished": max((m["finished_utc"] for m in done), default=None),
      "budgets": recorded_budgets(config, tasks, root),
      "probes": recorded_probes(tasks, root, linear_protocol_of(config)),
      "info_flow": info_flow(config, tasks, root),
      "layer_entropy": layer_entropy(tasks, root),
      "points": points,
      "correlations": correlations(points),
  }


# Fields of a run's config.json shown in the report's budget section, beside
# the fields the study's family overrides set.
BUDGET_FIELDS = ("total_epochs", "total_steps", "total_examples",
                 "warmup_epochs", "warmup_steps", "warmup_percent",
                 "mec_warmup_epochs", "mec_warmup_percent", "batch_size",
                 "base_lr", "model.backbone", "model.width", "dataset",
                 "train_split")


def recorded_budgets(config, tasks, root) -> dict[str, list[dict]]:
  """Per family: the distinct budgets the finished main-grid pre-trainings
  recorded in their `config.json` (written by the trainer as it trained),
  each {"fields": {name: value}, "runs": [label/seed, ...]}."""
  out: dict[str, dict[str, dict]] = {}
  for task in tasks:
    if (task.kind != "pretrain" or task.fraction != 1.0 or
        read_marker(root, task) is None):
      continue
    try:
      with open(os.path.join(task.workdir, "config.json")) as f:
        recorded = flatten(json.load(f))
    except (OSError, json.JSONDecodeError):
      recorded = {}
    names = set(BUDGET_FIELDS) | {
        k for k in flatten(as_dict(config.families[task.family].get(
            "overrides"))) if k.split(".")[0] not in ("evals", "tensorboard")}
    fields = {k: recorded[k] for k in sorted(names)
              if recorded.get(k) not in (None, "")}
    entry = out.setdefault(task.family, {}).setdefault(
        json.dumps(fields, sort_keys=True), {"fields": fields, "runs": []})
    entry["runs"].append(f"{task.label}/seed{task.seed}")
  return {family: list(v.values()) for family, v in out.items()}


def recorded_probes(tasks, root, linear_protocol: str) -> list[dict]:
  """The distinct linear-probe recipes the finished evaluations recorded
  (protocol, version, the recipe as run), with their count."""
  out: dict[str, dict] = {}
  for task in tasks:
    if task.kind != "evaluate" or read_marker(root, task) is None:
      continue
    result = eval_results(task.workdir).get(linear_protocol)
    if not result:
      continue
    probe = {"protocol": result.get("protocol"),
             "version": result.get("protocol_version"),
             "recipe": result.get("recipe") or {}}
    entry = out.setdefault(json.dumps(probe, sort_keys=True, default=str),
                           {**probe, "count": 0})
    entry["count"] += 1
  return list(out.values())


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
            spearman(*zip(*pairs, strict=True)) if len(pairs) >= 3
            else math.nan)
        out[group][f"{diag}/n"] = len(pairs)
  return out


def info_flow(config, tasks, root) -> dict[str, Any]:
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


def _layers(row: Mapping[str, Any]) -> list[float]:
  found = sorted((int(m.group(2)), row[k]) for k in row
                 if (m := _LAYER_KEY.match(k)))
  return [v for _, v in found]


def layer_entropy(tasks, root) -> dict[str, Any]:
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
    entry = out.setdefault(task.family, {}).setdefault(
        task.label, {"first": [], "last": [], "seeds": [], "last_step": []})
    entry["first"].append(_layers(rows[0]))
    entry["last"].append(_layers(rows[-1]))
    entry["seeds"].append(task.seed)
    entry["last_step"].append(rows[-1].get("step"))
  for family in out.values():
    for entry in family.values():
      for key in ("first", "last"):
        n = min(len(v) for v in entry[key])
        entry[key + "_mean"] = np.mean(
            [v[:n] for v in entry[key]], axis=0).tolist()
  return out
