"""Runs the code cells of the thin notebooks so they cannot rot.

Every notebook runs end to end in this process (8 simulated CPU devices) at
its CI size: `MI_SSL_NOTEBOOK_TINY=1` makes the Colab notebooks (03-05) pick
tiny steps and subsets, `MI_SSL_NOTEBOOK_ROOT` puts their run directories in
the test's temporary folder. Their install cells skip themselves because
mi_ssl_jax is importable here; the install logic they call
(`mi_ssl_jax.notebook_utils`) is tested below without a network.
"""

import gzip
import json
import math
import os
import pathlib
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from mi_ssl_jax import notebook_utils  # noqa: E402

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _code(path):
  cells = json.loads(path.read_text())["cells"]
  for cell in cells:
    if cell["cell_type"] == "code":
      assert not cell.get("outputs"), f"{path.name}: strip outputs first"
      assert cell.get("execution_count") is None, f"{path.name}: clear counts"
  return [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]


def test_notebooks_exist():
  assert len(NOTEBOOKS) >= 5


# The two longest notebooks (a minute each on 2 cores) run with the slow
# tests (`make test-all`), to keep CI within its time budget.
_SLOW_NOTEBOOKS = ("04_matrix_ssl_information_flow",
                   "05_matrix_toolbox_real_features")


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in _SLOW_NOTEBOOKS
    else p for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("WORKDIR", str(tmp_path))
  monkeypatch.setenv(notebook_utils.TINY_ENV, "1")
  monkeypatch.setenv(notebook_utils.ROOT_ENV, str(tmp_path / "runs"))
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n"
              for s in range(5)))
  namespace = {}
  try:
    for src in _code(path):
      exec(compile(src, str(path), "exec"), namespace)  # noqa: S102
  finally:
    plt.close("all")
  out = capsys.readouterr().out
  assert out.strip(), f"{path.name} printed nothing"
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
  assert "5 rows" in out


def _check_colab(ns, out):
  assert ns["TINY"] is True
  assert "backend cpu, 8 device(s)" in out  # the accelerator cell
  assert "installing:" not in out  # the install cell skipped itself


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
  assert curve["step"] == list(range(1, 9))
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
