"""Test setup shared by every test: 8 simulated CPU devices, no GPUs for TF.

The device count must be fixed before JAX initialises its backends, so it is set
here, at import time of the first conftest, before any test module imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f'{os.environ.get("XLA_FLAGS", "")} {_FLAG}'.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


def pytest_configure(config):
  del config
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
