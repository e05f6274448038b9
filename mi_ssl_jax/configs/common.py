"""Fields every recipe shares, with their defaults (trainer side).

A recipe starts from `base_config()` and sets its method, data and model:

    from mi_ssl_jax.configs import common

    def get_config(arg=None):
      arg = common.parse_arg(arg, runlocal=False)
      config = common.base_config()
      config.method = "mmae"
      ...

Recipes import their helpers from the installed package
(`mi_ssl_jax.configs.common`), so they run from any directory, by name
(`--config=quickstart`) or by path (`--config=configs/quickstart.py`, or a
recipe of your own anywhere); see `mi_ssl_jax/configs/__init__.py`.

Durations (`total_`, `warmup_`, `log_`, `ckpt_`, `keep_ckpt_`) can be given
in `_steps`, `_examples` or `_epochs` (resolved by
`mi_ssl_jax.config_lib.steps`); when several are set the most specific wins
(steps, then examples, then epochs), so `--config.total_steps=2` overrides a
recipe's `total_epochs`. Unset durations default to: log every 50 steps,
checkpoint every 1000 steps, no warm-up, diagnostics every 1000 steps
(rounded up to a multiple of the log interval).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from mi_ssl_jax.config_lib import parse_arg, steps  # noqa: F401 (re-export)

# Seconds after which another host's `<workdir>/.lock` whose heartbeat has
# not moved is stale (`checkpointing.WorkdirLock`); the default of
# `config.lock_stale_seconds` in every recipe and job config.
LOCK_STALE_SECONDS = 900.0
# The heartbeat is written at log steps, at most once per this many seconds
# (and per lock_stale_seconds / 10).
LOCK_HEARTBEAT_SECONDS = 60.0
# `param_sharding="fsdp"` splits parameters (and their optimizer state) of
# at least this many elements; smaller ones stay replicated (big_vision's
# fsdp tactic). The default of `config.fsdp_min_size`.
FSDP_MIN_SIZE = 2**18


def method_fields(method: str) -> dict:
  """The declared hyperparameters of `method` with their defaults.

  They are the fields of `Hparams` in `mi_ssl_jax/methods/<method>.py`, the
  one place where each default is written; a recipe gets them all (so
  `--config.<field>=...` works) and sets only what it changes. Imports the
  method module (JAX), only when a recipe is built.
  """
  from mi_ssl_jax import methods  # noqa: PLC0415 (JAX: only when building)
  from mi_ssl_jax.methods import base  # noqa: PLC0415
  hparams = getattr(methods.get_method(method), "Hparams", None)
  return base.config_fields(hparams) if hparams is not None else {}


def base_config() -> ml_collections.ConfigDict:
  """The trainer's fields and defaults. Documented field by field."""
  c = ml_collections.ConfigDict()
  # What runs. `job`: "pretrain" (mi_ssl_jax.train) or an evaluation job:
  # linear_probe, knn, evaluate, finetune (mi_ssl_jax.jobs.<job>.run).
  # `method`: a module in mi_ssl_jax/methods/ (or a dotted module path).
  c.job = "pretrain"
  c.method = ""
  # Data source name: "fashion_mnist" (offline default), "tfds:<name>",
  # "imagenet100", "folder:<path>", or "synthetic" (random images, for smoke
  # tests and input-free benchmarks).
  c.dataset = "fashion_mnist"
  c.data_dir = ""  # TFDS data dir / folder with the IDX files ("": default)
  # Pre-training split ("": the dataset's training split). TFDS slice syntax
  # works for every source, e.g. "train[:50000]" to hold out a validation
  # set carved from the training data (as the study's tuning does).
  c.train_split = ""
  # Extra keyword arguments of mi_ssl_jax.data.make_train_iterator (crop
  # scale, colour jitter, augment_on="device", ...).
  c.augment = ml_collections.ConfigDict()
  c.seed = 0
  # A run directory (or its checkpoints/ or one step folder) whose params
  # initialise this run when its own workdir has no checkpoint yet.
  c.init_from = ""

  # Global batch size (all devices and hosts) and training duration.
  c.batch_size = 256
  c.total_steps = placeholder(int)
  c.total_examples = placeholder(int)
  c.total_epochs = placeholder(float)
  # Examples per epoch; filled from the dataset, needed for "synthetic".
  c.num_train_examples = placeholder(int)

  # Optimizer (mi_ssl_jax/optim.py): peak lr = base_lr * batch_size /
  # lr_scaling_batch (0: no scaling), linear warm-up, cosine to min_lr.
  c.optimizer = "adamw"  # adamw | lars | sgd
  c.base_lr = 1.5e-4
  c.lr_scaling_batch = 256
  c.weight_decay = 0.05  # never on biases / norm parameters (ndim <= 1)
  c.adam_b1 = 0.9
  c.adam_b2 = 0.95
  c.adam_eps = 1e-8
  c.momentum = 0.9  # sgd, lars
  c.nesterov = False
  c.lars_trust = 1e-3
  c.schedule = "cosine"  # cosine | constant (after warm-up)
  c.min_lr = 0.0
  c.warmup_steps = placeholder(int)
  c.warmup_examples = placeholder(int)
  c.warmup_epochs = placeholder(float)
  c.grad_clip_norm = placeholder(float)
  # Gradient accumulation over micro-batches of batch_size / grad_accum_steps.
  # Refused for batch-coupled losses unless allow_coupled_accumulation.
  c.grad_accum_steps = 1
  c.allow_coupled_accumulation = False
  # The whole batch's gradient with the activations of batch_size /
  # grad_chunks examples at a time (forward all chunks, the objective and its
  # cotangent on the whole batch, then each chunk's backward): exact for
  # batch-coupled losses on LayerNorm networks; BatchNorm statistics become
  # per chunk (mi_ssl_jax/train.py, docs/scaling.md "Exact large batches").
  c.grad_chunks = 1
  # "stop": end with a clear error at the next log step; "skip": go on. In
  # both cases a non-finite update is never applied.
  c.nonfinite = "stop"

  # Devices: mesh axes ((name, size), ...), one size may be -1 (the rest).
  # The batch is split over all axes. param_sharding: replicate | fsdp (needs
  # an "fsdp" axis, e.g. (("data", 1), ("fsdp", -1)); splits each parameter
  # of >= fsdp_min_size elements along a dimension the axis divides).
  c.mesh = (("data", -1),)
  # Auto axes only: XLA places the collectives ("explicit" is refused:
  # docs/design.md §8.5).
  c.mesh_axis_type = "auto"
  c.param_sharding = "replicate"
  c.fsdp_min_size = FSDP_MIN_SIZE
  c.transfer_guard = "disallow"  # implicit host<->device copies are errors
  # Hardware-dependent kernels (mi_ssl_jax/platforms.py), chosen from the
  # platform of the run's devices when "auto" (never from the host that
  # traces): attention = auto | xla | xla_heads_first | cudnn (auto: cudnn
  # on GPUs, xla on TPUs, xla_heads_first on CPUs); cudnn pads the tokens to
  # a multiple of attention_seq_multiple; logdet = auto | cholesky | lu
  # (the M-MAE / EMI log-dets; auto: lu on CPUs, cholesky elsewhere).
  c.attention = "auto"
  c.attention_seq_multiple = 64
  c.logdet = "auto"
  # Precision, one field for every family: the dtype the networks compute in
  # ("float32" | "bfloat16"; methods/base.py compute_dtype). Parameters,
  # optimizer state, BatchNorm statistics, losses and all matrix math stay
  # float32 whatever it is. The ImageNet / CIFAR recipes set "bfloat16"; CPU
  # recipes (runlocal, tiny, Fashion-MNIST) keep float32, which is faster
  # there. (Formerly `dtype` for the MAE family and `model.dtype` for the
  # Siamese one: those names are refused with a one-line error.)
  c.compute_dtype = "float32"

  # Evaluators run during/after training, big_vision style:
  # evals.<name> = dict(type="knn"|"fewshot"|..., log_steps=..., **kwargs)
  # (mi_ssl_jax/evaluators/); they always run once at the end.
  c.evals = ml_collections.ConfigDict()

  # Logging and checkpoints.
  c.log_steps = placeholder(int)
  c.log_epochs = placeholder(float)
  c.ckpt_steps = placeholder(int)
  c.ckpt_epochs = placeholder(float)
  c.keep_ckpts = 2  # newest checkpoints kept
  c.keep_ckpt_steps = placeholder(int)  # also keep every multiple of this
  c.keep_ckpt_epochs = placeholder(float)
  c.async_checkpointing = True
  c.tensorboard = True
  # Another host's workdir lock is taken over when its heartbeat (written
  # at each log step) is older than this; keep it above the time between
  # two log steps. A rerun of the same launcher job (same MI_SSL_RUN_ID or
  # SLURM_JOB_ID) takes the lock over at once.
  c.lock_stale_seconds = LOCK_STALE_SECONDS
  # The method's diagnostics (spectra, LiDAR, α-ReQ, token entropies, view
  # MI; `diagnostics_fn`) run every diagnostics_steps steps (a multiple of
  # the log interval; 0: off; unset: the first multiple of it >= 1000,
  # train.DEFAULT_DIAGNOSTICS_STEPS), on the first log line and at the last
  # step, on a fixed subsample of diagnostics_examples evenly spaced
  # examples of the batch. Measured cost: docs/benchmarks.md, "Diagnostics".
  c.diagnostics_steps = placeholder(int)
  c.diagnostics_examples = 256
  # Hang watchdog (mi_ssl_jax/watchdog.py): a step, log, diagnostics or
  # checkpoint running longer than max(watchdog_min_s, watchdog_factor x its
  # running median), or a first one / an evaluation longer than
  # watchdog_first_s, dumps every thread's stack to <workdir>/hang-*.txt and
  # exits with status 75 (errors.EXIT_RESTART: rerun to resume). After
  # SIGTERM the loop has watchdog_sigterm_s seconds to start a checkpoint
  # (single-process runs). 0 turns each off (watchdog_factor=0: no stall
  # deadlines).
  c.watchdog_factor = 20.0
  c.watchdog_min_s = 600.0
  c.watchdog_first_s = 3600.0
  c.watchdog_sigterm_s = 60.0

  # Input geometry (used by models and the synthetic source).
  c.image_size = 224
  c.channels = 3
  c.num_classes = 1000
  return c


