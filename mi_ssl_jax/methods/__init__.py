"""SSL methods: one module per method, loaded by name (no central registry).

`config.method = "mmae"` loads `mi_ssl_jax.methods.mmae`; a dotted name such as
`"my_project.my_method"` loads that module instead, so users can plug in a
method without editing this package. The interface every method module
implements is documented in `mi_ssl_jax/methods/base.py`.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

from mi_ssl_jax.config_lib import ConfigError
from mi_ssl_jax.methods.base import check_method_module


def available() -> list[str]:
  """Names of the methods shipped in this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if m.name != "base" and not m.name.startswith("_"))


def get_method(name: str) -> types.ModuleType | object:
  """Imports and checks the method module named `name`.

  Returns the module, or its ``METHOD`` object where it defines one (the
  Siamese methods: `_siamese.SiameseMethod`); either has the names of the
  interface in `mi_ssl_jax/methods/base.py`.

  Raises:
    ConfigError: if there is no such module or it lacks the interface.
  """
  module_name = name if "." in name else f"{__name__}.{name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name and not module_name.startswith(str(e.name)):
      raise  # The method exists but one of its own imports is missing.
    raise ConfigError(
        f"unknown config.method {name!r}; available: "
        f"{', '.join(available()) or 'none'} (or a dotted module path)"
    ) from None
  method = getattr(module, "METHOD", module)
  check_method_module(method, module.__name__)
  return method
