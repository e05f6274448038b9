"""Each method declares its hyperparameters once (`Hparams`, methods/base.py).

* every shipped method has a frozen, hashable `Hparams` (or none of its own)
  and its recipes carry every field, so `--config.<field>=...` works;
* a recipe's value reaches the model (`model.hp`) and a field a recipe does
  not set takes the dataclass default;
* `read_hparams` converts ints to floats, refuses strings for numbers and
  values `__post_init__` refuses, each as one ConfigError line;
* `validate` (what the trainer calls) checks the hyperparameters of methods
  without a `validate_config`.
"""

import dataclasses
import types

import ml_collections
import pytest
from flax import nnx

from mi_ssl_jax import config_lib, configs, methods
from mi_ssl_jax.methods import base

MAE_FAMILY = ("mae", "umae", "mmae")


def _recipe(method: str) -> ml_collections.ConfigDict:
  if method in MAE_FAMILY:
    return configs.load("fmnist_mae", f"method={method}")
  return configs.load("fmnist_siamese", f"method={method}")


@pytest.mark.parametrize("name", methods.available())
def test_recipes_carry_every_declared_field(name):
  method = methods.get_method(name)
  hparams = getattr(method, "Hparams", None)
  assert hparams is not None, f"{name} declares no Hparams"
  assert dataclasses.is_dataclass(hparams)
  assert hparams.__dataclass_params__.frozen
  hash(hparams())  # static graph metadata must be hashable
  config = _recipe(name)
  missing = [f.name for f in dataclasses.fields(hparams)
             if f.name not in config]
  assert not missing, f"recipe of {name} lacks {missing}"


def test_recipe_values_reach_the_model_and_defaults_fill_the_rest():
  config = configs.load("fmnist_siamese", "method=matrix_ssl,tiny")
  config.total_steps = 4
  config.mce_lambda = 2  # an int where a float is declared
  del config["mce_gamma"]  # an old config.json without the field
  method = methods.get_method("matrix_ssl")
  model = nnx.eval_shape(lambda: method.init(config, nnx.Rngs(0)))
  assert model.hp.mce_lambda == 2.0 and isinstance(model.hp.mce_lambda, float)
  assert model.hp.mce_gamma == method.Hparams().mce_gamma == 1.0
  assert model.hp.mce_log_method == config.mce_log_method


def test_mae_family_hyperparameters_reach_the_model():
  config = configs.load("fmnist_mae", "method=mmae,tiny")
  config.total_steps = 4
  config.reg_lambda, config.feature_pool = 0.5, "gap"
  method = methods.get_method("mmae")
  model = nnx.eval_shape(lambda: method.init(config, nnx.Rngs(0)))
  assert (model.hp.reg_lambda, model.hp.feature_pool) == (0.5, "gap")
  assert model.hp.official_world_size == config.official_world_size


@dataclasses.dataclass(frozen=True)
class _Example:
  rate: float = 0.1
  depth: int = 2
  flag: bool = True
  name: str = "a"
  dims: tuple[int, ...] = (1, 2)
  world: int | None = None

  def __post_init__(self):
    config_lib.check_choice(self.name, "name", ("a", "b"))


def test_read_hparams_converts_and_refuses():
  read = lambda **kw: base.read_hparams(_Example, kw)
  got = read(rate=1, depth=3.0, dims=[3, 4], world=8, name=None)
  assert got == _Example(rate=1.0, depth=3, dims=(3, 4), world=8)
  assert isinstance(got.rate, float) and isinstance(got.depth, int)
  for bad, field in [({"rate": "0.1"}, "rate"), ({"depth": 2.5}, "depth"),
                     ({"flag": 1}, "flag"), ({"name": "c"}, "name"),
                     ({"rate": True}, "rate"), ({"world": "x"}, "world")]:
    with pytest.raises(config_lib.ConfigError, match=f"config.{field}"):
      read(**bad)
  assert base.config_fields(_Example) == dict(
      rate=0.1, depth=2, flag=True, name="a", dims=(1, 2), world=None)


def test_validate_checks_hparams_without_validate_config():
  module = types.SimpleNamespace(Hparams=_Example)
  base.validate(module, {"name": "b"})
  with pytest.raises(config_lib.ConfigError, match="config.name"):
    base.validate(module, {"name": "z"})


def test_bad_values_are_one_line_errors_in_each_family():
  for name, field, value in [("simclr", "simclr_temperature", 0.0),
                             ("mec", "mec_log_method", "exact"),
                             ("emi", "emi_ridge", -1.0),
                             ("mmae", "reg_mu", 0.0),
                             ("mae", "feature_pool", "max")]:
    config = _recipe(name)
    config[field] = value
    with pytest.raises(config_lib.ConfigError, match=field) as e:
      base.validate(methods.get_method(name), config)
    assert "\n" not in str(e.value)


def test_a_method_object_must_declare_frozen_hparams():
  @dataclasses.dataclass
  class Mutable:
    x: float = 1.0

  bad = types.SimpleNamespace(init=len, loss_fn=len, predict_fn=len,
                              Hparams=Mutable)
  with pytest.raises(config_lib.ConfigError, match="frozen dataclass"):
    base.check_method_module(bad, "my_method")
