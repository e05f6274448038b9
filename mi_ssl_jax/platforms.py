"""Hardware-dependent choices of a program, made from the devices it runs on.

One program for every platform: the choices that depend on the hardware are
made once, when a run is built, from the platform of the devices of its mesh
(or of the target topology of an ahead-of-time compile) or from the config,
and handed to the model and the losses as plain values. Nothing traces a
different graph because of the host that happens to trace it (no
`jax.default_backend()` at trace time), so a CPU test that forces the
accelerator choice, an ahead-of-time compile for a TPU slice on a laptop, and
the accelerator run itself all trace the same program.

The choices (config fields, "auto" = the platform's default below):

* ``config.attention``: how a ViT computes softmax attention
  (`mi_ssl_jax.models.vit.Attention`):
  - ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")``,
    [B, T, N, H] operands; what XLA fuses best on TPUs;
  - ``"xla_heads_first"``: the same numbers written heads-major (one
    transpose of the fused qkv to [3, B, N, T, H]); on XLA:CPU it avoids a
    layout copy around each batched matmul (docs/benchmarks.md, "CPU
    parity");
  - ``"cudnn"``: cuDNN's fused flash attention through
    ``jax.nn.dot_product_attention(implementation="cudnn")`` on bf16/fp16
    operands, token counts padded to a multiple of
    ``config.attention_seq_multiple`` and masked by sequence lengths
    (docs/benchmarks.md, "GPU"); float32 operands fall back to ``"xla"``
    (cuDNN's fused kernels take half precision only).
* ``config.logdet``: the factorisation of log det A for SPD A in the M-MAE
  regulariser and EMI (`mi_ssl_jax.matrix.logdet_psd`): ``"cholesky"`` or
  ``"lu"`` (both exact; on a CPU whose cores other threads compete for,
  jaxlib's Cholesky slows down by an order of magnitude while LU does not:
  docs/design.md §3.2).

Code that builds a model without going through
`mi_ssl_jax.model_state.method_config` (which resolves "auto") gets the
portable choices ``"xla"`` and ``"cholesky"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from mi_ssl_jax.config_lib import ConfigError
from mi_ssl_jax.models.vit import ATTENTION_IMPLS

LOGDET_METHODS = ("cholesky", "lu")
PLATFORMS = ("cpu", "gpu", "tpu")

# "auto" per platform (device.platform of the run's devices).
PLATFORM_DEFAULTS = {
    "cpu": dict(attention="xla_heads_first", logdet="lu"),
    "gpu": dict(attention="cudnn", logdet="cholesky"),
    "tpu": dict(attention="xla", logdet="cholesky"),
}
# What a model built without a resolved config uses (valid everywhere).
PORTABLE = dict(attention="xla", logdet="cholesky")
# cuDNN's flash attention refused 197 tokens on an H200 (jax 0.11.2, cuDNN
# 9); padded to a multiple of 64 and masked by sequence lengths it ran
# (docs/benchmarks.md, "GPU").
DEFAULT_SEQ_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The resolved choices of one program (see the module docstring)."""

  attention: str = PORTABLE["attention"]
  logdet: str = PORTABLE["logdet"]
  attention_seq_multiple: int = DEFAULT_SEQ_MULTIPLE

  def __post_init__(self):
    if self.attention not in ATTENTION_IMPLS:
      raise ConfigError(f"config.attention must be 'auto' or one of "
                        f"{ATTENTION_IMPLS}, got {self.attention!r}")
    if self.logdet not in LOGDET_METHODS:
      raise ConfigError(f"config.logdet must be 'auto' or one of "
                        f"{LOGDET_METHODS}, got {self.logdet!r}")
    if (isinstance(self.attention_seq_multiple, bool)
        or not isinstance(self.attention_seq_multiple, int)
        or self.attention_seq_multiple < 1):
      raise ConfigError("config.attention_seq_multiple must be a positive "
                        f"integer, got {self.attention_seq_multiple!r}")


def cpu_model() -> str:
  """The CPU's model name (Linux `/proc/cpuinfo`), else what `platform`
  reports, for the machine line of reports and benchmarks."""
  import platform  # noqa: PLC0415
  model = platform.processor() or platform.machine() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return model


def devices_platform(devices: Iterable[Any]) -> str:
  """"cpu" | "gpu" | "tpu" of `devices` (a mesh's, or a topology's).

  Raises:
    ConfigError: no devices, or devices of several platforms.
  """
  kinds = {getattr(d, "platform", "cpu") for d in devices}
  kinds = {"gpu" if k in ("cuda", "rocm") else k for k in kinds}
  if len(kinds) != 1:
    raise ConfigError(f"the run's devices must share one platform, got "
                      f"{sorted(kinds) or 'none'}")
  (platform,) = kinds
  return platform


def mesh_platform(mesh: Any) -> str:
  """The platform of a `jax.sharding.Mesh`'s devices."""
  return devices_platform(mesh.devices.flat)


def resolve(config: Mapping[str, Any], platform: str) -> Kernels:
  """The choices of `config` for devices of `platform` ("auto" resolved).

  Raises:
    ConfigError: an unknown value (one line naming the field).
  """
  defaults = PLATFORM_DEFAULTS.get(platform, PORTABLE)
  pick = lambda name: (defaults[name] if config.get(name, "auto") in (
      "auto", None) else config.get(name))
  return Kernels(attention=pick("attention"), logdet=pick("logdet"),
                 attention_seq_multiple=config.get(
                     "attention_seq_multiple", DEFAULT_SEQ_MULTIPLE))


def of_config(config: Mapping[str, Any]) -> Kernels:
  """The choices a method reads from its (already resolved) config.

  "auto" here means the config did not pass through `resolve` (a model
  built directly, e.g. in a test): the portable choices.
  """
  return resolve(config, "portable")
