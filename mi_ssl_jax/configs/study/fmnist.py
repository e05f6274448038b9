r"""The Fashion-MNIST study: every method × 3 seeds at an equal budget.

  python -m mi_ssl_jax.study --config=configs/study/fmnist.py   # make study
  python -m mi_ssl_jax.study --config=configs/study/fmnist.py:tune
  python -m mi_ssl_jax.study --config=configs/study/fmnist.py:tiny \
      --workdir=/tmp/study_tiny                                 # CI, minutes

Two families, each with one shared recipe and one budget:
* the MAE family (MAE, U-MAE, M-MAE): `configs/fmnist_mae.py`, the same tiny
  ViT; they differ only in the regulariser;
* the Siamese family (Matrix-SSL, MEC, EMI, BYOL, SimSiam, Barlow Twins,
  VICReg, SimCLR, spectral contrastive): `configs/fmnist_siamese.py`, the same
  ResNet-18 (CIFAR stem; width 8 in this study) and augmentations; each
  keeps its own loss, heads and optimiser settings of the CIFAR recipes;
* LeJEPA: `configs/fmnist_siamese.py:method=lejepa`, the Siamese recipe's
  views with the MAE family's tiny ViT (its default backbone there), at
  the Siamese budget.
Every run is evaluated with the kNN protocol (k = 20, τ = 0.07, the 60k
training images as the bank, the 10k test images as queries) and the
`simclr_linear` probe (10 epochs, batch 256) on frozen features, next to the
raw-pixel and random-init baselines under the same protocols.

Config args:
* `tune`: the validation study that chose the recipes' free settings: runs
  pre-train on train[:50000] and are scored on train[50000:] (kNN bank
  train[:50000]); the test split is never read. Writes
  docs/results_tuning.md.
* `tiny`: 2 methods × 1 seed × a few steps (the CI test of the runner).

Bigger budgets (GPU/TPU) are overrides, e.g.
`--config.families.siamese.overrides.total_epochs=100`.
"""

import ml_collections

from mi_ssl_jax.config_lib import parse_arg

# The grid, one row per method: (family, method, display name). A method's
# runs use its family's recipe, budget and readouts (FAMILIES).
METHODS = (
    ("mae", "mae", "MAE"),
    ("mae", "umae", "U-MAE"),
    ("mae", "mmae", "M-MAE"),
    ("siamese", "matrix_ssl", "Matrix-SSL"),
    ("siamese", "mec", "MEC"),
    ("siamese", "emi", "EMI"),
    ("siamese", "byol", "BYOL"),
    ("siamese", "simsiam", "SimSiam"),
    ("siamese", "barlow_twins", "Barlow Twins"),
    ("siamese", "vicreg", "VICReg"),
    ("siamese", "simclr", "SimCLR"),
    ("siamese", "spectral", "Spectral contrastive"),
    ("siamese", "frossl", "FroSSL"),
    ("siamese", "ivne", "I-VNE"),
    ("siamese", "mmcr", "MMCR"),
    ("vit_siamese", "lejepa", "LeJEPA"),
)
DISPLAY = {method: name for _, method, name in METHODS}
MAE_METHODS = tuple(m for f, m, _ in METHODS if f == "mae")
SIAMESE_METHODS = tuple(m for f, m, _ in METHODS if f == "siamese")
VIT_SIAMESE_METHODS = tuple(m for f, m, _ in METHODS if f == "vit_siamese")

# Budgets of the main grid (epochs of the 60k training images, batch 256).
MAE_EPOCHS = 5.0
SIAMESE_EPOCHS = 0.5
SIAMESE_WIDTH = 8  # ResNet-18 width (64-d features): sized for 2 CPU cores
# Diagnostics at every log step (the recipes' 50), as the study's view-MI
# curves and layer-entropy figure need, not the trainer's default cadence.
STUDY_DIAGNOSTICS = 50
# Tuning budgets (epochs of the 50k-image training part).
TUNE_MAE_EPOCHS = 5.0
TUNE_SIAMESE_EPOCHS = 1.0

