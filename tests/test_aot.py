"""Ahead-of-time compilation for TPU slices (`mi_ssl_jax.bench.aot`).

The compile needs libtpu, which lives in its own environment (`make aot`
creates `.venv-aot`; `make test` passes its python in MI_SSL_AOT_PYTHON), so
the compiling test runs there in a subprocess: a tiny recipe's real train
step compiled for a one-host v5e-8 and for a v4-32 (16 chips over 4 hosts),
checked against the hand count of its FLOPs, the chip's HBM, and the rule
that a TPU program contains no CPU-only code path and uses the TPU's
kernel choices (XLA attention, Cholesky log-dets).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mi_ssl_jax.bench import aot
from mi_ssl_jax.bench import step as step_bench
from mi_ssl_jax.config_lib import ConfigError
from tests import flop_formulas

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,chips,hosts,topology_name", [
    ("v4-8", 4, 1, "v4:2x2x1"), ("v4-32", 16, 4, "v4:2x2x4"),
    ("v5e-8", 8, 1, "v5e:2x4"), ("v5litepod-8", 8, 1, "v5e:2x4"),
    ("v5e-32", 32, 8, "v5e:4x8"), ("v5e-256", 256, 64, "v5e:16x16"),
    ("v5p-8", 4, 1, "v5:2x2x1"), ("v5p-128", 64, 16, "v5:4x4x4"),
    ("v6e-8", 8, 1, "v6e:2x4"), ("v6e-256", 256, 64, "v6e:16x16")])
def test_topology_names_as_users_say_them(name, chips, hosts, topology_name):
  topo = aot.parse_topology(name)
  assert (topo.chips, topo.hosts, topo.topology_name) == (
      chips, hosts, topology_name)


@pytest.mark.parametrize("name", ["v7-8", "v5e-3", "tpu", "v4-6"])
def test_unknown_topologies_are_one_line_errors(name):
  with pytest.raises(ConfigError, match="unknown .*(v5e-8|known: v4-8)"):
    aot.parse_topology(name)


def test_cpu_only_ops_are_found():
  text = ('%a = f32[2] custom-call(), custom_call_target="lapack_ssyevd_ffi"'
          '\n%b = f32[2] custom-call(), custom_call_target="tpu_custom_call"')
  assert aot.cpu_only_ops(text) == ["lapack_ssyevd_ffi"]


def _aot_python() -> str | None:
  path = os.environ.get("MI_SSL_AOT_PYTHON") or str(
      ROOT / ".venv-aot" / "bin" / "python")
  return path if os.path.exists(path) else None


_CASES = (("v5e-8", 16), ("v4-32", 32))
_SCRIPT = """
import json, sys
from mi_ssl_jax.bench import aot, step
out = []
for topology, batch in %r:
  config = step.load_config("mae_vitb:tiny",
                            ["online_probe=False", f"batch_size={batch}"])
  out.append(aot.compile_step(config, aot.parse_topology(topology)))
# The fine-tuning step of the same backbone (uint8 batches, Mixup/CutMix).
out.append(aot.compile_finetune(config, aot.parse_topology("v5e-8"),
                                batch_size=16, num_classes=10))
