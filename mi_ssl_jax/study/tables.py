"""The Markdown tables of the study report (one function per table)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mi_ssl_jax.study import stats
from mi_ssl_jax.study.common import as_dict
from mi_ssl_jax.study.results import DIAGNOSTICS, INFO_KEYS
from mi_ssl_jax.study.stats import mean_std

BASELINE_LABELS = {"raw_pixels": "raw pixels", "random_init": "random init"}


def pm(mean: float, std: float, n: int) -> str:
  """"81.20 ± 0.31" (n > 1), "81.20" (n = 1), "—" (nothing)."""
  if n == 0 or math.isnan(mean):
    return "—"
  return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def row_name(config, row) -> str:
  """The display name of a summary row: method [variant] (readout)."""
  names = as_dict(config.get("display_names"))
  label, _, readout = row["label"].partition("#")
  if row["family"] == "baseline":
    base, _, fam = label.partition("/")
    text = BASELINE_LABELS.get(base, base)
    text = (f"{text} ({as_dict(config.families)[fam]['title']})" if fam
            else text)
    return text + (f" ({readout} readout)" if readout else "")
  method, _, variant = label.partition("@")
  return (names.get(method, method) + (f" [{variant}]" if variant else "")
          + (f" ({readout} readout)" if readout else ""))


def _selection_cells(rows, fname, variants, readouts):
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
  return cells


def selection_table(config, rows) -> list[str]:
  """For families with variants: mean kNN / linear over the family's
  methods per (variant, readout); the best kNN mean is marked."""
  out = []
  for fname, fam in as_dict(config.families).items():
    variants = list(as_dict(fam.get("variants")))
    if not variants:
      continue
    readouts = list(as_dict(fam.get("eval_variants"))) or [""]
    cells = _selection_cells(rows, fname, variants, readouts)
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


def budget_table(config, rows) -> list[str]:
  """kNN / linear of the budget sweep's family at each budget fraction."""
  sweep = [r for r in rows if r["family"] == config.budget_sweep.family]
  fractions = sorted({r["fraction"] for r in sweep})
  seeds = set(int(s) for s in config.budget_sweep.get(
      "seeds", (config.seeds[0],)))
  readout = config.budget_sweep.get("readout", "")
  out = [f"kNN top-1 (k = {config.knn_k}) / linear top-1 at each budget "
         f"fraction, seed(s) {sorted(seeds)}:", "",
         "| method | " + " | ".join(f"× {f:g}" for f in fractions) + " |",
         "|---|" + "---:|" * len(fractions)]
  names = as_dict(config.get("display_names"))
  for method in as_dict(config.families)[config.budget_sweep.family][
      "methods"]:
    label = method + (f"#{readout}" if readout else "")
    cells = []
    for f in fractions:
      r = next((r for r in sweep if r["label"] == label and
                r["fraction"] == f), None)
      if r is None:
        cells.append("—")
        continue
      pick = [i for i, s in enumerate(r["seeds"]) if s in seeds]
      knn = mean_std([r["knn"][i] for i in pick])
      lin = mean_std([r["linear"][i] for i in pick])
      cells.append(f"{knn[0]:.2f} / {lin[0]:.2f}")
    out.append(f"| {names.get(method, method)} | " + " | ".join(cells) + " |")
  return out


def correlation_table(corr: Mapping[str, Any]) -> list[str]:
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


def layer_table(config, layer) -> list[str]:
  names = as_dict(config.get("display_names"))
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


def info_table(config, info) -> list[str]:
  names = as_dict(config.get("display_names"))
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


def _samples(row, metric) -> dict[Any, float]:
  """{seed: value} of a summary row's finished seeds."""
  return {s: v for s, v in zip(row["seeds"], row[metric], strict=True)
          if v is not None}


def pair_comparison(row_a, row_b, metric) -> stats.Comparison:
  """mean(a) − mean(b) of `metric` with its 95 % interval: paired by seed
  when both rows are of one family (one recipe, so seed i fixes the same
  training data order) and have the same seeds; Welch's t otherwise."""
  a, b = _samples(row_a, metric), _samples(row_b, metric)
  paired = (row_a["family"] == row_b["family"] and set(a) == set(b)
            and len(a) > 1)
  seeds = sorted(a, key=str)
  if paired:
    return stats.compare([a[s] for s in seeds], [b[s] for s in seeds],
                         paired=True)
  return stats.compare(list(a.values()), list(b.values()), paired=False)


