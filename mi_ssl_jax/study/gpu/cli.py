"""`python -m mi_ssl_jax.study.gpu`: calibrate, size, train, evaluate, report.

Order: the data on the device; the raw-pixel baseline (its time is the
estimate of one evaluation); a calibration that compiles each method's
program and times a few K-step calls (~`--calibration_s` in all, compile
time apart); `grid.size_grid` sizes the grid to what is left of the
deadline and writes `<out>/plan.json`; then every method × seed (and each
family's random-init baseline per seed) runs, each writing
`<out>/runs/<name>.json` as it finishes; `<out>/gpu_study.md` is rewritten
after each. A rerun with the same options reuses plan.json and skips
finished runs; a run's JSON made under another config is refused with one
line. A run that would end past the deadline is not started.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax

from mi_ssl_jax import paths
from mi_ssl_jax.data import fashion_mnist
from mi_ssl_jax.errors import UserError
from mi_ssl_jax.evaluators import common
from mi_ssl_jax.study import report
from mi_ssl_jax.study.common import StudyError, now
from mi_ssl_jax.study.gpu import device, evaluate, grid, table


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m mi_ssl_jax.study.gpu",
                              description=__doc__.splitlines()[0])
  p.add_argument("--out", default="bench_results/gpu_study")
  p.add_argument("--data_dir", default="",
                 help="folder of the Fashion-MNIST IDX files (default: "
                      "$MI_SSL_DATA_DIR, /usr/share/datasets/fashion-mnist)")
  p.add_argument("--deadline_min", type=float, default=6.5)
  p.add_argument("--max_epochs", type=int, default=100)
  p.add_argument("--min_epochs", type=int, default=1)
  p.add_argument("--methods", default=",".join(grid.DEFAULT_METHODS))
  p.add_argument("--seeds", default="0")
  p.add_argument("--train_examples", type=int, default=0, help="0: all")
  p.add_argument("--test_examples", type=int, default=0, help="0: all")
  p.add_argument("--steps_per_call", type=int, default=50)
  p.add_argument("--calibration_s", type=float, default=30.0)
  p.add_argument("--probe_epochs", type=int, default=None)
  p.add_argument("--probe_batch", type=int, default=None)
  p.add_argument("--tiny", action="store_true", help="tiny models (tests)")
  p.add_argument("--replan", action="store_true",
                 help="calibrate again even if plan.json matches")
  p.add_argument("--report_only", action="store_true")
  return p.parse_args(argv)


@dataclasses.dataclass
class Study:
  """Everything a run needs, built once."""
  args: argparse.Namespace
  train: evaluate.Split
  test: evaluate.Split
  images: jax.Array  # u8 [N, 28, 28, 1] on the device (replicated)
  labels: jax.Array  # i32 [N]
  protocol: evaluate.Protocol
  start: float
  programs: dict[tuple[str, int, int], device.Program] = dataclasses.field(
      default_factory=dict)

  @property
  def spe(self) -> int:  # steps per epoch
    return len(self.train.labels) // self.batch

  @property
  def batch(self) -> int:
    return int(device.run_config(grid.DEFAULT_METHODS[0], 0, 1, 1,
                                 self.args.tiny).batch_size)

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def extra(self, **kw: Any) -> dict[str, Any]:
    """Study settings that a run's key covers besides its config."""
    return {"n_train": len(self.train.labels), "n_test": len(self.test.labels),
            "protocol": evaluate.describe(self.protocol),
            "steps_per_call": self.args.steps_per_call, **kw}


def load_study(args: argparse.Namespace) -> Study:
  folder = args.data_dir or fashion_mnist.fashion_mnist_dir()
  if not folder:
    raise StudyError("Fashion-MNIST IDX files not found: pass --data_dir or "
                     "set MI_SSL_DATA_DIR to their folder")
  splits = []
  for split, n in (("train", args.train_examples), ("test",
                                                    args.test_examples)):
    images, labels = fashion_mnist.load(folder, split)
    n = n or len(labels)
    splits.append(evaluate.Split(images[:n], labels[:n]))
  repl = jax.sharding.NamedSharding(common.default_mesh(),
                                    jax.sharding.PartitionSpec())
  images, labels = jax.device_put((splits[0].images, splits[0].labels), repl)
  return Study(args, splits[0], splits[1], images, labels,
               evaluate.protocol(args.probe_epochs, args.probe_batch),
               time.perf_counter())


# --------------------------------------------------------------- results ----


def result_path(args, name: str) -> str:
  return os.path.join(args.out, table.RUNS_DIR, name + ".json")


def finished(args, name: str, key: str) -> bool:
  """True if `name` finished under `key`; refuses another key."""
  path = result_path(args, name)
  if not paths.exists(path):
    return False
  if paths.read_json(path).get("key") != key:
    raise StudyError(
        f"{path} was made with another config or protocol; use a new --out "
        "(or remove that file to rerun it)")
  return True


