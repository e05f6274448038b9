r"""The Fashion-MNIST study for the first GPU it meets (no TensorFlow).

  python -m mi_ssl_jax.study.gpu --out=bench_results/gpu_study  # make gpu-study
  bash bench/gpu_study.sh       # on a lent machine: OUT, PYTHON, DEADLINE_MIN

MAE / U-MAE / M-MAE (`configs/fmnist_mae.py`), Matrix-SSL / MEC
(`configs/fmnist_siamese.py`) and the pre-registered positive control
(VICReg on the small ViT, `configs/fmnist_siamese.py:vit`) for up to
`--max_epochs` (100) epochs each,
evaluated like the CPU study (`configs/study/fmnist.py`: weighted kNN,
k = 20; the `simclr_linear` probe on standardised features, 30 epochs)
beside raw pixels and each family's random init. Runs where only jax, flax,
optax, orbax, numpy and ml-collections are installed: the IDX files are
read with numpy (`mi_ssl_jax.data.fashion_mnist`), the augmentation runs
inside the jitted step (`train_inputs.make_device_inputs`), the step is the
trainer's (`bench.step.build_program`), the evaluation is
`mi_ssl_jax.evaluators`' math on device arrays. A ~30-second calibration
sizes the grid to `--deadline_min` (6.5 minutes); results are one JSON per
run in `<out>/runs/` (a rerun skips finished ones) and `<out>/gpu_study.md`.

Modules: `grid` (the runs, data order, sizing arithmetic, keys; no JAX),
`device` (programs and training), `evaluate` (features, kNN, probe,
baselines), `table` (JSON -> Markdown), `cli` (flags, calibration, plan,
execution).
"""
