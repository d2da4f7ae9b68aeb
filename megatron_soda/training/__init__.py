"""Training layer for SODA on megatron-core (megatron.training is not part of the wheel).

Entry point: ``pretrain_soda.py`` -> :func:`megatron_soda.training.main.main`.
"""
