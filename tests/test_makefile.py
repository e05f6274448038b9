"""The Makefile's Python finders, on a PATH of fake interpreters.

`make` picks the first of python3.13, python3.12, python3.11, python3 that
runs and is Python >= 3.11 for .venv, and python3.12 / python3.13 on PATH or
pyenv's versions/3.12* / 3.13* for the newest-jax leg (`make test-newest`).
A pyenv shim of a version that is not selected exists on PATH but fails; it
must be skipped. The fakes here are that failing shim and small Python
wrappers that report a chosen version to the Makefile's probe.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make on PATH")

_SHIM = """#!/bin/sh
echo "pyenv: $(basename "$0"): command not found" >&2
exit 127
"""


def _fake_python(path, version):
  """A command that runs this interpreter's probe as if it were `version`."""
  path.write_text(
      f"#!{sys.executable}\n"
      "import sys\n"
      f"sys.version_info = {version!r}\n"
      "assert sys.argv[1] == '-c', sys.argv\n"
      "exec(sys.argv[2])\n")
  path.chmod(0o755)


def _shim(path):
  path.write_text(_SHIM)
  path.chmod(0o755)


def _make(tmp_path, bin_dir, *args):
  """`make -n ARGS` in the repository with only bin_dir and /bin on PATH."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHON", "NEWEST_PYTHON", "MAKEFLAGS", "MAKELEVEL")}
  env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
  env["PYENV_ROOT"] = str(tmp_path / "pyenv")
  return subprocess.run(
      [MAKE, "--no-print-directory", *args], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=60, check=False)


def _bin(tmp_path, **versions):
  """A PATH folder: every candidate a failing shim unless given a version."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("python3.13", "python3.12", "python3.11", "python3"):
    version = versions.get(name.replace(".", "_"))
    if version is None:
      _shim(bin_dir / name)
    else:
      _fake_python(bin_dir / name, version)
  return bin_dir


def test_venv_python_skips_failing_shims_and_old_pythons(tmp_path):
  bin_dir = _bin(tmp_path, python3_12=(3, 12, 1, "final", 0),
                 python3=(3, 9, 18, "final", 0))
  venv = tmp_path / "venv"
  out = _make(tmp_path, bin_dir, "-n", "install", f"VENV={venv}")
  assert out.returncode == 0, out.stderr
  assert f"{bin_dir}/python3.12 -m venv {venv}" in out.stdout


def test_venv_python_takes_a_new_enough_python3(tmp_path):
  bin_dir = _bin(tmp_path, python3=(3, 11, 7, "final", 0))
  out = _make(tmp_path, bin_dir, "-n", "install", f"VENV={tmp_path}/venv")
  assert f"{bin_dir}/python3 -m venv" in out.stdout


def test_no_python_is_one_error_line_and_status_2(tmp_path):
  bin_dir = _bin(tmp_path, python3=(3, 10, 13, "final", 0))
  out = _make(tmp_path, bin_dir, "install", f"VENV={tmp_path}/venv")
  assert out.returncode == 2
  assert out.stdout.splitlines() == [
      "error: no Python >= 3.11 runs here (tried python3.13 python3.12 "
      "python3.11 python3); install one (Debian/Ubuntu: sudo apt-get install "
      "python3.11-venv) or pass PYTHON=/path/to/python3.11"]
  assert not (tmp_path / "venv").exists()


def test_newest_leg_finds_pyenv_version_behind_a_failing_shim(tmp_path):
  bin_dir = _bin(tmp_path, python3_11=(3, 11, 7, "final", 0))
  pyenv_bin = tmp_path / "pyenv" / "versions" / "3.12.9" / "bin"
  pyenv_bin.mkdir(parents=True)
  _fake_python(pyenv_bin / "python3.12", (3, 12, 9, "final", 0))
  out = _make(tmp_path, bin_dir, "-n", "test-newest",
              f"NEWEST_VENV={tmp_path}/newest")
  assert out.returncode == 0, out.stderr
  assert (f"{pyenv_bin}/python3.12 -m venv {tmp_path}/newest"
          in out.stdout), out.stdout


def test_newest_leg_without_python_312_is_one_note(tmp_path):
  bin_dir = _bin(tmp_path, python3_11=(3, 11, 7, "final", 0))
  out = _make(tmp_path, bin_dir, "test-newest",
              f"NEWEST_VENV={tmp_path}/newest")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "note: newest-jax leg skipped: no Python >= 3.12 runs here"), lines
  assert not (tmp_path / "newest").exists()
