"""Runs the code cells of the thin notebooks so they cannot rot.

Every notebook runs end to end in this process (8 simulated CPU devices) at
its CI size, from its source (the outputs saved in the file, from
`make notebooks`, are ignored): `MI_SSL_NOTEBOOK_TINY=1` makes the notebooks
pick tiny steps and subsets, `MI_SSL_NOTEBOOK_ROOT` puts their run
directories in the test's temporary folder. Their install cells skip
themselves because mi_ssl_jax is importable here; the install cell's other
paths (no source: one `error:` line; git URL, folder, uploaded wheel) and the
logic it calls (`mi_ssl_jax.notebook_utils`) are tested below without a
network, with pip replaced by a recorder.
"""

import gzip
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from mi_ssl_jax import notebook_utils  # noqa: E402

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _cells(path):
  return [c for c in json.loads(path.read_text())["cells"]
          if c["cell_type"] == "code"]


def _code(path):
  return ["".join(c["source"]) for c in _cells(path)]


def test_notebooks_exist():
  assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_saved_with_small_outputs(path):
  """Saved by `make notebooks` (every cell run, in order, top to bottom):
  outputs show on GitHub, without stderr noise or megabytes of images."""
  assert path.stat().st_size < 1_000_000, f"{path.name}: outputs too large"
  cells = _cells(path)
  assert [c.get("execution_count") for c in cells] == list(
      range(1, len(cells) + 1)), f"{path.name}: run `make notebooks`"
  outputs = [o for c in cells for o in c["outputs"]]
  assert not any(o["output_type"] == "error" for o in outputs)
  assert not any(o.get("name") == "stderr" for o in outputs)
  if path.stem[:2] != "01":  # every other notebook draws a figure
    assert any("image/png" in o.get("data", {}) for o in outputs), path.name


