"""Data: input readers, codec stage, SODA document interleaving, Megatron shards."""
