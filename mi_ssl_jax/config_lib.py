"""Config helpers: config-string arguments, durations, and config errors.

Configs are `ml_collections.ConfigDict`s returned by `get_config(arg)` in a
recipe file: a packaged one under `mi_ssl_jax/configs/` (named by
`--config=mmae_vitb` or, as the repository's docs write it,
`--config=configs/mmae_vitb.py`) or any `.py` path; `define_config_flag`
resolves the name (`mi_ssl_jax.configs.resolve`). The optional `arg` is the
text after the colon in `--config=mmae_vitb:runlocal,variant=L/16`
(big_vision style) and is parsed by `parse_arg`. Durations are written as
`<prefix>_steps`, `<prefix>_epochs` or `<prefix>_examples` (or
`<prefix>_percent` of the total) and resolved to steps by `steps`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from mi_ssl_jax.errors import UserError


class ConfigError(UserError, ValueError):
  """A user-facing configuration error; `main.py` prints it as one line."""


def _convert(key: str, text: str, default: Any) -> Any:
  """Converts `text` to the type of `default` (bool/int/float/str)."""
  if isinstance(default, bool):
    lowered = text.lower()
    if lowered in ("1", "true", "yes", ""):
      return True
    if lowered in ("0", "false", "no"):
      return False
    raise ConfigError(f"config arg {key}={text!r}: expected a boolean")
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(
          f"config arg {key}={text!r}: expected an integer") from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(
          f"config arg {key}={text!r}: expected a number") from None
  return text


def parse_arg(arg: str | None, lazy: bool = False,
              **spec: Any) -> ml_collections.ConfigDict:
  """Parses a config-string argument such as `"runlocal,variant=B/16"`.

  Items are separated by commas. `key=value` sets a value; a bare `key` means
  `key=True`. Values take the type of the default given in `spec`.

  Args:
    arg: the text after `:` in `--config=file.py:arg`, or None/"".
    lazy: if True, keys missing from `spec` are accepted as strings;
      otherwise they raise `ConfigError` (so typos are caught).
    **spec: the accepted keys and their defaults.

  Returns:
    A ConfigDict with every key of `spec` (defaults filled in) plus, if `lazy`,
    the extra keys.

  Raises:
    ConfigError: on unknown keys (unless `lazy`) or values of the wrong type.
  """
  result = ml_collections.ConfigDict(dict(spec))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, text = item.partition("=")
    key = key.strip()
    if key in spec:
      value = _convert(key, text.strip(), spec[key]) if has_value else True
      if not has_value and not isinstance(spec[key], bool):
        raise ConfigError(f"config arg {key!r} needs a value ({key}=...)")
      result[key] = value
    elif lazy:
      result[key] = text.strip() if has_value else True
    else:
      known = ", ".join(sorted(spec)) or "none"
      raise ConfigError(
          f"unknown config arg {key!r}; this config accepts: {known}")
  return result


# Most specific first: when a recipe sets `total_epochs` and a command line
# adds `--config.total_steps=2`, the steps win (no need to unset the epochs).
_UNITS = ("steps", "examples", "epochs", "percent")


def steps(prefix: str, config: ml_collections.ConfigDict,
          data_size: int | None = None, batch_size: int | None = None,
          total_steps: int | None = None,
          default: Any = ConfigError) -> int | None:
  """Resolves a duration written as `<prefix>_{steps,examples,epochs,percent}`.

  If several fields are set (not None), the first in that order wins, so a
  command-line `--config.total_steps=2` overrides a recipe's `total_epochs`.
  Conversions:
    steps = examples / batch_size             (rounded to nearest)
    steps = epochs * data_size / batch_size   (rounded to nearest, ≥ 1)
    steps = percent / 100 * total_steps       (rounded to nearest)

  Args:
    prefix: e.g. "total", "warmup", "log", "ckpt".
    config: the config holding the fields.
    data_size: examples per epoch (needed for `_epochs`).
    batch_size: global batch size (needed for `_epochs` / `_examples`).
    total_steps: needed for `_percent`.
    default: returned when no field is set; the default raises ConfigError.

  Returns:
    The number of steps (an int), or `default`.
  """
  given = [(u, config.get(f"{prefix}_{u}")) for u in _UNITS]
  given = [(u, v) for u, v in given if v is not None]
  if not given:
    if default is ConfigError:
      raise ConfigError(
          f"set one of config.{prefix}_steps / {prefix}_epochs / "
          f"{prefix}_examples")
    return default
  unit, value = given[0]
  if value < 0:
    raise ConfigError(f"config.{prefix}_{unit}={value} is negative; use a "
                      "positive duration")
  if unit == "steps":
    return int(value)
  if unit == "percent":
    if total_steps is None:
      raise ConfigError(f"{prefix}_percent needs the total number of steps")
    return int(round(value / 100 * total_steps))
  if not batch_size:
    raise ConfigError(f"{prefix}_{unit} needs the global batch_size")
  if unit == "examples":
    return int(round(value / batch_size))
  if not data_size:
    raise ConfigError(
        f"{prefix}_epochs needs the dataset size; set {prefix}_steps instead")
  return max(1, int(round(value * data_size / batch_size))) if value else 0


# A warm-up at least as long as the run (a recipe's warm-up in a shorter
# run, e.g. 1 epoch in a 0.5-epoch study run) becomes this fraction of the
# run, so the run still reaches what the warm-up leads to: the learning rate
# decays after it, MEC's λ reaches d/(B ε²).
SHORT_RUN_WARMUP_FRACTION = 0.1


def warmup_steps(prefix: str, config: ml_collections.ConfigDict,
                 data_size: int | None, batch_size: int | None,
                 total_steps: int) -> int:
  """`steps(prefix, ...)` (0 when unset), or SHORT_RUN_WARMUP_FRACTION of
  `total_steps` when it would last the whole run (logged)."""
  warmup = steps(prefix, config, data_size, batch_size, total_steps,
                 default=0)
  if total_steps and warmup >= total_steps > 1:
    short = int(round(SHORT_RUN_WARMUP_FRACTION * total_steps))
    logging.warning("%s: %d warm-up steps in a %d-step run; using %d (%g of "
                    "the run)", prefix, warmup, total_steps, short,
                    SHORT_RUN_WARMUP_FRACTION)
    return short
  return min(warmup, total_steps) if total_steps else warmup


def check_positive(config: ml_collections.ConfigDict, *names: str) -> None:
  """Raises ConfigError unless each named field is a positive number."""
  for name in names:
    value = config.get(name)
    if not isinstance(value, (int, float)) or value <= 0 or (
        isinstance(value, float) and not math.isfinite(value)):
      raise ConfigError(f"config.{name} must be a positive number, got "
                        f"{value!r}")


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> None:
  """Raises ConfigError unless `value` (of `config.<name>`) is in `choices`."""
  if value not in choices:
    options = ", ".join(repr(c) for c in choices)
    raise ConfigError(f"config.{name} must be one of {options}, got {value!r}")


# Fields that were renamed: old dotted path -> new field. A config that still
# sets an old one is refused (`check_renamed_fields`: one line naming the new
# field); a run directory's config.json written before the rename is read
# through `upgrade_renamed_fields`.
RENAMED_FIELDS = {
    # One precision field for every family (methods/base.py compute_dtype):
    # the MAE family read `dtype`, the Siamese family `model.dtype`.
    "dtype": "compute_dtype",
    "model.dtype": "compute_dtype",
}


def _get_path(config: Any, path: str) -> Any:
  """`config.a.b` for path "a.b" (None where a level is missing)."""
  node = config
  for part in path.split("."):
    if not hasattr(node, "get"):
      return None
    node = node.get(part)
  return node


def check_renamed_fields(config: Any) -> None:
  """Raises ConfigError if `config` sets a field of `RENAMED_FIELDS`.

  Raises:
    ConfigError: one line naming the old and the new field.
  """
  for old, new in RENAMED_FIELDS.items():
    value = _get_path(config, old)
    if value is not None:
      raise ConfigError(
          f"config.{old} was renamed: set config.{new}={value!r} instead "
          f"(--config.{new}={value}); it is the one field of every recipe")


def upgrade_renamed_fields(stored: Mapping[str, Any]) -> dict[str, Any]:
  """A stored run config (config.json, a dict) with old names moved to new.

  For runs written before a rename (`RENAMED_FIELDS`): the first old field
  that is set gives the new field its value, unless the new one is set;
  the old fields are removed. Other fields are unchanged.
  """
  out = copy.deepcopy(dict(stored))
  for old, new in RENAMED_FIELDS.items():
    *parents, leaf = old.split(".")
    node = out
    for part in parents:
      node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
      continue
    value = node.pop(leaf)
    if value is not None and out.get(new) is None:
      out[new] = value
  return out


def check_open_unit_interval(value: Any, name: str) -> None:
  """Raises ConfigError unless 0 < value < 1 (e.g. a mask ratio)."""
  if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
    raise ConfigError(f"config.{name} must be in the open interval (0, 1), "
                      f"got {value!r}")


def define_config_flag(name: str = "config", help_string: str = "",
                       lock_config: bool = True, flag_values=None,
                       sys_argv=None):
  """`ml_collections` `DEFINE_config_file` that also takes recipe names.

  `--<name>=quickstart:tiny` loads the packaged
  `mi_ssl_jax/configs/quickstart.py` with `get_config("tiny")`; any path to
  a `.py` file works as before (`mi_ssl_jax.configs.resolve`). The flag's
  `config_filename` stays the value as given (`quickstart:tiny`). An unknown
  name raises `mi_ssl_jax.configs.RecipeNotFoundError` (a `UserError`) from
  flag parsing, with the available recipes in its message.

  Args:
    name: the flag's name.
    help_string: its help text.
    lock_config: lock the loaded ConfigDict (overrides still apply).
    flag_values: the `absl.flags.FlagValues` to define it in (default: the
      global `absl.flags.FLAGS`).
    sys_argv: the command line the `--<name>.field=...` overrides are read
      from (default: `sys.argv` at parse time).

  Returns:
    The flag holder (`.value` is the ConfigDict).
  """
  from absl import flags  # noqa: PLC0415 (only the entry points need it)
  from ml_collections import config_flags  # noqa: PLC0415

  from mi_ssl_jax import configs  # noqa: PLC0415

  flag_values = flags.FLAGS if flag_values is None else flag_values
  holder = config_flags.DEFINE_config_file(
      name, None, help_string, flag_values=flag_values,
      lock_config=lock_config, sys_argv=sys_argv)
  flag = flag_values[name]
  flag.parser = _RecipeParser(flag.parser, configs.resolve_spec)
  return holder


class _RecipeParser:
  """Wraps ml_collections' config-file parser: names -> files first."""

  def __init__(self, inner, resolve):
    self._inner = inner
    self._resolve = resolve

  def parse(self, argument):
    if isinstance(argument, str):
      argument = self._resolve(argument)
    return self._inner.parse(argument)

  def __getattr__(self, attr):  # flag_type() and the rest: the inner parser
    if attr.startswith("_"):  # copy/pickle probe a half-built instance
      raise AttributeError(attr)
    return getattr(self._inner, attr)
