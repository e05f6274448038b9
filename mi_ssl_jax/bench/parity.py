r"""CPU parity: our M-MAE train step vs the PyTorch reference, interleaved.

  python -m mi_ssl_jax.bench.parity --rounds=3 --steps=10
  python -m mi_ssl_jax.bench.parity --loss          # our loss at seed 0 only
  python -m mi_ssl_jax.bench.parity --rounds=2 --ours_env=XLA_FLAGS=...
  taskset -c 0 python -m mi_ssl_jax.bench.parity --rounds=2 --threads=1

Runs, alternately and each in a fresh subprocess, (a) our trainer's real
step (`mi_ssl_jax.bench.step.build_step`: `train.make_train_step`, jitted
with donation, synthetic fixed batch) of the M-MAE recipe with `PARITY_SETS`
(ViT 192-d × 12 blocks, 3 heads, patch 4 on 32 px, decoder 128-d × 2 blocks,
4 heads, batch 128, mask 0.75, λ = 0.01, μ = 1, online probe, float32, exact
regulariser gradient) and (b) the PyTorch reference of the same model and
step (`mi_ssl_jax.bench.torch_mmae`, 2 threads). The order alternates every
round (ours first in odd rounds), so a change of the machine's load hits
both. Prints a markdown table of steps/s per run with the load average
(1 min) before each run, the per-round ratio ours / PyTorch and the ratio of
the medians.

`--loss` prints our first-step loss terms at seed 0 (`repr` of float32): the
"same computation" check of optimisations (they must agree to float32
roundoff).

Needs the optional extra `bench` for the PyTorch side (torch, timm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RECIPE = "mmae_vitb"
# The parity configuration (docs/benchmarks.md, "CPU parity").
PARITY_SETS = (
    "image_size=32", "batch_size=128", "compute_dtype=float32",
    "num_classes=10",
    "model.variant=Ti/4", "model.decoder_width=128", "model.decoder_depth=2",
    "model.decoder_heads=4", "official_world_size=0", "mask_ratio=0.75",
    "reg_lambda=0.01", "reg_mu=1.0", "online_probe=True",
)


def run_ours(steps: int, warmup: int) -> dict:
  """Builds and times our step (in this process)."""
  import jax  # noqa: PLC0415

  from mi_ssl_jax.bench import step as step_bench  # noqa: PLC0415

  config = step_bench.load_config(RECIPE, list(PARITY_SETS))
  t0 = time.perf_counter()
  built = step_bench.build_step(config)
  jitted, state, batch = built["jitted"], built["state"], built["batch"]
  params = sum(x.size for x in jax.tree.leaves(state["params"]))
  state, metrics = jitted(state, batch)  # compiles; step 0 at seed 0
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  first = {k: float(v) for k, v in metrics.items()}
  state, _ = step_bench.time_steps(jitted, state, batch, max(warmup - 1, 0))
  state, times = step_bench.time_steps(jitted, state, batch, steps)
  times = times or [compile_s]  # --loss: no timed steps
  med = statistics.median(times)
  return {"impl": "ours", "jax": jax.__version__, "steps": steps,
          "step_s": med, "step_s_min": min(times), "steps_per_s": 1.0 / med,
          "compile_s": compile_s, "first_loss": first["loss"],
          "first_metrics": first, "params": int(params),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _subprocess(impl: str, steps: int, warmup: int, env: dict,
                threads: int = 2) -> dict:
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    path = f.name
  try:
    if impl == "ours":
      cmd = [sys.executable, "-m", "mi_ssl_jax.bench.parity", "--worker",
             f"--steps={steps}", f"--warmup={warmup}", f"--json={path}"]
    else:
      cmd = [sys.executable, "-m", "mi_ssl_jax.bench.torch_mmae",
             f"--steps={steps}", f"--warmup={warmup}", f"--threads={threads}",
             f"--json={path}"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(path) as f:
      return json.load(f)
  finally:
    os.unlink(path)


def interleaved(rounds: int, steps: int, warmup: int,
                ours_env: dict[str, str], threads: int = 2) -> list[dict]:
  """`rounds` × (ours, PyTorch), order alternating; one record per run."""
  base = dict(os.environ)
  runs = []
  for r in range(rounds):
    order = ("ours", "pytorch") if r % 2 == 0 else ("pytorch", "ours")
    for impl in order:
      env = dict(base, **ours_env) if impl == "ours" else base
      load = os.getloadavg()[0]
      rec = _subprocess(impl, steps, warmup, env, threads)
      rec.update(round=r + 1, load=load, load_after=os.getloadavg()[0])
      runs.append(rec)
      print(f"round {r + 1} {impl}: {rec['steps_per_s']:.3f} steps/s "
            f"(median {1e3 * rec['step_s']:.0f} ms, load {load:.2f})",
            file=sys.stderr, flush=True)
  return runs


def table(runs: list[dict]) -> str:
  """Markdown table of the runs, per-round ratios and the median ratio."""
  lines = ["| round | impl | load (1 min) before → after | steps/s | "
           "median step | min step |", "|---:|---|---:|---:|---:|---:|"]
  for rec in runs:
    lines.append(
        f"| {rec['round']} | {rec['impl']} | {rec['load']:.2f} → "
        f"{rec['load_after']:.2f} | {rec['steps_per_s']:.3f} | "
        f"{1e3 * rec['step_s']:.0f} ms | {1e3 * rec['step_s_min']:.0f} ms |")
  rates = {impl: [r["steps_per_s"] for r in runs if r["impl"] == impl]
           for impl in ("ours", "pytorch")}
  ratios = [o["steps_per_s"] / t["steps_per_s"]
            for o in runs if o["impl"] == "ours"
            for t in runs if t["impl"] == "pytorch"
            and t["round"] == o["round"]]
  ours, torch = (statistics.median(rates[k]) for k in ("ours", "pytorch"))
  lines += ["", "per-round ratio ours / PyTorch: "
            + ", ".join(f"{x:.2f}×" for x in ratios),
            f"median steps/s: ours {ours:.3f}, PyTorch {torch:.3f}; "
            f"ratio {ours / torch:.2f}×"]
  return "\n".join(lines)


def _parse_env(items: list[str]) -> dict[str, str]:
  out = {}
  for item in items:
    key, _, value = item.partition("=")
    out[key] = value
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--ours_env", action="append", default=[],
                 help="KEY=VALUE environment of our runs (e.g. XLA_FLAGS)")
  p.add_argument("--threads", type=int, default=2,
                 help="PyTorch intra-op threads; run under `taskset -c 0` "
                 "with --threads=1 to compare one core (XLA follows the "
                 "process's CPU affinity)")
  p.add_argument("--loss", action="store_true",
                 help="print our first-step loss terms at seed 0 and exit")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--json", default="", help="write the runs here")
  args = p.parse_args(argv)
  if args.worker or args.loss:
    rec = run_ours(args.steps if args.worker else 0,
                   args.warmup if args.worker else 1)
    if args.loss:
      for k, v in sorted(rec["first_metrics"].items()):
        print(f"{k} = {v!r}")
      print(f"params = {rec['params']}")
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rec, f, indent=2)
    return
  runs = interleaved(args.rounds, args.steps, args.warmup,
                     _parse_env(args.ours_env), args.threads)
  print(table(runs), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(runs, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  main()
