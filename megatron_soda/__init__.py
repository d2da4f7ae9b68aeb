"""megatron_soda: native audio foundation models (the SODA recipe) on megatron-core."""

__version__ = "0.1.0"
