r"""The ahead-of-time tables of docs/scaling.md, row by row (resumable).

  make scaling                      # every table (hours on 2 CPU cores)
  .venv-aot/bin/python -m mi_ssl_jax.bench.scaling --tables=targets
  .venv-aot/bin/python -m mi_ssl_jax.bench.scaling --markdown   # print only
  ... --markdown --docs=docs/scaling.md   # and rewrite the doc's tables
  make scaling SCALING_ARGS="--tables=compile --match=remat"  # some rows

Each row is one `mi_ssl_jax.bench.aot` command (printed in the tables, so any
row can be rerun alone). Its record goes to `--out` (default RECORDS,
docs/figures/scaling/<row>.json, committed with the doc it backs, as
docs/figures/study_fmnist.json backs docs/results.md; about 2 KB each); a row
whose record exists for the same command is not compiled again, so an
interrupted run continues where it stopped. `--markdown` prints the tables
of docs/scaling.md from the records. `--tables` and `--match` choose the
rows to compile; `--docs` always rewrites every table, and a row with no
record keeps the line the doc already has for its command (`doc_lines`), so
a rewrite never drops a row that was measured before its record was kept.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from typing import Any

from mi_ssl_jax import paths, platforms
from mi_ssl_jax.bench import aot  # sets JAX_PLATFORMS=cpu before jax
from mi_ssl_jax.errors import UserError

GIB = aot.GIB
RECORDS = "docs/figures/scaling"
VIT_B, VIT_L = "mmae_vitb", "mmae_vitl"
FSDP = ("param_sharding='fsdp'", "mesh=(('data',1),('fsdp',-1))")
CIFAR = ("barlow_twins", "byol", "emi", "frossl", "ivne", "mmcr", "simclr",
         "simsiam", "spectral", "vicreg")


def _row(table, config, topology, *sets, find_max=False, note="",
         finetune=False):
  return dict(table=table, config=config, topology=topology,
              sets=list(sets), find_max=find_max, note=note,
              finetune=finetune)


# The 8-chip slice of each generation (v4 and v5p names count TensorCores):
# the same program per chip, so the largest batch found on a v5e-8 predicts
# the others' (`predict_max_batch`), with and without FSDP.
# (In this order: the columns of the largest-batch table.)
EIGHT_CHIPS = {"v5e": "v5e-8", "v4": "v4-16", "v5p": "v5p-16", "v6e": "v6e-8"}
SETTINGS = {"data parallel": (), "FSDP": FSDP,
            "remat full": ("model.remat='full'",)}


def rows() -> list[dict[str, Any]]:
  """Every row of every table (module docstring), most wanted first."""
  out = []
  # The targets: ViT-B M-MAE at batch 4096 on v4-32 and v5e-32.
  for topology in ("v4-32", "v5e-32"):
    out.append(_row("targets", VIT_B, topology, "batch_size=4096"))
  # Every ImageNet-scale recipe at its documented batch and topology.
  out.append(_row("recipes", VIT_B, "v5e-8"))
  out.append(_row("recipes", VIT_L, "v5e-8"))
  out.append(_row("recipes", VIT_L, "v5e-8", "model.remat='full'",
                  note="the recipe's setting for 16 GiB chips"))
  out.append(_row("recipes", VIT_L, "v5e-8", *FSDP))
  out.append(_row("recipes", VIT_B, "v4-32"))
  out.append(_row("recipes", "matrix_ssl_r50", "v4-32"))
  out.append(_row("recipes", VIT_B, "v4-32", finetune=True,
                  note="fine-tuning (configs/finetune.py), batch 2048"))
  out.append(_row("recipes", "mec_r50", "v4-32"))
  # Compile time and memory of ViT-L: scanned blocks, remat policies (the
  # plain and the full-remat programs are the recipes rows above).
  for sets in ((), ("model.scan_blocks=True",),
               ("model.scan_blocks=True", "model.remat='dots_no_batch'"),
               ("model.scan_blocks=True", "model.remat='full'"),
               ("model.remat='full'",)):
    out.append(_row("compile", VIT_L, "v5e-8", *sets))
  # Largest batch per chip on a v5e-8 (the other chips: predicted).
  for model in (VIT_B, VIT_L):
    for sets in SETTINGS.values():
      out.append(_row("max_batch", model, "v5e-8", *sets, find_max=True))
  # ... and compiled on the 32 GiB chips too, data parallel (each its own
  # line, in its generation's column).
  for model in (VIT_B, VIT_L):
    for topology in (EIGHT_CHIPS["v6e"], EIGHT_CHIPS["v4"]):
      out.append(_row("max_batch", model, topology, find_max=True))
  for name in CIFAR:
    out.append(_row("recipes", f"{name}_r18_cifar", "v5e-8"))
  for name in ("mae_vitb", "umae_vitb"):
    out.append(_row("recipes", name, "v4-32"))
  out.append(_row("recipes", VIT_L, "v4-32"))
  for sets in (("model.scan_blocks=True",),
               ("model.scan_blocks=True", "model.remat='dots_no_batch'"),
               ("model.remat='full'",)):
    out.append(_row("compile", VIT_B, "v5e-8", *sets))
  # ViT-H: where data parallelism cannot hold the model, FSDP + remat.
  out.append(_row("compile", VIT_L, "v5e-8", "model.variant='H/14'",
                  *FSDP, "model.remat='full'", "model.scan_blocks=True",
                  note="ViT-H/14 M-MAE"))
  # The Siamese methods' ViT-S/16 recipe (MoCo v3 schedule, batch 4096).
  for method in ("matrix_ssl", "lejepa"):
    out.append(_row("recipes", f"siamese_vits16:method={method}", "v4-32"))
  # ... which fits a v4-32 only through XLA's own rematerialisation: the
  # remat policy that makes it fit as written.
  for method in ("lejepa", "matrix_ssl"):
    out.append(_row("compile", f"siamese_vits16:method={method}", "v4-32",
                    "model.remat='dots_no_batch'"))
  # Exact large batches: `grad_chunks` (the unchunked programs are the
  # targets' and recipes' rows).
  for batch, chunks in ((4096, 2), (4096, 4), (4096, 8), (16384, 16)):
    out.append(_row("chunks", VIT_B, "v4-32", f"batch_size={batch}",
                    f"grad_chunks={chunks}"))
  out.append(_row("chunks", "matrix_ssl_r50", "v4-32", "grad_chunks=4"))
  return out


def predict_max_batch(search: dict[str, Any], topology: str,
                      margin: float = 0.05) -> tuple[int, float]:
  """(largest per-chip batch, its predicted peak bytes) on `topology` from
  a `find_max_batch` record of the same program on another 8-chip slice:
  peak(b) = a + c·b through its two lowest probes (memory is linear in the
  per-chip batch; the state per chip is the same on 8 chips), rounded down
  to a multiple of 8."""
  probes = sorted((int(b) // search["chips"], p) for b, p in
                  search["probe_peaks"].items())
  (b0, p0), (b1, p1) = probes[0], probes[1]
  slope = (p1 - p0) / (b1 - b0)
  limit = (1.0 - margin) * aot.parse_topology(topology).chip.hbm_gib * GIB
  b = int((limit - (p0 - slope * b0)) / slope) // 8 * 8
  return b, p0 + slope * (b - b0)


def command(row: dict[str, Any]) -> str:
  parts = [f"--config={row['config']}", f"--topology={row['topology']}"]
  parts += [f'--set "{s}"' for s in row["sets"]]
  if row["find_max"]:
    parts.append("--find_max_batch")
  if row.get("finetune"):
    parts.append("--finetune")
  return "python -m mi_ssl_jax.bench.aot " + " ".join(parts)


def row_id(row: dict[str, Any]) -> str:
  text = "_".join([row["table"], row["config"], row["topology"],
                   *row["sets"], "max" if row["find_max"] else "",
                   "finetune" if row.get("finetune") else ""])
  return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _stored(out_dir: str) -> list[dict[str, Any]]:
  """Every record in `out_dir`."""
  return [paths.read_json(paths.join(out_dir, name))
          for name in paths.listdir(out_dir) if name.endswith(".json")]


def _write_record(path, record: dict[str, Any]) -> None:
  paths.write_text(path, json.dumps(record, indent=1, sort_keys=True,
                                    default=str) + "\n")


def known_probes(row: dict[str, Any], out_dir: str) -> dict[int, Any]:
  """{per-chip batch: record} of the single compiles already stored for
  `row`'s program (same recipe, slice and settings, the recipe's batch), so
  a largest-batch search starts from them instead of compiling them again."""
  out = {}
  for r in _stored(out_dir):
    other = r.get("row", {})
    if (not other.get("find_max") and not other.get("finetune")
        and other.get("config") == row["config"]
        and other.get("topology") == row["topology"]
        and other.get("sets") == row["sets"] and "memory_per_chip" in r):
      out[int(r["batch_per_chip"])] = r
  return out


def search_probe(row: dict[str, Any], out_dir: str,
                 global_batch: int) -> dict[str, Any] | None:
  """The compile a largest-batch search of `row`'s program (same recipe,
  slice and settings) already stored at `global_batch`, the recipe's own
  batch: the same program as `row`'s (`aot.find_max_batch` changes only
  `batch_size`), so `row` needs no compile of its own; `from_search` names
  the search. None if there is no such probe (or `row` is itself a search,
  or fine-tuning)."""
  if row["find_max"] or row.get("finetune"):
    return None
  search = row_id(dict(row, table="max_batch", find_max=True))
  for r in _stored(paths.join(out_dir, "probes", search)):
    if int(r["global_batch"]) == int(global_batch):
      return dict(r, from_search=search)
  return None


def compiled_where() -> dict[str, str]:
  """The machine, libtpu version and UTC date of a compile (compile times
  are the compiling host's; the rest of a record is the target's)."""
  return {"host": f"{platforms.cpu_model()}, {os.cpu_count()} CPU cores",
          "libtpu": importlib.metadata.version("libtpu"),
          "date": time.strftime("%Y-%m-%d", time.gmtime())}


def run_row(row: dict[str, Any], out_dir: str) -> dict[str, Any]:
  """Compiles one row (or reuses a stored record of the same command);
  returns the record."""
  from mi_ssl_jax.bench import step as step_bench  # noqa: PLC0415
  cmd = command(row)
  for stored in _stored(out_dir):
    if stored.get("command") == cmd:
      return dict(stored, row=row)
  topo = aot.parse_topology(row["topology"])
  config = step_bench.load_config(row["config"], row["sets"])
  t0 = time.perf_counter()
  if row["find_max"]:
    # Each compile of the search is stored as it ends: a rerun resumes.
    probe_dir = paths.join(out_dir, "probes", row_id(row))
    known = known_probes(row, out_dir)
    for r in _stored(probe_dir):
      known[int(r["batch_per_chip"])] = r

    def store(b, r):
      _write_record(paths.join(probe_dir, f"{b}.json"),
                    dict(r, **compiled_where()))

    record = aot.find_max_batch(config, topo, known=known, on_probe=store)
  elif row.get("finetune"):
    record = aot.compile_finetune(config, topo)
  elif (probe := search_probe(row, out_dir, config.batch_size)) is not None:
    # Compiled already, by the search: the probe keeps where and when.
    record = dict(probe, command=cmd, row=row,
                  wall_s=time.perf_counter() - t0)
    _write_record(paths.join(out_dir, row_id(row) + ".json"), record)
    return record
  else:
    record = aot.compile_step(config, topo)
  record.update(command=cmd, row=row, wall_s=time.perf_counter() - t0,
                **compiled_where())
  _write_record(paths.join(out_dir, row_id(row) + ".json"), record)
  return record


def _complete(r: dict[str, Any]) -> dict[str, Any]:
  """The two roofline bounds of a record (recomputed for records written
  before the record kept them)."""
  chip = aot.parse_topology(r["topology"]).chip
  r = dict(r)
  if "compute_bound_s" not in r or "memory_bound_s" not in r:
    t_compute, t_memory, _ = aot.roofline_bounds(
        chip, r["model_flops_per_chip"], r["bytes_accessed_per_chip"])
    r.setdefault("compute_bound_s", t_compute)
    r.setdefault("memory_bound_s", t_memory)
  r["roofline_step_s"] = max(r["compute_bound_s"], r["memory_bound_s"] or 0)
  return r


def ceiling(r: dict[str, Any]) -> float:
  """Images/s the roofline allows (the slower of its two bounds)."""
  return r["global_batch"] / r["roofline_step_s"]


def _gib(x) -> str:
  return f"{x / GIB:.1f}" if isinstance(x, (int, float)) else "—"


def _line(r: dict[str, Any]) -> str:
  """The table line of one record (completed by `_complete`; `r["row"]`
  says which table)."""
  table = r["row"]["table"]
  if table == "max_batch":
    return _max_batch_line(r)
  setting = ", ".join(r["row"]["sets"]) or "recipe defaults"
  peak = r["memory_per_chip"].get("peak_bytes")
  mem = f"{_gib(peak)} / {r['hbm_bytes'] / GIB:.0f}"
  if r.get("compile_error"):
    mem = f"≥ {_gib(peak)} / {r['hbm_bytes'] / GIB:.0f}"
  bytes_ms = r["memory_bound_s"]  # None: a refused compile
  ms = (f"{1e3 * r['compute_bound_s']:.0f} / "
        + ("—" if bytes_ms is None else f"{1e3 * bytes_ms:.0f}"))
  if table == "compile":
    cells = [r["row"].get("note") or r["row"]["config"],
             f"{r['topology']}, {r['global_batch']}", setting,
             f"{r['compile_s']:.0f}", mem, _fits_cell(r, no="no")]
  elif table == "chunks":  # no roofline: XLA counts a loop body once
    cells = [r["row"]["config"], f"{r['topology']} ({r['hosts']})",
             f"{r['global_batch']} ({r['batch_per_chip']:g})", setting,
             mem, _fits_cell(r),
             f"{r['model_flops_per_step'] / 1e12:.1f}",
             f"{r['compile_s']:.0f}"]
  else:
    note = r["row"].get("note")
    cells = [r["row"]["config"] + (f" ({note})" if note else ""),
             f"{r['topology']} ({r['hosts']})",
             f"{r['global_batch']} ({r['batch_per_chip']:g})", setting,
             f"{r['params'] / 1e6:.1f} M", mem, _fits_cell(r),
             f"{r['model_flops_per_step'] / 1e12:.1f}", ms,
             f"{ceiling(r):.0f}", f"{r['compile_s']:.0f}"]
  return "| " + " | ".join(cells) + " |"


# Marks a "fits" cell of a record written before records said whether
# XLA:TPU rematerialised on its own (`aot.parse_xla_remat`).
UNKNOWN_REMAT = "†"
UNKNOWN_REMAT_NOTE = (
    f"{UNKNOWN_REMAT} Compiled before the records kept whether XLA:TPU "
    "rematerialised on its own to fit; rerun the row's command to know.")
UNKNOWN_SEARCH_NOTE = (
    f"{UNKNOWN_REMAT} Searched before the records kept whether XLA:TPU "
    "rematerialised on its own, which the search then counted as fitting: "
    "the boundary may be past where the program fits as written; rerun the "
    "row's command with its stored probes moved aside to know.")


def _fits_cell(r: dict[str, Any], no: str = "**no**") -> str:
  """"yes", "yes, XLA remat a → b GiB" (fits only because XLA recomputes
  activations on its own), "yes†" (not known) or `no`."""
  if not r["fits"]:
    return no
  remat = r.get("xla_remat")
  if remat:
    return (f"yes, XLA remat {remat['before_bytes'] / GIB:.1f} → "
            f"{remat['after_bytes'] / GIB:.1f} GiB")
  return "yes" if r.get("xla_remat_known") else "yes" + UNKNOWN_REMAT


def _max_batch_line(r: dict[str, Any]) -> str:
  """Largest batch per chip: found by compiles on the v5e-8, predicted from
  that search's linear memory model for the other generations' 8-chip
  slices (`predict_max_batch`)."""
  names = {v: k for k, v in SETTINGS.items()}
  setting = names.get(tuple(r["row"]["sets"]), ", ".join(r["row"]["sets"]))
  # A search made before the records said whether XLA rematerialised on
  # its own may have counted such a compile as fitting: its boundary is †.
  unknown = "" if r.get("xla_remat_known") else UNKNOWN_REMAT
  compiled = (f"**{r['max_batch_per_chip']}**{unknown} per chip (peak "
              f"{_gib(r['memory_per_chip']['peak_bytes'])} GiB; compiled)")
  searched = {v: k for k, v in EIGHT_CHIPS.items()}[r["row"]["topology"]]
  cells = [r["row"]["config"], setting]
  for gen in EIGHT_CHIPS:
    if gen == searched:
      cells.append(compiled)
    elif searched != "v5e" or len(r.get("probe_peaks", {})) < 2:
      cells.append("—")  # predictions: from the v5e searches only
    else:
      b, peak = predict_max_batch(r, EIGHT_CHIPS[gen])
      cells.append(f"{b} per chip (peak ≈ {_gib(peak)} GiB; predicted)")
  return "| " + " | ".join(cells) + " |"


def _head(table: str) -> list[str]:
  if table == "max_batch":
    return ["model", "setting"] + [f"{topology} ({gen})" for gen, topology
                                   in EIGHT_CHIPS.items()]
  if table == "compile":
    return ["model", "slice, batch", "execution", "compile s",
            "peak GiB / HBM", "fits"]
  if table == "chunks":
    return ["recipe", "slice (hosts)", "batch (per chip)", "setting",
            "peak GiB / HBM", "fits", "TFLOP/step", "compile s"]
  return ["recipe", "slice (hosts)", "batch (per chip)", "setting",
          "params", "peak GiB / HBM", "fits", "TFLOP/step",
          "roofline ms: matmul / bytes", "img/s ceiling", "compile s"]


def _commands_intro(table: str) -> str:
  if table == "max_batch":
    return ("Commands, in row order (the predictions are "
            "`mi_ssl_jax.bench.scaling.predict_max_batch` of the v5e-8 "
            "searches' probes):")
  return "Commands, in row order:"


def markdown(table: str, stored: dict[str, dict[str, Any]],
             kept: dict[str, str] | None = None) -> str:
  """One table of docs/scaling.md: its rows in `rows()` order, each from
  the stored record of its command (`stored`: {command: record}) or, with
  none, the line `kept` ({command: line}, the doc's table as it is,
  `doc_lines`) has for that command; a row with neither is left out."""
  kept = kept or {}
  shown = []  # (command, table line)
  for row in rows():
    cmd = command(row)
    if row["table"] != table:
      continue
    if cmd in stored:
      shown.append((cmd, _line(_complete(dict(stored[cmd], row=row)))))
    elif cmd in kept:
      shown.append((cmd, kept[cmd]))
  if not shown:
    return "(not yet computed)\n"
  head = _head(table)
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  lines += [line for _, line in shown]
  if any(UNKNOWN_REMAT in line for _, line in shown):
    lines += ["", UNKNOWN_SEARCH_NOTE if table == "max_batch"
              else UNKNOWN_REMAT_NOTE]
  lines += ["", _commands_intro(table), ""]
  lines += [f"    {cmd}" for cmd, _ in shown]
  return "\n".join(lines) + "\n"


TABLES = ("recipes", "targets", "max_batch", "compile", "chunks")
TITLES = {"recipes": "Every ImageNet-scale recipe at its documented batch",
          "targets": "ViT-B M-MAE at batch 4096",
          "max_batch": "Largest batch per chip",
          "compile": "Compile time and memory: scanned blocks, remat",
          "chunks": "Exact large batches: grad_chunks"}
BEGIN = "<!-- scaling tables: begin (python -m mi_ssl_jax.bench.scaling " \
        "--markdown --docs=docs/scaling.md) -->"
END = "<!-- scaling tables: end -->"


def tables_markdown(tables, stored: dict[str, dict[str, Any]],
                    kept: dict[str, dict[str, str]]) -> str:
  """The `tables` of docs/scaling.md, each under its title (`markdown`)."""
  return "".join(f"\n### {TITLES[table]}\n\n"
                 + markdown(table, stored, kept.get(table))
                 for table in tables)


def _split_doc(path, doc: str) -> tuple[str, str, str]:
  """(before BEGIN, between BEGIN and END, after END) of a doc's text."""
  if BEGIN not in doc or END not in doc:
    raise UserError(f"{path} has no {BEGIN!r} ... {END!r} block: put the "
                    "two lines where the tables go")
  head, rest = doc.split(BEGIN, 1)
  block, tail = rest.split(END, 1)
  return head, block, tail