# The two longest notebooks (a minute each on 2 cores) run with the slow
# tests (`make test-all`), to keep CI within its time budget.
_SLOW_NOTEBOOKS = ("04_matrix_ssl_information_flow",
                   "05_matrix_toolbox_real_features")


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in _SLOW_NOTEBOOKS
    else p for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, capsys):
  monkeypatch.delenv("WORKDIR", raising=False)  # 02 trains its own run
  monkeypatch.delenv("MI_SSL_SOURCE", raising=False)
  monkeypatch.setenv(notebook_utils.TINY_ENV, "1")
  monkeypatch.setenv(notebook_utils.ROOT_ENV, str(tmp_path / "runs"))
  namespace = {}
  cells = _code(path)
  try:
    for src in cells:
      exec(compile(src, str(path), "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    # Rerunning the training cell returns at once (the run has ended) and
    # still prints its line (05 reuses 03's finished run that way).
    for src in cells:
      if "train.train_and_evaluate(" in src:
        exec(compile(src, str(path), "exec"), namespace)  # noqa: S102
        again = capsys.readouterr().out
        assert "step" in again and "loss" in again, again
  finally:
    plt.close("all")
  assert out.strip(), f"{path.name} printed nothing"
  assert "installing" not in out  # the install cell skipped itself
  check = _CHECKS.get(path.stem[:2])
  assert check is not None, f"add a check of {path.name} to _CHECKS"
  check(namespace, out)


def _check_01(ns, out):
  # Rank-k features: S(rho) = log k within 10 % and erank increasing in k.
  rows = ns["rows"]
  eranks = [r[3] for r in rows]
  assert eranks == sorted(eranks)
  assert abs(rows[-1][1] - math.log(32)) < 0.1 * 3.5


def _check_02(ns, out):
  # Its own 6-step run, logged every step; diagnostics on the first log
  # line and every 3 steps.
  assert ns["WORKDIR"] == os.path.join(ns["ROOT"], "metrics_demo")
  assert [r["step"] for r in ns["rows"]] == list(range(1, 7))
  assert "6 rows from" in out
  assert all(math.isfinite(r["loss"]) for r in ns["rows"])
  assert [r["step"] for r in ns["rows"] if "rankme" in r] == [1, 3, 6]
  assert [a.get_title() for a in ns["fig"].axes] == [
      "loss", "rankme", "effective_rank"]


def _check_colab(ns, out):
  assert ns["TINY"] is True
  assert "backend cpu, 8 device(s)" in out  # the accelerator cell


def _check_03(ns, out):
  _check_colab(ns, out)
  assert ns["result"]["step"] == 4
  # Chance is 10 %; even a 4-step encoder's tokens beat it by far.
  assert ns["knn_result"]["metrics"]["top1_k20"] > 30
  assert ns["probe_result"]["metrics"]["top1"] > 30
  assert ns["knn_result"]["extra"]["num_eval"] == 512
  assert os.path.isfile(ns["knn_result"]["extra"]["reconstruction_png"])
  assert os.path.isfile(ns["spectrum_png"])


def _check_04(ns, out):
  _check_colab(ns, out)
  curve = ns["curves"]["matrix_ssl"]
  # The view MI comes with the diagnostics: at the first log line and the
  # last step at the CI size (train.resolve_diagnostics_steps' default).
  assert curve["step"] == [1, 8]
  for i, mi in enumerate(curve["matrix_mutual_information"]):
    assert math.isfinite(mi) and mi >= -1e-4
    # I(K1; K2) = H(K1) + H(K2) - H(K1, K2), as logged.
    assert mi == pytest.approx(
        curve["matrix_entropy_view1"][i] + curve["matrix_entropy_view2"][i]
        - curve["matrix_joint_entropy"][i], abs=1e-3)
  assert os.path.isfile(ns["png"])


def _check_05(ns, out):
  _check_colab(ns, out)
  table, diags = ns["table"], ns["diags"]
  assert set(table) == {"trained", "random init"}
  dim = ns["encoders"]["trained"]["z"].shape[1]
  for name, row in table.items():
    assert all(math.isfinite(v) for v in row.values()), row
    assert 1.0 <= row["erank"] <= dim
    assert row["S(rho)"] == pytest.approx(math.log(row["erank"]), rel=1e-4)
    assert row["H2(rho)"] <= row["S(rho)"] + 1e-4  # Renyi-2 <= von Neumann
    assert 0 <= row["I2(z;y)"] <= math.log(10) + 1e-3
    # The notebook's numbers are the diagnostics the kNN job writes.
    assert row["erank"] == pytest.approx(diags[name]["effective_rank"],
                                         rel=1e-3)
    assert row["RankMe"] == pytest.approx(diags[name]["rankme"], rel=1e-3)
  assert table["trained"] != table["random init"]
  assert os.path.isfile(ns["png"])


_CHECKS = {"01": _check_01, "02": _check_02, "03": _check_03,
           "04": _check_04, "05": _check_05}


# --------------------------------------------------------------------------- #
# The install / data glue of the Colab notebooks (no network).
# --------------------------------------------------------------------------- #

REQUIRES = [
    "jax<0.11,>=0.10.2", "flax<0.13,>=0.12.8",
    "tensorflow-cpu<2.22,>=2.21", "tensorflow-datasets<4.10,>=4.9.10",
    'pytest<10,>=8; extra == "test"',
    'jax[tpu]<0.11,>=0.10.2; extra == "tpu"',
    'jax[cuda12]<0.11,>=0.10.2; extra == "cuda12"',
    'tomli>=2; python_version < "3.11"',
]


def test_requirements_keep_preinstalled_tensorflow():
  colab = {"tensorflow": "2.19.0"}.get  # Colab: the GPU build is installed
  reqs = notebook_utils.requirements("gpu", requires=REQUIRES, installed=colab)
  assert reqs == ["jax<0.11,>=0.10.2", "jax[cuda12]<0.11,>=0.10.2",
                  "flax<0.13,>=0.12.8", "tensorflow<2.22,>=2.21",
                  "tensorflow-datasets<4.10,>=4.9.10",
                  'tomli>=2; python_version < "3.11"']


def test_requirements_plain_machine_and_tpu():
  none = {}.get
  assert notebook_utils.requirements("cpu", requires=REQUIRES,
                                     installed=none)[:3] == [
      "jax<0.11,>=0.10.2", "flax<0.13,>=0.12.8", "tensorflow-cpu<2.22,>=2.21"]
  tpu = notebook_utils.requirements("tpu", requires=REQUIRES, installed=none)
  assert tpu[1] == "jax[tpu]<0.11,>=0.10.2"
  assert not any("pytest" in r or "cuda12" in r for r in tpu)
  with pytest.raises(ValueError, match="accelerator"):
    notebook_utils.requirements("cuda", requires=REQUIRES, installed=none)


def test_requirements_keep_platform_markers():
  """pyproject's per-platform TensorFlow lines (tests/
  test_install_platforms.py) keep their markers for pip to evaluate;
  Colab's preinstalled `tensorflow` still replaces `tensorflow-cpu`."""
  x86 = "platform_machine == 'x86_64' or platform_machine == 'AMD64'"
  arm = "platform_machine != 'x86_64' and platform_machine != 'AMD64'"
  requires = [f"tensorflow-cpu<2.22,>=2.21; {x86}",
              f"tensorflow<2.22,>=2.21; {arm}"]
  assert notebook_utils.requirements("cpu", requires=requires,
                                     installed={}.get) == requires
  colab = {"tensorflow": "2.19.0"}.get
  assert notebook_utils.requirements("gpu", requires=requires,
                                     installed=colab) == [
      f"tensorflow<2.22,>=2.21; {x86}", f"tensorflow<2.22,>=2.21; {arm}"]


def test_requirements_of_this_install():
  reqs = notebook_utils.requirements("cpu")  # this package's metadata
  names = {r.split("<")[0].split(">")[0].split("=")[0] for r in reqs}
  assert {"jax", "flax", "tensorflow-datasets", "matplotlib"} <= names
  assert not any("extra ==" in r for r in reqs)


def test_install_dependencies_dry_run(capsys):
  cmd = notebook_utils.install_dependencies("cpu", dry_run=True)
  assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
  assert "installing:" in capsys.readouterr().out


def test_install_dependencies_failure_is_one_line(monkeypatch, capsys):
  monkeypatch.setattr(subprocess, "run",
                      lambda cmd: subprocess.CompletedProcess(cmd, 1))
  with pytest.raises(notebook_utils.StopNotebook) as e:
    notebook_utils.install_dependencies("cpu")
  assert e.value._render_traceback_() == [
      "error: pip could not install the dependencies of mi_ssl_jax (its "
      "message is above): fix that, then run the install cell again"]


def test_detect_accelerator():
  nothing = lambda pattern: []
  detect = notebook_utils.detect_accelerator
  assert detect({}, nothing, lambda name: None) == "cpu"
  assert detect({}, nothing, lambda name: "/usr/bin/nvidia-smi") == "gpu"
  assert detect({}, lambda p: ["/dev/accel0"] if "accel" in p else [],
                lambda name: None) == "tpu"
  assert detect({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, nothing,
                lambda name: None) == "tpu"


def test_tiny_and_root(monkeypatch):
  monkeypatch.delenv(notebook_utils.TINY_ENV, raising=False)
  monkeypatch.delenv(notebook_utils.ROOT_ENV, raising=False)
  assert not notebook_utils.tiny()
  assert notebook_utils.run_root() == notebook_utils.DEFAULT_ROOT
  monkeypatch.setenv(notebook_utils.TINY_ENV, "1")
  monkeypatch.setenv(notebook_utils.ROOT_ENV, "/tmp/x")
  assert notebook_utils.tiny() and notebook_utils.run_root() == "/tmp/x"


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_fashion_mnist_download(tmp_path, monkeypatch):
  """The Colab path: no local copy, so the files are fetched from a mirror
  (here a file:// URL), header-checked and MI_SSL_DATA_DIR set."""
  from mi_ssl_jax.data import download
  monkeypatch.delenv("MI_SSL_DATA_DIR", raising=False)
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in download.FILES:
    with gzip.open(bad / name, "wb") as f:
      f.write(b"not idx")
  folder = notebook_utils.fashion_mnist(
      str(tmp_path / "fmnist"), search=False,
      mirrors=(bad.as_uri(), pathlib.Path(FASHION_MNIST).as_uri()))
  assert os.environ["MI_SSL_DATA_DIR"] == folder
  assert sorted(os.listdir(folder)) == sorted(download.FILES)
  from mi_ssl_jax.data import sources
  assert sources.fashion_mnist_dir() == folder
  with pytest.raises(OSError, match="cannot download"):
    notebook_utils.fashion_mnist(str(tmp_path / "none"), search=False,
                                 mirrors=(bad.as_uri(),))


def test_read_metrics_skips_torn_lines(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')
  assert notebook_utils.read_metrics(str(tmp_path)) == [{"step": 1},
                                                        {"step": 2}]


def test_read_metrics_merges_rows_of_one_step(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 2, "loss": 1.0}\n{"step": 1, "loss": 3.0}\n'
      '{"step": 2, "knn": 50.0}\n')
  assert notebook_utils.read_metrics(str(tmp_path)) == [
      {"step": 1, "loss": 3.0}, {"step": 2, "loss": 1.0, "knn": 50.0}]
  assert notebook_utils.read_metrics(str(tmp_path / "missing")) == []


# --------------------------------------------------------------------------- #
# The install cell, where mi_ssl_jax is not importable (Colab).
# --------------------------------------------------------------------------- #


def _install_cell():
  return _code(NOTEBOOKS[0])[0]


def test_every_notebook_starts_with_the_same_install_cell():
  cell = _install_cell()
  assert cell.startswith("# Install")
  assert 'MI_SSL_SOURCE = ""  # @param {type:"string"}' in cell  # Colab form
  for path in NOTEBOOKS:
    assert _code(path)[0] == cell, f"{path.name}: copy the install cell"


@pytest.fixture
def fresh_runtime(tmp_path, monkeypatch):
  """Runs the install cell as if mi_ssl_jax were not installed, in an empty
  working folder; pip and the dependency install are recorded, not run."""
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, "find_spec",
      lambda name, *a: None if name == "mi_ssl_jax" else real_find_spec(
          name, *a))
  monkeypatch.delenv("MI_SSL_SOURCE", raising=False)
  monkeypatch.chdir(tmp_path)
  calls = []

  def pip(cmd, *args, **kwargs):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, int("broken" in cmd[-1]))

  monkeypatch.setattr(subprocess, "run", pip)
  monkeypatch.setattr(notebook_utils, "install_dependencies",
                      lambda: calls.append("dependencies"))

  def run(source=""):
    cell = _install_cell().replace('MI_SSL_SOURCE = ""',
                                   f"MI_SSL_SOURCE = {source!r}")
    exec(compile(cell, "install", "exec"), {})  # noqa: S102
    return calls
  return run


@pytest.mark.parametrize("source, target", [
    ("https://github.com/me/mi_ssl_jax",
     "mi_ssl_jax @ git+https://github.com/me/mi_ssl_jax"),
    ("git+https://github.com/me/mi_ssl_jax@v0.1",
     "mi_ssl_jax @ git+https://github.com/me/mi_ssl_jax@v0.1"),
    ("https://github.com/me/mi_ssl_jax/archive/refs/heads/main.zip",
     "mi_ssl_jax @ https://github.com/me/mi_ssl_jax/archive/refs/heads/"
     "main.zip"),
])
def test_install_cell_from_a_url(fresh_runtime, source, target):
  pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", target]
  assert fresh_runtime(source) == [pip, "dependencies"]


def test_install_cell_from_the_environment_or_an_upload(
    fresh_runtime, tmp_path, monkeypatch):
  (tmp_path / "old").mkdir()
  wheel = tmp_path / "mi_ssl_jax-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"")
  os.utime(wheel, (1, 1))
  clone = tmp_path / "mi_ssl_jax-main"  # an unzipped archive: newest
  clone.mkdir()
  (clone / "pyproject.toml").write_text("")
  assert fresh_runtime()[0][-1] == str(clone)
  (clone / "pyproject.toml").unlink()
  assert fresh_runtime()[2][-1] == str(wheel)
  monkeypatch.setenv("MI_SSL_SOURCE", "old")  # a folder, relative
  assert fresh_runtime()[4][-1] == str(tmp_path / "old")


@pytest.mark.parametrize("source, message", [
    ("", "error: mi_ssl_jax is not installed: set MI_SSL_SOURCE"),
    ("no/such/folder", "error: MI_SSL_SOURCE='no/such/folder' is neither"),
    ("https://example.com/broken.whl", "error: pip could not install "
     "mi_ssl_jax from mi_ssl_jax @ https://example.com/broken.whl"),
])
def test_install_cell_stops_with_one_error_line(fresh_runtime, source,
                                                message):
  with pytest.raises(Exception) as e:
    fresh_runtime(source)
  lines = e.value._render_traceback_()  # what IPython shows instead
  assert len(lines) == 1 and "\n" not in lines[0]
  assert lines[0].startswith(message)


# The cell in a real IPython shell (Jupyter's and Colab's), where mi_ssl_jax
# cannot be found: one line is shown, no traceback, and the cell counts as
# failed, so "Run all" stops before the cells that import the package.
_IPYTHON = """
import importlib.util, sys
from IPython.core.interactiveshell import InteractiveShell
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n == "mi_ssl_jax" else (
    find_spec(n, *a))
result = InteractiveShell.instance().run_cell(sys.stdin.read())
print("failed:", result.error_in_exec is not None)
"""


def test_install_cell_in_ipython_shows_one_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "MI_SSL_SOURCE"}
  out = subprocess.run([sys.executable, "-c", _IPYTHON],
                       input=_install_cell(), capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=env)
  lines = (out.stdout + out.stderr).strip().splitlines()
  assert lines == [
      "error: mi_ssl_jax is not installed: set MI_SSL_SOURCE in this cell to "
      "its git URL, a checkout folder or a .whl/.zip (or upload "
      f"mi_ssl_jax-*.whl to {tmp_path}), then run this cell again",
      "failed: True"], out


