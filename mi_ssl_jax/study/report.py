"""The study's results document (Markdown), its figures and JSON summary."""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Any

import ml_collections

from mi_ssl_jax import platforms
from mi_ssl_jax.study import tables
from mi_ssl_jax.study.common import StudyError, as_dict, flatten, fmt_duration
from mi_ssl_jax.study.results import DIAGNOSTICS


def machine() -> str:
  """CPU model, core count and accelerators of this machine."""
  model = platforms.cpu_model()
  import jax  # noqa: PLC0415
  dev = jax.devices()[0]
  accel = ("" if dev.platform == "cpu" else
           f", {jax.device_count()} × {dev.device_kind}")
  return f"{model}, {os.cpu_count()} CPU cores{accel}"


def versions() -> str:
  import flax  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import optax  # noqa: PLC0415
  return (f"Python {platform.python_version()}, jax {jax.__version__}, "
          f"flax {flax.__version__}, optax {optax.__version__}")


def _figures(config, summary, prefix: str) -> dict[str, str]:
  """Draws the report's figures; returns {name: path}."""
  from mi_ssl_jax.evaluators import plots  # noqa: PLC0415
  rows, figures = summary["rows"], {}
  names = as_dict(config.get("display_names"))
  if rows:
    figures["accuracy"] = plots.study_accuracy(
        rows, prefix + "_accuracy.png",
        names=lambda r: tables.row_name(config, r), knn_k=config.knn_k)
  sweep_cfg = as_dict(config.get("budget_sweep"))
  sweep_rows = [r for r in rows if sweep_cfg and
                r["family"] == sweep_cfg["family"] and
                r["label"].partition("#")[2] == sweep_cfg.get("readout", "")]
  if len({r["fraction"] for r in sweep_rows}) > 1:
    budget = as_dict(as_dict(config.families)[sweep_cfg["family"]][
        "overrides"])
    unit, base = next((k, v) for k, v in budget.items()
                      if k.startswith("total_") and v is not None)
    figures["budget"] = plots.study_budget(
        sweep_rows, prefix + "_budget.png", base_budget=float(base),
        unit=unit.replace("total_", ""), seeds=tuple(
            sweep_cfg.get("seeds", (config.seeds[0],))),
        names=lambda r: tables.row_name(config, r), knn_k=config.knn_k)
  if summary["info_flow"]:
    figures["info_flow"] = plots.study_info_flow(
        summary["info_flow"], prefix + "_info_flow.png", names=names)
  if summary.get("layer_entropy"):
    figures["layer_entropy"] = plots.study_layer_entropy(
        summary["layer_entropy"], prefix + "_layer_entropy.png", names=names,
        titles={k: v.get("title", k) for k, v in as_dict(
            config.families).items()})
  if len(summary["points"]) >= 3:
    figures["correlation"] = plots.study_correlation(
        summary["points"], prefix + "_diagnostics.png", DIAGNOSTICS,
        knn_k=config.knn_k)
  return {k: v for k, v in figures.items() if v}


def write_report(config: ml_collections.ConfigDict, summary: dict[str, Any],
                 command: str) -> list[str]:
  """Writes the results document, its figures and JSON; returns the paths."""
  os.makedirs(config.figures_dir, exist_ok=True)
  prefix = os.path.join(config.figures_dir, config.name)
  with open(prefix + ".json", "w") as f:
    json.dump({**summary, "command": command}, f, indent=1, sort_keys=True,
              default=float)
    f.write("\n")
  figures = _figures(config, summary, prefix)
  write_markdown(config, markdown(config, summary, command, figures))
  return [prefix + ".json", *figures.values(), config.results_md]


def region_markers(name: str) -> tuple[str, str]:
  """The lines around study `name`'s text in a document it shares."""
  return f"<!-- study:{name} -->", f"<!-- /study:{name} -->"