# Two readouts of every MAE-family run: the papers' CLS token, and all patch
# tokens (the quick start's; see configs/quickstart.py).
READOUTS = dict(cls=dict(pretrained_overrides=dict(feature_pool="cls")),
                tokens=dict(pretrained_overrides=dict(feature_pool="tokens")))

# Method families: (title, recipe, budget and study-wide overrides, readouts).
FAMILIES = dict(
    mae=dict(title="MAE family (ViT)", recipe="configs/fmnist_mae.py",
             methods=MAE_METHODS,
             overrides=dict(total_epochs=MAE_EPOCHS, tensorboard=False,
                            evals={}, diagnostics_steps=STUDY_DIAGNOSTICS),
             eval_variants=READOUTS),
    siamese=dict(title="Siamese family (ResNet-18)",
                 recipe="configs/fmnist_siamese.py", methods=SIAMESE_METHODS,
                 # Warm-up 10% of the run (the recipe's 1 epoch would
                 # outlast it).
                 overrides=dict(total_epochs=SIAMESE_EPOCHS,
                                warmup_epochs=SIAMESE_EPOCHS / 10,
                                model=dict(width=SIAMESE_WIDTH),
                                tensorboard=False, evals={},
                                diagnostics_steps=STUDY_DIAGNOSTICS)),
    vit_siamese=dict(title="LeJEPA (ViT)", recipe="configs/fmnist_siamese.py",
                     methods=VIT_SIAMESE_METHODS,
                     overrides=dict(total_epochs=SIAMESE_EPOCHS,
                                    warmup_epochs=SIAMESE_EPOCHS / 10,
                                    tensorboard=False, evals={},
                                    diagnostics_steps=STUDY_DIAGNOSTICS)),
)

# The papers' orderings the report tests: (claim, order, paper).
ORDERINGS = (
    ("M-MAE > U-MAE > MAE (CLS readout, the papers' protocol)",
     ("mmae#cls", "umae#cls", "mae#cls"),
     "Tan et al. 2024, ImageNet-1K ViT-B/16, 200 epochs, linear probe "
     "62.4 > 58.5 > 55.4"),
    ("M-MAE > U-MAE > MAE (tokens readout)",
     ("mmae#tokens", "umae#tokens", "mae#tokens"), "as above"),
    ("Matrix-SSL ≥ MEC", ("matrix_ssl", "mec"),
     "Zhang et al. 2024, ImageNet-1K ResNet-50, 100 epochs, linear probe "
     "71.1 vs 70.6"),
)

# Linear-probe epochs of the study (batch 256).
PROBE_EPOCHS = 30

# The evaluate job (kNN + linear probe on one feature extraction).
EVALUATE = dict(
    config="configs/evaluate.py:protocol=simclr_linear",
    protocol_name="simclr_linear",
    # Every probe row (raw pixels and random init too) on standardised
    # features: a parameter-free BatchNorm before the linear layer, as the
    # MAE linear protocol (facebookresearch/mae main_linprobe.py:
    # BatchNorm1d(affine=False, eps=1e-6) before the head). 30 epochs:
    # `make probe-epochs` measures the probe at 10, 30 and 90 (raw pixels:
    # 84.19, 83.76, 83.62; docs/results.md, "Does the linear probe converge?").
    overrides=dict(ks=(20,), batch_size=1000,
                   overrides=dict(epochs=PROBE_EPOCHS, batch_size=256,
                                  batch_norm=True)))

PROTOCOL_NOTES = (
    "kNN: cosine similarity of L2-normalised features, k = 20, votes "
    "exp(s/0.07) (`knn` v1); bank = all 60k training images, queries = the "
    "10k test images.",
    "Linear probe: `simclr_linear` v1 (zero-init linear head, SGD + "
    f"Nesterov, cosine) with overrides {PROBE_EPOCHS} epochs, batch 256 and "
    "a parameter-free BatchNorm on the features (standardised with the "
    "training features' statistics, as MAE's linear probe), on frozen "
    "features of centre crops (no augmentation); for every row, baselines "
    "included.",
    "Raw pixels: the normalised 28×28 input (784-d) as features. Random "
    "init: each family's architecture at initialisation with the run's "
    "seed; a BatchNorm network's BN statistics are first recomputed on 10 "
    "batches of 1000 training images (precise BN), its scales and biases "
    "stay as initialised (the last BN scale of a residual block is 0 in "
    "the recipes that zero-init it, so that branch stays 0).",
    "Warm-ups longer than a run (the Siamese recipe's 1 epoch, MEC's "
    "1-epoch λ warm-up, in a 0.5-epoch run) become a tenth of the run "
    "(`config_lib.warmup_steps`).",
)