def doc_lines(path, doc: str) -> dict[str, dict[str, str]]:
  """{table: {command: its table line}} of the tables a doc holds between
  BEGIN and END (as `tables_markdown` writes them: a "### title" per table,
  a header, one line per row, then its commands in row order, indented)."""
  by_title = {title: table for table, title in TITLES.items()}
  out = {}
  for section in _split_doc(path, doc)[1].split("\n### ")[1:]:
    title, _, body = section.partition("\n")
    if title.strip() not in by_title:
      raise UserError(f"{path}: unknown table {title.strip()!r} between the "
                      f"scaling markers (known: {', '.join(TITLES.values())})"
                      "; rename or remove it")
    table = by_title[title.strip()]
    lines = body.splitlines()
    cells = [x for x in lines if x.startswith("| ")][1:]  # after the header
    commands = [x.strip() for x in lines if x.startswith("    python -m ")]
    if len(cells) != len(commands):
      raise UserError(f"{path}: table {title.strip()!r} has {len(cells)} "
                      f"rows and {len(commands)} commands; make them "
                      "correspond (one command per row, in row order)")
    out[table] = dict(zip(commands, cells, strict=True))
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=RECORDS,
                 help="folder of the records (one JSON per row)")
  p.add_argument("--tables", default=",".join(TABLES),
                 help="tables whose rows to compile (and to print)")
  p.add_argument("--match", default="",
                 help="compile only rows whose command contains this text")
  p.add_argument("--docs", default="",
                 help="also write every table into this markdown file, "
                 f"between the lines {BEGIN!r} and {END!r}; a row without "
                 "a record keeps the line the file has for its command")
  p.add_argument("--markdown", action="store_true",
                 help="print the tables from the records only (no compiles)")
  args = p.parse_args(argv)
  wanted = [t for t in TABLES if t in args.tables.split(",")]
  try:
    kept = (doc_lines(args.docs, paths.as_path(args.docs).read_text())
            if args.docs else {})
  except (UserError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  stored = {r.get("command"): r for r in _stored(args.out)}
  for row in rows():
    cmd = command(row)
    if args.markdown or row["table"] not in wanted or args.match not in cmd:
      continue
    print(f"[scaling] {cmd}", flush=True)
    try:
      stored[cmd] = run_row(row, args.out)
    except Exception as e:  # noqa: BLE001 (record and go on)
      print(f"[scaling]   failed: {type(e).__name__}: {str(e)[:300]}",
            flush=True)
  print(tables_markdown(wanted, stored, kept), flush=True)
  if args.docs:
    try:
      write_docs(args.docs, tables_markdown(TABLES, stored, kept))
    except (UserError, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)


def write_docs(path, text: str) -> None:
  """Replaces the lines between BEGIN and END of `path` with `text`."""
  head, _, tail = _split_doc(path, paths.as_path(path).read_text())
  paths.write_text(path, head + BEGIN + "\n" + text.strip("\n") + "\n\n"
                   + END + tail)


if __name__ == "__main__":
  main()
