"""The pre-registered experiment (configs/study/prereg.py) expands to the
registered tasks, without training: the candidates on the validation split
only, the control and the ordering test on the test split only, with the
registered methods, seeds and budgets. The selection feeds the control by
itself (the runner reads the selection's results), and the report fills
only its region of the results document. A fake runner writes what the
trainer and the evaluate job would (config.json, result JSONs)."""

import os

import pytest

from mi_ssl_jax.study import parts, report, run
from mi_ssl_jax.study import plan as study_plan
from mi_ssl_jax.study.common import StudyError
from tests.test_study_cache import write_fake_evals

VALIDATION = ("train[:50000]", "train[50000:]")  # (pretrain/bank, queries)


def _config():
  return study_plan.load_recipe("configs/study/prereg.py")


def _resolved(task):
  return study_plan.resolved_config(task.argv)


def _runs(part, kind="pretrain"):
  """{(label, seed): resolved config} of a part's tasks of one kind."""
  return {(t.label, t.seed): _resolved(t) for t in part.tasks
          if t.kind == kind}


def test_the_plan_is_the_registered_one(tmp_path):
  from mi_ssl_jax.configs.study import fmnist, prereg
  selection, control, ordering = parts.plan_parts(_config(), str(tmp_path))
  assert [p.name for p in (selection, control, ordering)] == [
      "selection", "control", "ordering"]

  # Selection: 3 candidates × seed 0, ViT backbone, 2 epochs of
  # train[:50000]; every evaluation (raw pixels too) on the validation split.
  runs = _runs(selection)
  assert sorted(runs) == sorted((m, 0) for m in prereg.CANDIDATES)
  assert set(prereg.CANDIDATES) == {"simclr", "frossl", "vicreg"}
  for c in runs.values():
    assert (c.model.backbone, c.total_epochs, c.warmup_epochs) == (
        "vit", 2.0, pytest.approx(0.2))
    assert c.train_split == VALIDATION[0]
  evals = _runs(selection, "evaluate")
  assert sorted(evals) == sorted([("raw_pixels", None)] + list(runs))
  for c in evals.values():
    assert (c.train_split, c.eval_split) == VALIDATION

  # Control: nothing but its raw pixels until the selection has finished.
  assert [t.label for t in control.tasks] == ["raw_pixels"]
  assert parts.pending([selection, control, ordering]) == [
      "control/control: waits for part 'selection' to evaluate every "
      "candidate (0 of 3 done)"]

  # Ordering: MAE, U-MAE, M-MAE × seeds 0-2 at 3× the study's budget, the
  # CLS readout, on the test split (the dataset's own splits).
  runs = _runs(ordering)
  assert sorted(runs) == sorted((m, s) for m in ("mae", "umae", "mmae")
                                for s in (0, 1, 2))
  for c in runs.values():
    assert (c.total_epochs, c.warmup_epochs, c.train_split) == (
        3 * fmnist.MAE_EPOCHS, 1.5, "")
  evals = _runs(ordering, "evaluate")
  assert sorted(evals) == sorted((f"{m}#cls", s) for m, s in runs)
  for c in evals.values():
    assert (c.train_split, c.eval_split) == ("", "")
    assert c.pretrained_overrides.feature_pool == "cls"
    assert (c.overrides.epochs, c.overrides.batch_norm) == (30, True)
  assert [o["order"] for o in ordering.config.orderings] == [
      ("mmae#cls", "umae#cls", "mae#cls")]

# Fake accuracies (kNN, linear) per (part, label, seed); FroSSL and VICReg
# tie on validation kNN, so the first listed (FroSSL) is selected.
SCORES = {
    ("selection", "raw_pixels", None): (84.9, 85.3),
    ("selection", "simclr", 0): (80.0, 99.0),
    ("selection", "frossl", 0): (83.0, 70.0),
    ("selection", "vicreg", 0): (83.0, 71.0),
    ("control", "raw_pixels", None): (85.7, 85.0),
    ("control", "random_init/control", 0): (73.0, 70.0),
    ("control", "random_init/control", 1): (74.0, 71.0),
    ("control", "frossl", 0): (87.0, 86.5),
    ("control", "frossl", 1): (86.5, 86.2),  # kNN only +0.8: C1 not met
    **{("ordering", f"{m}#cls", s): (base + d, 79.0 + d)
       for m, base in (("mae", 80.5), ("umae", 79.8), ("mmae", 79.8))
       for s, d in ((0, 0.1), (1, -0.2), (2, 0.15))},
}


