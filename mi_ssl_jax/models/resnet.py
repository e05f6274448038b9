"""ResNet-18/34/50/101/152 (torchvision v1.5 layout) in NNX.

Matches ``torchvision.models.resnet`` as used by MEC / Matrix-SSL / SimSiam:
stride on the 3x3 conv of the bottleneck (v1.5), bias-free convolutions,
Kaiming-normal (fan_out, ReLU) conv init, BatchNorm (momentum 0.1 in PyTorch's
convention = 0.9 in Flax's, eps 1e-5) and ``zero_init_residual=True``: the last
BN gamma of every residual block starts at 0. ResNet-50 without ``fc`` has
23,508,032 parameters, as torchvision's.

Stems: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) and ``"cifar"`` (3x3/1
conv, no max-pool), the usual small-image variant.

BatchNorm uses the statistics of the array it sees. Under ``jax.jit`` with the
batch sharded over a mesh, that array is the GLOBAL batch, so statistics are
over the global batch (PyTorch SyncBatchNorm, as MEC/Matrix-SSL/Barlow Twins
use) with collectives inserted by XLA; no ``axis_name`` is needed.
Train/eval mode is an explicit call argument (``train=``), not module state.
One difference from PyTorch: Flax updates the running variance with the biased
batch variance (PyTorch: unbiased); this affects only eval-mode statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mi_ssl_jax.models import norm

# (block type, blocks per stage) per depth, torchvision.
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), not
# truncated.
conv_init = jax.nn.initializers.variance_scaling(
    2.0, "fan_out", "normal")  # "normal" = untruncated.


class _Layers:
  """Factory for convs and BNs sharing dtype/param_dtype/rngs."""

  def __init__(self, dtype, param_dtype, rngs):
    self.dtype, self.param_dtype, self.rngs = dtype, param_dtype, rngs

  def conv(self, cin, cout, k, stride=1):
    pad = (k - 1) // 2  # torchvision: padding = k // 2 for odd k.
    return nnx.Conv(cin, cout, kernel_size=(k, k), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=False,
                    kernel_init=conv_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, rngs=self.rngs)

  def bn(self, c, zero_gamma=False):
    # float32 statistics and normalisation, output in the compute dtype.
    return norm.BatchNorm(
        c, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
        param_dtype=self.param_dtype,
        scale_init=(jax.nn.initializers.zeros if zero_gamma
                    else jax.nn.initializers.ones), rngs=self.rngs)


class BasicBlock(nnx.Module):
  """3x3 -> BN -> ReLU -> 3x3 -> BN (+ projection shortcut) -> ReLU."""
  expansion = 1

  def __init__(self, cin, planes, stride, zero_init_residual, layers):
    cout = planes * self.expansion
    self.conv1 = layers.conv(cin, planes, 3, stride)
    self.bn1 = layers.bn(planes)
    self.conv2 = layers.conv(planes, cout, 3)
    self.bn2 = layers.bn(cout, zero_gamma=zero_init_residual)
    # Projection shortcut (conv1x1 + BN) when the shape changes.
    self.downsample = (
        nnx.List([layers.conv(cin, cout, 1, stride), layers.bn(cout)])
        if stride != 1 or cin != cout else None)

  def __call__(self, x, use_running_average):
    ura = use_running_average
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    if self.downsample is not None:
      conv, bn = self.downsample
      x = bn(conv(x), use_running_average=ura)
    return jax.nn.relu(x + y)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (stride) -> 1x1 (x4), BN after each (ResNet v1.5)."""
  expansion = 4

  def __init__(self, cin, planes, stride, zero_init_residual, layers):
    cout = planes * self.expansion
    self.conv1 = layers.conv(cin, planes, 1)
    self.bn1 = layers.bn(planes)
    self.conv2 = layers.conv(planes, planes, 3, stride)
    self.bn2 = layers.bn(planes)
    self.conv3 = layers.conv(planes, cout, 1)
    self.bn3 = layers.bn(cout, zero_gamma=zero_init_residual)
    # Projection shortcut (conv1x1 + BN) when the shape changes.
    self.downsample = (
        nnx.List([layers.conv(cin, cout, 1, stride), layers.bn(cout)])
        if stride != 1 or cin != cout else None)

  def __call__(self, x, use_running_average):
    ura = use_running_average
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    if self.downsample is not None:
      conv, bn = self.downsample
      x = bn(conv(x), use_running_average=ura)
    return jax.nn.relu(x + y)