def _fmt_pair(name_a, name_b, c: stats.Comparison) -> str:
  interval = ("no interval (one seed)" if math.isnan(c.low) else
              f"95 % CI [{c.low:+.2f}, {c.high:+.2f}]")
  test = (f"paired t over {c.n} seeds" if c.test == "paired" else
          f"Welch t, df {c.df:.1f}" if not math.isnan(c.low) else "")
  return (f"{name_a} − {name_b}: {c.diff:+.2f}, {interval}"
          + (f" ({test})" if test else "") + f" → {c.verdict}")


def _metric_verdict(config, order, by_label, metric, name) -> list[str]:
  vals = [by_label[m] for m in order]
  if any(math.isnan(v[f"{metric}_mean"]) for v in vals):
    return [f"  * {name}: not measured"]
  shown = " vs ".join(
      f"{row_name(config, v)} "
      f"{pm(v[f'{metric}_mean'], v[f'{metric}_std'], v[f'{metric}_n'])}"
      for v in vals)
  lines, verdicts = [], []
  for i, j in itertools.combinations(range(len(order)), 2):
    c = pair_comparison(vals[i], vals[j], metric)
    verdicts.append(c.verdict)
    lines.append("    * " + _fmt_pair(row_name(config, vals[i]),
                                      row_name(config, vals[j]), c))
  return [f"  * {name}: {shown} → **{stats.claim_verdict(verdicts)}**",
          *lines]


def order_verdicts(config, rows) -> list[str]:
  """Each of `config.orderings`, per metric and per pair of its methods:
  the mean difference, its 95 % interval and "holds" (interval above 0),
  "reversed" (below 0) or "not resolved at this budget"; the claim holds
  when every pair does and is reversed when any pair is."""
  by_label = {r["label"]: r for r in rows
              if r["fraction"] == 1.0 and r["family"] != "baseline"}
  lines = []
  for claim in config.get("orderings", ()):
    claim = as_dict(claim)
    order = list(claim["order"])
    if not all(m in by_label for m in order):
      lines.append(f"* **{claim['claim']}** — not all runs finished yet.")
      continue
    lines.append(f"* **{claim['claim']}** (paper: {claim['paper']}).")
    for metric, name in (("knn", f"kNN (k = {config.knn_k})"),
                         ("linear", "linear probe")):
      lines += _metric_verdict(config, order, by_label, metric, name)
  return lines + ["", "Each pair: mean difference of the first minus the "
                  "second, 95 % confidence interval of Student's t paired by "
                  "seed (same family: seed i fixes the same training data "
                  "order) or Welch's t otherwise (`mi_ssl_jax.study.stats`); "
                  "\"holds\" = interval above 0, \"reversed\" = below 0, "
                  "else \"not resolved at this budget\"."]


MET, NOT_MET, NOT_FINISHED = "met", "not met", "not finished"


def _criterion(config, crit, row, base) -> tuple[str, str]:
  """(verdict, per-seed text) of one criterion for one method row."""
  metric, margin = crit["metric"], float(crit["margin"])
  values, reference = _samples(row, metric), _samples(base, metric)
  diffs = {}
  for seed in config.seeds:
    ref = reference.get(seed, reference.get(None))
    if seed in values and ref is not None:
      diffs[seed] = values[seed] - ref
  text = ", ".join(f"seed {s} {d:+.2f}" for s, d in diffs.items())
  if len(diffs) < len(config.seeds):
    return NOT_FINISHED, text or "no seed finished"
  return (MET if all(d >= margin for d in diffs.values()) else NOT_MET), text


def criteria_lines(config, rows) -> list[str]:
  """Each of `config.criteria` (name, metric, baseline label, margin) for
  every method of the part: met when, on every seed of `config.seeds`, the
  method's `metric` minus the baseline's (the same seed's; a seed-free
  baseline's single value) is at least `margin`; then the conjunction."""
  by_label = {(r["family"], r["label"]): r for r in rows
              if r["fraction"] == 1.0}
  methods = [r for r in rows if r["family"] != "baseline"
             and r["fraction"] == 1.0]
  if not methods:
    return ["* Criteria: no method evaluated yet → **not finished**."]
  lines, verdicts = [], []
  for crit in config.get("criteria", ()):
    crit = as_dict(crit)
    base = by_label.get(("baseline", crit["baseline"]))
    for row in methods:
      verdict, text = ((NOT_FINISHED, "baseline not evaluated yet")
                       if base is None else _criterion(config, crit, row,
                                                       base))
      verdicts.append(verdict)
      lines.append(f"* {crit['name']}: {row_name(config, row)} — {text} → "
                   f"**{verdict}**")
  overall = (NOT_FINISHED if NOT_FINISHED in verdicts else
             MET if verdicts and all(v == MET for v in verdicts) else NOT_MET)
  return lines + [f"* All criteria: **{overall}**."]
