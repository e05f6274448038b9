"""config_lib: config-string args, durations, checks; configs/common.py."""

import pytest

from configs import common
from mi_ssl_jax import config_lib
from mi_ssl_jax.config_lib import ConfigError


def test_parse_arg_types_and_bare_flags():
  arg = config_lib.parse_arg("runlocal,variant=L/16,steps=7,lr=0.5",
                             runlocal=False, variant="B/16", steps=1, lr=0.1,
                             other="x")
  assert arg.runlocal is True and arg.variant == "L/16"
  assert arg.steps == 7 and isinstance(arg.steps, int)
  assert arg.lr == 0.5 and arg.other == "x"
  assert config_lib.parse_arg("", a=1).a == 1
  assert config_lib.parse_arg(None, flag=True).flag is True
  assert config_lib.parse_arg("flag=false", flag=True).flag is False


def test_parse_arg_errors():
  with pytest.raises(ConfigError, match="unknown config arg 'varaint'"):
    config_lib.parse_arg("varaint=L/16", variant="B/16")
  with pytest.raises(ConfigError, match="expected an integer"):
    config_lib.parse_arg("steps=abc", steps=1)
  with pytest.raises(ConfigError, match="needs a value"):
    config_lib.parse_arg("steps", steps=1)
  lazy = config_lib.parse_arg("new=3,bare", lazy=True)
  assert lazy.new == "3" and lazy.bare is True


def _durations(**fields):
  config = common.base_config()
  for k, v in fields.items():
    config[k] = v
  return config


def test_steps_units():
  steps = config_lib.steps
  assert steps("total", _durations(total_steps=10)) == 10
  assert steps("total", _durations(total_epochs=2.0), data_size=1000,
               batch_size=100) == 20
  assert steps("total", _durations(total_examples=1050), batch_size=100) == 10
  assert steps("total", _durations(total_epochs=0.01), data_size=1000,
               batch_size=100) == 1  # at least one step
  config = _durations()
  config.ckpt_steps = None
  config.ckpt_epochs = None
  assert steps("ckpt", config, default=None) is None
  with pytest.raises(ConfigError, match="set one of config.total_steps"):
    steps("total", _durations())
  with pytest.raises(ConfigError, match="needs the dataset size"):
    steps("total", _durations(total_epochs=1.0), batch_size=8)


def test_steps_most_specific_wins():
  # A recipe says epochs; the command line adds steps: steps win.
  config = _durations(total_epochs=200.0, total_steps=2)
  assert config_lib.steps("total", config, 1000, 10) == 2


def test_checks():
  config_lib.check_open_unit_interval(0.75, "mask_ratio")
  for bad in (0.0, 1.0, -0.1, "0.5"):
    with pytest.raises(ConfigError, match=r"open interval \(0, 1\)"):
      config_lib.check_open_unit_interval(bad, "mask_ratio")
  config = _durations(batch_size=0)
  with pytest.raises(ConfigError, match="batch_size must be a positive"):
    config_lib.check_positive(config, "batch_size")


def test_base_config_is_locked_against_typos():
  config = common.base_config()
  config.lock()
  with pytest.raises(AttributeError):
    config.batchsize = 3
  config.total_steps = 5  # placeholders accept their type
  assert config.total_steps == 5