def write_result(study: Study, name: str, key: str, **fields: Any) -> None:
  dev = jax.devices()[0]
  paths.write_json(result_path(study.args, name), {
      "name": name, "key": key, "finished": now(),
      "device": report.machine(), "platform": dev.platform,
      "software": report.versions(),
      "protocol": evaluate.describe(study.protocol), **fields})
  print(f"[gpu_study] {name} done at {study.elapsed():.0f} s", flush=True)


# ---------------------------------------------------------------- runs ----


def raw_pixels(study: Study) -> float:
  """The raw-pixel baseline (once); returns its evaluation seconds."""
  key = grid.run_key("{}", study.extra(kind="raw_pixels"))
  if finished(study.args, "raw_pixels", key):
    res = paths.read_json(result_path(study.args, "raw_pixels"))
    return float(res["results"]["default"]["eval_s"])
  res = evaluate.evaluate(evaluate.raw_pixels_predict, None, study.train,
                          study.test, study.protocol, seed=0)
  write_result(study, "raw_pixels", key, kind="raw_pixels", seed=0,
               results={"default": res})
  return float(res["eval_s"])


def random_init(study: Study, fam: str, method: str, seed: int,
                steps: int) -> float:
  """Each family's architecture at initialisation, per seed; returns the
  longest of its evaluations' seconds (0 when it had finished before).
  `steps`: the longest run's (an untrained model does not depend on the
  run length, so the planned one does not change its key)."""
  name = f"random_init_{fam}_s{seed}"
  config = device.run_config(method, seed, steps, len(study.train.labels),
                             study.args.tiny)
  key = grid.run_key(config.to_json_best_effort(),
                     study.extra(kind="random_init"))
  if finished(study.args, name, key):
    return 0.0
  results = {}
  for readout in grid.READOUTS[fam]:
    predict, state, used = evaluate.random_init_state(
        config, steps, readout, study.train, study.protocol)
    res = evaluate.evaluate(predict, state, study.train, study.test,
                            study.protocol, seed)
    results[readout or "default"] = {**res, "bn_stat_batches": used}
  write_result(study, name, key, kind="random_init", family=fam,
               method=method, seed=seed, results=results)
  return max(r["eval_s"] for r in results.values())


def program(study: Study, method: str, seed: int, steps: int
            ) -> device.Program:
  """The compiled program of (method, seed, steps), built once."""
  k = (method, seed, steps)
  if k not in study.programs:
    config = device.run_config(method, seed, steps, len(study.train.labels),
                               study.args.tiny)
    study.programs[k] = device.build(config, study.images, study.labels,
                                     study.spe, study.args.steps_per_call)
  return study.programs[k]


def run_method(study: Study, method: str, seed: int, steps: int) -> None:
  name = grid.run_name(method, seed)
  config = device.run_config(method, seed, steps, len(study.train.labels),
                             study.args.tiny)
  key = grid.run_key(config.to_json_best_effort(), study.extra(kind="method"))
  if finished(study.args, name, key):
    return
  prog = program(study, method, seed, steps)
  state, summary = device.train(prog, study.images, study.labels,
                                len(study.train.labels), seed)
  results = evaluate.evaluate_readouts(
      config, steps, state, grid.READOUTS[grid.family(method)], study.train,
      study.test, study.protocol)
  study.programs.pop((method, seed, steps), None)  # free its memory
  write_result(study, name, key, kind="method", method=method,
               family=grid.family(method), seed=seed,
               epochs=summary["steps"] / study.spe, train=summary,
               compile_s=prog.compile_s, results=results,
               config=config.to_dict())


# ------------------------------------------------------ calibrate, plan ----


def _request(args) -> dict[str, Any]:
  """The options a plan is made for (plan.json is reused only for them)."""
  return {"methods": _methods(args), "seeds": _seeds(args),
          "max_epochs": args.max_epochs, "min_epochs": args.min_epochs,
          "train_examples": args.train_examples,
          "test_examples": args.test_examples,
          "steps_per_call": args.steps_per_call, "tiny": args.tiny,
          "probe_epochs": args.probe_epochs, "probe_batch": args.probe_batch,
          "deadline_min": args.deadline_min}


def _methods(args) -> list[str]:
  methods = [m for m in args.methods.split(",") if m]
  bad = [m for m in methods if m not in grid.RECIPES]
  if bad or not methods:
    raise StudyError(f"--methods {args.methods!r}: use some of "
                     f"{','.join(grid.RECIPES)}")
  return methods


def _seeds(args) -> list[int]:
  try:
    return [int(s) for s in args.seeds.split(",") if s]
  except ValueError:
    raise StudyError(f"--seeds {args.seeds!r}: comma-separated integers, "
                     "e.g. 0,1,2") from None