class ResNet(nnx.Module):
  """ResNet backbone returning global-average-pooled features.

  Args:
    depth: 18, 34, 50, 101 or 152.
    stem: ``"imagenet"`` (7x7/2 conv + max-pool) or ``"cifar"`` (3x3/1 conv,
      no max-pool).
    in_channels: input channels (NHWC images).
    num_classes: 0 for a backbone (features [B, 8*width*expansion]), else a
      final ``fc`` linear layer.
    width: channels of the first stage (64 in torchvision; small in tests).
    zero_init_residual: zero the last BN gamma in every block (torchvision
      ``zero_init_residual=True``, as MEC/Matrix-SSL/SimSiam).
    dtype, param_dtype: compute and parameter dtypes. BatchNorm statistics
      and normalisation (`norm.BatchNorm`) and the global average pool are
      float32 whatever ``dtype``; outputs are float32.
    rngs: used only at construction.
  """

  def __init__(self, depth: int = 50, *, stem: str = "imagenet",
               in_channels: int = 3, num_classes: int = 0, width: int = 64,
               zero_init_residual: bool = True, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if depth not in RESNET_LAYOUTS:
      raise ValueError(f"unsupported ResNet depth {depth}; use one of "
                       f"{sorted(RESNET_LAYOUTS)}.")
    if stem not in ("imagenet", "cifar"):
      raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}.")
    kind, stages = RESNET_LAYOUTS[depth]
    block_cls = BasicBlock if kind == "basic" else Bottleneck
    layers = _Layers(dtype, param_dtype, rngs)
    self.stem, self.dtype = stem, dtype
    self.conv1 = (layers.conv(in_channels, width, 7, 2) if stem == "imagenet"
                  else layers.conv(in_channels, width, 3, 1))
    self.bn1 = layers.bn(width)
    blocks, cin, ends = [], width, []
    for i, n in enumerate(stages):
      planes = width * 2**i
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(cin, planes, stride, zero_init_residual,
                                layers))
        cin = planes * block_cls.expansion
      ends.append(len(blocks) - 1)
    self.stage_ends = tuple(ends)  # index of each stage's last block
    self.blocks = nnx.List(blocks)
    self.num_features = cin
    self.fc = (nnx.Linear(cin, num_classes, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
               if num_classes else None)

  def stage_outputs(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """Feature maps at the end of each stage: a list of [B, h, w, c].

    For diagnostics (e.g. the per-stage matrix entropy of the spatial
    positions, `mi_ssl_jax.matrix.token_entropy`); the last one, averaged
    over space, is what `__call__` returns (without `fc`).
    """
    ura = not train
    x = self.conv1(x.astype(self.dtype))
    x = jax.nn.relu(self.bn1(x, use_running_average=ura))
    if self.stem == "imagenet":
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outs = []
    for i, block in enumerate(self.blocks):
      x = block(x, ura)
      if i in self.stage_ends:
        outs.append(x.astype(jnp.float32))
    return outs

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> float32 features [B, num_features] (or logits).

    Args:
      x: images, NHWC.
      train: True uses batch statistics and updates the running averages
        (in place, like every NNX BatchNorm); False uses running averages.
    """
    ura = not train
    x = self.conv1(x.astype(self.dtype))
    x = jax.nn.relu(self.bn1(x, use_running_average=ura))
    if self.stem == "imagenet":
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, ura)
    # Global average pool in float32 (the features evaluators read): [B, C]
    x = x.astype(jnp.float32).mean(axis=(1, 2))
    if self.fc is not None:
      x = self.fc(x)
    return x.astype(jnp.float32)