TEXT = dict(
    title="Fashion-MNIST study: every method, 3 seeds, equal budgets",
    description=(
        "Each method family trains with one shared recipe and one budget; "
        "each run is evaluated by a weighted kNN and a linear probe on "
        "frozen features, beside the raw pixels and the untrained "
        "architecture evaluated with the same protocols."),
    correlation_note=(
        "Every point is one evaluated checkpoint (each method's final "
        "checkpoint for every seed, plus the half-way checkpoint of seed "
        "0). The diagnostics are computed on the test-set features the kNN "
        "protocol uses: RankMe, effective rank and von Neumann entropy of "
        "the embedding spectrum, α-ReQ (power-law decay of the centred "
        "covariance spectrum), and LiDAR (1000 test images × 4 crops as "
        "surrogate classes). Rank correlations are shown per family and "
        "pooled."),
    info_flow_note=(
        "Matrix mutual information I₂(K₁; K₂) = H₂(K₁) + H₂(K₂) − "
        "H₂(K₁ ⊙ K₂) and joint entropy H₂(K₁ ⊙ K₂) of the two views' "
        "embedding Gram matrices (α = 2, `mi_ssl_jax.losses."
        "view_diagnostics`), logged by the trainer every 50 steps on the "
        "training batch; mean over seeds, band = min–max."),
)

# Sections of docs/results.md written by hand (kept when the study rewrites
# the document).
GPU_STUDY = (
    "Not yet run on a GPU: no numbers here until it is. The command (on a "
    "lent machine: `bash bench/gpu_study.sh`, carrying `.whl/` from `make "
    "accelerator-wheels` and the Fashion-MNIST IDX files):\n\n"
    "```bash\n"
    "python -m mi_ssl_jax.study.gpu --out=bench_results/gpu_study "
    "--deadline_min=6.5   # make gpu-study\n"
    "```\n\n"
    "It trains MAE, U-MAE, M-MAE (`configs/fmnist_mae.py`), Matrix-SSL, "
    "MEC (`configs/fmnist_siamese.py`, ResNet-18 of width 16) and the "
    "pre-registered positive control, VICReg on the small ViT "
    "(`configs/fmnist_siamese.py:vit`), on the 60k training images for up "
    "to 100 epochs each: as many as a ~30-second "
    "calibration (each method's step timed after its compile) says fit the "
    "deadline (default 6.5 minutes; below 1 epoch it drops seeds, then "
    "methods, and says so). The augmentation runs on the device and the "
    "step is the trainer's; no TensorFlow is needed "
    "(`mi_ssl_jax/study/gpu`). Every run and baseline is evaluated with "
    "this study's protocols on the device. It will report, per method and "
    "readout (MAE family: CLS and tokens), kNN top-1 (k = 20) and linear "
    "top-1 (`simclr_linear` on standardised features, 30 epochs) beside "
    "raw pixels and each family's random init (BN statistics recomputed), "
    "the epochs actually trained, training time per run, device and "
    "software, and the orderings M-MAE > U-MAE > MAE and Matrix-SSL ≥ MEC "
    "per pair with 95 % intervals (with 2 or more seeds). Its table is "
    "`bench_results/gpu_study/gpu_study.md`, written from "
    "`runs/*.json` (one per run, as it finishes; a rerun skips finished "
    "runs); it replaces this paragraph once the study has run.")
SECTIONS = {"GPU study (not yet run on a GPU)": GPU_STUDY}

