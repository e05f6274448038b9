"""Linear probes on frozen features, as named and versioned protocols.

Two recipes that published SSL numbers depend on (they are NOT
interchangeable; a result without its protocol name is meaningless):

``mae_linear`` v1 — MAE / M-MAE ``main_linprobe.py`` (docs/methods.md §3.3):
  head = BatchNorm1d(affine=False, eps=1e-6) -> Linear, weight ~ N(0, 0.01²),
  bias 0; LARS (momentum 0.9, trust coefficient 0.001, no weight decay and no
  trust-ratio adaptation for ≤1-D parameters), weight decay 0; lr = blr·B/256
  with blr 0.05, B = 8192 (M-MAE ``linprobe.sh``; MAE's own is blr 0.1 at
  B = 16384); 10 warm-up epochs then half-cycle cosine to 0, per step;
  90 epochs. Features are the CLS token of the encoder's final norm (the
  method's ``predict_fn`` decides; this module sees features only).

``simclr_linear`` v1 — google-research/simclr ``run.py --train_mode=finetune``
  linear-head recipe (README ImageNet command, ``model_util.py``): no BN,
  zero-initialised head (``zero_init_logits_layer``); SGD with Nesterov
  momentum 0.9; lr = 0.1·B/256 with B = 4096, cosine decay, no warm-up; L2
  weight decay 1e-6 on every head parameter; 90 epochs.

Both train on features computed once (no augmentation during probe training:
the encoder is run once on centre crops). The MAE and SimCLR codes re-augment
every epoch; on ImageNet that costs a fraction of a point, and every result
records ``feature_augmentation = "none"`` so it is never mistaken for the
augmented protocol. Deviations in epochs / batch / lr (needed on small data)
are recorded as ``overrides`` in the result JSON.

Known difference from PyTorch: optax applies the learning rate before the
momentum trace (``optax.lars``, ``optax.sgd``), PyTorch's LARS/SGD after it;
with a schedule the two differ by O(lr change per step) and are identical
for a constant lr.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import loop, model_state
from mi_ssl_jax.evaluators import common


@dataclasses.dataclass(frozen=True)
class LinearProtocol:
  """A linear-probe recipe. ``lr = base_lr * batch_size / 256``."""

  name: str
  version: int
  batch_norm: bool  # affine-free BatchNorm before the linear layer
  optimizer: str  # "lars" or "sgd_nesterov"
  base_lr: float
  batch_size: int
  epochs: int
  warmup_epochs: float
  weight_decay: float
  momentum: float = 0.9
  trust_coefficient: float = 0.001  # LARS only
  init_std: float = 0.01  # 0: zero-initialised head
  bn_eps: float = 1e-6
  bn_momentum: float = 0.9  # running = m·running + (1−m)·batch (PyTorch 0.1)
  feature_augmentation: str = "none"
  source: str = ""

  @property
  def lr(self) -> float:
    return self.base_lr * self.batch_size / 256.0

  def with_overrides(self, **kw: Any) -> tuple[LinearProtocol, dict]:
    """A copy with ``kw`` applied, and the dict of fields that changed."""
    fields = {f.name for f in dataclasses.fields(self)}
    bad = set(kw) - fields
    if bad:
      raise ValueError(f"unknown linear-probe fields {sorted(bad)}; valid: "
                       f"{sorted(fields - {'name', 'version'})}")
    if {"name", "version"} & set(kw):
      raise ValueError("a protocol's name and version cannot be overridden; "
                       "define a new protocol instead")
    changed = {k: v for k, v in kw.items() if getattr(self, k) != v}
    out = dataclasses.replace(self, **kw)
    for name in ("epochs", "batch_size"):
      if int(getattr(out, name)) < 1:
        raise ValueError(f"linear-probe {name} must be >= 1, got "
                         f"{getattr(out, name)}")
    if out.base_lr <= 0 or out.warmup_epochs < 0 or out.weight_decay < 0:
      raise ValueError("linear-probe base_lr must be > 0, warmup_epochs and "
                       "weight_decay >= 0")
    return out, changed


MAE_LINEAR = LinearProtocol(
    name="mae_linear", version=1, batch_norm=True, optimizer="lars",
    base_lr=0.05, batch_size=8192, epochs=90, warmup_epochs=10,
    weight_decay=0.0, init_std=0.01,
    source="M-MAE linprobe.sh / MAE main_linprobe.py (docs/methods.md §3.3)")

SIMCLR_LINEAR = LinearProtocol(
    name="simclr_linear", version=1, batch_norm=False,
    optimizer="sgd_nesterov", base_lr=0.1, batch_size=4096, epochs=90,
    warmup_epochs=0, weight_decay=1e-6, init_std=0.0,
    source="google-research/simclr README (linear head on ImageNet), "
           "model_util.py")

PROTOCOLS: dict[str, LinearProtocol] = {
    p.name: p for p in (MAE_LINEAR, SIMCLR_LINEAR)}


def get_protocol(name: str, **overrides: Any) -> tuple[LinearProtocol, dict]:
  """Looks up a protocol by name and applies overrides."""
  if name not in PROTOCOLS:
    raise ValueError(f"unknown linear-probe protocol '{name}'; use one of "
                     f"{sorted(PROTOCOLS)}")
  return PROTOCOLS[name].with_overrides(**overrides)


class LinearHead(nnx.Module):
  """[optional affine-free BatchNorm] -> Linear, on frozen features."""

  def __init__(self, dim: int, num_classes: int, *, batch_norm: bool,
               init_std: float = 0.01, bn_eps: float = 1e-6,
               bn_momentum: float = 0.9, rngs: nnx.Rngs):
    self.norm = (nnx.BatchNorm(dim, use_bias=False, use_scale=False,
                               epsilon=bn_eps, momentum=bn_momentum,
                               rngs=rngs) if batch_norm else None)
    init = (nnx.initializers.normal(init_std) if init_std > 0
            else nnx.initializers.zeros)
    self.fc = nnx.Linear(dim, num_classes, kernel_init=init,
                         bias_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = jax.lax.stop_gradient(x.astype(jnp.float32))  # [B, D], frozen
    if self.norm is not None:
      x = self.norm(x, use_running_average=not train)
    return self.fc(x)  # [B, C]


def _ndim_gt1(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(protocol: LinearProtocol, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """Per-step lr: linear warm-up over ``warmup_epochs``, then half-cycle
  cosine to 0 (``lr(t) = ½·lr·(1 + cos(π·t/T))`` after the warm-up)."""
  warmup = int(round(protocol.warmup_epochs * steps_per_epoch))
  if warmup > 0:
    return optax.warmup_cosine_decay_schedule(
        0.0, protocol.lr, warmup, max(total_steps, warmup + 1), 0.0)
  return optax.cosine_decay_schedule(protocol.lr, max(total_steps, 1))


def make_optimizer(protocol: LinearProtocol, total_steps: int,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """The protocol's optimizer with its per-step warm-up + cosine schedule."""
  schedule = make_schedule(protocol, total_steps, steps_per_epoch)
  if protocol.optimizer == "lars":
    # MAE util/lars.py: ≤1-D params (bias) get neither decay nor adaptation.
    return optax.lars(schedule, weight_decay=protocol.weight_decay,
                      weight_decay_mask=_ndim_gt1,
                      trust_coefficient=protocol.trust_coefficient,
                      eps=0.0, trust_ratio_mask=_ndim_gt1,
                      momentum=protocol.momentum)
  if protocol.optimizer == "sgd_nesterov":
    # SimCLR adds wd·‖θ‖²/2 for every head variable to the loss.
    return optax.chain(
        optax.add_decayed_weights(protocol.weight_decay),
        optax.sgd(schedule, momentum=protocol.momentum, nesterov=True))
  raise ValueError(f"unknown probe optimizer '{protocol.optimizer}'; use "
                   "'lars' or 'sgd_nesterov'")


