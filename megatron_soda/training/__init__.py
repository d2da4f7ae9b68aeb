"""Training layer for SODA on megatron-core (megatron.training is not part of the wheel).

Entry point: ``pretrain_soda.py`` -> :func:`megatron_soda.training.main.main` -> argv parsed into a
:class:`megatron_soda.config.TrainConfig` -> ``Trainer(config).train()``
(:mod:`megatron_soda.training.trainer`).
"""