# The main study: name, paths, seeds and what is evaluated.
MAIN = dict(
    name="study_fmnist", workdir="workdirs/study_fmnist",
    results_md="docs/results.md", figures_dir="docs/figures",
    dataset="fashion_mnist", seeds=(0, 1, 2), knn_k=20,
    baselines=("raw_pixels", "random_init"),
    splits=dict(pretrain="", train="", eval=""),
    budget_sweep=dict(
        family="mae", fractions=(0.25, 0.5), seeds=(0,), readout="cls",
        note=("Seed 0 of each MAE-family method, retrained from scratch at "
              "a quarter and a half of the main budget (each with its own "
              "cosine schedule); the main-budget point is the main grid's "
              "seed-0 run. CLS readout.")),
    # Intermediate checkpoints evaluated too (for the diagnostics-vs-
    # accuracy correlations): `count` evenly spaced ones, for these seeds.
    checkpoint_evals=dict(count=1, seeds=(0,)),
    info_flow=("barlow_twins", "spectral", "matrix_ssl"),
)

# The validation study (`tune`): one per family; the setting with the best
# mean validation kNN over the family's methods becomes the family recipe.
TUNE_VARIANTS = dict(
    mae=dict(
        p4=dict(model=dict(patch_size=4)), p7=dict(model=dict(patch_size=7)),
        p7_lr3e3=dict(model=dict(patch_size=7), base_lr=3e-3),
        p7_pixels=dict(model=dict(patch_size=7), norm_pix_loss=False),
        p7_mask05=dict(model=dict(patch_size=7), mask_ratio=0.5),
        p7_lambda01=dict(model=dict(patch_size=7), reg_lambda=0.1)),
    siamese=dict(
        crop02=dict(augment=dict(crop_scale=(0.2, 1.0))),
        crop05=dict(augment=dict(crop_scale=(0.5, 1.0)))),
)
TUNE_READOUTS = dict(
    cls=dict(pretrained_overrides=dict(feature_pool="cls")),
    gap=dict(pretrained_overrides=dict(feature_pool="gap")),
    tokens=dict(pretrained_overrides=dict(feature_pool="tokens")))
TUNE = dict(
    name="study_fmnist_tuning",
    title="Fashion-MNIST study: recipe tuning on a validation split",
    workdir="workdirs/study_fmnist_tuning",
    results_md="docs/results_tuning.md", seeds=(0,),
    splits=dict(pretrain="train[:50000]", train="train[:50000]",
                eval="train[50000:]"),
    budget_sweep={}, checkpoint_evals={}, info_flow=(), orderings=(),
    correlation_note=("Every point is one tuning run (validation split), "
                      "diagnostics on its validation features."),
    protocol_notes=(
        "kNN: cosine similarity of L2-normalised features, k = 20, votes "
        "exp(s/0.07) (`knn` v1); bank = train[:50000], queries = "
        "train[50000:] (the test images are not read).",
        *PROTOCOL_NOTES[1:]),
    sections={
        "What was tuned, and what was chosen": (
            "Only the validation split was read: pre-training on the first "
            "50,000 training images, kNN bank = the same images, queries = "
            "the last 10,000 training images; one seed; the test split was "
            "never read. Budgets: MAE family 5 epochs of the 50k images, "
            "Siamese family 1 epoch (the main study uses 5 and 0.5 epochs of "
            "the 60k). Rule: per family, the variant with the best mean "
            "validation kNN over the family's methods becomes the family "
            "recipe for every method (one setting per family).\n\n"
            "* MAE family: patch 7 (`p7`) is as good as patch 4 (CLS "
            "readout 79.80 vs 79.57 mean kNN, tokens 84.63 vs 84.12) at 2.3x "
            "the speed, and became the recipe (`configs/fmnist_mae.py`) with "
            "the papers' lr 1e-3, normalised-pixel loss, mask 0.75 and "
            "λ = 0.01. The rule would have picked λ = 0.1 on the CLS readout "
            "(80.04 vs 79.80) and mask 0.5 on the tokens readout (84.89 vs "
            "84.63); we did not adopt them: the margins (0.24, 0.26) are "
            "below the run-to-run noise and the two readouts disagree. Noise "
            "estimate: MAE has no regulariser, so MAE `p7_lambda01` repeats "
            "MAE `p7` except for the order of the training data (the input "
            "pipeline's shuffle changed between the two runs): 80.44 vs "
            "80.44 kNN and 80.22 vs 79.05 linear on the CLS readout, 84.08 "
            "vs 84.50 kNN and 88.00 vs 87.95 linear on the tokens readout. "
            "lr 3e-3 and the raw-pixel target did not help either. Readouts: "
            "the CLS token (the papers' protocol) stays ~5 points below the "
            "raw pixels; the tokens readout is the best on kNN and linear, "
            "but its random-init baseline is close behind, so the main study "
            "reports both readouts.\n"
            "* Siamese family: crop scale 0.5-1 (`crop05`) beats 0.2-1 by "
            "2.4 points of mean validation kNN on the 28-pixel images; it "
            "became the recipe (`configs/fmnist_siamese.py`). Caveat: these "
            "1-epoch runs used the recipe's 1-epoch warm-up, so the learning "
            "rate rose for the whole run and never decayed; the main study "
            "warms up over the first 10% and then decays."),
    },
)