def mae_family(arg, method: str, variant: str = "B/16", reg_lambda: float = 0.0,
               reg_mu: float = 1.0) -> ml_collections.ConfigDict:
  """The ImageNet-1K MAE / U-MAE / M-MAE pre-training recipe.

  See docs/methods.md §3.3.

  Official M-MAE/U-MAE `pretrain.sh`: global batch 1024 (128 × 8 GPUs), 200
  epochs, 40 warm-up epochs, AdamW(0.9, 0.95), base lr 1.5e-4 × batch/256,
  weight decay 0.05 (not on biases/norms), half-cycle cosine to 0, mask ratio
  0.75, normalised-pixel loss, RandomResizedCrop(224, scale (0.2, 1),
  bicubic) + flip, online linear probe, mixed precision.

  Config args (after the colon): `runlocal` keeps the model but uses random
  images, batch 8 and 10 steps (CPU smoke run and steps/s); `tiny` also
  shrinks the model to a 1-block ViT on 32×32 images (tests).
  """
  arg = parse_arg(arg, runlocal=False, tiny=False)
  c = base_config()
  c.method = method
  c.dataset = "tfds:imagenet2012"
  c.image_size, c.channels, c.num_classes = 224, 3, 1000
  c.batch_size = 1024
  c.total_epochs = 200.0
  c.warmup_epochs = 40.0
  c.optimizer = "adamw"
  c.base_lr, c.lr_scaling_batch = 1.5e-4, 256
  c.weight_decay, c.adam_b1, c.adam_b2 = 0.05, 0.9, 0.95
  c.min_lr = 0.0
  c.augment = ml_collections.ConfigDict(dict(
      augment_on="host",  # or "device": see train_inputs.make_device_inputs
      crop_scale=(0.2, 1.0)))
  # remat: "none" | "full" | "dots" | "dots_no_batch" (what the backward
  # pass recomputes, models/vit.py REMAT_POLICIES); scan_blocks: compile
  # one block and scan it over the depth (bounded compile time and program
  # size; same function, same checkpoint layout). docs/scaling.md measures
  # both.
  c.model = ml_collections.ConfigDict(dict(
      variant=variant, decoder_width=512, decoder_depth=8, decoder_heads=16,
      cls_double_norm=True, drop_path_rate=0.0, remat="none",
      scan_blocks=False,
      width=placeholder(int), depth=placeholder(int),
      mlp_dim=placeholder(int), num_heads=placeholder(int),
      patch_size=placeholder(int), decoder_mlp_dim=placeholder(int)))
  # mask_ratio, norm_pix_loss, online_probe, reg_*, feature_pool, ...
  # (methods/mae.py `Hparams`); what the ImageNet recipe changes follows.
  c.update(method_fields(method))
  c.compute_dtype = "bfloat16"  # the official runs use AMP
  c.reg_lambda = reg_lambda
  c.reg_mu = reg_mu
  # The released runs used 8 GPUs; their gather scales the regulariser's
  # gradient by 1/8 (docs/methods.md §3.2 item 7). 0: the exact gradient.
  c.official_world_size = 8
  c.log_steps = 100
  c.ckpt_epochs = 1.0
  c.keep_ckpt_epochs = 50.0
  if arg.runlocal or arg.tiny:
    smoke_run(c, num_examples=1000, batch_size=8)
    c.compute_dtype = "float32"  # CPU runs
  if arg.tiny:
    c.image_size = 32
    c.num_classes = 10
    c.model.update(dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                        patch_size=8, decoder_width=32, decoder_depth=1,
                        decoder_heads=2))
    c.total_steps = 2
  return c


