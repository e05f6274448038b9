r"""The ahead-of-time tables of docs/scaling.md, row by row (resumable).

  make scaling                      # every table (hours on 2 CPU cores)
  .venv-aot/bin/python -m mi_ssl_jax.bench.scaling --tables=targets
  .venv-aot/bin/python -m mi_ssl_jax.bench.scaling --markdown   # print only

Each row is one `mi_ssl_jax.bench.aot` command (printed in the tables, so any
row can be rerun alone). Results go to `--out` (default
bench_results/scaling/<row>.json); a row whose JSON exists for the same
command is not compiled again, so an interrupted run continues where it
stopped. `--markdown` prints the tables of docs/scaling.md from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from mi_ssl_jax.bench import aot  # sets JAX_PLATFORMS=cpu before jax

GIB = aot.GIB
VIT_B, VIT_L = "mmae_vitb", "mmae_vitl"
FSDP = ("param_sharding='fsdp'", "mesh=(('data',1),('fsdp',-1))")
CIFAR = ("barlow_twins", "byol", "emi", "frossl", "ivne", "mmcr", "simclr",
         "simsiam", "spectral", "vicreg")


def _row(table, config, topology, *sets, find_max=False, note="",
         finetune=False):
  return dict(table=table, config=config, topology=topology,
              sets=list(sets), find_max=find_max, note=note,
              finetune=finetune)


def rows() -> list[dict[str, Any]]:
  """Every row of every table (module docstring)."""
  out = []
  # 1. Every ImageNet-scale recipe at its documented batch and topology.
  for name in ("mae_vitb", "umae_vitb", "mmae_vitb"):
    out.append(_row("recipes", name, "v4-32"))
  out.append(_row("recipes", "mmae_vitb", "v5e-8"))
  out.append(_row("recipes", "mmae_vitl", "v5e-8"))
  out.append(_row("recipes", "mmae_vitl", "v5e-8", *FSDP,
                  note="the recipe's setting for 16 GiB chips"))
  out.append(_row("recipes", "mmae_vitl", "v4-32"))
  for name in ("matrix_ssl_r50", "mec_r50"):
    out.append(_row("recipes", name, "v4-32"))
  for name in CIFAR:
    out.append(_row("recipes", f"{name}_r18_cifar", "v5e-8"))
  out.append(_row("recipes", "mmae_vitb", "v4-32", finetune=True,
                  note="fine-tuning (configs/finetune.py), batch 2048"))
  # 2. The targets: ViT-B M-MAE at batch 4096 on v4-32 and v5e-32.
  for topology in ("v4-32", "v5e-32"):
    out.append(_row("targets", VIT_B, topology, "batch_size=4096"))
  # 3. Largest batch per chip, data parallel / FSDP / full remat.
  for model in (VIT_B, VIT_L):
    for topology in ("v4-8", "v5e-8", "v5p-8", "v6e-8"):
      out.append(_row("max_batch", model, topology, find_max=True))
      out.append(_row("max_batch", model, topology, *FSDP, find_max=True))
      out.append(_row("max_batch", model, topology, "model.remat='full'",
                      find_max=True))
  # 4. Compile time and memory: unrolled vs scanned blocks, remat policies.
  for model in (VIT_B, VIT_L):
    for sets in ((), ("model.scan_blocks=True",),
                 ("model.scan_blocks=True", "model.remat='full'"),
                 ("model.remat='dots'",), ("model.remat='full'",)):
      out.append(_row("compile", model, "v5e-8", "batch_size=512", *sets))
  # ViT-H: where data parallelism cannot hold the model, FSDP + remat.
  out.append(_row("compile", VIT_L, "v5e-8", "model.variant='H/14'",
                  "batch_size=512", *FSDP, "model.remat='full'",
                  note="ViT-H/14 M-MAE"))
  return out


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


def run_row(row: dict[str, Any], out_dir: str) -> dict[str, Any]:
  """Compiles one row (or reuses its JSON); returns the record."""
  from mi_ssl_jax.bench import step as step_bench  # noqa: PLC0415
  path = os.path.join(out_dir, row_id(row) + ".json")
  cmd = command(row)
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    if record.get("command") == cmd:
      return record
  topo = aot.parse_topology(row["topology"])
  config = step_bench.load_config(row["config"], row["sets"])
  t0 = time.perf_counter()
  if row["find_max"]:
    record = aot.find_max_batch(config, topo)
  elif row.get("finetune"):
    record = aot.compile_finetune(config, topo)
  else:
    record = aot.compile_step(config, topo)
  record.update(command=cmd, row=row, wall_s=time.perf_counter() - t0)
  os.makedirs(out_dir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f, indent=1, default=str)
  return record


def _gib(x) -> str:
  return f"{x / GIB:.1f}" if isinstance(x, (int, float)) else "—"


def markdown(records: list[dict[str, Any]], table: str) -> str:
  """One table of docs/scaling.md from its rows' records."""
  recs = [r for r in records if r["row"]["table"] == table]
  if not recs:
    return "(not yet computed)\n"
  if table == "max_batch":
    head = ["model", "slice", "setting", "largest batch (per chip)",
            "peak GiB / HBM", "step ≥ ms (roofline)", "img/s ceiling"]
  elif table == "compile":
    head = ["model", "slice, batch", "execution", "compile s",
            "peak GiB / HBM", "fits"]
  else:
    head = ["recipe", "slice (hosts)", "batch (per chip)", "setting",
            "params", "peak GiB / HBM", "fits", "TFLOP/step",
            "step ≥ ms (roofline)", "img/s ceiling", "compile s"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  for r in recs:
    setting = ", ".join(r["row"]["sets"]) or "recipe defaults"
    peak = r["memory_per_chip"].get("peak_bytes")
    mem = f"{_gib(peak)} / {r['hbm_bytes'] / GIB:.0f}"
    if r.get("compile_error"):
      mem = f"≥ {_gib(peak)} / {r['hbm_bytes'] / GIB:.0f}"
    ms = f"{1e3 * r['roofline_step_s']:.0f}"
    if table == "max_batch":
      cells = [r["config"], r["topology"], setting,
               f"{r['global_batch']} ({r['max_batch_per_chip']})", mem, ms,
               f"{r['img_per_s_ceiling']:.0f}"]
    elif table == "compile":
      cells = [r["row"].get("note") or r["config"],
               f"{r['topology']}, {r['global_batch']}", setting,
               f"{r['compile_s']:.0f}", mem, "yes" if r["fits"] else "no"]
    else:
      note = r["row"].get("note")
      cells = [r["config"] + (f" ({note})" if note else ""),
               f"{r['topology']} ({r['hosts']})",
               f"{r['global_batch']} ({r['batch_per_chip']:g})", setting,
               f"{r['params'] / 1e6:.1f} M", mem,
               "yes" if r["fits"] else "**no**",
               f"{r['model_flops_per_step'] / 1e12:.1f}", ms,
               f"{r['img_per_s_ceiling']:.0f}", f"{r['compile_s']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Commands, in row order:")
  lines.append("")
  lines += [f"    {r['command']}" for r in recs]
  return "\n".join(lines) + "\n"


TABLES = ("recipes", "targets", "max_batch", "compile")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="bench_results/scaling")
  p.add_argument("--tables", default=",".join(TABLES))
  p.add_argument("--markdown", action="store_true",
                 help="print the tables from the JSON only (no compiles)")
  args = p.parse_args(argv)
  wanted = set(args.tables.split(","))
  records = []
  for row in rows():
    if row["table"] not in wanted:
      continue
    path = os.path.join(args.out, row_id(row) + ".json")
    if args.markdown:
      if os.path.exists(path):
        with open(path) as f:
          records.append(json.load(f))
      continue
    print(f"[scaling] {command(row)}", flush=True)
    try:
      records.append(run_row(row, args.out))
    except Exception as e:  # noqa: BLE001 (record and go on)
      print(f"[scaling]   failed: {type(e).__name__}: {str(e)[:300]}",
            flush=True)
  for table in TABLES:
    if table in wanted:
      print(f"\n## {table}\n\n" + markdown(records, table), flush=True)


if __name__ == "__main__":
  main()
