"""Fashion-MNIST is downloaded when it is found nowhere, and only then.

Against a local HTTP server (`http.server` in a thread) serving small fake
IDX files whose hashes replace `download.FILES` for the test: the data
layer (`sources.dataset_info`, what every job of the command line calls
first) downloads into the cache folder and reads the files; a dead mirror
is skipped; a copy that fails the checks is refused; unreachable mirrors
and `MI_SSL_DOWNLOAD=0` end in the one-line `DatasetError` saying to
install `dataset-fashion-mnist` or set `MI_SSL_DATA_DIR`, which the command
line prints as its `error:` line (exit status 2). Nothing here reaches the
internet: tests/conftest.py sets `MI_SSL_DOWNLOAD=0`, and the tests that
turn it on point the mirrors at localhost.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from mi_ssl_jax.data import download, fashion_mnist, sources
from mi_ssl_jax.errors import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = {"train": 12, "test": 5}


def _idx(array: np.ndarray) -> bytes:
  """uint8 IDX bytes of `array` (magic 0 0 8 rank, big-endian dims)."""
  head = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  return head + array.astype(np.uint8).tobytes()


@pytest.fixture
def fake_files(tmp_path, monkeypatch):
  """A mirror folder of small IDX files; `download.FILES` describes them."""
  rng = np.random.default_rng(0)
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  files = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    n = COUNTS[split]
    for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                        ("labels-idx1", rng.integers(0, 10, (n,)))):
      name = f"{prefix}-{kind}-ubyte.gz"
      raw = _idx(array)
      (mirror / name).write_bytes(gzip.compress(raw))
      files[name] = (array.ndim, n, hashlib.sha256(raw).hexdigest())
  monkeypatch.setattr(download, "FILES", files)
  return mirror


@pytest.fixture
def server(fake_files):
  """Base URL of an HTTP server serving `fake_files`; counts requests."""
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      requests.append(self.path)

  handler = functools.partial(Handler, directory=str(fake_files))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests
  httpd.shutdown()
  httpd.server_close()


def _dead_url() -> str:
  """A localhost URL that refuses connections (a port just closed)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/"


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
  """No local copy anywhere: empty MI_SSL_DATA_DIR and system folder, no
  TFDS copy. Returns the cache folder downloads go to."""
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("MI_SSL_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(empty))
  monkeypatch.setattr(sources, "_tfds_fashion_mnist_prepared",
                      lambda data_dir: False)
  return str(tmp_path / "data" / "fashion-mnist")


def test_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("MI_SSL_DATA_DIR", "/data")
  assert download.cache_dir() == "/data/fashion-mnist"
  monkeypatch.delenv("MI_SSL_DATA_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert download.cache_dir() == str(tmp_path / "mi_ssl_jax" /
                                     "fashion-mnist")
  monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path))
  assert sources.fashion_mnist_dir() is None  # the cache is searched ...
  os.makedirs(download.cache_dir())
  for pair in sources._FMNIST_FILES.values():
    for stem in pair:
      open(os.path.join(download.cache_dir(), stem + ".gz"), "wb").close()
  assert sources.fashion_mnist_dir() == download.cache_dir()  # ... found


def test_check(fake_files):
  name = "train-labels-idx1-ubyte.gz"
  good = (fake_files / name).read_bytes()
  assert download.check(good, name) is None
  assert "gzip" in download.check(b"plain bytes", name)
  raw = gzip.decompress(good)
  assert "IDX" in download.check(gzip.compress(raw[:3] + b"\3" + raw[4:]),
                                 name)
  changed = raw[:-1] + bytes([(raw[-1] + 1) % 256])
  assert "SHA-256" in download.check(gzip.compress(changed), name)


def test_data_layer_downloads_when_absent(nowhere, server, monkeypatch):
  url, requests = server
  monkeypatch.setenv("MI_SSL_DOWNLOAD", "1")
  monkeypatch.setenv(download.MIRRORS_ENV, f"{_dead_url()} {url}")
  info = sources.dataset_info("fashion_mnist")
  assert info.num_examples == COUNTS and info.image_shape == (28, 28, 1)
  assert sorted(os.listdir(nowhere)) == sorted(download.FILES)  # no .part
  assert sources.fashion_mnist_dir() == nowhere
  assert len(requests) == 4
  part = sources.process_split("fashion_mnist", "test")
  assert part.indexed and part.num_examples == COUNTS["test"]
  # Found now: no second download.
  assert sources.has_random_access("fashion_mnist")
  assert len(requests) == 4


def test_bad_copy_refused_and_invalid_file_replaced(fake_files, server,
                                                    tmp_path):
  url, _ = server
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in download.FILES:
    (bad / name).write_bytes(gzip.compress(b"\0\0\10\1not the data"))
  dest = tmp_path / "dest"
  dest.mkdir()
  (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"torn")
  folder = download.fetch_fashion_mnist(
      str(dest), mirrors=(bad.as_uri(), url), timeout=5)
  assert folder == str(dest)
  for name in download.FILES:
    assert download.check((dest / name).read_bytes(), name) is None
  with pytest.raises(download.DownloadError, match="SHA-256|IDX") as e:
    download.fetch_fashion_mnist(str(tmp_path / "none"),
                                 mirrors=(bad.as_uri(),))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("switch", ["1", "0"])
def test_offline_error(nowhere, monkeypatch, switch):
  monkeypatch.setenv("MI_SSL_DOWNLOAD", switch)
  monkeypatch.setenv(download.MIRRORS_ENV, _dead_url())
  with pytest.raises(DatasetError) as e:
    sources.dataset_info("fashion_mnist")
  message = str(e.value)
  assert "\n" not in message
  assert "dataset-fashion-mnist" in message and "MI_SSL_DATA_DIR" in message
  assert ("cannot download" if switch == "1" else "MI_SSL_DOWNLOAD=0"
          ) in message
  assert not os.path.exists(nowhere) or not os.listdir(nowhere)


def test_command_line_offline_error_line(tmp_path):
  """`python -m mi_ssl_jax.main` with no copy anywhere and no network: one
  `error:` line, exit status 2. (The Debian package's folder is pointed
  at an empty one inside the process: it is installed on CI.)"""
  empty = tmp_path / "empty"
  empty.mkdir()
  code = (
      "import sys\n"
      "from absl import app\n"
      "from mi_ssl_jax.data import fashion_mnist, sources\n"
      f"fashion_mnist.SYSTEM_DIR = {str(empty)!r}\n"
      "sources._tfds_fashion_mnist_prepared = lambda data_dir: False\n"
      "from mi_ssl_jax import main\n"
      "app.run(main._main_then_exit, flags_parser=main._parse_flags)\n")
  env = dict(os.environ, MI_SSL_DOWNLOAD="1",
             MI_SSL_DATA_DIR=str(tmp_path / "data"), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env[download.MIRRORS_ENV] = _dead_url()
  env.pop("MI_SSL_DEBUG", None)
  proc = subprocess.run(
      [sys.executable, "-c", code, "--config=configs/quickstart.py:tiny",
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Fashion-MNIST not found"), last
  assert "cannot download" in last and "dataset-fashion-mnist" in last
  assert "Traceback" not in proc.stderr + proc.stdout
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