# Solo-learn's CIFAR recipes (scripts/pretrain/cifar/<method>.yaml: ResNet-18,
# batch 256, 1000 epochs, 10 warm-up epochs + cosine, lr × batch/256) and the
# MEC / Matrix-SSL SGD recipe for the matrix-information methods. LARS with
# trust coefficient (solo-learn `eta`) 0.02; solo-learn's `clip_lr` (LARC
# clipping) is not reproduced by optax.lars.
SIAMESE_OPTIMIZERS = {
    "simsiam": dict(optimizer="sgd", base_lr=0.5, weight_decay=1e-5),
    "byol": dict(optimizer="lars", base_lr=1.0, weight_decay=1e-5,
                 lars_trust=0.02),
    "barlow_twins": dict(optimizer="lars", base_lr=0.3, weight_decay=1e-4,
                         lars_trust=0.02),
    "vicreg": dict(optimizer="lars", base_lr=0.3, weight_decay=1e-4,
                   lars_trust=0.02),
    "simclr": dict(optimizer="lars", base_lr=0.4, weight_decay=1e-4,
                   lars_trust=0.02),
    "spectral": dict(optimizer="sgd", base_lr=0.03, weight_decay=5e-4),
    "matrix_ssl": dict(optimizer="sgd", base_lr=0.5, weight_decay=1e-5),
    "mec": dict(optimizer="sgd", base_lr=0.5, weight_decay=1e-5),
    "emi": dict(optimizer="sgd", base_lr=0.5, weight_decay=1e-5),
    # The matrix-spectrum objectives (OFSkean/FroSSL solo-learn fork's CIFAR
    # scripts use LARS like Barlow Twins / VICReg): our choice, documented.
    "frossl": dict(optimizer="lars", base_lr=0.3, weight_decay=1e-4,
                   lars_trust=0.02),
    "ivne": dict(optimizer="lars", base_lr=0.3, weight_decay=1e-4,
                 lars_trust=0.02),
    "mmcr": dict(optimizer="lars", base_lr=0.3, weight_decay=1e-4,
                 lars_trust=0.02),
    # LeJEPA's README ("GOTO hyperparameters", rbalestr-lab/lejepa): AdamW,
    # lr 5e-4 (not scaled with the batch), weight decay 5e-2 for ViTs,
    # warm-up + cosine to lr / 1000; MINIMAL.md's torch AdamW keeps its
    # default betas (0.9, 0.999).
    "lejepa": dict(optimizer="adamw", base_lr=5e-4, lr_scaling_batch=0,
                   weight_decay=5e-2, adam_b1=0.9, adam_b2=0.999,
                   min_lr=5e-7),
}

