"""Weights in and out at the job level: bare backbones from PyTorch files
for the evaluation jobs, and a run's weights out as safetensors.

The conversions themselves (names, layouts, position tables) are
`mi_ssl_jax.interop`, which the trainer also uses; this module builds on the
jobs (`jobs.base.Pretrained`) and the fine-tuning recipe (finding a run's
backbone), so it lives in their layer. Command line:

  python -m mi_ssl_jax.jobs.weights export --workdir=RUN --out=x.safetensors
  python -m mi_ssl_jax.jobs.weights convert --in=x.pth --out=x.safetensors

docs/interop.md has what each does and what the tests prove.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from mi_ssl_jax import interop
from mi_ssl_jax.errors import UserError
from mi_ssl_jax.interop import (
  InteropError,
  export_module,
  flatten,
  from_torch,
  parse_spec,
  place,
  read_state,
  resnet_stages,
  timm_name,
  write_state,
)


def _vit_hparams(imported: Mapping[str, np.ndarray], source: str,
                 metadata: Mapping[str, str]) -> dict[str, Any]:
  """ViT constructor arguments read off the arrays: the head count of a
  standard size from its name, of any other size from the file's header
  (`interop.NUM_HEADS_KEY`, written by our exports)."""
  from mi_ssl_jax.models import vit  # noqa: PLC0415
  kernel = imported["patch_embed/kernel"]  # [p, p, C, D]
  width = int(kernel.shape[3])
  depth = 1 + max(int(k.split("/")[1]) for k in imported
                  if k.startswith("blocks/"))
  mlp = int(imported["blocks/0/mlp/fc1/kernel"].shape[1])
  size = next((s for s, v in vit.VIT_VARIANTS.items()
               if (v["width"], v["depth"], v["mlp_dim"]) == (
                   width, depth, mlp)), None)
  sizes = {}
  if size is None and interop.NUM_HEADS_KEY in metadata:
    size, sizes = "Ti", dict(width=width, depth=depth, mlp_dim=mlp,
                             num_heads=int(metadata[interop.NUM_HEADS_KEY]))
  if size is None:
    raise InteropError(
        f"{source}: a ViT of width {width}, depth {depth}, MLP {mlp} is none "
        f"of the variants {sorted(vit.VIT_VARIANTS)} and the file does not "
        "record its head count (our exports do); other sizes can only be "
        "imported into a pre-training run")
  hp = dict(variant=f"{size}/{kernel.shape[0]}", in_channels=int(
      kernel.shape[2]), sizes=sizes)
  if "pos_embed" in imported:
    n = imported["pos_embed"].shape[1] - 1
    hp["img_size"] = int(round(n**0.5)) * int(kernel.shape[0])
  return hp


def _bare_method(kind: str) -> types.SimpleNamespace:
  """A method-like namespace whose ``predict_fn`` reads a bare backbone."""
  if kind == "resnet":
    predict = lambda model, batch: model(batch["image"], train=False)
  else:
    predict = lambda model, batch: model(batch["image"])
  return types.SimpleNamespace(__name__=f"imported_{kind}",
                               predict_fn=predict)


def load_imported(config: Any, model_overrides: Mapping[str, Any] | None,
                  mesh: Any) -> Any:
  """A `jobs.base.Pretrained` built from ``config.init_from`` =
  ``"<format>:<file>"``: the ViT encoder (CLS feature after the final norm,
  as the MAE probe; a learned position table kept as learned) or the ResNet
  (pooled features, running statistics), replicated over ``mesh``.

  The image size is the checkpoint's (ViT) or ``config.image_size`` (ResNet,
  default 224); ``config.dataset`` is required (no pre-training run to take
  it from). ``model_overrides["drop_path_rate"]`` reaches the ViT.
  """
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from mi_ssl_jax import config_lib, models, sharding  # noqa: PLC0415
  from mi_ssl_jax.jobs import base  # noqa: PLC0415
  spec = config.init_from
  source = f"config.init_from={spec!r}"
  fmt, path = parse_spec(spec)
  if not config.get("dataset", ""):
    raise config_lib.ConfigError(
        f"{source} holds weights only: set --config.dataset=<tfds name> to "
        "say what to evaluate on")
  state = read_state(path)
  kind, imported = from_torch(state, fmt)
  if kind == "mae":
    imported = {k[len("encoder/"):]: v for k, v in imported.items()
                if k.startswith("encoder/")}
    kind = "vit"
  drop = float((model_overrides or {}).get("drop_path_rate", 0.0) or 0.0)
  if kind == "vit":
    hp = _vit_hparams(imported, source, interop.read_metadata(path))
    hp["img_size"] = hp.get("img_size") or int(config.get("image_size", 0)
                                               or 224)
    learned = "pos_embed" in imported and fmt != "mae"
    new = lambda: models.VisionTransformer(
        hp["variant"], img_size=hp["img_size"], in_channels=hp["in_channels"],
        pos_embed="learn" if learned else "sincos2d", drop_path_rate=drop,
        num_classes=0, rngs=nnx.Rngs(0), **hp["sizes"])
    imported = {k: v for k, v in imported.items() if not k.startswith("head/")}
    model_cfg = dict(variant=hp["variant"], learned_pos_embed=learned,
                     **hp["sizes"])
    image_size = hp["img_size"]
    channels = hp["in_channels"]
  else:
    stages = resnet_stages(state)
    block = "bottleneck" if "blocks/0/conv3/kernel" in imported else "basic"
    depth = next((d for d, (b, s) in models.RESNET_LAYOUTS.items()
                  if (b, s) == (block, stages)), None)
    if depth is None:
      raise InteropError(f"{source}: a ResNet with {block} blocks {stages} "
                         "per stage is none of ResNet-18/34/50/101/152")
    kernel = imported["conv1/kernel"]  # [k, k, C, width]
    stem = "imagenet" if kernel.shape[0] == 7 else "cifar"
    channels = int(kernel.shape[2])
    new = lambda: models.ResNet(depth, stem=stem, in_channels=channels,
                                width=int(kernel.shape[3]), num_classes=0,
                                rngs=nnx.Rngs(0))
    imported = {k: v for k, v in imported.items() if not k.startswith("fc/")}
    model_cfg = dict(depth=depth, stem=stem)
    image_size = int(config.get("image_size", 0) or 224)
  repl = sharding.replicated(mesh)
  abstract = nnx.eval_shape(new)
  graphdef, variables = nnx.split(abstract)
  pure = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                     sharding=repl),
                      nnx.to_pure_dict(variables))
  trees, _ = place(imported, {"model": pure}, image_size=image_size,
                   source=source)
  unset = [k for k, v in flatten(trees["model"]).items()
           if isinstance(v, jax.ShapeDtypeStruct)]
  if unset:
    raise InteropError(f"{source}: the checkpoint has no {unset[0]!r} "
                       f"({len(unset)} arrays of the {kind} missing)")
  nnx.replace_by_pure_dict(variables, trees["model"])
  model = nnx.merge(graphdef, variables)
  pre = ml_collections.ConfigDict(dict(
      method=f"imported_{kind}", dataset=config.dataset,
      data_dir=config.get("data_dir", "") or "", image_size=image_size,
      channels=channels, seed=0, model=model_cfg))
  return base.Pretrained(method=_bare_method(kind), model=model, config=pre,
                         step=None, path=spec)


def export_run(workdir: str, out: str, fmt: str = "timm") -> str:
  """Writes the backbone (or MAE) of the run at ``workdir`` to ``out``.

  Returns the timm architecture name of the exported network.
  """
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415

  from mi_ssl_jax import config_lib, methods, model_state, paths  # noqa
  from mi_ssl_jax.finetune import classifier  # noqa: PLC0415
  from mi_ssl_jax.jobs import base  # noqa: PLC0415
  pre = ml_collections.ConfigDict(config_lib.upgrade_renamed_fields(
      paths.read_json(base._find_run_config(workdir))))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  model = model_state.restore_model(pre, workdir, one)
  method = methods.get_method(pre.method)
  network = getattr(model, "mae", None) if fmt == "mae" else (
      classifier.find_backbone(method, model))
  if network is None:
    raise InteropError(f"the run at {workdir!r} ({pre.method}) has no ViT, "
                       "MAE or ResNet to export")
  write_state(export_module(network, fmt), out,
              interop.export_metadata(network))
  return timm_name(network)


def main(argv: list[str] | None = None) -> int:
  """``export`` a run's weights; ``convert`` a ``.pth`` to safetensors."""
  parser = argparse.ArgumentParser(prog="python -m mi_ssl_jax.jobs.weights")
  sub = parser.add_subparsers(dest="command", required=True)
  ex = sub.add_parser("export", help="a run's backbone -> .safetensors")
  ex.add_argument("--workdir", required=True)
  ex.add_argument("--out", required=True)
  ex.add_argument("--format", default="timm", choices=("timm", "mae"))
  cv = sub.add_parser("convert", help=".pth -> .safetensors (needs torch)")
  cv.add_argument("--in", dest="src", required=True)
  cv.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == "convert":
      return interop.main(["convert", f"--in={args.src}",
                           f"--out={args.out}"])
    name = export_run(args.workdir, args.out, args.format)
  except UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2
  if args.format == "mae":
    print(f"wrote {args.out} (facebookresearch/mae models_mae names)")
  else:
    print(f"wrote {args.out}; load it with timm.create_model({name!r}, "
          f"pretrained=True, num_classes=0, pretrained_cfg_overlay=dict("
          f"file={args.out!r}))")
  return 0


if __name__ == "__main__":
  sys.exit(main())