def _topk_correct(logits, labels, mask, k):
  _, top = jax.lax.top_k(logits, k)  # [B, k]
  return jnp.sum(jnp.any(top == labels[:, None], axis=-1) & mask)


def make_probe_step(codec: model_state.ModelCodec,
                    tx: optax.GradientTransformation,
                    schedule: optax.Schedule, steps_per_epoch: int):
  """``chunk(state, (xs [k, B, D], ys [k, B])) -> (state, metrics [k])``.

  ``lax.scan`` over k optimizer steps of the cross-entropy
  ``mean_b −log softmax(head(x_b))_{y_b}`` under the loop's non-finite
  policy (``loop.apply_gradients``). ``state["epoch_loss"]`` sums the
  applied steps' losses of the current epoch (reset at its first step), so
  ``train/loss`` is the last epoch's mean also after a resume.
  """

  def one_step(state, xy):
    x, y = xy  # [B, D], [B]

    def loss_of(params):
      head = codec.model(params, state["rest"])
      logits = head(x, train=True)  # [B, C]
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, codec.split(head)[1]

    (loss, rest), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state["params"])
    new, grad_norm, ok = loop.apply_gradients(state, tx, loss, grads, rest)
    first = state["step"] % steps_per_epoch == 0
    acc = state["epoch_loss"]
    new["epoch_loss"] = {
        "sum": jnp.where(first, 0.0, acc["sum"]) + jnp.where(ok, loss, 0.0),
        "count": jnp.where(first, 0, acc["count"]) + ok.astype(jnp.int32)}
    return new, {"loss": loss, "grad_norm": grad_norm,
                 "learning_rate": jnp.asarray(schedule(state["step"]),
                                              jnp.float32)}

  return lambda state, xys: jax.lax.scan(one_step, state, xys)