# MoCo v3's ViT optimiser (Chen, Xie, He 2021, arXiv 2104.02057, its
# implementation details; the commands of `facebookresearch/moco-v3`
# CONFIG.md, "ViT Models", and `torch.optim.AdamW(..., weight_decay=)` in
# its main_moco.py): AdamW with torch's default betas (0.9, 0.999), base lr
# 1.5e-4 × batch/256, weight decay 0.1. MoCo v3 decays every parameter; our
# optimizer never decays biases and norm parameters (optim.decay_mask).
VIT_ADAMW = dict(optimizer="adamw", base_lr=1.5e-4, lr_scaling_batch=256,
                 weight_decay=0.1, adam_b1=0.9, adam_b2=0.999)

# Head recipe (mi_ssl_jax.models.HEAD_RECIPES) per method.
SIAMESE_HEADS = {"matrix_ssl": "matrix_ssl", "mec": "mec", "emi": "emi",
                 "simsiam": "simsiam", "byol": "byol",
                 "barlow_twins": "barlow_twins", "vicreg": "vicreg",
                 "simclr": "simclr", "spectral": "simclr",
                 "frossl": "vicreg", "ivne": "simclr", "mmcr": "vicreg",
                 "lejepa": "lejepa"}


def siamese_family(method: str) -> ml_collections.ConfigDict:
  """Shared fields of the two-view recipes (methods/_siamese.py).

  Starts from the ImageNet ResNet-50 MEC / Matrix-SSL recipe (docs/methods.md
  §2.3): batch 1024, 100 epochs, 10 warm-up epochs + cosine, SGD momentum
  0.9, base lr 0.5 × batch/256, weight decay 1e-5, EMA teacher 0.996 → 1,
  MoCo v3 asymmetric augmentations; each config then changes what differs
  and ends with `siamese_shrink(c, arg.runlocal, arg.tiny)`.
  """
  c = base_config()
  c.method = method
  c.dataset = "tfds:imagenet2012"
  c.image_size, c.channels, c.num_classes = 224, 3, 1000
  c.batch_size = 1024
  c.total_epochs = 100.0
  c.warmup_epochs = 10.0
  c.optimizer = "sgd"
  c.base_lr, c.lr_scaling_batch = 0.5, 256
  c.weight_decay = 1e-5  # never on biases / norms (optim.decay_mask)
  c.momentum = 0.9
  c.min_lr = 0.0
  c.ema_momentum = 0.996  # teacher methods: cosine from this to 1
  c.augment = ml_collections.ConfigDict(dict(
      augment_on="host",  # or "device": see train_inputs.make_device_inputs
      crop_scale=(0.2, 1.0), color_jitter_strength=(0.4, 0.4, 0.2, 0.1),
      color_jitter_prob=0.8, grayscale_prob=0.2, blur_prob=(1.0, 0.1),
      blur_sigma=(0.1, 2.0), solarize_prob=(0.0, 0.2)))
  # backbone: "resnet" (depth, stem, width, zero_init_residual) or "vit"
  # (`siamese_vit`: variant, pool, pos_embed, freeze_patch_embed, vit_*,
  # patch_size, remat, scan_blocks; methods/_siamese.py).
  c.model = ml_collections.ConfigDict(dict(
      backbone="resnet",
      depth=50, stem="imagenet", width=64, zero_init_residual=True,
      variant=placeholder(str), pool="cls", pos_embed="learn",
      freeze_patch_embed=False,
      vit_width=placeholder(int), vit_depth=placeholder(int),
      vit_mlp_dim=placeholder(int), vit_num_heads=placeholder(int),
      patch_size=placeholder(int), drop_path_rate=0.0, remat="none",
      scan_blocks=False,
      head=SIAMESE_HEADS[method], proj_hidden_dims=(2048, 2048),
      proj_dim=2048, proj_out_norm=placeholder(str),
      predictor=method in ("matrix_ssl", "mec", "emi", "simsiam", "byol"),
      pred_hidden_dims=(512,)))
  c.update(method_fields(method))  # the method's own (`Hparams`)
  # bfloat16 compute at ImageNet scale (half the activation memory: see
  # docs/scaling.md); BatchNorm statistics and the objectives stay float32.
  # The official Matrix-SSL code trains in float32 (no AMP): set
  # compute_dtype = "float32" for that.
  c.compute_dtype = "bfloat16"
  c.log_steps = 100
  c.ckpt_epochs = 1.0
  c.keep_ckpt_epochs = 50.0
  return c


