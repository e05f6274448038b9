r"""The recipes: one `get_config(arg=None)` file per experiment, packaged.

Every file here (and in `study/`) with a top-level `get_config` is a recipe
that ships with the wheel. `--config` takes a recipe's name or a path to any
`.py` file, optionally followed by `:arg` (the text passed to `get_config`):

  python -m mi_ssl_jax.main --config=quickstart:tiny
  python -m mi_ssl_jax.main --config=mmae_vitb
  python -m mi_ssl_jax.main --config=configs/mmae_vitb.py   # as the docs write
  python -m mi_ssl_jax.main --config=path/to/my_recipe.py:arg
  python -m mi_ssl_jax.study --config=study/fmnist:tiny

Resolution (`resolve`): an existing file wins; otherwise a relative
`configs/<name>.py`, `<name>.py` or a bare `<name>` names the packaged
recipe `mi_ssl_jax/configs/<name>.py`, so the repository's commands also run
from any directory once the package is installed (in the repository the
top-level `configs` is a link to this folder). Anything else is a
`RecipeNotFoundError` that names the available recipes; `mi_ssl_jax.main`
prints it as one `error:` line and exits with status 2.

In a notebook (no file path needed):

  from mi_ssl_jax import configs
  configs.available()                    # ('barlow_twins_r18_cifar', ...)
  config = configs.load("quickstart")    # the quick start's ConfigDict
  tiny = configs.load("quickstart:tiny")  # or load("quickstart", "tiny")
  from mi_ssl_jax import train
  train.train_and_evaluate(tiny, "workdirs/quickstart")

Own recipes import the shared helpers from the package
(`from mi_ssl_jax.configs import common`). This module imports only the
standard library, so `from mi_ssl_jax.configs import common` stays cheap.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import os
import re
from typing import Any

from mi_ssl_jax.errors import UserError

RECIPES_DIR = os.path.dirname(os.path.abspath(__file__))
_GET_CONFIG = re.compile(r"^def get_config\(", re.MULTILINE)


class RecipeNotFoundError(UserError, LookupError):
  """`--config` names neither a file nor a packaged recipe.

  A `LookupError`, not a `ValueError`: absl would prefix a `ValueError`
  raised while parsing `--config` with the flag's whole value.
  """


@functools.cache
def available() -> tuple[str, ...]:
  """The packaged recipes' names (`"quickstart"`, `"study/fmnist"`, ...).

  A recipe is a `.py` file under this folder, not starting with `_`, that
  defines `get_config` at top level (helpers such as `common` do not).
  """
  names = []
  for dirpath, dirnames, filenames in os.walk(RECIPES_DIR):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
    for filename in sorted(filenames):
      if not filename.endswith(".py") or filename.startswith("_"):
        continue
      path = os.path.join(dirpath, filename)
      with open(path, encoding="utf-8") as f:
        if not _GET_CONFIG.search(f.read()):
          continue
      rel = os.path.relpath(path, RECIPES_DIR)[:-len(".py")]
      names.append(rel.replace(os.sep, "/"))
  return tuple(sorted(names))


def _strip(path: str) -> str:
  """`./configs/x.py` -> `x`: the name a relative path would give a recipe."""
  path = str(path).replace(os.sep, "/")
  while path.startswith("./"):
    path = path[2:]
  if path.startswith("configs/"):
    path = path[len("configs/"):]
  return path[:-len(".py")] if path.endswith(".py") else path


def packaged_name(path: str) -> str | None:
  """The packaged recipe that `path` names, or None.

  `quickstart`, `quickstart.py`, `configs/quickstart.py` and
  `./configs/quickstart.py` all name `quickstart`; `study/fmnist` names
  `study/fmnist`. Absolute paths never name a packaged recipe.
  """
  if not path or os.path.isabs(path):
    return None
  name = _strip(path)
  return name if name in available() else None


def resolve(name_or_path: str | os.PathLike) -> str:
  """The file of a recipe name or path (without the `:arg`); see the module.

  Args:
    name_or_path: an existing file, or a packaged recipe's name in any of the
      forms `packaged_name` accepts.

  Returns:
    `name_or_path` itself when it is a file, else the packaged recipe's path.

  Raises:
    RecipeNotFoundError: neither a file nor a packaged recipe.
  """
  path = os.fspath(name_or_path)
  if os.path.isfile(path):
    return path
  name = packaged_name(path)
  if name is not None:
    return os.path.join(RECIPES_DIR, *name.split("/")) + ".py"
  names = available()
  close = difflib.get_close_matches(_strip(path), names, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  if path.endswith(".py"):
    what = f"config file {path!r} not found and names no packaged recipe"
  else:
    what = f"unknown recipe {path!r}"
  raise RecipeNotFoundError(
      f"{what}{hint}; packaged recipes: {', '.join(names)} (or give a path "
      "to a .py file)")


def resolve_spec(spec: str) -> str:
  """`resolve` for a `--config` value: `name_or_path[:arg]`, arg kept."""
  path, sep, arg = str(spec).partition(":")
  return resolve(path) + sep + arg


def _module(path: str):
  """Imports a recipe file (packaged ones as `mi_ssl_jax.configs.<name>`)."""
  rel = os.path.relpath(os.path.realpath(path),
                        os.path.realpath(RECIPES_DIR))
  if rel.endswith(".py") and not rel.startswith(".."):
    return importlib.import_module(
        f"{__name__}.{rel[:-len('.py')].replace(os.sep, '.')}")
  stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(f"_mi_ssl_config_{stem}",
                                                path)
  if spec is None or spec.loader is None:
    raise RecipeNotFoundError(f"config {path!r} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(name_or_path: str | os.PathLike, arg: str | None = None) -> Any:
  """The config of a recipe: `get_config(arg)` of its file, unlocked.

  Args:
    name_or_path: a packaged recipe's name (`"quickstart"`, `"mmae_vitb"`,
      `"study/fmnist"`) or a path to a `.py` file, optionally with `:arg`
      (`"quickstart:tiny"`).
    arg: the config argument (`"tiny"`, `"epochs=2"`); not together with a
      `:arg` in `name_or_path`.

  Returns:
    The `ml_collections.ConfigDict` that `get_config` returns (`--config`
    overrides are plain assignments: `config.batch_size = 64`).

  Raises:
    RecipeNotFoundError: `name_or_path` names no file and no recipe.
    ValueError: the argument is given twice.
  """
  path, sep, spec_arg = os.fspath(name_or_path).partition(":")
  if sep:
    if arg is not None:
      raise ValueError(f"config argument given twice: {name_or_path!r} and "
                       f"arg={arg!r}")
    arg = spec_arg
  module = _module(resolve(path))
  return module.get_config() if arg is None else module.get_config(arg)
