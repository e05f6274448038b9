"""The wheel carries its recipes: install it, run a `:tiny` recipe by name.

Builds the wheel from a copy of the project (so the build leaves nothing in
the checkout), installs it with pip into a fresh virtual environment, and
from an empty directory runs `python -m mi_ssl_jax.main --config=<name>:tiny`
without `--workdir`: exit status 0 and checkpoints under
`workdirs/<name>/`. This is what `pip install` (or Colab) users get; the
repository's own `configs/` and the editable install are out of sight.

The fresh environment is made from the base interpreter with `--without-pip`
(no network, well under a second) and sees the test environment's
dependencies through a `.pth` line naming its site-packages: a plain path
adds the folder to `sys.path` but does not run the `.pth` files in it, so
the editable install's finder (`__editable__.mi_ssl_jax-*.pth`) stays
inactive and `import mi_ssl_jax` can only find the wheel's copy; the test
checks that it does. Building offline needs setuptools >= 77 in the test
environment (the `test` extra).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from mi_ssl_jax.data import sources

ROOT = Path(__file__).resolve().parents[1]
# The quick start when its data is here (the README's recipe), else an
# input-free recipe (random images): both exercise packaged helper imports.
RECIPE = ("quickstart" if sources.fashion_mnist_dir() is not None
          else "mmae_vitb")


def _run(cmd, timeout=300, **kwargs):
  out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                       timeout=timeout, **kwargs)
  assert out.returncode == 0, (cmd, out.stdout[-3000:], out.stderr[-3000:])
  return out


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                      "PYTHONSTARTUP", "MI_SSL_DEBUG")}
  env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
             PIP_NO_INPUT="1", **extra)
  return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(python of a fresh venv with only the wheel installed, venv folder)."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  src.mkdir()
  for path in ROOT.iterdir():  # pyproject.toml, README.md, ...
    if path.is_file() and not path.is_symlink():
      shutil.copy2(path, src / path.name)
  shutil.copytree(ROOT / "mi_ssl_jax", src / "mi_ssl_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  wheels = tmp / "wheels"
  env = _clean_env()
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
        "--no-build-isolation", "--no-index", "-w", wheels, src], env=env)
  (wheel,) = wheels.glob("mi_ssl_jax-*.whl")

  venv = tmp / "venv"
  base = getattr(sys, "_base_executable", sys.executable)
  _run([base, "-m", "venv", "--without-pip", venv], env=env)
  python = venv / "bin" / "python"
  purelib = _run([python, "-c", "import sysconfig; "
                  "print(sysconfig.get_paths()['purelib'])"],
                 env=env).stdout.strip()
  deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
  Path(purelib, "_test_env_dependencies.pth").write_text(
      "".join(f"{p}\n" for p in deps))
  _run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
        "--no-deps", "--no-index", wheel], env=env)
  return python, venv


def test_installed_package_is_the_wheel_with_its_recipes(installed, tmp_path):
  python, venv = installed
  out = _run([python, "-c", "import mi_ssl_jax, mi_ssl_jax.configs as c; "
              "print(mi_ssl_jax.__file__); print(c.resolve('quickstart')); "
              "print(c.resolve('study/fmnist')); print(c.load("
              "'quickstart:tiny').method); import importlib.util as u; "
              "print(u.find_spec('configs'))"],
             cwd=tmp_path, env=_clean_env(), timeout=120)
  package, quickstart, study, method, top_level = out.stdout.split("\n")[:5]
  for path in (package, quickstart, study):
    assert Path(path).resolve().is_relative_to(venv.resolve()), path
  assert method == "mmae"
  assert top_level == "None"  # only mi_ssl_jax/ ships; no top-level configs


def test_wheel_carries_the_license(installed):
  """LICENSE (Apache-2.0, pyproject's `license`) ships in the metadata."""
  _, venv = installed
  (info,) = venv.glob("lib/python*/site-packages/mi_ssl_jax-*.dist-info")
  assert "Apache License\n                           Version 2.0" in (
      info / "licenses" / "LICENSE").read_text()
  assert "License-Expression: Apache-2.0" in (info / "METADATA").read_text()


def test_tiny_recipe_runs_by_name_from_an_empty_directory(installed, tmp_path):
  python, _ = installed
  cwd = tmp_path / "empty"
  cwd.mkdir()
  out = _run([python, "-m", "mi_ssl_jax.main", f"--config={RECIPE}:tiny",
              "--config.tensorboard=False"], cwd=cwd, timeout=600,
             env=_clean_env(JAX_PLATFORMS="cpu", XLA_FLAGS=(
                 "--xla_force_host_platform_device_count=1")))
  assert f"using workdirs/{RECIPE}" in out.stderr
  checkpoints = cwd / "workdirs" / RECIPE / "checkpoints"
  assert any(p.name.isdigit() for p in checkpoints.iterdir()), out.stderr