def siamese_vit(c: ml_collections.ConfigDict, variant: str, *,
                pool: str = "cls", freeze_patch_embed: bool = False,
                **sizes) -> ml_collections.ConfigDict:
  """Switches a Siamese recipe `c` to a ViT backbone (in place; returns c).

  `variant` is a `models.VIT_VARIANTS` name with its patch ("S/16"); `sizes`
  sets the `vit_width`, `vit_depth`, `vit_mlp_dim`, `vit_num_heads` or
  `patch_size` overrides. The ResNet fields are cleared (a ViT has no
  stem, no BatchNorm and no residual-BN init).
  """
  c.model.backbone = "vit"
  c.model.variant = variant
  c.model.pool = pool
  c.model.freeze_patch_embed = freeze_patch_embed
  c.model.update(sizes)
  c.model.update(dict(depth=None, stem=None, width=None,
                      zero_init_residual=None))
  return c


def siamese_cifar(method: str) -> ml_collections.ConfigDict:
  """CIFAR-10 ResNet-18 (CIFAR stem) recipe of `method`, solo-learn style.

  Batch 256, 1000 epochs, 10 warm-up epochs + cosine, optimizer from
  SIAMESE_OPTIMIZERS, solo-learn's asymmetric CIFAR augmentations
  (crop scale 0.08–1, colour jitter 0.4/0.4/0.2/0.1 p 0.8, grayscale 0.2, no
  blur, solarize 0 / 0.2), EMA 0.99 → 1 for teacher methods.
  """
  c = siamese_family(method)
  c.dataset = "tfds:cifar10"
  c.image_size, c.channels, c.num_classes = 32, 3, 10
  c.batch_size = 256
  c.total_epochs = 1000.0
  c.warmup_epochs = 10.0
  c.update(SIAMESE_OPTIMIZERS[method])
  c.ema_momentum = 0.99
  c.model.update(dict(depth=18, stem="cifar"))
  c.augment.update(dict(crop_scale=(0.08, 1.0), blur_prob=(0.0, 0.0),
                        solarize_prob=(0.0, 0.2)))
  c.log_steps = 100
  c.ckpt_epochs = 10.0
  c.keep_ckpt_epochs = 100.0
  return c


