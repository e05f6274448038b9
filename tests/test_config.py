"""config_lib: config-string args, durations, checks; configs/common.py;
recipes by name (`mi_ssl_jax.configs`, `--config=quickstart:tiny`)."""

import glob
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags

from mi_ssl_jax import config_lib, configs
from mi_ssl_jax.config_lib import ConfigError
from mi_ssl_jax.configs import common
from mi_ssl_jax.errors import UserError


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


# ------------------------------------------- packaged recipes by name ----

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "mi_ssl_jax", "configs")


def test_available_lists_every_packaged_recipe_and_no_helper():
  names = configs.available()
  assert {"quickstart", "mmae_vitb", "study/fmnist", "knn"} <= set(names)
  assert "common" not in names and "__init__" not in names
  on_disk = {os.path.relpath(p, RECIPES)[:-3] for p in glob.glob(
      os.path.join(RECIPES, "**", "*.py"), recursive=True)
             if not os.path.basename(p).startswith("_")}
  assert set(names) == on_disk - {"common"}


def test_repository_configs_folder_is_the_package():
  # The docs' `configs/<name>.py` paths name the packaged files themselves.
  assert os.path.samefile(os.path.join(ROOT, "configs"), RECIPES)


@pytest.mark.parametrize("spelling", [
    "quickstart", "quickstart.py", "configs/quickstart.py",
    "./configs/quickstart.py"])
def test_names_resolve_to_the_packaged_file_from_any_directory(
    spelling, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert configs.resolve(spelling) == os.path.join(RECIPES, "quickstart.py")
  assert configs.resolve_spec(f"{spelling}:tiny").endswith("quickstart.py:tiny")


def test_existing_file_wins_and_study_names_resolve(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.makedirs("configs")
  with open("configs/quickstart.py", "w") as f:
    f.write("def get_config(arg=None):\n  return arg\n")
  assert configs.resolve("configs/quickstart.py") == "configs/quickstart.py"
  assert configs.resolve(str(tmp_path / "configs/quickstart.py")) == str(
      tmp_path / "configs/quickstart.py")
  assert configs.resolve("study/fmnist") == os.path.join(
      RECIPES, "study", "fmnist.py")


def test_load_by_name_with_arg_and_own_file(tmp_path):
  tiny = configs.load("quickstart:tiny")
  assert isinstance(tiny, ml_collections.ConfigDict)
  assert tiny.method == "mmae"
  assert tiny.to_dict() == configs.load("quickstart", "tiny").to_dict()
  assert configs.load("quickstart").total_epochs == 5.0
  assert configs.load("study/fmnist", "tiny").workdir == "/tmp/study_tiny"
  own = tmp_path / "my_recipe.py"
  own.write_text("from mi_ssl_jax.configs import common\n\n\n"
                 "def get_config(arg=None):\n"
                 "  arg = common.parse_arg(arg, steps=1)\n"
                 "  c = common.base_config()\n"
                 "  c.total_steps = arg.steps\n"
                 "  return c\n")
  assert configs.load(f"{own}:steps=3").total_steps == 3
  with pytest.raises(ValueError, match="twice"):
    configs.load("quickstart:tiny", "tiny")


@pytest.mark.parametrize("spec, start, hint", [
    ("quickstar", "unknown recipe 'quickstar'", "did you mean 'quickstart'"),
    ("configs/nope.py", "config file 'configs/nope.py' not found", ""),
    ("common", "unknown recipe 'common'", ""),
])
def test_unknown_name_names_the_recipes(spec, start, hint, tmp_path,
                                        monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(configs.RecipeNotFoundError) as e:
    configs.load(spec)
  message = str(e.value)
  assert isinstance(e.value, UserError)
  assert message.startswith(start) and hint in message
  assert "\n" not in message
  assert all(name in message for name in configs.available())


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_config_flag_takes_names_paths_and_overrides():
  argv = ["prog", "--config=quickstart:tiny", "--config.batch_size=4"]
  fv = flags.FlagValues()
  holder = config_lib.define_config_flag(flag_values=fv, sys_argv=argv)
  fv(argv)
  assert holder.value.batch_size == 4 and holder.value.method == "mmae"
  assert fv["config"].config_filename == "quickstart:tiny"  # workdir stem
  path = os.path.join(ROOT, "configs", "mmae_vitb.py")
  argv = ["prog", f"--config={path}:tiny"]
  fv = flags.FlagValues()
  holder = config_lib.define_config_flag(flag_values=fv, sys_argv=argv)
  fv(argv)
  assert holder.value.method == "mmae"
  fv = flags.FlagValues()
  config_lib.define_config_flag(flag_values=fv, sys_argv=["prog"])
  with pytest.raises(configs.RecipeNotFoundError):
    fv(["prog", "--config=nope"])


@pytest.mark.parametrize("module, spec", [
    ("mi_ssl_jax.main", "no_such_recipe:tiny"),
    ("mi_ssl_jax.study", "study/no_such_study"),
])
def test_unknown_recipe_on_the_command_line_is_one_error_line(
    module, spec, tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ("MI_SSL_DEBUG", "PYTHONPATH")}
  out = subprocess.run([sys.executable, "-m", module, f"--config={spec}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2, out.stderr
  err = out.stderr.strip().splitlines()
  assert "Traceback" not in out.stderr and out.stdout == ""
  assert len(err) == 1, err
  assert err[0].startswith(f"error: unknown recipe {spec.split(':')[0]!r}")
  assert all(name in err[0] for name in configs.available())
  assert os.listdir(tmp_path) == []  # nothing created, no workdir