# The CI test of the runner: 2 methods × 1 seed × a few steps.
TINY = dict(
    name="study_tiny", title="Study runner smoke test",
    workdir="/tmp/study_tiny", results_md="/tmp/study_tiny/results.md",
    figures_dir="/tmp/study_tiny/figures", seeds=(0,), knn_k=5,
    families=dict(
        mae=dict(title="MAE family (ViT)", recipe="configs/fmnist_mae.py:tiny",
                 methods=("mmae",),
                 overrides=dict(total_steps=4, tensorboard=False)),
        siamese=dict(title="Siamese family (ResNet-18)",
                     recipe="configs/fmnist_siamese.py:tiny",
                     methods=("barlow_twins",),
                     overrides=dict(total_steps=4, tensorboard=False))),
    evaluate_overrides=dict(
        ks=(5,), batch_size=200, max_train_examples=1000,
        max_eval_examples=400,
        overrides=dict(epochs=1, batch_size=64, batch_norm=True)),
    checkpoint_evals=dict(count=1, seeds=(0,)),
    budget_sweep=dict(family="mae", fractions=(0.5,), seeds=(0,),
                      note="tiny", readout=""),
    info_flow=("barlow_twins",),
    orderings=(("M-MAE > Barlow Twins (smoke test)", ("mmae", "barlow_twins"),
                "none"),),
)


def ordering_dicts(rows):
  """ORDERINGS-style (claim, order, paper) rows as the runner's dicts."""
  return tuple(dict(claim=claim, order=order, paper=paper)
               for claim, order, paper in rows)


def _replace(c, fields):
  """Sets each field of `c` to the given value (no nested merge)."""
  for key, value in fields.items():
    c[key] = (ml_collections.ConfigDict(value) if isinstance(value, dict)
              else value)


def get_config(arg=None):
  """The main study; `tune` and `tiny` replace the fields of their tables."""
  arg = parse_arg(arg, tune=False, tiny=False)
  c = ml_collections.ConfigDict(dict(
      **MAIN, **TEXT, display_names=DISPLAY, families=FAMILIES,
      evaluate=EVALUATE, orderings=ordering_dicts(ORDERINGS),
      protocol_notes=PROTOCOL_NOTES, sections=SECTIONS))
  if arg.tune:
    for family, variants in TUNE_VARIANTS.items():
      c.families[family].variants = variants
    c.families.mae.eval_variants = TUNE_READOUTS
    c.families.mae.overrides.total_epochs = TUNE_MAE_EPOCHS
    c.families.siamese.overrides.total_epochs = TUNE_SIAMESE_EPOCHS
    c.families.vit_siamese.overrides.total_epochs = TUNE_SIAMESE_EPOCHS
    _replace(c, TUNE)
  if arg.tiny:
    tiny = dict(TINY)
    c.evaluate.overrides = tiny.pop("evaluate_overrides")
    tiny["orderings"] = ordering_dicts(tiny["orderings"])
    _replace(c, tiny)
  return c