def _chunks(feats: np.ndarray, labels: np.ndarray, *, batch: int,
            epochs: int, steps_per_call: int, seed: int, start_step: int,
            sharding: NamedSharding) -> Iterator[tuple[jax.Array, jax.Array]]:
  """Device chunks ``([k, B, D], [k, B])`` of shuffled batches.

  Epoch e is ``permutation_e(N)[:S·B]`` in S = N // B batches (drop the
  remainder, as ``DataLoader(drop_last=True)``), the permutations drawn in
  sequence from ``default_rng(seed)``; chunks of k = ``steps_per_call``
  batches never cross an epoch. From ``start_step`` on: a resumed probe
  replays the draws of the epochs before it and sees the same batches as an
  uninterrupted one.
  """
  n = len(labels)
  spe = n // batch
  rng = np.random.default_rng(seed)
  for epoch in range(epochs):
    perm = rng.permutation(n)[:spe * batch].reshape(spe, batch)
    for i in range(0, spe, steps_per_call):
      lo = max(i, start_step - epoch * spe)
      hi = min(i + steps_per_call, spe)
      if lo >= hi:
        continue
      idx = perm[lo:hi]  # [k, B]
      yield jax.device_put((feats[idx], labels[idx]), sharding)


def _new_state(dim: int, num_classes: int, protocol: LinearProtocol,
               seed: int, tx: optax.GradientTransformation,
               repl: NamedSharding):
  """(codec, initial probe state on ``repl``)."""
  # Building the head creates arrays from Python constants: allowed
  # explicitly, since the trainer runs evaluators under
  # jax.transfer_guard("disallow").
  new_head = lambda: LinearHead(
      dim, num_classes, batch_norm=protocol.batch_norm,
      init_std=protocol.init_std, bn_eps=protocol.bn_eps,
      bn_momentum=protocol.bn_momentum, rngs=nnx.Rngs(seed))
  with jax.transfer_guard("allow"):
    codec = model_state.ModelCodec(nnx.eval_shape(new_head))
    params, rest = codec.split(new_head())
    state = loop.init_state(params, rest, tx.init(params))
    state["epoch_loss"] = {"sum": jnp.zeros((), jnp.float32),
                           "count": jnp.zeros((), jnp.int32)}
    return codec, jax.device_put(state, repl)