def _fake_runner(task, root):
  os.makedirs(os.path.join(task.workdir, "eval"), exist_ok=True)
  if task.kind == "pretrain":
    with open(os.path.join(task.workdir, "config.json"), "w") as f:
      f.write(_resolved(task).to_json_best_effort())
    return 0, 1.0, "log"
  knn, linear = SCORES[(task.id.partition("-")[0], task.label, task.seed)]
  write_fake_evals(task.workdir, {"top1_k20": knn}, {"top1": linear},
                   checkpoint_step=1,
                   recipe={"epochs": 30, "batch_size": 256})
  return 0, 1.0, "log"


def test_the_selection_feeds_the_control_and_the_report_fills_its_region(
    tmp_path):
  config, root = _config(), str(tmp_path / "w")
  config.results_md = str(tmp_path / "results.md")
  config.figures_dir = str(tmp_path / "figures")
  tasks = parts.plan_study(config, root)
  # Parts run in order: nothing of the ordering part before the control's
  # method is selected.
  assert {t.id.split("-")[0] for t in tasks} == {"selection", "control"}
  started, ran = [], []

  def runner(task, root):
    ran.append(task.id.split("-")[0])
    return _fake_runner(task, root)

  tasks, failed = parts.execute_study(
      config, root, tasks, echo=started.append, runner=runner)
  assert failed == []
  assert ran.index("ordering") > max(
      i for i, part in enumerate(ran) if part == "control")

  # One call ran the selection, then the control with the selected method:
  # 2 seeds × 10 epochs of the 60k training images, evaluated on the test
  # split beside the raw pixels and its random init per seed.
  planned = parts.plan_parts(config, root)
  control = planned[1]
  assert control.selection["control"]["method"] == "frossl"
  runs = _runs(control)
  assert sorted(runs) == [("frossl", 0), ("frossl", 1)]
  for c in runs.values():
    assert (c.model.backbone, c.total_epochs, c.warmup_epochs,
            c.train_split) == ("vit", 10.0, 1.0, "")
  evals = _runs(control, "evaluate")
  assert sorted(evals, key=str) == sorted(
      [("frossl", 0), ("frossl", 1), ("random_init/control", 0),
       ("random_init/control", 1), ("raw_pixels", None)], key=str)
  for c in evals.values():
    assert (c.train_split, c.eval_split) == ("", "")
  assert all(run.read_marker(root, t) for t in tasks)
  assert len(tasks) == 7 + 7 + 18

  # The report goes between its markers; the text around them stays.
  with open(config.results_md, "w") as f:
    f.write("# Doc\n\nRegistered text.\n\n<!-- study:study_prereg -->\n"
            "Results: not yet run.\n<!-- /study:study_prereg -->\n\nAfter.\n")
  summaries = parts.collect_parts(planned, root)
  report.write_parts_report(config, planned, summaries, "make study-prereg")
  with open(config.results_md) as f:
    md = f.read()
  assert md.startswith("# Doc\n\nRegistered text.\n\n<!-- study:study_pre")
  assert md.endswith("<!-- /study:study_prereg -->\n\nAfter.\n")
  assert "not yet run" not in md
  assert "FroSSL 83.00, VICReg 83.00) → **FroSSL**" in md
  for line in ("C1: kNN ≥ raw pixels + 1.0: FroSSL — seed 0 +1.30, "
               "seed 1 +0.80 → **not met**",
               "C2: linear probe ≥ raw pixels + 1.0: FroSSL — seed 0 +1.50, "
               "seed 1 +1.20 → **met**",
               "C3: kNN ≥ random init + 10: FroSSL — seed 0 +14.00, "
               "seed 1 +12.50 → **met**",
               "All criteria: **not met**",
               "U-MAE (cls readout) − MAE (cls readout): -0.70, 95 % CI "
               "[-0.70, -0.70] (paired t over 3 seeds) → reversed"):
    assert line in md, line

  # Without its markers the document is refused, not overwritten.
  with open(config.results_md, "w") as f:
    f.write("# Doc\n")
  with pytest.raises(StudyError, match="study:study_prereg"):
    report.write_parts_report(config, planned, summaries, "cmd")
  with open(config.results_md) as f:
    assert f.read() == "# Doc\n"


def test_results_md_keeps_the_registration_outside_both_studies():
  # `make study` rewrites only its region, `make study-prereg` only its own,
  # so the registration between them is never generated over.
  config = _config()
  assert (config.results_md, config.results_region) == (
      "docs/results.md", True)
  with open(os.path.join(os.path.dirname(__file__), "..", "docs",
                         "results.md")) as f:
    text = f.read()
  marks = (*report.region_markers("study_fmnist"),
           "## Pre-registered experiment", *report.region_markers(
               config.name))
  positions = [text.find(m) for m in marks]
  assert -1 not in positions and positions == sorted(positions), positions
