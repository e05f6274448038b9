"""Weights in and out without PyTorch (mi_ssl_jax/interop.py).

PyTorch names and layouts, exact our -> file -> our round trips, the
placement into a run's model (shape and table checks), a pre-training run
started from an MAE file and exported again, and an evaluation job on a
timm-named file. Forward parity with timm / the official MAE code is in
tests/test_interop_torch.py (needs the interop extra).
"""

import importlib.util

import jax
import numpy as np
import pytest
from flax import nnx

from mi_ssl_jax import interop, model_state, models
from mi_ssl_jax.jobs import weights

pytestmark = pytest.mark.usefixtures("fast_compile")

# timm `vit_*` state-dict keys of a depth-1 ViT with a head (timm 1.0
# VisionTransformer: no layer scale, class token, final norm).
TIMM_VIT_KEYS = sorted([
    "cls_token", "pos_embed", "patch_embed.proj.weight",
    "patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias",
    "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
    "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
    "blocks.0.norm2.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
    "norm.weight", "norm.bias", "head.weight", "head.bias"])


def randomize(module, seed=0):
  """Every parameter and BatchNorm statistic of ``module`` drawn at random
  (variances positive), so no array is a constant of the initialiser."""
  state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
  rng = np.random.default_rng(seed)
  flat = interop.flatten(nnx.to_pure_dict(state))
  new = {k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith("/var")
             else 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
         for k, v in flat.items()}
  pure = nnx.to_pure_dict(state)
  leaves, treedef = jax.tree_util.tree_flatten(pure)
  pure = jax.tree_util.tree_unflatten(
      treedef, [jax.numpy.asarray(new[k]) for k in flat])
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(module, state)
  return module


def _assert_same(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].shape == b[k].shape, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_vit_timm_names_and_exact_round_trip(tmp_path):
  vit = randomize(models.VisionTransformer(
      "mu/4", img_size=8, num_classes=3, pos_embed="learn",
      rngs=nnx.Rngs(0)))
  out = interop.export_module(vit)
  assert sorted(out) == TIMM_VIT_KEYS
  assert out["patch_embed.proj.weight"].shape == (32, 3, 4, 4)  # OIHW
  assert out["blocks.0.attn.qkv.weight"].shape == (96, 32)  # [out, in]
  kernel = np.asarray(vit.blocks[0].attn.qkv.kernel[...])  # [in, out]
  np.testing.assert_array_equal(out["blocks.0.attn.qkv.weight"], kernel.T)
  path = str(tmp_path / "vit.safetensors")
  interop.write_state(out, path)
  kind, back = interop.from_torch(interop.read_state(path), "timm")
  assert kind == "vit"
  _assert_same(back, interop.module_arrays(vit))


def test_mae_official_names_and_exact_round_trip(tmp_path):
  mae = randomize(models.MaskedAutoencoder(
      "mu/4", img_size=8, decoder_width=16, decoder_depth=2, decoder_heads=2,
      rngs=nnx.Rngs(0)))
  out = interop.export_module(mae, "mae")
  for key, shape in [("pos_embed", (1, 5, 32)),
                     ("decoder_pos_embed", (1, 5, 16)),
                     ("mask_token", (1, 1, 16)),
                     ("decoder_embed.weight", (16, 32)),
                     ("decoder_blocks.1.attn.qkv.weight", (48, 16)),
                     ("decoder_norm.weight", (16,)),
                     ("decoder_pred.weight", (48, 16)),  # p*p*C = 48
                     ("blocks.0.mlp.fc1.weight", (128, 32))]:
    assert out[key].shape == shape, key
  path = str(tmp_path / "mae.safetensors")
  interop.write_state(out, path)
  # Into a differently initialised model of the same layout: equal arrays
  # and outputs.
  other = models.MaskedAutoencoder(
      "mu/4", img_size=8, decoder_width=16, decoder_depth=2, decoder_heads=2,
      rngs=nnx.Rngs(1))
  codec = model_state.ModelCodec(other)
  params, rest = codec.split(other)
  kind, imported = interop.from_torch(interop.read_state(path), "mae")
  trees, parts = interop.place(imported, {"params": params, "rest": rest},
                               image_size=8, source="test")
  assert kind == "mae" and parts == [""]
  loaded = codec.model(trees["params"], trees["rest"])
  _assert_same(interop.module_arrays(loaded), interop.module_arrays(mae))
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  key = jax.random.key(1)
  np.testing.assert_array_equal(loaded(images, key=key).pred,
                                mae(images, key=key).pred)