def write_markdown(config: ml_collections.ConfigDict, md: str) -> None:
  """Writes `md` to `config.results_md`: between the study's region
  markers (`region_markers(config.name)`) where the file has them, so a
  document can hold several studies and hand-written text; else as the
  whole file, unless `config.results_region` demands the region.

  Raises:
    StudyError: `results_region` is set and the file lacks the markers.
  """
  path = config.results_md
  begin, end = region_markers(config.name)
  try:
    with open(path) as f:
      old = f.read()
  except OSError:
    old = ""
  i, j = old.find(begin), old.find(end)
  if 0 <= i < j:
    md = f"{old[:i + len(begin)]}\n{md.strip()}\n{old[j:]}"
  elif config.get("results_region"):
    raise StudyError(f"{path} has no lines {begin!r} ... {end!r} around "
                     "this study's results; add both lines where the "
                     "results go")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.write(md)


def _image(alt: str, path: str, config) -> str:
  rel = os.path.relpath(path, os.path.dirname(config.results_md) or ".")
  return f"![{alt}]({rel})"


def _row_order(config) -> dict[tuple[str, str], int]:
  """Table order: raw pixels, random inits, then the families' methods ×
  variants × readouts in config order."""
  families = as_dict(config.families)
  order = {("baseline", "raw_pixels"): 0}
  for i, (f, fam) in enumerate(families.items()):
    for r, readout in enumerate(list(as_dict(fam.get("eval_variants")))
                                or [""]):
      order[("baseline", f"random_init/{f}" + (
          f"#{readout}" if readout else ""))] = 1 + 10 * i + r
  for i, (fname, fam) in enumerate(families.items()):
    variants = list(as_dict(fam.get("variants"))) or [""]
    readouts = list(as_dict(fam.get("eval_variants"))) or [""]
    for j, m in enumerate(fam["methods"]):
      for v, variant in enumerate(variants):
        for r, readout in enumerate(readouts):
          label = (f"{m}@{variant}" if variant else m) + (
              f"#{readout}" if readout else "")
          order[(fname, label)] = 10000 * (i + 1) + 100 * j + 10 * v + r
  return order


def _header(config, summary, command) -> list[str]:
  out = [f"# {config.title}", ""]
  out += [str(config.description).strip(), ""] if config.get(
      "description") else []
  return out + [
      "## How this was produced", "",
      "Every number below comes from this command (rerunnable; finished "
      "runs are skipped):", "", "```bash", command, "```", "",
      f"* Machine: {machine()}.",
      f"* Software: {versions()}.",
      f"* Tasks: {summary['tasks_done']} of {summary['tasks_total']} "
      f"finished; {fmt_duration(summary['task_seconds'])} of task time "
      f"(runs one after another; last finished {summary['last_finished']}).",
      f"* Seeds: {', '.join(str(s) for s in config.seeds)}; mean ± "
      "sample std over seeds.", ""]


def _fields(fields) -> str:
  return ", ".join(f"`{k}={v}`" for k, v in sorted(fields.items()))


def _recorded_budget(fam, entries) -> list[str]:
  """A family's budget as its finished runs recorded it (config.json)."""
  head = f"* **{fam['title']}** (`{fam['recipe']}`)"
  if not entries:
    return [f"{head}: no finished run yet."]
  if len(entries) == 1:
    n = len(entries[0]["runs"])
    return [f"{head}, as its {n} finished run{'s' if n != 1 else ''} "
            f"recorded them: {_fields(entries[0]['fields'])}. "
            f"{fam.get('note', '')}".rstrip()]
  out = [f"{head}: its finished runs recorded {len(entries)} different "
         "budgets:"]
  for e in entries:
    runs = ", ".join(e["runs"][:4]) + (", ..." if len(e["runs"]) > 4 else "")
    out.append(f"  * {_fields(e['fields'])} ({len(e['runs'])} runs: {runs})")
  return out


