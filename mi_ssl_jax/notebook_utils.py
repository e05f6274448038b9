"""Glue for the notebooks (`notebooks/*.ipynb`, all of which open in Colab).

Install, accelerator detection, data and display helpers; no SSL logic (that
lives in the library the notebooks import). Only the standard library is
imported at module level, so the notebooks' install cell can import this
module right after `pip install --no-deps` of the package, before its
dependencies are there (README, "Colab"). The install cell itself cannot
import the package (it installs it); its logic is in the notebooks and
tested by tests/test_notebooks.py.

* `install_dependencies()`: installs the package's requirements with two
  substitutions: `tensorflow-cpu` becomes `tensorflow` (same version range)
  when a `tensorflow` distribution is already installed (Colab's GPU build:
  the two write the same `tensorflow/` folder, so installing `tensorflow-cpu`
  beside it would mix two builds), and `jax` gains the `cuda12` / `tpu` extra
  on GPU / TPU machines (same version range as the `jax` pin).
* `tiny()` / `run_root()`: the notebooks' parameters (`MI_SSL_NOTEBOOK_TINY=1`
  selects the CI smoke size; `MI_SSL_NOTEBOOK_ROOT` the run directories).
* `execute()` / `python -m mi_ssl_jax.notebook_utils NOTEBOOK...`: runs
  notebooks in a fresh kernel with nbclient and saves them with their
  outputs, stderr dropped (`make notebooks`; the `notebooks` extra).
* `fashion_mnist()`: finds the Fashion-MNIST IDX files where the data layer
  looks (`mi_ssl_jax.data.sources.fashion_mnist_dir`) or downloads them once
  (`mi_ssl_jax.data.download`) and points `MI_SSL_DATA_DIR` at them.
"""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

TINY_ENV = "MI_SSL_NOTEBOOK_TINY"
ROOT_ENV = "MI_SSL_NOTEBOOK_ROOT"
DEFAULT_ROOT = os.path.join("workdirs", "notebooks")

# jax extra per accelerator (the `cuda12` / `tpu` extras of pyproject.toml).
JAX_EXTRA = {"gpu": "cuda12", "tpu": "tpu"}
# Distributions whose new version needs a fresh Python process when their
# module was imported before the install (distribution -> module).
_WATCHED = {"numpy": "numpy", "jax": "jax", "jaxlib": "jaxlib",
            "tensorflow": "tensorflow", "protobuf": "google.protobuf",
            "ml-dtypes": "ml_dtypes", "matplotlib": "matplotlib",
            "absl-py": "absl", "flax": "flax", "optax": "optax"}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?")
_EXTRA = re.compile(r"""\bextra\s*==\s*['"]([^'"]+)['"]""")


class StopNotebook(Exception):
  """A failure shown in a notebook as its one-line message: IPython prints
  what `_render_traceback_` returns instead of a traceback, and marks the
  cell as failed, so "Run all" stops there (as the install cell's own copy
  of this class does)."""

  def _render_traceback_(self) -> list[str]:
    return [str(self)]


def tiny() -> bool:
  """True when `MI_SSL_NOTEBOOK_TINY` is set to 1/true/yes (CI)."""
  return os.environ.get(TINY_ENV, "").strip().lower() in ("1", "true", "yes")


def run_root() -> str:
  """Parent of the notebooks' run directories (`MI_SSL_NOTEBOOK_ROOT`)."""
  return os.environ.get(ROOT_ENV) or DEFAULT_ROOT


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def detect_accelerator(environ: Mapping[str, str] | None = None,
                       paths: Callable[[str], list[str]] = glob.glob,
                       which: Callable[[str], str | None] = shutil.which
                       ) -> str:
  """"tpu", "gpu" or "cpu", without importing jax (so before installing it).

  TPU: a TPU environment variable (Colab's `COLAB_TPU_ADDR`, Cloud TPU VMs'
  `TPU_NAME` / `TPU_ACCELERATOR_TYPE`) or TPU device files (`/dev/accel*`,
  `/dev/vfio/<n>`). GPU: `nvidia-smi` on the PATH or `/dev/nvidia<n>`.
  """
  env = os.environ if environ is None else environ
  if (any(env.get(k) for k in ("COLAB_TPU_ADDR", "TPU_NAME",
                               "TPU_ACCELERATOR_TYPE"))
      or paths("/dev/accel*") or paths("/dev/vfio/[0-9]*")):
    return "tpu"
  if which("nvidia-smi") or paths("/dev/nvidia[0-9]*"):
    return "gpu"
  return "cpu"


