"""The package installs on Linux x86-64, Linux aarch64 and macOS arm64.

pyproject.toml picks one TensorFlow per platform with PEP 508 environment
markers: `tensorflow-cpu` on x86-64 (Linux `x86_64`, Windows `AMD64`), which
has no wheels for aarch64 Linux or arm64 macOS, and `tensorflow` (same
version range) there.

How the resolver check is honest about the target platform. pip's
`--platform` / `--python-version` only change which wheel tags pip accepts;
environment markers are still evaluated against the interpreter running pip
(pip prints "Ignoring tensorflow: markers 'platform_machine == "arm64"' don't
match your environment" on this x86-64 Linux host). So `_requirements`
evaluates the markers of pyproject.toml itself, with
`packaging.markers.Marker.evaluate` and the marker environment of each
target (`TARGETS`), and hands pip the surviving requirements without
markers:

    pip install --dry-run --ignore-installed --only-binary=:all: \
        --python-version 3.11 --platform <tag>... --target <tmp> <reqs>

pip then resolves from the package index with wheels of that platform only
(`--only-binary=:all:` is what `--platform` requires), so a missing wheel
in the resolved tree fails the test. pip does not widen a `manylinux_2_28`
tag to older glibc tags (it does widen macOS versions), so a Linux target
lists the tags a glibc-2.28 host accepts (`_manylinux`).

What is resolved. Through this site's package index pip downloads most
wheels whole to read their metadata, so resolving everything for three
platforms takes minutes. CI's `test_resolves_on_every_platform` therefore
resolves only the requirements that differ per platform (the TensorFlow
flavour) plus jax and jaxlib, each with its whole dependency tree (three
resolves in parallel, ~35 s from a cold pip cache on the 2-core dev VM).
`test_resolves_everything_on_every_platform` (slow, `make test-all`)
resolves all requirements and the extras that exist per platform.

Limits. Markers of *transitive* requirements are still evaluated by pip for
this host (no pip option changes that), which is why the full check leaves
torch out on macOS. `promise` (a pure-Python dependency of
tensorflow-datasets) publishes only an sdist, which every platform builds
into the same `py3-none-any` wheel; the full check builds it once here and
offers it with `--find-links`. Without the package index (pip's index
unreachable within 5 s) the resolver tests are skipped, saying so; the
marker evaluation tests need no network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "3.11"  # the floor of requires-python


def _manylinux(arch: str, glibc_minor: int = 28) -> list[str]:
  """The manylinux tags a glibc-2.<glibc_minor> Linux host accepts."""
  return ([f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)]
          + [f"manylinux2014_{arch}"])


def _environment(sys_platform: str, system: str, machine: str) -> dict:
  """PEP 508 marker variables of a CPython `PYTHON` on that platform."""
  env = default_environment()
  env.update(sys_platform=sys_platform, platform_system=system,
             platform_machine=machine,
             os_name="nt" if system == "Windows" else "posix",
             python_version=PYTHON, python_full_version=f"{PYTHON}.0",
             implementation_name="cpython",
             platform_python_implementation="CPython",
             platform_release="", platform_version="")
  return env


# name -> (marker environment, wheel platform tags).
TARGETS = {
    "linux-x86_64": (_environment("linux", "Linux", "x86_64"),
                     _manylinux("x86_64")),
    "linux-aarch64": (_environment("linux", "Linux", "aarch64"),
                      _manylinux("aarch64")),
    "macos-arm64": (_environment("darwin", "Darwin", "arm64"),
                    ["macosx_14_0_arm64"]),
}
WINDOWS = _environment("win32", "Windows", "AMD64")


def _project() -> dict:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def _requirements(env: dict, extras=()) -> list[str]:
  """pyproject's requirements (+ `extras`) that apply in marker
  environment `env`, without their markers."""
  project = _project()
  lines = [(r, "") for r in project["dependencies"]]
  for extra in extras:
    lines += [(r, extra) for r in project["optional-dependencies"][extra]]
  out = []
  for line, extra in lines:
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
      req.marker = None
      out.append(str(req))
  return out


def _names(reqs) -> set[str]:
  return {Requirement(r).name for r in reqs}


@pytest.mark.parametrize("target", [*TARGETS, "windows-amd64"])
def test_one_tensorflow_per_platform(target):
  env = WINDOWS if target == "windows-amd64" else TARGETS[target][0]
  names = _names(_requirements(env))
  x86 = target in ("linux-x86_64", "windows-amd64")
  assert ("tensorflow-cpu" in names) == x86, names
  assert ("tensorflow" in names) == (not x86), names
  assert {"jax", "flax", "tensorflow-datasets", "tensorboard"} <= names


def test_tensorflow_pins_agree():
  """Both TensorFlow flavours carry the same version range."""
  specs = {Requirement(r).name: Requirement(r).specifier
           for r in _project()["dependencies"]}
  assert specs["tensorflow"] == specs["tensorflow-cpu"]


def test_this_host_picks_its_tensorflow():
  """pip's own marker evaluation on this host agrees with `_requirements`
  (the markers say what they mean to pip, not only to packaging)."""
  host = default_environment()
  ours = _names(_requirements(host))
  import platform
  want = ("tensorflow-cpu" if platform.machine() in ("x86_64", "AMD64")
          else "tensorflow")
  assert want in ours


def _index_url() -> str:
  out = subprocess.run([sys.executable, "-m", "pip", "config", "get",
                        "global.index-url"], capture_output=True, text=True)
  url = out.stdout.strip() if out.returncode == 0 else ""
  return os.environ.get("PIP_INDEX_URL") or url or "https://pypi.org/simple"


def _index_reachable(url: str) -> bool:
  try:
    with urllib.request.urlopen(url.rstrip("/") + "/pip/", timeout=5):
      return True
  except (urllib.error.URLError, OSError, ValueError):
    return False


def _promise_wheel(folder) -> str:
  """`promise` (tensorflow-datasets needs it) ships only an sdist; every
  platform builds the same pure-Python wheel from it, built here once."""
  built = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps",
       "--no-build-isolation", "--no-binary", "promise", "-q", "-w",
       str(folder), "promise"], capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-2000:]
  return str(folder)


def _resolve(tmp_path, requirements, find_links=None) -> None:
  """Runs pip's resolver for every target in parallel; `requirements`:
  target name -> requirement strings (no markers)."""
  index = _index_url()
  if not _index_reachable(index):
    pytest.skip(f"package index {index} unreachable within 5 s: cannot "
                "resolve the dependencies for other platforms")
  procs = {}
  for name, (_, tags) in TARGETS.items():
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run",
           "--ignore-installed", "--only-binary=:all:", "--python-version",
           PYTHON, "--target", str(tmp_path / name),
           "--disable-pip-version-check"]
    if find_links:
      cmd += ["--find-links", find_links]
    for tag in tags:
      cmd += ["--platform", tag]
    procs[name] = subprocess.Popen(
        [*cmd, *requirements[name]], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
  failed = []
  for name, proc in procs.items():
    out, _ = proc.communicate(timeout=900)
    reqs = " ".join(requirements[name])
    if proc.returncode != 0:
      failed.append(f"{name}: {reqs}\n{out[-3000:]}")
      continue
    plan = out.lower().replace("_", "-")
    tf = "tensorflow-cpu-2.21" if name == "linux-x86_64" else "tensorflow-2.21"
    for wanted in (tf, "jax-0.10", "jaxlib-0.10"):
      assert wanted in plan, (name, out[-3000:])
  assert not failed, "\n\n".join(failed)


def _platform_specific(env: dict) -> list[str]:
  """The requirements whose markers differ between the targets (the
  TensorFlow flavour), plus jax and jaxlib (jax's range): the native
  wheels most likely to be missing on a platform."""
  everywhere = set.intersection(*(set(_requirements(e))
                                  for e, _ in TARGETS.values()))
  reqs = [r for r in _requirements(env) if r not in everywhere]
  jax = next(r for r in _requirements(env) if Requirement(r).name == "jax")
  return [*reqs, jax, jax.replace("jax", "jaxlib", 1)]


def test_resolves_on_every_platform(tmp_path):
  """CI's check: the platform-specific requirements and everything they
  depend on (TensorFlow's and jaxlib's trees) resolve to wheels."""
  _resolve(tmp_path, {name: _platform_specific(env)
                      for name, (env, _) in TARGETS.items()})


# Extras resolved per platform in the full check: jax[cuda12] wheels exist
# for Linux only; torch (`bench`) is left out on macOS because pip evaluates
# torch's `cuda-bindings; platform_system == "Linux"` for this Linux host.
# `tpu` / `aot` (jax[tpu], x86-64 Linux only) are left out: jax[tpu] 0.10.2
# pins libtpu==0.0.42.*, which this site's package index does not have (it
# lists libtpu up to 0.0.10.1), so they cannot resolve here.
FULL_EXTRAS = {"linux-x86_64": ("test", "gcs", "bench", "cuda12"),
               "linux-aarch64": ("test", "gcs", "bench", "cuda12"),
               "macos-arm64": ("test", "gcs")}


@pytest.mark.slow
def test_resolves_everything_on_every_platform(tmp_path):
  """All requirements and the platform's extras (a few minutes: pip
  downloads many wheels whole to read their metadata)."""
  links = _promise_wheel(tmp_path / "wheels")
  _resolve(tmp_path, {name: _requirements(env, FULL_EXTRAS[name])
                      for name, (env, _) in TARGETS.items()}, links)