def _budget_section(config, summary) -> list[str]:
  """Budgets and probe recipes as the finished runs recorded them (a
  run's config.json, an evaluation's result JSON), not as the config now
  asks: a changed config never labels old numbers."""
  out = ["## Budget and protocols", "",
         "Budgets as each run recorded them (its `config.json`):", ""]
  budgets = summary.get("budgets", {})
  for name, fam in as_dict(config.families).items():
    out += _recorded_budget(fam, budgets.get(name, []))
    for variant, extra in as_dict(fam.get("variants")).items():
      flags_ = _fields(flatten(as_dict(extra))) or "the recipe as is"
      out.append(f"  * variant `{variant}`: {flags_}")
    for readout, extra in as_dict(fam.get("eval_variants")).items():
      flags_ = (_fields(flatten(as_dict(extra)))
                or "the method's default features")
      out.append(f"  * evaluated with readout `{readout}`: {flags_}")
  for probe in summary.get("probes", []):
    recipe = {k: v for k, v in probe["recipe"].items()
              if k in ("epochs", "batch_size", "batch_norm", "base_lr",
                       "optimizer", "weight_decay")}
    out.append(f"* Linear probe as recorded by {probe['count']} "
               f"evaluation(s): `{probe['protocol']}` v{probe['version']}, "
               f"{_fields(recipe)}.")
  return out + [f"* {line}" for line in config.get("protocol_notes", ())] + [
      ""]


def results_table(config, main_rows, heading: str = "## Results"
                  ) -> list[str]:
  """The table of mean ± std per row, the kNN gain over raw pixels."""
  families = as_dict(config.families)
  raw = next((r for r in main_rows if r["label"] == "raw_pixels"), None)
  out = [heading, "",
         f"| features | family | kNN top-1 (k = {config.knn_k}) | linear "
         "top-1 | kNN − raw pixels | seeds | pre-train time / run |",
         "|---|---|---:|---:|---:|---:|---:|"]
  for r in main_rows:
    delta = "—"
    if raw and r is not raw and not math.isnan(r["knn_mean"]):
      delta = f"{r['knn_mean'] - raw['knn_mean']:+.2f}"
    fam = ("baseline" if r["family"] == "baseline"
           else families[r["family"]]["title"])
    t = r.get("pretrain_s_mean")
    out.append(
        f"| {tables.row_name(config, r)} | {fam} | "
        f"{tables.pm(r['knn_mean'], r['knn_std'], r['knn_n'])} | "
        f"{tables.pm(r['linear_mean'], r['linear_std'], r['linear_n'])} | "
        f"{delta} | {r['knn_n'] if r['seeds'][0] is not None else '—'} | "
        f"{fmt_duration(t) if t and not math.isnan(t) else '—'} |")
  return out + [
      "", "Pre-train time: wall time of the invocation that finished the "
      "run, mean over seeds (a run resumed after an interruption counts "
      "only its last part; the machine was shared with other jobs at "
      "times, so compare times only roughly).", ""]


def _figure_sections(config, summary, figures) -> list[str]:
  out = []
  if figures.get("budget"):
    out += ["## Accuracy vs training budget", "",
            str(config.budget_sweep.get("note", "")).strip(), "",
            _image("accuracy vs budget", figures["budget"], config), ""]
    out += tables.budget_table(config, summary["rows"]) + [""]
  if figures.get("info_flow"):
    out += ["## Information flow during training", "",
            str(config.get("info_flow_note", "")).strip(), "",
            _image("information flow", figures["info_flow"], config), ""]
    out += tables.info_table(config, summary["info_flow"]) + [""]
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
    out += tables.layer_table(config, summary["layer_entropy"]) + [""]
  if figures.get("correlation"):
    out += ["## Which label-free diagnostic predicts accuracy?", "",
            str(config.get("correlation_note", "")).strip(), "",
            _image("diagnostics vs accuracy", figures["correlation"], config),
            ""]
    out += tables.correlation_table(summary["correlations"]) + [""]
  return out


def _main_rows(config, summary) -> list[dict[str, Any]]:
  """The main-budget rows in table order (`_row_order`)."""
  order = _row_order(config)
  return sorted((r for r in summary["rows"] if r["fraction"] == 1.0),
                key=lambda r: order.get((r["family"], r["label"]), 10**6))


