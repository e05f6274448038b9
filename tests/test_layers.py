"""No import runs up the layers of the package.

Bottom to top: the core (errors, paths, config_lib, sharding, checkpointing,
metrics_writer, loop, optim, model_state, matrix, losses, models, methods,
data, and the recipes in configs/, which import only config_lib) →
evaluators (what the trainer runs periodically) → finetune (the fine-tuning
recipe) and train / train_inputs (pre-training) → jobs (offline jobs) →
main, study, bench (entry points). A module may import its
own layer and the ones below, at module level or inside a function.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mi_ssl_jax"
ENTRY = {"main", "study", "bench"}
LAYERS = {"evaluators": 1, "finetune": 2, "train": 2, "train_inputs": 2,
          "jobs": 3, **dict.fromkeys(ENTRY, 4)}


def _layer(name: str) -> int:
  return LAYERS.get(name.split(".")[0], 0)


def _imports(path: pathlib.Path) -> set[str]:
  """Sub-modules of mi_ssl_jax that `path` imports (any nesting level)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    out |= {n.removeprefix("mi_ssl_jax.") for n in names
            if n.startswith("mi_ssl_jax.")}
  return out


MODULES = sorted(
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
    for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_no_import_runs_up_the_layers(module):
  path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
  up = sorted(
      target for target in _imports(path)
      if _layer(target) > _layer(module))
  assert not up, f"mi_ssl_jax.{module} imports {up} from a higher layer"
