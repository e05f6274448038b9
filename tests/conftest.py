"""Test setup shared by every test: 8 simulated CPU devices, no GPUs for TF.

The device count must be fixed before JAX initialises its backends, so it is set
here, at import time of the first conftest, before any test module imports jax.

`MI_SSL_TEST_ACCELERATOR=1` leaves the accelerator visible (JAX's default
backend, no 8-device check) for the tests that need a GPU or TPU
(`tests/test_attention_kernels.py`; `bench/accelerator.sh` runs them so).
"""

import os

ACCELERATOR = os.environ.get("MI_SSL_TEST_ACCELERATOR", "") not in ("", "0")

_FLAG = "--xla_force_host_platform_device_count=8"
# 8 simulated devices share 2 cores: on a loaded machine a device thread can
# reach a collective minutes after the others; XLA's default stuck-collective
# abort would then kill the process.
_PATIENT = "--xla_cpu_collective_call_terminate_timeout_seconds=1200"
for _f in (_FLAG, _PATIENT):
  if _f.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f'{os.environ.get("XLA_FLAGS", "")} {_f}'.strip()
# Subprocesses started by tests inherit the same flags.
XLA_TEST_FLAGS = f"{_FLAG} {_PATIENT}"
if not ACCELERATOR:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No test downloads Fashion-MNIST from the internet (CI reaches only package
# registries): the data layer's download is off unless a test turns it on
# against its own local server (tests/test_data_download.py).
os.environ["MI_SSL_DOWNLOAD"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


def pytest_configure(config):
  del config
  if ACCELERATOR:
    return
  assert jax.device_count() == 8, (
      f"tests need 8 simulated devices, got {jax.device_count()}: "
      "was jax initialised before tests/conftest.py ran?")


@pytest.fixture
def x64():
  """Runs the test body with float64 enabled (restored afterwards)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def fast_compile():
  """Tiny models: XLA's optimisation passes cost more compile time than they
  save. Modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