@pytest.mark.parametrize("depth,stem,keys", [(18, "cifar", 100),
                                             (50, "imagenet", 265)])
def test_resnet_torchvision_names_and_exact_round_trip(tmp_path, depth, stem,
                                                       keys):
  # torchvision resnet18 / resnet50 state dicts: 122 / 320 keys, of which
  # 20 / 53 are BatchNorm `num_batches_tracked` (not written) and 2 `fc`
  # (no classifier here).
  net = randomize(models.ResNet(depth, stem=stem, width=4, rngs=nnx.Rngs(0)))
  out = interop.export_module(net)
  assert len(out) == keys
  last = "layer4.1.bn2" if depth == 18 else "layer4.2.bn3"
  for name in ("conv1.weight", "bn1.running_var", "layer2.0.downsample.0."
               "weight", "layer2.0.downsample.1.running_mean", last + ".bias"):
    assert name in out, name
  assert out["conv1.weight"].shape == ((4, 3, 3, 3) if stem == "cifar"
                                       else (4, 3, 7, 7))
  path = str(tmp_path / "r.safetensors")
  interop.write_state(out, path)
  state = interop.read_state(path)
  assert interop.resnet_stages(state) == models.RESNET_LAYOUTS[depth][1]
  kind, back = interop.from_torch(state, "torchvision")
  assert kind == "resnet"
  _assert_same(back, interop.module_arrays(net))


def _mae_file(tmp_path, img=8, **kw):
  mae = randomize(models.MaskedAutoencoder(
      "mu/4", img_size=img, decoder_width=16, decoder_depth=1,
      decoder_heads=2, rngs=nnx.Rngs(0), **kw))
  path = str(tmp_path / "mae.safetensors")
  interop.write_state(interop.export_module(mae, "mae"), path)
  return path


def _trees(model):
  params, rest = model_state.ModelCodec(model).split(model)
  return {"params": params, "rest": rest}


def test_mismatches_name_the_key_and_both_shapes(tmp_path):
  path = _mae_file(tmp_path)
  _, imported = interop.from_torch(interop.read_state(path), "mae")
  wider = models.MaskedAutoencoder("mu/4", img_size=8, width=64,
                                   decoder_width=16, decoder_depth=1,
                                   decoder_heads=2, rngs=nnx.Rngs(0))
  shape = lambda n: rf"\(([\d, ]+, )?{n},?\)"
  with pytest.raises(interop.InteropError,
                     match=rf"'[\w/]+' has shape {shape(32)} in the "
                     rf"checkpoint and {shape(64)} in the model"):
    interop.place(imported, _trees(wider), image_size=8, source="x")
  bigger = models.MaskedAutoencoder("mu/4", img_size=16, decoder_width=16,
                                    decoder_depth=1, decoder_heads=2,
                                    rngs=nnx.Rngs(0))
  with pytest.raises(interop.InteropError,
                     match=r"pos_embed' has shape \(1, 5, (32|16)\), the "
                     r"model's fixed table \(1, 17, (32|16)\)"):
    interop.place(imported, _trees(bigger), image_size=16, source="x")
  deeper = models.MaskedAutoencoder("mu/4", img_size=8, depth=2,
                                    decoder_width=16, decoder_depth=1,
                                    decoder_heads=2, rngs=nnx.Rngs(0))
  with pytest.raises(interop.InteropError, match="'encoder/blocks/1/"):
    interop.place(imported, _trees(deeper), image_size=8, source="x")


