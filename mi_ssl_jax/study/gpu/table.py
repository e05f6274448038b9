"""The GPU study's Markdown, from the result JSONs alone (`<out>/runs/`).

Rows and the orderings come from the CPU study's writers
(`mi_ssl_jax.study.report.results_table`, `study.tables.order_verdicts`,
mean ± std by `study.results.summarise`), so both documents read alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mi_ssl_jax import configs, paths
from mi_ssl_jax.configs.study import fmnist as fmnist_study
from mi_ssl_jax.study import report, tables
from mi_ssl_jax.study.results import summarise

RUNS_DIR = "runs"
MARKDOWN = "gpu_study.md"


def read_results(out: str) -> list[dict[str, Any]]:
  """Every result JSON in `<out>/runs/`, sorted by file name."""
  folder = paths.join(out, RUNS_DIR)
  if not paths.isdir(folder):
    return []
  return [paths.read_json(paths.join(folder, name))
          for name in sorted(paths.listdir(folder)) if name.endswith(".json")]


def _label(result: Mapping[str, Any], readout: str) -> tuple[str, str]:
  """(family, label) of a table row, as the CPU study names them."""
  suffix = f"#{readout}" if readout != "default" else ""
  if result["kind"] == "raw_pixels":
    return "baseline", "raw_pixels"
  if result["kind"] == "random_init":
    return "baseline", f"random_init/{result['family']}{suffix}"
  return result["family"], f"{result['method']}{suffix}"


def rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Summary rows (one per features × readout) in the CPU study's format."""
  out: dict[tuple[str, str], dict[str, Any]] = {}
  for result in results:
    for readout, metrics in result["results"].items():
      family, label = _label(result, readout)
      row = out.setdefault((family, label), {
          "family": family, "label": label, "fraction": 1.0, "seeds": [],
          "knn": [], "linear": [], "pretrain_s": []})
      row["seeds"].append(result.get("seed"))
      row["knn"].append(metrics["knn_top1"])
      row["linear"].append(metrics["linear_top1"])
      if result["kind"] == "method":
        row["pretrain_s"].append(result["train"]["train_s"])
  return [summarise(r) for r in out.values()]


# Runs of this study that the CPU study's grid does not have: their names
# in the table, and their family's title (the CPU study's `vit_siamese`
# family holds only LeJEPA).
EXTRA_DISPLAY = {"vicreg_vit": "VICReg (ViT; the positive control)"}
EXTRA_FAMILY_TITLES = {"vit_siamese": "Siamese family (ViT)"}


def _order(row) -> tuple[int, int]:
  """Baselines first, then the CPU study's method order (this study's own
  runs after it), CLS before tokens."""
  methods = [m for _, m, _ in fmnist_study.METHODS] + list(EXTRA_DISPLAY)
  label = row["label"]
  if row["family"] == "baseline":
    return (0 if label == "raw_pixels" else 1, 0)
  method, _, readout = label.partition("#")
  return (2 + methods.index(method), 0 if readout in ("", "cls") else 1)


def study_config(methods: Sequence[str]):
  """The CPU study's config (names, families, k, orderings), its orderings
  kept to those whose methods are all in `methods`."""
  study = configs.load("study/fmnist")
  with study.unlocked():
    study.display_names.update(EXTRA_DISPLAY)
    for fam, title in EXTRA_FAMILY_TITLES.items():
      study.families[fam].title = title
    study.orderings = tuple(
        o for o in study.orderings
        if all(m.partition("#")[0] in methods for m in o["order"]))
  return study


def markdown(results: Sequence[Mapping[str, Any]], plan: Mapping[str, Any],
             command: str) -> str:
  """The document: how it was produced, the table, the orderings."""
  runs = [r for r in results if r["kind"] == "method"]
  study = study_config(sorted({r["method"] for r in runs}))
  table_rows = sorted(rows(results), key=_order)
  first = results[0] if results else {}
  epochs = sorted({round(r["epochs"], 2) for r in runs})
  planned = len(plan.get("methods", ())) * len(plan.get("seeds", ()))
  out = ["# GPU study: Fashion-MNIST, MAE family, Matrix-SSL / MEC and the "
         "positive control", "",
         "## How this was produced", "", "```bash", command, "```", "",
         f"* Device: {first.get('device', '—')}; software: "
         f"{first.get('software', '—')}.",
         f"* Runs: {len(runs)} finished of {planned} planned; "
         f"epochs per run: {', '.join(map(str, epochs)) or '—'} (the "
         f"calibration sized {plan.get('epochs', '—')} for a deadline of "
         f"{plan.get('deadline_s', 0) / 60:.1f} min"
         + (f"; left out to fit: {', '.join(plan['dropped'])}"
            if plan.get("dropped") else "") + ").",
         f"* Protocols: {json.dumps(first.get('protocol', {}))}.", ""]
  out += report.results_table(study, table_rows, heading="## Results")
  if study.orderings:
    out += ["## Orderings", ""] + tables.order_verdicts(study, table_rows)
  return "\n".join(out) + "\n"


def write(out: str, plan: Mapping[str, Any], command: str) -> str:
  """Writes `<out>/gpu_study.md` from the JSONs; returns its path."""
  path = os.path.join(out, MARKDOWN)
  paths.write_text(path, markdown(read_results(out), plan, command))
  return path