def markdown(config, summary, command, figures) -> str:
  """The results document."""
  main_rows = _main_rows(config, summary)
  out = _header(config, summary, command) + _budget_section(config, summary)
  out += results_table(config, main_rows)
  if figures.get("accuracy"):
    out += [_image("accuracy per method", figures["accuracy"], config), ""]
  selection = tables.selection_table(config, main_rows)
  if selection:
    out += ["## Setting per family (validation mean over the family's "
            "methods)", ""] + selection + [""]
  if config.get("orderings"):
    out += ["## Do the papers' orderings hold here?", ""]
    out += tables.order_verdicts(config, summary["rows"]) + [""]
  out += _figure_sections(config, summary, figures)
  for title, text in as_dict(config.get("sections")).items():
    out += [f"## {title}", "", str(text).strip(), ""]
  out += [f"Generated by `mi_ssl_jax.study` from "
          f"`{os.path.basename(config.figures_dir)}/{config.name}.json`.", ""]
  return "\n".join(out)


def _demoted(lines: list[str], levels: int) -> list[str]:
  """Markdown heading lines `levels` levels deeper."""
  return [("#" * levels + line) if line.startswith("#") else line
          for line in lines]


def _selection_lines(config, selection) -> list[str]:
  names = as_dict(config.get("display_names"))
  out = []
  for family, s in selection.items():
    rule = s["rule"]
    scores = ", ".join(f"{names.get(m, m)} {s['scores'][m]:.2f}"
                       for m in s["candidates"] if m in s["scores"])
    head = (f"* `{family}`: the method of part `{s['source']}` with the "
            f"best mean {rule.get('metric', 'knn')} ({scores or 'none yet'})")
    out.append(f"{head} → **{names.get(s['method'], s['method'])}**."
               if s["method"] else f"{head} → not selected yet (waits for "
               "every candidate).")
  return out


def parts_markdown(config, parts, summaries, command) -> str:
  """The results of a study in parts (`mi_ssl_jax.study.parts`), headings
  from level 4 (it goes under a document's own headings)."""
  done = sum(s["tasks_done"] for s in summaries.values())
  total = sum(s["tasks_total"] for s in summaries.values())
  seconds = sum(s["task_seconds"] for s in summaries.values())
  last = max((s["last_finished"] for s in summaries.values()
              if s["last_finished"]), default=None)
  out = ["#### How this was produced", "", "```bash", command, "```", "",
         f"* Machine: {machine()}.", f"* Software: {versions()}.",
         f"* Tasks: {done} of {total} planned tasks finished (a part whose "
         "method is still to be selected plans its runs once it is); "
         f"{fmt_duration(seconds)} of task time"
         + (f", last finished {last}." if last else "."), ""]
  for part in parts:
    summary = summaries[part.name]
    pc = part.config
    body = [f"## {pc.title}", "", str(pc.get("description", "")).strip(),
            "", f"Seeds: {', '.join(str(s) for s in pc.seeds)}.", ""]
    if part.selection:
      body += ["Method selected for this part:", "",
               *_selection_lines(pc, part.selection), ""]
    body += _budget_section(pc, summary)
    body += results_table(pc, _main_rows(pc, summary))
    if pc.get("criteria"):
      body += ["## Pre-registered criteria", "",
               *tables.criteria_lines(pc, summary["rows"]), ""]
    if pc.get("orderings"):
      body += ["## Orderings", "",
               *tables.order_verdicts(pc, summary["rows"]), ""]
    out += _demoted(body, 2)
  return "\n".join(out)


def write_parts_report(config, parts, summaries, command) -> list[str]:
  """Writes a study in parts: its JSON summary and its Markdown (in the
  study's region of `config.results_md`); returns the paths."""
  os.makedirs(config.figures_dir, exist_ok=True)
  path = os.path.join(config.figures_dir, config.name + ".json")
  with open(path, "w") as f:
    json.dump({"name": config.name, "command": command, "parts": summaries},
              f, indent=1, sort_keys=True, default=float)
    f.write("\n")
  write_markdown(config, parts_markdown(config, parts, summaries, command))
  return [path, config.results_md]