print("RESULT" + json.dumps(out, default=str))
"""


@pytest.mark.skipif(_aot_python() is None,
                    reason="no .venv-aot (make aot-check creates it)")
def test_tiny_recipe_compiles_for_one_and_four_host_tpu_slices():
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)  # no simulated CPU devices needed
  proc = subprocess.run([_aot_python(), "-c", _SCRIPT % (_CASES,)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
  *records, finetune = json.loads(line[len("RESULT"):])
  assert finetune["fits"] and finetune["cpu_only_ops"] == []
  assert finetune["global_batch"] == 16 and finetune["params"] > 0
  assert finetune["model_flops_per_step"] > 0
  for (topology, batch), r in zip(_CASES, records, strict=True):
    config = step_bench.load_config(
        "mae_vitb:tiny", ["online_probe=False", f"batch_size={batch}"])
    hand = flop_formulas.mae_train_step_flops(config)
    topo = aot.parse_topology(topology)
    assert (r["chips"], r["hosts"]) == (topo.chips, topo.hosts)
    assert r["batch_per_chip"] == batch / topo.chips
    assert r["model_flops_per_step"] == pytest.approx(hand, rel=0.05)
    # XLA's own per-chip count adds elementwise work on top (tiny model).
    assert hand <= r["xla_flops_per_chip"] * topo.chips <= 2.0 * hand
    peak = r["memory_per_chip"]["peak_bytes"]
    assert 0 < peak < r["hbm_bytes"] and r["fits"]
    assert r["cpu_only_ops"] == []
    assert (r["kernels"]["attention"], r["kernels"]["logdet"]) == (
        "xla", "cholesky")
    assert r["roofline_step_s"] > 0 and r["img_per_s_ceiling"] > 0
    # libtpu's log was read, and a program this small needed no
    # rematerialisation from XLA.
    assert r["xla_remat_known"] and r["xla_remat"] is None


def test_xla_remat_is_read_from_libtpus_log():
  """A compile that XLA:TPU makes fit by rematerialising is flagged: the
  tiny recipe at 256 images per chip, its chips' HBM cut to 40 MiB
  (libtpu's `xla_tpu_max_hbm_size_mib`), ~25 s."""
  if _aot_python() is None:
    pytest.skip("no libtpu environment (make aot)")
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             LIBTPU_INIT_ARGS="--xla_tpu_max_hbm_size_mib=40")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [_aot_python(), "-m", "mi_ssl_jax.bench.aot", "--config=mae_vitb:tiny",
       "--topology=v5e-8", "--set", "batch_size=2048", "--set",
       "online_probe=False"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "fits only with XLA's own rematerialisation" in proc.stdout


def test_xla_remat_log_lines_are_parsed():
  log = ("I1205 deepsea_compiler_hlo_passes.cc:5728] XLA::TPU "
         "rematerialization hbm reduction:  36.95G => 28.69G\n")
  assert aot.parse_xla_remat(log) == {"before_bytes": 36.95 * 2**30,
                                      "after_bytes": 28.69 * 2**30}
  assert aot.parse_xla_remat("I1205 ... limit 14.63G = 95% hbm") is None


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None,
                    reason="libtpu is installed in this environment")
