"""The GPU study driver (mi_ssl_jax/study/gpu): its arithmetic, data order,
IDX reading, result keys and table here; the whole driver at tiny size on
the CPU, with TensorFlow, TFDS, clu and matplotlib hidden, in the slow
test."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mi_ssl_jax.data import fashion_mnist
from mi_ssl_jax.errors import DatasetError
from mi_ssl_jax.study.common import StudyError
from mi_ssl_jax.study.gpu import grid, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = ("tensorflow", "tensorflow_datasets", "clu", "matplotlib")
# A sitecustomize that makes the HIDDEN packages look not installed
# (find_spec is None, import raises ModuleNotFoundError), as on the GPU box.
HIDE = textwrap.dedent(f"""
    import sys
    HIDDEN = {HIDDEN!r}
    class _Hide:
      def __init__(self, finder):
        self._finder = finder
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
          return None
        return self._finder.find_spec(name, path, target)
      def __getattr__(self, attr):
        return getattr(self._finder, attr)
    sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
    """)


def _env(tmp_path):
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(HIDE)
  return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}",
              JAX_PLATFORMS="cpu", XLA_FLAGS="")


COSTS = grid.Costs(step_s={"mmae": 0.01, "mae": 0.01, "mec": 0.02},
                   compile_s={"mmae": 10.0, "mae": 10.0, "mec": 20.0},
                   eval_s=5.0, steps_per_epoch=100)


def test_sizing_keeps_max_epochs_when_they_fit():
  plan = grid.size_grid(COSTS, ["mmae", "mae"], [0], 1e6, 100, 1)
  assert (plan.epochs, plan.methods, plan.dropped) == (100, ("mmae", "mae"),
                                                      ())
  # 2 runs x 100 epochs x 100 steps x 0.01 s + (2 cls/tokens x 2 runs +
  # 2 random-init readouts) x 5 s; the calibrated programs are reused.
  assert plan.estimate_s == pytest.approx(200 + 6 * 5)


def test_sizing_shrinks_epochs_then_seeds_then_methods():
  # Fewer epochs: each run compiles again (its schedule length changed).
  plan = grid.size_grid(COSTS, ["mmae", "mae"], [0], 120, 100, 1)
  fixed = 2 * 10 + 6 * 5  # compiles + evaluations
  assert plan.epochs == (120 - fixed) // 2  # 2 s per epoch of both runs
  assert plan.estimate_s <= 120
  # Two seeds do not fit one epoch: one seed is kept.
  plan = grid.size_grid(COSTS, ["mmae", "mae"], [0, 1], 60, 100, 1)
  assert plan.seeds == (0,) and plan.dropped == ("seeds 1",)
  # Then the last method goes.
  plan = grid.size_grid(COSTS, ["mmae", "mec"], [0], 45, 100, 1)
  assert plan.methods == ("mmae",) and plan.dropped == ("method mec",)
  with pytest.raises(ValueError, match="deadline"):
    grid.size_grid(COSTS, ["mmae"], [0], 10, 100, 1)


def test_data_order_and_run_length():
  n, b = 10, 3  # 3 batches per epoch, one example dropped
  whole = grid.epoch_batches(n, b, seed=0, start=0, count=6)
  assert whole.shape == (6, 3)
  for epoch in (whole[:3], whole[3:]):
    assert len(set(epoch.ravel())) == 9  # no repeats within an epoch
  assert not np.array_equal(whole[:3], whole[3:])
  # Any step's batch is known without the steps before it.
  np.testing.assert_array_equal(grid.epoch_batches(n, b, 0, 4, 2), whole[4:])
  assert grid.total_steps(100, 234, 50) == 468 * 50
  assert grid.total_steps(0.01, 10, 50) == 50  # at least one call


def test_idx_reader(tmp_path):
  images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
  header = bytes([0, 0, 8, 3]) + b"".join(
      d.to_bytes(4, "big") for d in images.shape)
  labels = bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([3, 7])
  for img, lab in fashion_mnist.FILES.values():
    (tmp_path / (img + ".gz")).write_bytes(gzip.compress(
        header + images.tobytes()))
    (tmp_path / lab).write_bytes(labels)  # plain files are read too
  assert fashion_mnist.fashion_mnist_dir(str(tmp_path)) == str(tmp_path)
  x, y = fashion_mnist.load(str(tmp_path), "test")
  assert x.shape == (2, 28, 28, 1) and x.dtype == np.uint8
  np.testing.assert_array_equal(x[..., 0], images)
  np.testing.assert_array_equal(y, [3, 7])
  (tmp_path / "bad").write_bytes(header + images.tobytes()[:-1])
  with pytest.raises(DatasetError, match="truncated"):
    fashion_mnist.read_idx(str(tmp_path / "bad"))


def _result(kind, seed, knn, linear, **kw):
  readouts = kw.pop("readouts", ("default",))
  return {"kind": kind, "seed": seed, "epochs": 100.0,
          "train": {"train_s": 60.0}, "device": "dev", "software": "sw",
          "results": {r: {"knn_top1": knn + i, "linear_top1": linear + i}
                      for i, r in enumerate(readouts)}, **kw}


def test_table_and_resume_key(tmp_path):
  runs = tmp_path / "runs"
  runs.mkdir()
  results = [_result("raw_pixels", 0, 85.0, 84.0),
             _result("random_init", 0, 60.0, 50.0, family="mae",
                     method="mmae", readouts=("cls", "tokens"))]
  for seed in (0, 1):
    for method, gain in (("mmae", 2.0), ("umae", 1.0), ("mae", 0.0)):
      results.append(_result("method", seed, 80.0 + gain + seed, 81.0 + gain,
                             family="mae", method=method,
                             readouts=("cls", "tokens")))
  # The positive control: a family the CPU study's grid names otherwise.
  results += [_result("random_init", 0, 70.0, 69.0, family="vit_siamese",
                      method="vicreg_vit"),
              _result("method", 0, 87.0, 86.0, family="vit_siamese",
                      method="vicreg_vit")]
  for i, r in enumerate(results):
    (runs / f"{i}.json").write_text(json.dumps({**r, "key": str(i)}))
  plan = {"methods": ["mmae", "umae", "mae", "vicreg_vit"], "seeds": [0, 1],
          "epochs": 100, "deadline_s": 390}
  md = open(table.write(str(tmp_path), plan, "cmd")).read()
  assert "7 finished of 8 planned" in md
  assert ("| random init (Siamese family (ViT)) | baseline | 70.00 | 69.00 | "
          "-15.00 | 1 |") in md
  assert ("| VICReg (ViT; the positive control) | Siamese family (ViT) | "
          "87.00 | 86.00 | +2.00 | 1 | 1m00s |") in md
  assert md.index("M-MAE (tokens readout)") < md.index("VICReg (ViT;")
  assert "| raw pixels | baseline | 85.00 | 84.00 | — | 1 |" in md
  assert ("| M-MAE (cls readout) | MAE family (ViT) | 82.50 ± 0.71 | "
          "83.00 ± 0.00 | -2.50 | 2 | 1m00s |") in md
  assert "+2.00, 95 % CI [+2.00, +2.00] (paired t over 2 seeds) → holds" in md
  assert "Matrix-SSL ≥ MEC" not in md  # orderings of methods not in the grid
  # A finished run counts only under its own key.
  args = type("Args", (), {"out": str(tmp_path)})()
  from mi_ssl_jax.study.gpu import cli
  assert cli.finished(args, "0", "0")
  assert not cli.finished(args, "missing", "0")
  with pytest.raises(StudyError, match="another config"):
    cli.finished(args, "0", "other")


def test_driver_imports_without_tensorflow(tmp_path):
  code = ("import sys\n"
          "import mi_ssl_jax.study.gpu.cli, mi_ssl_jax.study.gpu.device\n"
          "import mi_ssl_jax.study.gpu.evaluate, mi_ssl_jax.bench.step\n"
          "import mi_ssl_jax.train, mi_ssl_jax.evaluators.linear\n"
          f"bad = [m for m in sys.modules if m.split('.')[0] in {HIDDEN!r}]\n"
          "assert not bad, bad\n"
          "import importlib.util\n"
          "assert importlib.util.find_spec('tensorflow') is None\n")
  proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path),
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(fashion_mnist.fashion_mnist_dir() is None,
                    reason="needs the Fashion-MNIST IDX files")
def test_tiny_study_without_tensorflow(tmp_path):
  """The whole driver at tiny size: calibration, plan, a method of each of
  the three families (the positive control's ViT included), baselines,
  JSONs, table; a rerun skips every finished run; other options in the
  same --out are refused with one line. ~3 min on 2 cores.
  """
  out = tmp_path / "out"
  argv = [sys.executable, "-m", "mi_ssl_jax.study.gpu", f"--out={out}",
          "--tiny", "--train_examples=512", "--test_examples=256",
          "--max_epochs=2", "--steps_per_call=8", "--calibration_s=2",
          "--probe_epochs=1", "--probe_batch=64", "--deadline_min=20",
          "--methods=mmae,matrix_ssl,vicreg_vit"]
  run = lambda args: subprocess.run(args, env=_env(tmp_path), cwd=ROOT,
                                    capture_output=True, text=True,
                                    timeout=900, check=False)
  proc = run(argv)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = sorted(os.listdir(out / "runs"))
  assert names == ["matrix_ssl_s0.json", "mmae_s0.json",
                   "random_init_mae_s0.json", "random_init_siamese_s0.json",
                   "random_init_vit_siamese_s0.json", "raw_pixels.json",
                   "vicreg_vit_s0.json"]
  res = {n: json.loads((out / "runs" / n).read_text()) for n in names}
  assert set(res["mmae_s0.json"]["results"]) == {"cls", "tokens"}
  assert res["matrix_ssl_s0.json"]["epochs"] == 2.0
  assert res["matrix_ssl_s0.json"]["train"]["steps"] == 64  # 2 x 512 / 16
  assert res["random_init_siamese_s0.json"]["results"]["default"][
      "bn_stat_batches"] == 0  # 512 images: no full batch of 1000
  for r in res.values():
    for m in r["results"].values():
      assert 0 < m["knn_top1"] <= 100 and 0 < m["linear_top1"] <= 100
  md = (out / "gpu_study.md").read_text()
  knn = res["mmae_s0.json"]["results"]["tokens"]["knn_top1"]
  assert f"| M-MAE (tokens readout) | MAE family (ViT) | {knn:.2f} |" in md
  assert os.listdir(out / "jax_cache")  # the persistent compilation cache
  mtimes = {n: os.path.getmtime(out / "runs" / n) for n in names}
  again = run(argv)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "done at" not in again.stdout  # every run was skipped
  assert {n: os.path.getmtime(out / "runs" / n) for n in names} == mtimes
  other = run([*argv[:-1], "--methods=mmae"])
  assert other.returncode == 2
  assert other.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "--replan" in other.stderr