def train_linear_probe(
    train_feats: np.ndarray, train_labels: np.ndarray,
    eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
    num_classes: int, protocol: LinearProtocol, seed: int = 0,
    mesh: jax.sharding.Mesh | None = None, eval_batch_size: int = 1024,
    steps_per_call: int = 32, workdir: str | None = None,
    log_steps: int | None = None, ckpt_steps: int = 1000,
    nonfinite: str = "stop", lock_stale_seconds: float | None = None,
) -> tuple[dict[str, float], LinearHead]:
  """Trains a linear head on fixed features (``mi_ssl_jax.loop``), evaluates.

  Args:
    train_feats: [N, D] host features (no padding rows).
    train_labels: [N] int labels.
    eval_sets: name -> (features [M, D], labels [M]) to evaluate at the end.
    num_classes: C.
    protocol: the recipe (see :data:`PROTOCOLS`).
    seed: head initialisation and shuffling seed.
    mesh: data-parallel mesh (default: all devices).
    eval_batch_size: evaluation batch (padded and masked).
    steps_per_call: training steps per jitted call (``lax.scan``); bounds the
      host-to-device transfer to steps_per_call · B · D floats.
    workdir: the probe's run directory (checkpoints, metrics.jsonl, progress
      line; rerunning resumes), or None to train in memory (a periodic
      evaluator: its features change with every evaluation anyway).
    log_steps: log / non-finite check interval (default: one epoch).
    ckpt_steps: checkpoint interval with a ``workdir`` (and at the end).
    nonfinite: the loop's policy, "stop" (raise ``loop.NonFiniteError``) or
      "skip".
    lock_stale_seconds: the ``workdir`` lock's timeout (``loop.RunDir``).

  Returns:
    ``({"<set>/top1": %, "<set>/top5": %, "train/loss": last epoch mean},
    trained head)``.

  Raises:
    ValueError: a batch the data or the devices cannot make.
    loop.NonFiniteError: a non-finite loss (policy "stop").
    loop.Preempted: stopped by SIGTERM (state saved; ``workdir`` only).
  """
  mesh = mesh if mesh is not None else common.default_mesh()
  ndev = common.data_size(mesh)
  n, dim = train_feats.shape
  batch = protocol.batch_size
  if batch % ndev:
    raise ValueError(f"linear-probe batch_size {batch} must be divisible by "
                     f"the {ndev} devices of the data axis")
  if n < batch:
    raise ValueError(f"linear probe: {n} training examples < batch_size "
                     f"{batch}; lower batch_size (it is recorded as an "
                     f"override)")
  spe = n // batch
  total = spe * protocol.epochs
  repl = NamedSharding(mesh, P())
  tx = make_optimizer(protocol, total, spe)
  codec, state = _new_state(dim, num_classes, protocol, seed, tx, repl)
  chunk_sharding = NamedSharding(mesh, common.batch_spec(mesh, 1))
  run_chunk = jax.jit(make_probe_step(codec, tx, make_schedule(
      protocol, total, spe), spe), donate_argnums=0,
      in_shardings=(repl, chunk_sharding), out_shardings=(repl, repl))
  chunks = lambda start: _chunks(
      train_feats, train_labels, batch=batch, epochs=protocol.epochs,
      steps_per_call=steps_per_call, seed=seed, start_step=start,
      sharding=chunk_sharding)
  out = loop.train_job(
      state, run_chunk, chunks, total_steps=total, log_steps=log_steps or spe,
      workdir=workdir, ckpt_steps=ckpt_steps, what="linear probe",
      lock_stale_seconds=lock_stale_seconds,
      nonfinite=nonfinite, steps_in=lambda xy: xy[1].shape[0],
      nonfinite_hint="Lower the probe's base_lr (--config.overrides."
      "base_lr) or check the features for NaN/inf.")
  acc = jax.device_get(out.state["epoch_loss"])
  count = int(acc["count"])  # 0 only if every step of an epoch was skipped
  head = codec.model(out.state["params"], out.state["rest"])
  metrics = {"train/loss": float(acc["sum"]) / count if count
             else float("nan")}
  for name, (x, y) in eval_sets.items():
    metrics.update({f"{name}/{k}": v for k, v in evaluate_head(
        head, x, y, num_classes=num_classes, mesh=mesh,
        batch_size=eval_batch_size).items()})
  return metrics, head