def test_without_libtpu_the_tool_says_what_to_install(tmp_path):
  """This environment has no libtpu: one error line, exit status 2."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, "-m", "mi_ssl_jax.bench.aot",
       "--config=mae_vitb:tiny", "--topology=v5e-8"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert lines[-1].startswith("error: compiling for a TPU needs libtpu")
  assert "Traceback" not in proc.stderr


def _fake_compiles(monkeypatch, base_gib: float, gib_per_example: float):
  """compile_step replaced by a linear memory model (peak = base + slope ×
  per-chip batch); returns the list of per-chip batches compiled."""
  compiled = []

  def compile_step(config, topo, devices=None, margin=0.05):
    b = int(config.batch_size) // topo.chips
    compiled.append(b)
    peak = (base_gib + gib_per_example * b) * aot.GIB
    return {"memory_per_chip": {"peak_bytes": peak}, "compile_error": "",
            "fits": peak <= (1 - margin) * topo.chip.hbm_gib * aot.GIB,
            "compile_s": 0.0, "batch_per_chip": b}

  monkeypatch.setattr(aot, "compile_step", compile_step)
  monkeypatch.setattr(aot, "topology_devices", lambda topo: None)
  return compiled


@pytest.mark.parametrize("known", [False, True])
def test_largest_batch_search_finds_the_boundary(monkeypatch, known):
  """On a v5e-8 (16 GiB, 95 % usable) with peak = 2 + 0.1·b GiB, the
  largest multiple of 8 per chip that fits is 132 -> 128; a stored compile
  of the recipe's batch is not redone, and since it already fills half the
  chip the second probe is half the batch, not twice it."""
  compiled = _fake_compiles(monkeypatch, 2.0, 0.1)
  topo = aot.parse_topology("v5e-8")
  config = step_bench.load_config("quickstart:tiny", ["batch_size=1024"])
  stored = {128: aot.compile_step(config, topo)} if known else None
  compiled.clear()
  best = aot.find_max_batch(config, topo, known=stored, log=lambda s: None)
  assert best["max_batch_per_chip"] == 128
  assert best["search"][128 * 8] and not best["search"][136 * 8]
  assert (128 in compiled) != known  # reused, not compiled again
  assert 64 in compiled and 256 not in compiled  # b0 / 2: 2·b0 cannot fit
  assert len(best["probe_peaks"]) >= 2


def test_largest_batch_search_probes_twice_the_batch_when_it_may_fit(
    monkeypatch):
  compiled = _fake_compiles(monkeypatch, 1.0, 0.01)
  topo = aot.parse_topology("v5e-8")
  config = step_bench.load_config("quickstart:tiny", ["batch_size=256"])
  best = aot.find_max_batch(config, topo, log=lambda s: None)
  assert compiled[:2] == [32, 64]
  # 1 + 0.01·b <= 15.2 -> b <= 1420 -> 1416 per chip
  assert best["max_batch_per_chip"] == 1416


def test_largest_batch_search_when_xla_holds_the_peak_under_hbm(
    monkeypatch):
  """Near the limit XLA:TPU rematerialises on its own and the peak stops
  growing (measured: ViT-B M-MAE on a v5e-8 at 14.4–14.7 GiB from 176 to
  200 images per chip): the search gallops and bisects instead of
  stepping by 8, and every compile is reported to `on_probe`."""
  compiled = _fake_compiles(monkeypatch, 2.0, 0.1)
  real = aot.compile_step

  def saturating(config, topo, devices=None, margin=0.05):
    r = real(config, topo, devices, margin)
    b = r["batch_per_chip"]
    if b > 128:  # held at 14.8 GiB up to 400 per chip, refused above
      r["memory_per_chip"]["peak_bytes"] = (14.8 if b <= 400 else 16.0) * (
          aot.GIB)
      r["fits"] = b <= 400
    return r

  monkeypatch.setattr(aot, "compile_step", saturating)
  topo = aot.parse_topology("v5e-8")
  config = step_bench.load_config("quickstart:tiny", ["batch_size=1024"])
  stored = {}
  best = aot.find_max_batch(config, topo, log=lambda s: None,
                            on_probe=stored.__setitem__)
  assert best["max_batch_per_chip"] == 400
  assert len(compiled) <= 14, compiled  # stepping by 8: 36
  assert sorted(stored) == sorted(set(compiled))


@pytest.mark.parametrize("allow", [False, True])
def test_largest_batch_search_stops_where_xla_starts_to_rematerialise(
    monkeypatch, allow):
  """Compiles that fit only through XLA's own rematerialisation (above 120
  per chip here) do not count, unless `allow_xla_remat`: then the memory
  line's boundary, 128."""
  _fake_compiles(monkeypatch, 2.0, 0.1)
  real = aot.compile_step

  def rematerialising(config, topo, devices=None, margin=0.05):
    r = real(config, topo, devices, margin)
    r["xla_remat"] = ({"before_bytes": 1.0, "after_bytes": 0.5}
                      if r["batch_per_chip"] > 120 else None)
    return r

  monkeypatch.setattr(aot, "compile_step", rematerialising)
  topo = aot.parse_topology("v5e-8")
  config = step_bench.load_config("quickstart:tiny", ["batch_size=1024"])
  best = aot.find_max_batch(config, topo, log=lambda s: None,
                            allow_xla_remat=allow)
  assert best["max_batch_per_chip"] == (128 if allow else 120)
  assert best["allow_xla_remat"] == allow


def test_a_refused_compile_is_a_standard_json_record():
  """XLA:TPU's out-of-memory refusal leaves no cost analysis: the record
  says so with nulls (not NaN, which strict JSON readers reject), does not
  fit, keeps the matmul bound, and prints with "?" where it cannot say."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  topo = aot.parse_topology("v5e-8")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  oom = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of "
         "memory in memory space hbm. Used 29.6G of 15.75G hbm. HLO "
         "temporaries (25.9G) exceeds available HBM (15.75G)")
  memory = aot._memory_from_oom(oom, {})  # noqa: SLF001
  compiled = {"cost": {}, "memory": memory, "cpu_only_ops": [],
              "compile_error": oom, "compile_s": 18.0,
              "xla_remat": {"known": True, "remat": None}}
  r = aot._record(topo, mesh, compiled, 1.2e14, 1024, 0.05, {},  # noqa: SLF001
                  config="mmae", param_sharding="replicate", image_size=224,
                  compute_dtype="bfloat16", remat="none", scan_blocks=True,
                  kernels={"attention": "xla"})
  text = json.dumps(r, allow_nan=False)  # raises on NaN
  assert json.loads(text)["bytes_accessed_per_chip"] is None
  assert r["xla_flops_per_chip"] is None and r["memory_bound_s"] is None
  assert not r["fits"]
  assert r["memory_per_chip"]["temp"] == int(25.9 * aot.GIB)
  assert r["roofline_step_s"] == r["compute_bound_s"] == pytest.approx(
      1.2e14 / 8 / (topo.chip.peak_tflops * 1e12))
  shown = aot.format_record(r)
  assert "DOES NOT FIT" in shown and "(XLA ?)" in shown
  assert "bandwidth ? ms" in shown
