"""Offline jobs: ``config.job = "<name>"`` runs ``<name>.run(config, workdir)``.

Each job reads a finished pre-training run (``--config.init_from``), evaluates
or fine-tunes it and writes a result JSON that names its protocol
(``<workdir>/eval/``): ``linear_probe``, ``knn``, ``evaluate`` (both on one
feature extraction) and ``finetune``. The pieces a job shares with the
periodic evaluators (protocols, feature extraction) live in
:mod:`mi_ssl_jax.evaluators`; the fine-tuning recipe in
:mod:`mi_ssl_jax.finetune`. Training inside a job (the linear head, the
fine-tuned network) runs through the trainer's loop, :mod:`mi_ssl_jax.loop`.

Layering: jobs import evaluators, ``finetune`` and the core modules; nothing
below imports a job.
"""