@functools.partial(jax.jit, static_argnums=(0, 1))
def _eval_step(graphdef, ks, state, x, y, m):
  logits = nnx.merge(graphdef, state)(x, train=False)  # [B, C]
  return {k: _topk_correct(logits, y, m, k) for k in ks}


def evaluate_head(head: LinearHead, feats: np.ndarray, labels: np.ndarray,
                  mask: np.ndarray | None = None, *, num_classes: int,
                  mesh: jax.sharding.Mesh | None = None,
                  batch_size: int = 1024) -> dict[str, float]:
  """Top-1 / top-5 accuracy (%) of ``head`` over padded-and-masked batches."""
  mesh = mesh if mesh is not None else common.default_mesh()
  ndev = common.data_size(mesh)
  batch_size = -(-batch_size // ndev) * ndev
  graphdef, state = nnx.split(head)
  ks = (1, 5) if num_classes > 5 else (1,)
  step = functools.partial(_eval_step, graphdef, ks)
  mask = np.ones(len(labels), bool) if mask is None else np.asarray(mask, bool)
  totals = {k: 0 for k in ks}
  for i in range(0, len(labels), batch_size):
    b = common.pad_batch({"x": feats[i:i + batch_size],
                          "y": labels[i:i + batch_size],
                          common.MASK_KEY: mask[i:i + batch_size]}, batch_size)
    # Host features are the same on every process: the padded batch is the
    # global value, split over the devices (not one local share per host).
    b = jax.device_put(b, NamedSharding(mesh, common.batch_spec(mesh)))
    out = jax.device_get(step(state, b["x"], b["y"], b[common.MASK_KEY]))
    for k in ks:
      totals[k] += int(out[k])
  valid = int(mask.sum())
  if valid == 0:
    raise ValueError("linear-probe evaluation got no valid examples")
  return {f"top{k}": 100.0 * totals[k] / valid for k in ks}


class Evaluator:
  """Periodic linear probe on frozen features (expensive; run rarely).

  Config entry example::

    linear=dict(type="linear", log_steps=5000, num_classes=10,
                protocol="simclr_linear", overrides=dict(epochs=10,
                batch_size=256), train_data=..., test_data=...)
  """

  def __init__(self, predict_fn: common.PredictFn, *, train_data: Any,
               test_data: Any, num_classes: int,
               protocol: str = "simclr_linear",
               overrides: Mapping[str, Any] | None = None, seed: int = 0,
               batch_size: int = 256, baselines: Sequence[str] = (),
               baseline_fns: Mapping[str, Any] | None = None,
               mesh: jax.sharding.Mesh | None = None,
               data_fn: Callable[..., common.BatchSource] | None = None):
    self.mesh = mesh if mesh is not None else common.default_mesh()
    self.protocol, self.overrides = get_protocol(protocol,
                                                 **dict(overrides or {}))
    self.train_source = common.resolve_source(
        train_data, data_fn, batch_size, "linear train_data")
    self.test_source = common.resolve_source(
        test_data, data_fn, batch_size, "linear test_data")
    self.extract = common.FeatureExtractor(predict_fn, self.mesh)
    self.num_classes = int(num_classes)
    self.seed = seed
    self.baselines = common.Baselines(baselines, baseline_fns, self.mesh)

  def _probe(self, extract: common.FeatureExtractor, state: Any
             ) -> dict[str, float]:
    xtr, ytr = common.compact_on_host(*extract(state, self.train_source))
    xte, yte = common.compact_on_host(*extract(state, self.test_source))
    metrics, _ = train_linear_probe(
        xtr, ytr, {"test": (xte, yte)}, num_classes=self.num_classes,
        protocol=self.protocol, seed=self.seed, mesh=self.mesh)
    return metrics

  def run(self, state: Any, step: int | None = None
          ) -> Iterator[tuple[str, float]]:
    """Yields ``test/top1``, ``test/top5``, ``train/loss`` (and the same
    for each baseline, once: ``raw_pixels/test/top1``, ...)."""
    del step  # same signature for every evaluator; unused here
    yield from self._probe(self.extract, state).items()
    yield from self.baselines.results(self._probe).items()
