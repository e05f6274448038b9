r"""The pre-registered experiment on Fashion-MNIST (docs/results.md,
"Pre-registered experiment"): does a Siamese method beat the raw pixels
(positive control), and how do MAE, U-MAE and M-MAE order at 3× the
study's budget? About 2 to 2¼ hours on 2 idle CPU cores (the arithmetic
is in docs/results.md).

  python -m mi_ssl_jax.study --config=configs/study/prereg.py
  make study-prereg                                     # the same command
  python -m mi_ssl_jax.study --config=configs/study/prereg.py --dry_run

Three parts, run in this order in one workdir (`mi_ssl_jax.study.parts`;
resumable: rerun the command, finished tasks are kept):

1. `selection` (validation split only: pre-training on train[:50000], kNN
   bank train[:50000], queries train[50000:]; the test images are not
   read): SimCLR, FroSSL and VICReg with the ViT Siamese backbone
   (`configs/fmnist_siamese.py:vit`), 2 epochs, seed 0, beside the raw
   pixels of the same split. Rule: the best validation kNN (k = 20) wins;
   ties go to the first listed.
2. `control` (test split): the selected method, 10 epochs, seeds 0 and 1,
   beside the raw pixels and its random-init ViT (per seed); the criteria
   `CRITERIA`. The runner plans this part once the selection has finished
   (it reads the selection's results), in the same invocation.
3. `ordering` (test split): MAE, U-MAE, M-MAE (`configs/fmnist_mae.py`)
   at 3× the study's budget (15 epochs), seeds 0, 1, 2, CLS readout; every
   pair's mean difference with a paired-t 95 % interval
   (`mi_ssl_jax.study.stats`).

Every run warms up over its first tenth (the study's rule). Budget
arithmetic and the hypotheses: docs/results.md.
"""

import ml_collections

from mi_ssl_jax.configs.study import fmnist

# The positive control's candidates, in tie-break order: the Siamese
# methods with the best kNN + linear means of the main study (docs/results.md,
# width-8 ResNet, 0.5 epoch; its test split chose the candidates, the
# validation split chooses among them). MMCR (third by that mean) is left
# out: the slowest of the four (an SVD of the batch's embeddings; 3m54s per
# study run against SimCLR's 2m37s), the control's budget would not hold
# if it won.
CANDIDATES = ("simclr", "frossl", "vicreg")
SIAMESE_VIT = "configs/fmnist_siamese.py:vit"
SELECTION_EPOCHS = 2.0  # of train[:50000]
CONTROL_EPOCHS = 10.0
CONTROL_SEEDS = (0, 1)
ORDERING_EPOCHS = 3 * fmnist.MAE_EPOCHS
ORDERING_SEEDS = (0, 1, 2)
WARMUP_FRACTION = 0.1  # warm-up = a tenth of each run

# The positive control holds when all four are met on every seed (a
# seed-free baseline's single value, or the same seed's random init).
CRITERIA = (
    dict(name="C1: kNN ≥ raw pixels + 1.0", metric="knn",
         baseline="raw_pixels", margin=1.0),
    dict(name="C2: linear probe ≥ raw pixels + 1.0", metric="linear",
         baseline="raw_pixels", margin=1.0),
    dict(name="C3: kNN ≥ random init + 10", metric="knn",
         baseline="random_init/control", margin=10.0),
    dict(name="C4: linear probe ≥ random init + 10", metric="linear",
         baseline="random_init/control", margin=10.0),
)

TEST_SPLITS = dict(pretrain="", train="", eval="")  # train 60k / test 10k
KNN_TEST, PROBE, BASELINES = fmnist.PROTOCOL_NOTES[:3]
KNN_VALIDATION = fmnist.TUNE["protocol_notes"][0]
WARMUP_NOTE = ("Warm-up: the first tenth of every run (`warmup_epochs` = "
               "0.1 × `total_epochs`), then cosine decay.")


def _family(title, recipe, methods, epochs, **extra):
  return dict(title=title, recipe=recipe, methods=methods,
              overrides=dict(total_epochs=epochs,
                             warmup_epochs=epochs * WARMUP_FRACTION,
                             tensorboard=False, evals={}),
              **extra)


def _part(name, title, description, seeds, splits, baselines, families,
          notes, **extra):
  """A part: a study config of its own (fields as configs/study/fmnist.py)."""
  return dict(dict(
      name=f"study_prereg_{name}", title=title, description=description,
      dataset="fashion_mnist", seeds=seeds, knn_k=20, splits=splits,
      baselines=baselines, families=families, evaluate=fmnist.EVALUATE,
      display_names=fmnist.DISPLAY, protocol_notes=(*notes, WARMUP_NOTE),
      budget_sweep={}, checkpoint_evals={}, info_flow=(), orderings=(),
      criteria=(), sections={}), **extra)


SELECTION = _part(
    "selection", "Part 1: selection (validation split)",
    "Which candidate becomes the positive control: the best mean "
    "validation kNN over the part's seeds (ties: the first listed). Only "
    "train[:50000] (pre-training, kNN bank, probe training) and "
    "train[50000:] (queries) are read.",
    (0,), fmnist.TUNE["splits"], ("raw_pixels",),
    dict(candidates=_family("Siamese ViT candidates", SIAMESE_VIT,
                            CANDIDATES, SELECTION_EPOCHS)),
    (KNN_VALIDATION, PROBE, BASELINES))

CONTROL = _part(
    "control", "Part 2: positive control (test split)",
    "The selected method trained longer, beside the raw pixels and its "
    "own architecture at initialisation (ViT: no BatchNorm, so no "
    "statistics to recompute), under the same protocols.",
    CONTROL_SEEDS, TEST_SPLITS, ("raw_pixels", "random_init"),
    dict(control=_family(
        "Siamese ViT (positive control)", SIAMESE_VIT, (), CONTROL_EPOCHS,
        select=dict(part="selection", family="candidates", metric="knn"))),
    (KNN_TEST, PROBE, BASELINES), criteria=CRITERIA)

ORDERING = _part(
    "ordering", "Part 3: MAE vs U-MAE vs M-MAE at 3× budget (test split)",
    "The papers' protocol (CLS readout) at three times the main study's "
    "MAE-family budget; paired by seed (seed i fixes the data order).",
    ORDERING_SEEDS, TEST_SPLITS, (),
    dict(mae=_family(fmnist.FAMILIES["mae"]["title"],
                     fmnist.FAMILIES["mae"]["recipe"], fmnist.MAE_METHODS,
                     ORDERING_EPOCHS,
                     eval_variants=dict(cls=fmnist.READOUTS["cls"]))),
    (KNN_TEST, PROBE), orderings=fmnist.ordering_dicts(fmnist.ORDERINGS[:1]))


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      name="study_prereg", workdir="workdirs/study_prereg",
      results_md="docs/results.md", results_region=True,
      figures_dir="docs/figures",
      parts=dict(selection=SELECTION, control=CONTROL, ordering=ORDERING),
      part_order=("selection", "control", "ordering")))