def test_learned_table_is_refused_by_the_fixed_one(tmp_path):
  vit = randomize(models.VisionTransformer("mu/4", img_size=8,
                                           pos_embed="learn",
                                           rngs=nnx.Rngs(0)))
  path = str(tmp_path / "vit.safetensors")
  interop.write_state(interop.export_module(vit), path)
  _, imported = interop.from_torch(interop.read_state(path), "timm")
  mae = models.MaskedAutoencoder("mu/4", img_size=8, decoder_width=16,
                                 decoder_depth=1, decoder_heads=2,
                                 rngs=nnx.Rngs(0))
  with pytest.raises(interop.InteropError,
                     match="'pos_embed' is not the fixed 2-D sin-cos table"):
    interop.place(imported, _trees(mae), image_size=8, source="x")
  # The encoder of an MAE exported with timm names goes into an MAE encoder
  # (its table is the fixed one), leaving the decoder as it was.
  src = randomize(models.MaskedAutoencoder(
      "mu/4", img_size=8, decoder_width=16, decoder_depth=1, decoder_heads=2,
      rngs=nnx.Rngs(2)))
  interop.write_state(interop.export_module(src), path)
  _, imported = interop.from_torch(interop.read_state(path), "timm")
  trees, parts = interop.place(imported, _trees(mae), image_size=8,
                               source="x")
  assert parts == ["encoder/"]
  np.testing.assert_array_equal(
      trees["params"]["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"],
      src.encoder.blocks[0].attn.qkv.kernel[...])
  np.testing.assert_array_equal(trees["params"]["decoder_pred"]["kernel"],
                                mae.decoder_pred.kernel[...])


def test_unknown_keys_and_missing_torch_are_one_line_errors(tmp_path,
                                                            monkeypatch):
  with pytest.raises(interop.InteropError, match="'blocks.0.ls1.gamma'"):
    interop.from_torch({"patch_embed.proj.weight": np.zeros((4, 3, 2, 2)),
                        "blocks.0.ls1.gamma": np.zeros(4)}, "timm")
  pth = tmp_path / "w.pth"
  pth.write_bytes(b"")
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "torch" else real(n, *a))
  with pytest.raises(interop.InteropError,
                     match=r"PyTorch: pip install 'mi_ssl_jax\[interop\]'"):
    interop.read_state(str(pth))
  assert interop.parse_spec("gs://b/run") == (None, "gs://b/run")
  assert interop.parse_spec("mae:/a.pth") == ("mae", "/a.pth")


