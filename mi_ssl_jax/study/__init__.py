r"""Study runner: a grid of methods × seeds at equal budgets, evaluated alike.

  python -m mi_ssl_jax.study --config=configs/study/fmnist.py
  make study                         # the same command
  python -m mi_ssl_jax.study --config=study/fmnist   # from any directory

`--config` and the recipes a study names take packaged recipe names or
paths to `.py` files (`mi_ssl_jax.configs.resolve`).

Trains every (method, seed) of `config.families` with `mi_ssl_jax.main`,
evaluates each run with the `evaluate` job (kNN and linear probe on one
feature extraction, `mi_ssl_jax/jobs/evaluate.py`), evaluates the
baselines (`raw_pixels`, and `random_init` of each family's architecture per
seed) with the same protocols, runs the optional budget sweep, and writes

* `config.results_md` (e.g. docs/results.md): mean ± std over seeds of every
  method and baseline, the budget, the paper orderings and whether they
  hold, the command, the machine and the wall time;
* figures in `config.figures_dir`: accuracy per method, accuracy vs training
  budget, and the information-flow curves (matrix mutual information and
  joint entropy of the two views during training);
* `<figures_dir>/<name>.json`: the numbers behind the document.

Every run is its own `python -m mi_ssl_jax.main` process with its own workdir
under `--workdir` (default `config.workdir`), so the study is resumable:
rerunning the command skips finished tasks (a marker in `<workdir>/tasks/`)
and resumes an interrupted pre-training from its newest checkpoint. A
progress line with an ETA over the whole grid follows every task. Bigger
budgets (a GPU/TPU box) are config overrides in a new `--workdir`, e.g.
`--config.families.siamese.overrides.total_epochs=100`.

The cache cannot lie: every task has a key (`plan.task_key`: SHA-1 of its
resolved config, the keys of the tasks it reads, the package version and
`plan.STUDY_CODE_VERSION`), its marker records it, and only a marker with
the task's current key counts as finished. A workdir where a task started
or finished under another key is refused with one `error:` line naming the
change (rerunning there would resume an old schedule); `--report_only`
there shows no numbers of the old runs. The report's budget lines are read
from each finished run's `config.json` (written by the trainer) and its
probe recipe from the evaluation's result JSON, not from the current config.

A study in parts (`config.parts`, `mi_ssl_jax.study.parts`; the
pre-registered experiment `configs/study/prereg.py`, `make study-prereg`)
runs several study configs one after another in one workdir; a later part
may take its method from an earlier part's result (a selection on a
validation split), and the runner re-plans after each pass, so one
invocation runs both. A document can hold several studies and hand-written
text: a study writes only between its lines `<!-- study:<name> -->` and
`<!-- /study:<name> -->` where the document has them (`report.
write_markdown`; `config.results_region` makes them required).

Flags: `--report_only` rewrites the document from finished tasks without
running anything; `--dry_run` prints the task list.

The package, one module per role: `plan` (the tasks and their command
lines), `run` (subprocesses, markers, progress), `results` (gathering the
finished tasks' numbers), `stats` (statistics), `tables` and `report` (the
document), `parts` (a study in parts), `cli` (flags and exit protocol;
`__main__`). Its modules define
no flags (only `cli` does), so tests import them in-process.
"""

from mi_ssl_jax.study.common import StudyError
from mi_ssl_jax.study.plan import Task
from mi_ssl_jax.study.run import execute, read_marker, run_task

__all__ = ["StudyError", "Task", "execute", "read_marker", "run_task"]
