"""Vision Transformer (pre-norm, timm / facebookresearch/mae layout) in NNX.

Variants are named as in big_vision (``"Ti/16"``, ``"S/16"``, ``"B/16"``,
``"L/16"``, ``"H/14"``; small-image ``"Ti/4"``, ``"S/4"`` for 28-32 px) and
decoded by :func:`decode_variant`.

The layer layout follows timm 0.3.2 ``VisionTransformer`` as used by
facebookresearch/mae (``models_mae.py``) and M-MAE: pre-norm blocks,
``LayerNorm(eps=1e-6)``, a fused ``qkv`` projection with bias, MLP ratio 4 with
exact GELU, a CLS token and a final LayerNorm. How softmax attention is
computed is the ``attention`` argument (one of
``ATTENTION_IMPLS``), chosen by the trainer from the
run's devices or the config, never from the tracing host: ``"xla"``
(``jax.nn.dot_product_attention``), ``"xla_heads_first"`` (the same numbers
written head-major, :func:`attention_heads_first`; faster on XLA:CPU,
docs/benchmarks.md, "CPU parity") or ``"cudnn"`` (cuDNN flash attention on
padded tokens, :func:`attention_padded`; docs/benchmarks.md, "GPU").

Initialisation follows MAE ``initialize_weights``: Xavier-uniform linears
(including the patch projection, seen as a flattened linear), zero biases,
LayerNorm weight 1 / bias 0, tokens N(0, 0.02^2).

Modules hold no RNG state after construction: drop path takes an explicit
PRNG ``key`` at call time (``key=None`` means deterministic).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from mi_ssl_jax.models import rng

# big_vision `vit.py` decode_variant table (width, depth, mlp_dim, heads).
VIT_VARIANTS: dict[str, dict[str, int]] = {
    "mu": dict(width=32, depth=1, mlp_dim=128, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "M": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}

# How softmax attention is computed (`Attention`; the choice is made by
# mi_ssl_jax.platforms from the run's devices or the config).
ATTENTION_IMPLS = ("xla", "xla_heads_first", "cudnn")

LN_EPS = 1e-6  # timm/MAE `partial(nn.LayerNorm, eps=1e-6)`.

xavier_uniform = jax.nn.initializers.xavier_uniform()
# PyTorch `xavier_uniform_(w.view([w.shape[0], -1]))` on the patch conv:
# fan_in = p*p*C, fan_out = D, i.e. the conv kernel [p, p, C, D] seen as a
# flattened [p*p*C, D] linear.
patch_embed_init = jax.nn.initializers.xavier_uniform(
    in_axis=(0, 1, 2), out_axis=3)
token_init = jax.nn.initializers.normal(stddev=0.02)


def decode_variant(variant: str) -> dict[str, int]:
  """Turns a big_vision-style name into ViT hyper-parameters.

  Args:
    variant: ``"<size>/<patch>"`` such as ``"B/16"``, ``"H/14"``, ``"Ti/4"``,
      or just ``"<size>"`` (then no ``patch_size`` is returned). Sizes:
      ``mu`` (test-only), ``Ti``, ``S``, ``M``, ``B``, ``L``, ``H``.

  Returns:
    Dict with ``width``, ``depth``, ``mlp_dim``, ``num_heads`` and, when given,
    ``patch_size``.

  Raises:
    ValueError: for an unknown size or a malformed patch size.
  """
  size, _, patch = variant.partition("/")
  if size not in VIT_VARIANTS:
    raise ValueError(
        f"unknown ViT size {size!r} in variant {variant!r}; use one of "
        f"{sorted(VIT_VARIANTS)} followed by '/<patch>', e.g. 'B/16'.")
  out = dict(VIT_VARIANTS[size])
  if patch:
    if not patch.isdigit() or int(patch) <= 0:
      raise ValueError(
          f"bad patch size {patch!r} in ViT variant {variant!r}; write e.g. "
          "'B/16' or 'Ti/4'.")
    out["patch_size"] = int(patch)
  return out


@functools.lru_cache(maxsize=32)
def sincos_pos_embed_2d(
    width: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, exactly as MAE's ``pos_embed.py``.

  ``emb = concat(emb_1d(D/2, grid[0]), emb_1d(D/2, grid[1]))`` with
  ``grid = meshgrid(w, h)`` and ``emb_1d(pos) = [sin(pos*w_k), cos(pos*w_k)]``,
  ``w_k = 10000^(-k/(D/4))``; a zero row is prepended for the CLS token.

  Args:
    width: embedding width D (divisible by 4).
    grid_size: patches per side.
    cls_token: prepend a zero row for the CLS token.

  Returns:
    float32 numpy array [grid_size**2 (+1), width] (read-only, cached).
  """
  if width % 4:
    raise ValueError(f"sin-cos position embedding needs width % 4 == 0, got "
                     f"{width}; pick a width divisible by 4.")

  def emb_1d(dim, pos):  # pos [M] -> [M, dim]
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  grid_h = np.arange(grid_size, dtype=np.float32)
  grid_w = np.arange(grid_size, dtype=np.float32)
  grid = np.meshgrid(grid_w, grid_h)  # MAE order: w first.
  emb = np.concatenate(
      [emb_1d(width // 2, grid[0]), emb_1d(width // 2, grid[1])], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros([1, width]), emb], axis=0)
  emb = emb.astype(np.float32)
  emb.setflags(write=False)
  return emb


def drop_path(x: jax.Array, rate: float | jax.Array,
              key: jax.Array | None) -> jax.Array:
  """Stochastic depth (timm ``drop_path``): drops whole samples' residuals.

  ``x * bernoulli(1 - rate) / (1 - rate)`` with one draw per sample.
  Identity when ``rate == 0`` or ``key is None`` (deterministic mode).
  `rate` may be traced (scanned blocks, `apply_blocks`).
  """
  if key is None or (not isinstance(rate, jax.Array) and rate == 0.0):
    return x
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = rng.bernoulli(key, keep, shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def token_linear(linear: nnx.Linear, x: jax.Array) -> jax.Array:
  """``linear`` applied to the tokens of x [..., D] as one [B·T, D] matmul.

  The same numbers as ``linear(x)``; written as a 2-D matmul because XLA's
  CPU backend emits layout copies around the backward of a dot with several
  free leading dimensions (measured: a ViT MLP's gradient on [256, 13, 96]
  took 16 ms batched vs 3.1 ms flattened; docs/benchmarks.md, "Step").
  """
  shape = x.shape
  y = linear(x.reshape(-1, shape[-1]))  # [B·T, D_out]
  return y.reshape(*shape[:-1], y.shape[-1])


_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def _gelu(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, ``x/2 · (1 + erf(x/√2))`` (PyTorch's ``nn.GELU()``).

  Mathematically ``jax.nn.gelu(x, approximate=False)`` (which evaluates
  ``x/2 · erfc(−x/√2)``); the two differ by float32 roundoff (< 1e-7·|x|).
  The CPU cost avoided (docs/benchmarks.md, "CPU parity"): XLA expands
  ``erfc`` into an exponential and two rational branches (``erf`` is one
  polynomial). The custom VJP's residual is x alone and its backward is one
  fused pass, g · (Φ(x) + x·φ(x)); XLA's common-subexpression pass may still
  share the forward's ``erf(x/√2)`` with the backward and keep it (seen in
  the compiled CPU step), so this does not promise a smaller residual.
  """
  return _gelu(x)


def _gelu_fwd(x):
  return _gelu(x), x


def _gelu_bwd(x, g):
  cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
  pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
  return (g * (cdf + x * pdf),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_2d(x, scale, bias, eps):
  """LayerNorm of rows x [M, D] with scale, bias [D] (see `LayerNorm`)."""
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  # flax's LayerNorm (use_fast_variance) operation for operation.
  mean = jnp.mean(x, axis=-1, keepdims=True)  # [M, 1]
  var = jnp.maximum(0.0, jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean)
  rstd = jax.lax.rsqrt(var + eps)  # [M, 1]
  y = (x - mean) * (rstd * scale) + bias
  return y, (x, mean, rstd, scale)


def _layer_norm_bwd(eps, res, g):
  del eps
  x, mean, rstd, scale = res
  xhat = (x - mean) * rstd  # [M, D]
  gs = g * scale
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
               - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  return dx, jnp.sum(g * xhat, axis=0), jnp.sum(g, axis=0)


_layer_norm_2d.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.LayerNorm):
  """``nnx.LayerNorm`` over the last axis with a hand-written gradient.

  Same parameters (``scale``, ``bias``) and, in float32, the same forward
  operations as flax's LayerNorm (fast variance E[x²] − E[x]², clamped at 0);
  the backward pass is the closed form
  ``dx = rstd · (g·γ − mean(g·γ) − x̂ · mean(g·γ·x̂))`` with
  ``dγ = Σ g·x̂``, ``dβ = Σ g``, on the tokens flattened to [B·T, D]: a
  single fused pass over the activations instead of autodiff's chain of
  broadcasts and reductions (docs/benchmarks.md, "CPU parity"). Other dtypes
  and layer options use flax's implementation.
  """

  def __call__(self, x, *, mask=None):
    if (mask is not None or x.dtype != jnp.float32 or self.scale is None
        or self.bias is None or self.dtype not in (None, jnp.float32)
        or self.reduction_axes != -1 or self.feature_axes != -1
        or self.axis_name is not None or not self.use_fast_variance):
      return super().__call__(x, mask=mask)
    scale, bias = self.scale[...], self.bias[...]
    if scale.dtype != jnp.float32 or bias.dtype != jnp.float32:
      return super().__call__(x, mask=mask)
    shape = x.shape
    y = _layer_norm_2d(x.reshape(-1, shape[-1]), scale, bias,
                       float(self.epsilon))
    return y.reshape(shape)


def attention_heads_first(qkv: jax.Array, num_heads: int) -> jax.Array:
  """Softmax attention of a fused qkv projection, heads-major layout.

  The same numbers as ``jax.nn.dot_product_attention`` (XLA implementation:
  float32 logits scaled by 1/√H after the product, float32 softmax) up to
  float32 roundoff, written like timm's ``Attention``: one transpose of qkv to
  [3, B, N, T, H] so both batched matmuls have their batch dimensions
  leading. With the [B, T, N, H] operands of ``dot_product_attention``, XLA's
  CPU backend emits a layout copy around each of the four matmuls and their
  gradients (docs/benchmarks.md, "CPU parity").

  Args:
    qkv: [B, T, 3·D] output of the fused projection (timm order: q, k, v,
      then heads, then head dims).
    num_heads: N (D = N·H).

  Returns:
    [B, T, D] attention output, heads concatenated (timm order).
  """
  b, t, three_d = qkv.shape
  d = three_d // 3
  h = d // num_heads
  qkv = qkv.reshape(b, t, 3, num_heads, h).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]  # [B, N, T, H]
  logits = jnp.einsum("bnth,bnsh->bnts", q, k,
                      preferred_element_type=jnp.float32)  # [B, N, T, T]
  logits = logits * jnp.float32(1.0 / np.sqrt(h))
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bnts,bnsh->bnth", probs, v)  # [B, N, T, H]
  return out.transpose(0, 2, 1, 3).reshape(b, t, d)


def attention_padded(q: jax.Array, k: jax.Array, v: jax.Array, *,
                     implementation: str, seq_multiple: int) -> jax.Array:
  """Softmax attention on tokens padded to a multiple of `seq_multiple`.

  ``softmax(q kᵀ/√H) v`` per head over the T real tokens: q, k, v are
  zero-padded to T' = ⌈T/m⌉·m tokens and every example's sequence length is
  T, so the padded keys get no weight (``jax.nn.dot_product_attention``'s
  ``key_value_seq_lengths`` mask) and the padded query rows are dropped from
  the output; values and gradients equal unpadded attention. cuDNN's fused
  kernels (``implementation="cudnn"``) refuse some token counts (197 on an
  H200, cuDNN 9) and take any count padded this way; the padding's cost is
  (T'/T)² of the attention FLOPs (docs/benchmarks.md, "GPU").

  Args:
    q, k, v: [B, T, N, H] (bf16/fp16 for cuDNN).
    implementation: ``"cudnn"`` or ``"xla"`` (the same masking through XLA,
      which is how CPU tests check this function).
    seq_multiple: m.

  Returns:
    [B, T, N, H] attention output.
  """
  b, t = q.shape[:2]
  padded = -(-t // seq_multiple) * seq_multiple
  if padded == t:
    return jax.nn.dot_product_attention(q, k, v,
                                        implementation=implementation)
  pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, pad) for x in (q, k, v))  # [B, T', N, H]
  lengths = jnp.full((b,), t, jnp.int32)  # [B]
  out = jax.nn.dot_product_attention(
      q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
      implementation=implementation)  # [B, T', N, H]
  return out[:, :t]


# cuDNN's fused attention takes half-precision operands only.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


@functools.lru_cache(maxsize=8)
def _warn_once(message: str) -> None:
  logging.warning(message)


def _warn_cudnn_fallback(error: Exception) -> None:
  _warn_once(f"attention='cudnn' is not available here ({error}); using "
             "XLA attention. Set config.attention='xla' to silence this.")


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (timm layout).

  ``impl`` (module docstring): ``"xla"``, ``"xla_heads_first"`` or
  ``"cudnn"``; ``"cudnn"`` computes in the activations' dtype and falls back
  to ``"xla"`` for float32 activations and wherever JAX's cuDNN checks
  refuse while tracing (no cuDNN, an unsupported head size or GPU), with
  one warning. ``seq_multiple``: the token-count
  multiple of the cuDNN path (:func:`attention_padded`).
  """

  def __init__(self, width: int, num_heads: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, impl: str = "xla",
               seq_multiple: int = 64, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads "
                       f"{num_heads}; pick matching ViT sizes.")
    if impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got "
                       f"{impl!r}")
    self.num_heads = num_heads
    self.impl, self.seq_multiple = impl, int(seq_multiple)
    linear = functools.partial(
        nnx.Linear, kernel_init=xavier_uniform,
        bias_init=jax.nn.initializers.zeros, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs)
    self.qkv = linear(width, 3 * width, use_bias=True)
    self.proj = linear(width, width)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape  # [B, T, D]
    qkv = token_linear(self.qkv, x)  # [B, T, 3D]
    if self.impl == "xla_heads_first":
      out = attention_heads_first(qkv, self.num_heads)  # [B, T, D]
      return token_linear(self.proj, out)
    # timm: qkv.reshape(B, T, 3, heads, D/heads).
    qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, N, H]
    out = None
    if self.impl == "cudnn" and q.dtype in _CUDNN_DTYPES:
      try:
        out = attention_padded(q, k, v, implementation="cudnn",
                               seq_multiple=self.seq_multiple)
      except (NotImplementedError, RuntimeError) as e:
        # JAX's cuDNN checks run while tracing (no cuDNN, an unsupported
        # head size or GPU): the XLA kernel serves instead.
        _warn_cudnn_fallback(e)
    if out is None:
      out = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    return token_linear(self.proj, out.reshape(b, t, d))


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2 (timm ``Mlp``)."""

  def __init__(self, width: int, mlp_dim: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    linear = functools.partial(
        nnx.Linear, kernel_init=xavier_uniform,
        bias_init=jax.nn.initializers.zeros, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs)
    self.fc1 = linear(width, mlp_dim)
    self.fc2 = linear(mlp_dim, width)

  def __call__(self, x: jax.Array) -> jax.Array:
    shape = x.shape  # [..., D]
    x = x.reshape(-1, shape[-1])  # [B·T, D]: see token_linear
    x = self.fc2(gelu(self.fc1(x)))
    return x.reshape(*shape[:-1], x.shape[-1])


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

  def __init__(self, width: int, mlp_dim: int, num_heads: int, *,
               drop_path_rate: float = 0.0, dtype=jnp.float32,
               param_dtype=jnp.float32, attention: str = "xla",
               attention_seq_multiple: int = 64, rngs: nnx.Rngs):
    ln = functools.partial(LayerNorm, width, epsilon=LN_EPS, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)
    self.norm1 = ln()
    self.attn = Attention(width, num_heads, dtype=dtype,
                          param_dtype=param_dtype, impl=attention,
                          seq_multiple=attention_seq_multiple, rngs=rngs)
    self.norm2 = ln()
    self.mlp = Mlp(width, mlp_dim, dtype=dtype, param_dtype=param_dtype,
                   rngs=rngs)
    self.drop_path_rate = float(drop_path_rate)

  def __call__(self, x: jax.Array, key: jax.Array | None = None,
               drop_path_rate: float | jax.Array | None = None) -> jax.Array:
    """x [B, T, D] -> [B, T, D]; `drop_path_rate` overrides the block's own
    (a traced per-block rate when blocks are scanned)."""
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    k1 = k2 = None
    if key is not None and (isinstance(rate, jax.Array) or rate > 0.0):
      k1, k2 = rng.split(key)
    x = x + drop_path(self.attn(self.norm1(x)), rate, k1)
    return x + drop_path(self.mlp(self.norm2(x)), rate, k2)


def make_blocks(width: int, depth: int, mlp_dim: int, num_heads: int, *,
                drop_path_rate: float, dtype, param_dtype,
                attention: str = "xla", attention_seq_multiple: int = 64,
                rngs: nnx.Rngs) -> nnx.List:
  """``depth`` blocks with timm's linearly increasing drop-path rates."""
  rates = np.linspace(0.0, drop_path_rate, depth) if depth else []
  return nnx.List([
      Block(width, mlp_dim, num_heads, drop_path_rate=float(r), dtype=dtype,
            param_dtype=param_dtype, attention=attention,
            attention_seq_multiple=attention_seq_multiple, rngs=rngs)
      for r in rates])


# Activation rematerialisation in the backward pass (config.model.remat):
# "none" keeps every block's activations; "full" recomputes each block's
# forward; "dots" saves the matmul outputs and recomputes the rest
# (`jax.checkpoint_policies.dots_saveable`); "dots_no_batch" saves only
# matmuls without batch dimensions (the weight products, not attention's
# batched q·kᵀ and p·v: `dots_with_no_batch_dims_saveable`). True / False
# mean "full" / "none".
REMAT_POLICIES = {
    "none": None, "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(remat: bool | str) -> str:
  """The remat setting as a policy name (validates it)."""
  name = {True: "full", False: "none"}.get(remat, remat) if isinstance(
      remat, bool) else remat
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)} (or "
                     f"true/false), got {remat!r}")
  return name


def apply_blocks(blocks: Sequence[Block], x: jax.Array,
                 key: jax.Array | None, remat: bool | str = "none",
                 scan: bool = False) -> jax.Array:
  """Runs blocks in order; each gets ``fold_in(key, i)``.

  Args:
    blocks: the transformer blocks (same shapes).
    x: tokens [B, T, D].
    key: drop-path key (None: deterministic).
    remat: rematerialisation policy (`REMAT_POLICIES`).
    scan: run the blocks as one `jax.lax.scan` over their parameters
      stacked on the fly: XLA compiles one block instead of `depth`
      (compile time and program size bounded for ViT-L/H), the same
      function and gradients as the unrolled loop, and the parameters
      (checkpoints, layer decay, weight conversion) keep their per-block
      layout. Costs one copy of the blocks' parameters per step.

  Returns:
    [B, T, D] tokens after the last block.
  """
  policy = remat_policy(remat)

  def call(block, x, key, rate=None):
    return block(x, key, rate)

  if policy != "none":
    call = nnx.remat(call, policy=REMAT_POLICIES[policy])
  if not scan or len(blocks) < 2:
    for i, block in enumerate(blocks):
      block_key = None if key is None else rng.fold_in(key, i)
      x = call(block, x, block_key)
    return x
  graphdef, first = nnx.split(blocks[0])
  states = [first] + [nnx.split(b)[1] for b in blocks[1:]]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  rates = np.array([b.drop_path_rate for b in blocks], np.float32)
  use_rates = key is not None and bool(rates.any())

  def body(x, scanned):
    state, rate, i = scanned
    block = nnx.merge(graphdef, state)
    block_key = None if key is None else rng.fold_in(key, i)
    return call(block, x, block_key, rate if use_rates else 0.0), None

  x, _ = jax.lax.scan(body, x, (stacked, jnp.asarray(rates),
                                jnp.arange(len(blocks))))
  return x


class VisionTransformer(nnx.Module):
  """ViT encoder (optionally with a linear classification head).

  Tokens: ``[CLS, patch_1, ..., patch_N]`` (+ position embedding) -> blocks ->
  final LayerNorm. ``pool="cls"`` returns the CLS token of the final norm
  (MAE ``global_pool=False`` / M-MAE ``--cls_token``), ``pool="gap"`` the mean
  of the patch tokens after the final norm.

  Position embeddings: ``"learn"`` is timm's learned ``[1, 1+N, D]`` table
  (trunc-normal 0.02); ``"sincos2d"`` is MAE's fixed 2-D sin-cos table,
  computed on the fly (a constant, not a parameter, so no optimizer touches
  it).

  Args:
    variant: big_vision name, e.g. ``"B/16"`` or ``"Ti/4"``.
    img_size: square input side in pixels (multiple of the patch size).
    in_channels: input channels C (images are NHWC).
    num_classes: 0 for no head (features), else a linear head.
    pool: ``"cls"`` or ``"gap"``.
    pos_embed: ``"learn"`` or ``"sincos2d"``.
    drop_path_rate: maximal stochastic-depth rate (linear over depth).
    remat: rematerialise blocks in the backward pass (`REMAT_POLICIES`:
      "none", "full", "dots", "dots_no_batch"; True = "full").
    scan_blocks: run the blocks as one scan (`apply_blocks`).
    attention: how attention is computed (``ATTENTION_IMPLS``; module
      docstring); ``attention_seq_multiple``: token multiple of ``"cudnn"``.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); params stay
      ``param_dtype``. Outputs of ``__call__`` are float32.
    param_dtype: parameter dtype.
    width, depth, mlp_dim, num_heads, patch_size: override the variant
      (e.g. tiny models in tests).
    rngs: ``nnx.Rngs`` used only at construction.
  """

  def __init__(self, variant: str = "Ti/16", *, img_size: int = 224,
               in_channels: int = 3, num_classes: int = 0,
               pool: str = "cls", pos_embed: str = "learn",
               drop_path_rate: float = 0.0, remat: bool | str = False,
               scan_blocks: bool = False,
               attention: str = "xla", attention_seq_multiple: int = 64,
               dtype=jnp.float32, param_dtype=jnp.float32,
               width: int | None = None, depth: int | None = None,
               mlp_dim: int | None = None, num_heads: int | None = None,
               patch_size: int | None = None, rngs: nnx.Rngs):
    cfg = decode_variant(variant)
    overrides = dict(width=width, depth=depth, mlp_dim=mlp_dim,
                     num_heads=num_heads, patch_size=patch_size)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if "patch_size" not in cfg:
      raise ValueError(f"ViT variant {variant!r} has no patch size; write "
                       "e.g. 'B/16' or pass patch_size=.")
    if pool not in ("cls", "gap"):
      raise ValueError(f"pool must be 'cls' or 'gap', got {pool!r}.")
    if pos_embed not in ("learn", "sincos2d"):
      raise ValueError(
          f"pos_embed must be 'learn' or 'sincos2d', got {pos_embed!r}.")
    p = cfg["patch_size"]
    if img_size % p:
      raise ValueError(f"img_size {img_size} is not a multiple of the patch "
                       f"size {p}; resize the images or pick another variant.")
    self.width, self.depth = cfg["width"], cfg["depth"]
    self.mlp_dim, self.num_heads = cfg["mlp_dim"], cfg["num_heads"]
    self.patch_size, self.img_size = p, img_size
    self.grid_size = img_size // p
    self.num_patches = self.grid_size**2
    self.in_channels = in_channels
    self.pool, self.pos_embed_type = pool, pos_embed
    self.remat = remat_policy(remat)
    self.scan_blocks = bool(scan_blocks)
    self.dtype = dtype
    d = self.width

    self.patch_embed = nnx.Conv(
        in_channels, d, kernel_size=(p, p), strides=(p, p), padding="VALID",
        kernel_init=patch_embed_init, bias_init=jax.nn.initializers.zeros,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cls_token = nnx.Param(
        token_init(rngs.params(), (1, 1, d), param_dtype))
    if pos_embed == "learn":
      self.pos_embed = nnx.Param(jax.nn.initializers.truncated_normal(0.02)(
          rngs.params(), (1, 1 + self.num_patches, d), param_dtype))
    else:
      self.pos_embed = None
    self.blocks = make_blocks(
        d, self.depth, self.mlp_dim, self.num_heads,
        drop_path_rate=drop_path_rate, dtype=dtype, param_dtype=param_dtype,
        attention=attention, attention_seq_multiple=attention_seq_multiple,
        rngs=rngs)
    self.norm = LayerNorm(d, epsilon=LN_EPS, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
    self.head = (nnx.Linear(d, num_classes, kernel_init=xavier_uniform,
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                 if num_classes else None)

  def position_embedding(self) -> jax.Array:
    """[1, 1+N, D] position table (CLS row first), float32 or param dtype."""
    if self.pos_embed is not None:
      return self.pos_embed.get_value()
    return jnp.asarray(
        sincos_pos_embed_2d(self.width, self.grid_size, True))[None]

  def embed_patches(self, images: jax.Array) -> jax.Array:
    """Patch projection + position embedding, no CLS: [B,H,W,C] -> [B,N,D]."""
    if images.ndim != 4 or images.shape[1:] != (
        self.img_size, self.img_size, self.in_channels):
      raise ValueError(
          f"ViT expects NHWC images of shape [B, {self.img_size}, "
          f"{self.img_size}, {self.in_channels}], got {images.shape}; check "
          "img_size/in_channels or the data pipeline's resize.")
    x = self.patch_embed(images.astype(self.dtype))  # [B, h, w, D]
    x = x.reshape(x.shape[0], -1, self.width)  # [B, N, D]
    return x + self.position_embedding()[:, 1:].astype(x.dtype)

  def cls_with_pos(self, batch: int) -> jax.Array:
    """CLS token plus its position embedding, tiled: [B, 1, D]."""
    cls = (self.cls_token.get_value() + self.position_embedding()[:, :1])
    return jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width))

  def run_blocks(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
    """Transformer blocks then the final LayerNorm: [B, T, D] -> [B, T, D]."""
    return self.norm(apply_blocks(self.blocks, x, key, self.remat,
                                  self.scan_blocks))

  def block_tokens(self, images: jax.Array) -> list[jax.Array]:
    """Tokens after each block (deterministic): a list of [B, 1+N, D].

    For diagnostics such as the per-block matrix entropy of the patch tokens
    (`mi_ssl_jax.matrix.token_entropy`); the final norm is not applied.
    """
    x = self.embed_patches(images)
    x = jnp.concatenate([self.cls_with_pos(x.shape[0]), x], axis=1)
    outs = []
    for block in self.blocks:
      x = block(x)
      outs.append(x.astype(jnp.float32))
    return outs

  def encode(self, images: jax.Array,
             key: jax.Array | None = None) -> jax.Array:
    """All tokens after the final norm: [B, H, W, C] -> [B, 1+N, D]."""
    x = self.embed_patches(images)
    x = jnp.concatenate([self.cls_with_pos(x.shape[0]), x], axis=1)
    return self.run_blocks(x, key)

  def __call__(self, images: jax.Array, *,
               key: jax.Array | None = None) -> jax.Array:
    """Pooled features [B, D] (or logits [B, classes]), float32.

    Args:
      images: float [B, H, W, C].
      key: PRNG key for drop path; ``None`` = deterministic (evaluation).
    """
    tokens = self.encode(images, key)  # [B, 1+N, D]
    feats = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(1)
    if self.head is not None:
      feats = self.head(feats)
    return feats.astype(jnp.float32)