def siamese_shrink(c: ml_collections.ConfigDict, runlocal: bool,
                   tiny: bool) -> ml_collections.ConfigDict:
  """The Siamese configs' `runlocal` / `tiny` config args (call it last).

  `runlocal` keeps the model but uses random images, batch 16 and 10 steps
  (CPU smoke run, steps/s); `tiny` also shrinks the model (ResNet-18 of
  width 4, or a 1-block ViT of width 32 on 8-px patches; 16-px images,
  32-d heads) and runs 2 steps (tests).
  """
  if runlocal or tiny:
    smoke_run(c, num_examples=1024, batch_size=16)
    c.compute_dtype = "float32"  # CPU runs
    c.evals = ml_collections.ConfigDict()
  if tiny:
    c.image_size = 16
    c.model.update(dict(proj_hidden_dims=(32,), proj_dim=32,
                        pred_hidden_dims=(8,)))
    if c.model.get("backbone") == "vit":  # a 1-block ViT on 4 patches
      c.model.update(dict(vit_width=32, vit_depth=1, vit_mlp_dim=64,
                          vit_num_heads=2, patch_size=8))
    else:
      c.model.update(dict(depth=18, width=4))
    c.total_steps = 2
    c.warmup_steps = 1
    c.tensorboard = False
  return c


def smoke_run(c: ml_collections.ConfigDict, *, num_examples: int,
              batch_size: int) -> None:
  """The schedule of every `runlocal` / `tiny` config arg (in place).

  Random images (`dataset="synthetic"`), 10 steps with 2 warm-up steps,
  logging every step and a checkpoint every 5: a CPU smoke run and the
  2-step test runs (tests override `total_steps`).
  """
  c.dataset = "synthetic"
  c.num_train_examples = num_examples
  c.batch_size = batch_size
  c.total_epochs = None
  c.total_steps = 10
  c.warmup_epochs = None
  c.warmup_steps = 2
  c.log_steps = 1
  c.ckpt_epochs = None
  c.keep_ckpt_epochs = None
  c.ckpt_steps = 5