def _families(methods: Sequence[str]) -> dict[str, str]:
  """family -> its first method in `methods` (whose random init is the
  family's baseline)."""
  out: dict[str, str] = {}
  for m in methods:
    out.setdefault(grid.family(m), m)
  return out


def calibrate(study: Study, methods: Sequence[str], seed: int, steps: int
              ) -> tuple[dict[str, float], dict[str, float]]:
  """(seconds per step, compile seconds) per method, each method's program
  compiled for the longest run and timed for its share of
  `--calibration_s`."""
  step_s, compile_s = {}, {}
  for m in methods:
    prog = program(study, m, seed, steps)
    compile_s[m] = prog.compile_s
    step_s[m] = device.time_steps(
        prog, study.images, study.labels, len(study.train.labels), seed,
        study.args.calibration_s / len(methods))
    print(f"[gpu_study] calibration {m}: compile {prog.compile_s:.1f} s, "
          f"{step_s[m] * 1e3:.2f} ms/step", flush=True)
  return step_s, compile_s


def make_plan(study: Study) -> dict[str, Any]:
  """plan.json of `--out` when made for these options, else a new one from
  the calibration and the deadline."""
  args = study.args
  path = os.path.join(args.out, "plan.json")
  request = _request(args)
  if paths.exists(path) and not args.replan:
    plan = paths.read_json(path)
    if plan.get("request") == request:
      return plan
    raise StudyError(f"{path} was made for other options; pass --replan to "
                     "calibrate again (finished runs of another length are "
                     "then refused) or use a new --out")
  seeds = request["seeds"]
  max_steps = grid.total_steps(args.max_epochs, study.spe,
                               args.steps_per_call)
  # One evaluation's cost: the slowest of the first seed's baselines (the
  # random inits include compiling their model's feature extraction).
  eval_s = max([raw_pixels(study)] + [
      random_init(study, fam, first, seeds[0], max_steps)
      for fam, first in _families(request["methods"]).items()])
  step_s, compile_s = calibrate(study, request["methods"], seeds[0],
                                max_steps)
  budget = args.deadline_min * 60 - study.elapsed()
  costs = grid.Costs(step_s, compile_s, eval_s, study.spe)
  try:
    sized = grid.size_grid(costs, request["methods"], seeds, budget,
                           args.max_epochs, args.min_epochs)
  except ValueError as e:
    raise StudyError(str(e)) from None
  plan = {"request": request, "epochs": sized.epochs,
          "steps": grid.total_steps(sized.epochs, study.spe,
                                    args.steps_per_call),
          "methods": list(sized.methods), "seeds": list(sized.seeds),
          "dropped": list(sized.dropped), "estimate_s": sized.estimate_s,
          "deadline_s": args.deadline_min * 60,
          "calibrated_after_s": study.elapsed(),
          "costs": dataclasses.asdict(costs)}
  paths.write_json(path, plan)
  print(f"[gpu_study] plan: {sized.epochs} epochs x {len(sized.methods)} "
        f"methods x {len(sized.seeds)} seeds, about {sized.estimate_s:.0f} s"
        + (f"; left out: {', '.join(sized.dropped)}" if sized.dropped
           else ""), flush=True)
  return plan


def execute(study: Study, plan: dict[str, Any], command: str) -> None:
  """Every run of the plan (finished ones skipped), the table after each;
  a run predicted to end past the deadline is not started."""
  steps, costs = plan["steps"], plan["costs"]
  max_steps = grid.total_steps(plan["request"]["max_epochs"], study.spe,
                               study.args.steps_per_call)
  for seed in plan["seeds"]:
    for fam, first in _families(plan["methods"]).items():
      random_init(study, fam, first, seed, max_steps)
    for m in plan["methods"]:
      predicted = (costs["step_s"][m] * steps + costs["compile_s"][m]
                   + len(grid.READOUTS[grid.family(m)]) * costs["eval_s"])
      if study.elapsed() + predicted > plan["deadline_s"]:
        print(f"[gpu_study] {grid.run_name(m, seed)} not started: it would "
              "end past the deadline (rerun the command to continue)",
              flush=True)
        continue
      run_method(study, m, seed, steps)
      table.write(study.args.out, plan, command)


def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  command = "python -m mi_ssl_jax.study.gpu " + shlex.join(argv)
  try:
    if args.report_only:
      plan_path = os.path.join(args.out, "plan.json")
      plan = paths.read_json(plan_path) if paths.exists(plan_path) else {}
      print(table.write(args.out, plan, command))
      return
    paths.makedirs(os.path.join(args.out, table.RUNS_DIR))
    # Persistent compilation cache: a rerun skips the compiles.
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.abspath(args.out), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    study = load_study(args)
    plan = make_plan(study)
    execute(study, plan, command)
    print(table.write(args.out, plan, command))
  except (UserError, StudyError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(2)