# --------------------------------------------------------------------------- #
# Saving notebooks with their outputs (`make notebooks`).
# --------------------------------------------------------------------------- #


def _notebook(path, *sources):
  cells = [{"cell_type": "code", "execution_count": None, "metadata": {},
            "outputs": [], "source": src, "id": f"c{i}"}
           for i, src in enumerate(sources)]
  path.write_text(json.dumps({
      "cells": cells, "nbformat": 4, "nbformat_minor": 5,
      "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                  "display_name": "Python 3"}}}))


def test_execute_saves_outputs_without_stderr(tmp_path):
  path = tmp_path / "n.ipynb"
  _notebook(path, "import os, sys\nprint('out', os.getcwd())\n"
                  "print('noise', file=sys.stderr)", "6 * 7")
  size = notebook_utils.execute(str(path), cwd=str(tmp_path), timeout=120)
  assert size == path.stat().st_size
  cells = _cells(path)
  assert [c["execution_count"] for c in cells] == [1, 2]
  (out,) = cells[0]["outputs"]  # stderr dropped
  assert (out["name"], "".join(out["text"])) == ("stdout", f"out {tmp_path}\n")
  assert "".join(cells[1]["outputs"][0]["data"]["text/plain"]) == "42"
  assert not any("execution" in c["metadata"] for c in cells)


def test_execute_command_errors(tmp_path):
  path = tmp_path / "bad.ipynb"
  _notebook(path, "print('ok')", "1 / 0")
  before = path.read_text()
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "mi_ssl_jax.notebook_utils", *args],
      capture_output=True, text=True, timeout=180, cwd=tmp_path)
  for args, message in [
      ((), "error: name the notebooks to execute, e.g. notebooks/*.ipynb"),
      (("missing.ipynb",), "error: no notebook missing.ipynb"),
      (("bad.ipynb",), "error: bad.ipynb failed (ZeroDivisionError: "
                       "division by zero); it is left unchanged")]:
    out = run(*args)
    # (The kernel's own warnings may come first.)
    err = [line for line in out.stderr.splitlines()
           if line.startswith("error")]
    assert out.returncode == 2 and err == [message], out.stderr
  assert path.read_text() == before
