"""The study's cache cannot lie: a finished task is reused only under the
same resolved config and code version (its key); a changed budget in the
same workdir is refused with one line; the report shows only numbers run
under the current config, with the budget the runs recorded. A fake runner
(no training) writes what the trainer and the evaluate job would: the run's
config.json and the result JSONs."""

import json
import os

import pytest

from mi_ssl_jax.study import plan as study_plan
from mi_ssl_jax.study import report, results, run
from mi_ssl_jax.study.common import StudyError


def _config(tmp_path, steps):
  c = study_plan.load_recipe("configs/study/fmnist.py:tiny")
  c.results_md = str(tmp_path / "results.md")
  c.figures_dir = str(tmp_path / "figures")
  c.baselines = ()
  c.checkpoint_evals.count = 0
  c.budget_sweep = {}
  c.info_flow = ()
  for family in c.families.values():
    family.overrides.total_steps = steps
  return c


def _fake_runner(task, root):
  """Pre-training: writes config.json (the resolved config, as the trainer
  does). Evaluation: kNN and linear top-1 = 50 + the pre-training's
  recorded total_steps, so each budget has its own numbers."""
  os.makedirs(os.path.join(task.workdir, "eval"), exist_ok=True)
  if task.kind == "pretrain":
    with open(os.path.join(task.workdir, "config.json"), "w") as f:
      f.write(study_plan.resolved_config(task.argv).to_json_best_effort())
    return 0, 1.0, "log"
  init = next(a for a in task.argv if a.startswith("--config.init_from="))
  with open(os.path.join(init.partition("=")[2], "config.json")) as f:
    acc = 50.0 + json.load(f)["total_steps"]
  write_fake_evals(task.workdir, {"top1_k5": acc}, {"top1": acc},
                   checkpoint_step=4, recipe={"epochs": 1, "batch_size": 64})
  return 0, 1.0, "log"


def write_fake_evals(workdir, knn_metrics, linear_metrics, *,
                     checkpoint_step, recipe):
  """The kNN and linear-probe result files an evaluation task writes."""
  for protocol, metrics in (("knn", knn_metrics),
                            ("simclr_linear", linear_metrics)):
    with open(os.path.join(workdir, "eval", f"{protocol}.json"), "w") as f:
      json.dump({"protocol": protocol, "protocol_version": 1,
                 "metrics": metrics, "checkpoint_step": checkpoint_step,
                 "recipe": recipe}, f)


def _study(config, root, execute=True):
  tasks = study_plan.plan(config, root)
  if execute:
    run.check_markers(tasks, root)
    assert run.execute(tasks, root, echo=lambda line: None,
                       runner=_fake_runner) == []
  summary = results.collect(config, tasks, root)
  return tasks, report.markdown(config, summary, "cmd", {})


def test_a_changed_budget_never_shows_the_old_numbers(tmp_path):
  root = str(tmp_path / "w")
  _, md = _study(_config(tmp_path, 4), root)
  assert "| 54.00 | 54.00 |" in md and "`total_steps=4`" in md

  # Same workdir, new budget: refused (one line), nothing is rerun ...
  new = _config(tmp_path, 8)
  tasks = study_plan.plan(new, root)
  with pytest.raises(StudyError, match=r"--config.total_steps=4 -> 8.*new "
                     r"--workdir"):
    run.check_markers(tasks, root)
  # ... and the report of that workdir under the new config has no numbers
  # and no budget (the old runs are not the new config's).
  _, md = _study(new, root, execute=False)
  assert "54.00" not in md and "58.00" not in md
  assert "total_steps=8" not in md and "total_steps=4" not in md
  assert "no finished run yet" in md

  # A new workdir runs the new budget; its report shows what those runs
  # recorded.
  _, md = _study(new, str(tmp_path / "w8"))
  assert "| 58.00 | 58.00 |" in md and "`total_steps=8`" in md
  assert "54.00" not in md and "total_steps=4" not in md


def test_the_key_covers_config_and_code_version_not_paths(tmp_path,
                                                          monkeypatch):
  c = _config(tmp_path, 4)
  a = study_plan.plan(c, "/study_a")
  assert [t.key for t in a] == [t.key for t in study_plan.plan(c, "/study_b")]
  c.families.siamese.overrides.total_steps = 5
  b = study_plan.plan(c, "/study_a")
  changed = {x.id for x, y in zip(a, b, strict=True) if x.key != y.key}
  assert changed == {t.id for t in a if t.family == "siamese"}
  monkeypatch.setattr(study_plan, "STUDY_CODE_VERSION",
                      study_plan.STUDY_CODE_VERSION + 1)
  assert all(x.key != y.key for x, y in zip(
      b, study_plan.plan(c, "/study_a"), strict=True))


def test_a_started_task_under_another_key_is_refused(tmp_path):
  """An interrupted pre-training (marker "started") is not resumed under
  a changed schedule: the trainer would continue the old run."""
  root = str(tmp_path / "w")
  tasks = study_plan.plan(_config(tmp_path, 4), root)
  run.write_marker(root, tasks[0], status="started", key=tasks[0].key)
  run.check_markers(tasks, root)  # same key: resumed
  assert run.read_marker(root, tasks[0]) is None  # not finished
  new = study_plan.plan(_config(tmp_path, 8), root)
  with pytest.raises(StudyError, match="ran with another config"):
    run.check_markers(new, root)