def test_pretraining_from_mae_weights_then_export(tmp_path):
  """M-MAE started from an MAE file (init_from="mae:..."), then exported."""
  from mi_ssl_jax import train  # noqa: PLC0415
  from mi_ssl_jax.configs import fmnist_mae  # noqa: PLC0415
  config = fmnist_mae.fmnist_mae("mmae", 1.0, tiny=True)
  config.total_steps = 1
  cfg = config.model
  src = randomize(models.MaskedAutoencoder(
      cfg.variant, img_size=28, in_channels=1, width=cfg.width,
      depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
      patch_size=cfg.patch_size, decoder_width=cfg.decoder_width,
      decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
      rngs=nnx.Rngs(5)))
  path = str(tmp_path / "mae.safetensors")
  interop.write_state(interop.export_module(src, "mae"), path)
  config.init_from = f"mae:{path}"
  rng = np.random.default_rng(0)
  batches = [{"image": rng.standard_normal((16, 28, 28, 1), np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)}]
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, train_iter=batches)
  # One AdamW step from the imported weights moves each by about the
  # learning rate; a random initialisation is ~0.1 away.
  out = str(tmp_path / "out.safetensors")
  assert weights.main(["export", f"--workdir={workdir}", f"--out={out}",
                       "--format=mae"]) == 0
  got, want = interop.read_state(out), interop.export_module(src, "mae")
  assert sorted(got) == sorted(want)
  for k in want:
    assert np.max(np.abs(got[k] - want[k])) < 5e-3, k
  assert weights.main(["export", f"--workdir={workdir}", f"--out={out}"]) == 0
  assert "decoder_embed.weight" not in interop.read_state(out)


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert weights.main(["export", f"--workdir={tmp_path}",
                       f"--out={tmp_path / 'x.safetensors'}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1


def _timm_file_job_config(tmp_path):
  """(kNN job config reading a timm-named ViT file, that ViT)."""
  from mi_ssl_jax.configs import knn as knn_config  # noqa: PLC0415
  vit = randomize(models.VisionTransformer(
      "mu/7", img_size=28, in_channels=1, pos_embed="learn",
      rngs=nnx.Rngs(0)))
  path = str(tmp_path / "vit.safetensors")
  interop.write_state(interop.export_module(vit), path)
  config = knn_config.get_config()
  config.init_from = f"timm:{path}"
  return config, vit


def test_jobs_load_a_timm_file(tmp_path):
  """An evaluation job reads a timm-named ViT (learned table) directly."""
  from mi_ssl_jax import config_lib  # noqa: PLC0415
  from mi_ssl_jax.jobs import base  # noqa: PLC0415
  config, vit = _timm_file_job_config(tmp_path)
  with pytest.raises(config_lib.ConfigError, match="set --config.dataset"):
    base.load_pretrained(config)
  config.dataset = "fashion_mnist"
  pre = base.load_pretrained(config)
  assert pre.config.image_size == 28 and pre.model.pos_embed is not None
  images = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
  np.testing.assert_array_equal(pre.method.predict_fn(
      pre.model, {"image": images}), vit(images))


@pytest.mark.slow  # the kNN job end to end (~30 s on 2 CPU cores)
def test_knn_job_on_a_timm_file(tmp_path):
  from mi_ssl_jax.jobs import knn  # noqa: PLC0415
  config, _ = _timm_file_job_config(tmp_path)
  config.dataset = "fashion_mnist"
  config.batch_size = 64
  config.max_train_examples = 128
  config.max_eval_examples = 64
  config.ks = (5,)
  result = knn.run(config, str(tmp_path / "knn"))
  assert any(k.startswith("top1") for k in result["metrics"])


@pytest.mark.slow  # ~45 s on 2 CPU cores; run with `make test-all`
def test_finetune_job_from_a_timm_file(tmp_path):
  """The fine-tuning job starts from a timm-named ViT file (the route of
  the official and timm checkpoints): it trains and evaluates."""
  import os  # noqa: PLC0415

  from mi_ssl_jax.configs import finetune as finetune_config  # noqa: PLC0415
  from mi_ssl_jax.jobs import finetune  # noqa: PLC0415
  if not (os.path.exists("/usr/share/datasets/fashion-mnist") or
          os.environ.get("MI_SSL_DATA_DIR")):
    pytest.skip("Fashion-MNIST not installed (make fashion-mnist)")
  vit = models.VisionTransformer("Ti/7", img_size=28, in_channels=1,
                                 pos_embed="learn", rngs=nnx.Rngs(0))
  path = str(tmp_path / "vit.safetensors")
  interop.write_state(interop.export_module(vit), path)
  config = finetune_config.get_config("runlocal")
  config.init_from = f"timm:{path}"
  config.dataset = "fashion_mnist"
  config.max_train_examples = 1024
  config.max_eval_examples = 500
  result = finetune.run(config, str(tmp_path / "finetune"))
  assert result["metrics"]["top1"] > 10.0  # above chance after 2 epochs


def test_a_non_standard_vit_comes_back_by_its_recorded_head_count(tmp_path):
  """The head count of a size outside the variant table is not in the
  arrays; our exports record it in the safetensors header, so the jobs
  rebuild the network (same features); without it, one error line."""
  from mi_ssl_jax.configs import knn as knn_config  # noqa: PLC0415
  from mi_ssl_jax.jobs import base  # noqa: PLC0415
  vit = randomize(models.VisionTransformer(
      "Ti/7", img_size=28, in_channels=1, pos_embed="learn", width=96,
      depth=2, mlp_dim=192, num_heads=3, rngs=nnx.Rngs(0)))
  config = knn_config.get_config()
  config.dataset = "fashion_mnist"
  bare = str(tmp_path / "bare.safetensors")
  interop.write_state(interop.export_module(vit), bare)
  config.init_from = f"timm:{bare}"
  with pytest.raises(interop.InteropError, match="head count"):
    base.load_pretrained(config)
  ours = str(tmp_path / "ours.safetensors")
  interop.write_state(interop.export_module(vit), ours,
                      interop.export_metadata(vit))
  assert interop.read_metadata(ours)[interop.NUM_HEADS_KEY] == "3"
  config.init_from = f"timm:{ours}"
  pre = base.load_pretrained(config)
  images = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
  np.testing.assert_array_equal(pre.method.predict_fn(
      pre.model, {"image": images}), vit(images))