def _installed(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def requirements(accelerator: str = "cpu", *,
                 requires: Sequence[str] | None = None,
                 installed: Callable[[str], str | None] = _installed
                 ) -> list[str]:
  """The pip requirements of this package for the current machine.

  Args:
    accelerator: "cpu", "gpu" or "tpu" (see `detect_accelerator`).
    requires: the package's requirement strings (default: its installed
      metadata, `importlib.metadata.requires("mi_ssl_jax")`).
    installed: distribution name -> installed version or None.

  Returns:
    The unconditional requirements (extras dropped), with `tensorflow-cpu`
    renamed `tensorflow` when `tensorflow` is installed and `jax[cuda12]` /
    `jax[tpu]` (same range as `jax`) added on a GPU / TPU.
  """
  if accelerator not in ("cpu", "gpu", "tpu"):
    raise ValueError(f"accelerator must be cpu, gpu or tpu, got "
                     f"{accelerator!r}")
  if requires is None:
    requires = importlib.metadata.requires("mi_ssl_jax") or []
  have_tf = installed("tensorflow") is not None
  out = []
  for line in requires:
    spec, _, marker = line.partition(";")
    if _EXTRA.search(marker):
      continue  # an extra (test, cuda12, tpu): not for the notebooks
    match = _NAME.match(spec)
    if match is None:
      raise ValueError(f"cannot parse requirement {line!r}")
    name, rest = _canonical(match.group(1)), spec[match.end():].strip()
    if name == "tensorflow-cpu" and have_tf:
      spec = "tensorflow" + rest
    out.append(spec.strip() + (f"; {marker.strip()}" if marker.strip()
                               else ""))
    if name == "jax" and accelerator in JAX_EXTRA and not match.group(2):
      out.append(f"jax[{JAX_EXTRA[accelerator]}]{rest}")
  return out


def _versions(names: Iterable[str]) -> dict[str, str | None]:
  return {n: _installed(n) for n in names}


def install_dependencies(accelerator: str | None = None, *,
                         dry_run: bool = False,
                         pip_args: Sequence[str] = ("-q",)) -> list[str]:
  """Pip-installs `requirements(accelerator)` into this Python.

  Prints the accelerator and the requirements; afterwards, if a package
  that was already imported in this process changed version, prints that
  the runtime must be restarted (Colab: Runtime > Restart session, then run
  all cells again; the install cell then skips itself).

  Returns:
    The pip command line (not run when `dry_run`).

  Raises:
    StopNotebook: pip failed (one `error:` line in a notebook).
  """
  accelerator = accelerator or detect_accelerator()
  reqs = requirements(accelerator)
  cmd = [sys.executable, "-m", "pip", "install", *pip_args, *reqs]
  print(f"accelerator: {accelerator}; installing: {' '.join(reqs)}")
  if dry_run:
    return cmd
  before = _versions(_WATCHED)
  if subprocess.run(cmd).returncode != 0:
    raise StopNotebook("error: pip could not install the dependencies of "
                       "mi_ssl_jax (its message is above): fix that, then "
                       "run the install cell again")
  importlib.invalidate_caches()
  after = _versions(_WATCHED)
  stale = sorted(d for d, m in _WATCHED.items()
                 if m in sys.modules and before[d] != after[d])
  if stale:
    print("RESTART NEEDED: already imported packages changed version ("
          + ", ".join(f"{d} {before[d]} -> {after[d]}" for d in stale)
          + "). Colab: Runtime > Restart session, then run all cells again.")
  return cmd


def device_report() -> str:
  """One line: jax backend and devices; warns when jax misses an
  accelerator that the machine has (reinstall or restart the runtime)."""
  import jax  # noqa: PLC0415 (the install cell runs before jax exists)

  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  line = (f"jax {jax.__version__}: backend {jax.default_backend()}, "
          f"{len(devices)} device(s) ({', '.join(kinds)}), "
          f"{jax.process_count()} process(es)")
  machine = detect_accelerator()
  if (machine != "cpu" and jax.default_backend() == "cpu"
      and not os.environ.get("JAX_PLATFORMS")
      and os.environ.get("CUDA_VISIBLE_DEVICES", None) != ""):
    line += (f"\nWARNING: this machine has a {machine.upper()} but jax runs "
             "on the CPU: rerun the install cell (it adds "
             f"jax[{JAX_EXTRA[machine]}]) or restart the runtime")
  return line


def fashion_mnist(folder: str | None = None, *,
                  mirrors: Sequence[str] | None = None,
                  search: bool = True) -> str:
  """A folder with the Fashion-MNIST IDX files; downloads them if needed.

  With `search`, returns the folder the data layer already finds
  (`data_dir`-less lookup: `$MI_SSL_DATA_DIR`, the Debian package's
  `/usr/share/datasets/fashion-mnist`, the download cache). Otherwise
  downloads the four checked `.gz` files (~30 MB) into `folder` (default
  `mi_ssl_jax.data.download.cache_dir()`) with the package's one
  downloader, `mi_ssl_jax.data.download.fetch_fashion_mnist` (mirrors,
  checks, `MI_SSL_DOWNLOAD=0`: see there), and sets `MI_SSL_DATA_DIR` to the
  folder so every job of this process reads them.

  Raises:
    OSError (`download.DownloadError`): no mirror gave a valid copy.
  """
  # Imported here: the data layer needs the dependencies that the install
  # cell installs after importing this module.
  from mi_ssl_jax.data import download, sources  # noqa: PLC0415
  if search:
    found = sources.fashion_mnist_dir()
    if found:
      return found
  folder = download.fetch_fashion_mnist(folder, mirrors=mirrors)
  os.environ["MI_SSL_DATA_DIR"] = folder
  return folder


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of `<workdir>/metrics.jsonl`, one per step (torn lines
  skipped): `mi_ssl_jax.metrics_writer.read_metrics`, imported here so that
  this module loads before the install cell has installed jax."""
  from mi_ssl_jax import metrics_writer  # noqa: PLC0415
  return metrics_writer.read_metrics(workdir)


def show_images(*paths: str, width: float = 6.0) -> None:
  """Displays PNG files side by side, each `width` inches wide, with
  matplotlib (the library's evaluators write their figures as files)."""
  import matplotlib.pyplot as plt  # noqa: PLC0415

  images = [plt.imread(p) for p in paths]
  height = max(width * im.shape[0] / im.shape[1] for im in images)
  fig, axes = plt.subplots(1, len(images), figsize=(width * len(images),
                                                    height), squeeze=False)
  for ax, image in zip(axes[0], images, strict=True):
    ax.imshow(image)
    ax.set_axis_off()
  fig.tight_layout()
  plt.show()
  plt.close(fig)


def execute(path: str, *, cwd: str = ".", timeout: int = 3600,
            kernel_name: str = "python3") -> int:
  """Runs the notebook at `path` top to bottom in a fresh Jupyter kernel
  (nbclient, the engine of `jupyter nbconvert --execute`) and saves it with
  its outputs, so that they show where the notebook is viewed (GitHub,
  Colab). The kernel inherits this process's environment and runs in `cwd`
  (run directories go to `cwd/workdirs/notebooks`). Dropped before saving:
  stderr streams (absl / TensorFlow logging, progress) and the cells'
  execution timestamps. Stops at the first failing cell
  (`nbclient.exceptions.CellExecutionError`), leaving the file unchanged.

  Returns:
    The size of the saved notebook in bytes.
  """
  import nbclient  # noqa: PLC0415 (the `notebooks` extra)
  import nbformat  # noqa: PLC0415

  notebook = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(
      notebook, timeout=timeout, kernel_name=kernel_name,
      resources={"metadata": {"path": os.path.abspath(cwd)}}).execute()
  for cell in notebook.cells:
    if cell.cell_type == "code":
      cell.outputs = [o for o in cell.outputs
                      if not (o.output_type == "stream"
                              and o.name == "stderr")]
      cell.metadata.pop("execution", None)
  nbformat.write(notebook, path)
  return os.path.getsize(path)


def main(argv: Sequence[str]) -> int:
  """`python -m mi_ssl_jax.notebook_utils NOTEBOOK...`: `execute` each."""
  import time  # noqa: PLC0415

  if not argv:
    print("error: name the notebooks to execute, e.g. notebooks/*.ipynb",
          file=sys.stderr)
    return 2
  for path in argv:
    if not os.path.isfile(path):
      print(f"error: no notebook {path}", file=sys.stderr)
      return 2
  if importlib.util.find_spec("nbclient") is None:
    print("error: executing notebooks needs nbclient and ipykernel: "
          "pip install -e '.[notebooks]'", file=sys.stderr)
    return 2
  import nbclient.exceptions  # noqa: PLC0415

  for path in argv:
    start = time.monotonic()
    try:
      size = execute(path)
    except nbclient.exceptions.CellExecutionError as e:
      print(f"error: {path} failed ({e.ename}: {e.evalue}); it is left "
            "unchanged",
            file=sys.stderr)
      return 2
    print(f"{path}: {time.monotonic() - start:.0f} s, saved "
          f"{size / 1024:.0f} KiB")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
