"""The data section: Megatron's blend syntax, splits, document masking, shard checks."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_soda.config.errors import ConfigError
from megatron_soda.config.fields import option

DEFAULT_SPLIT = "99,1,0"


@dataclass
class DataConfig:
    data_path: list[str] | None = option(
        None, "blend: 'PREFIX' or 'W1 PREFIX1 W2 PREFIX2 ...' (split by --split)")
    split: str | None = option(
        None, f"train,valid,test proportions of --data-path documents (default {DEFAULT_SPLIT}: "
        "there is no test pass; a shard too small for the default's validation split trains "
        "without validation; ignored when --valid-data-path is given)")
    train_data_path: list[str] | None = option(None, "blend used only for training")
    valid_data_path: list[str] | None = option(None, "held-out blend for validation")
    test_data_path: list[str] | None = option(None)
    data_cache_path: str | None = option(
        None, "where megatron's sample indices are cached (default: next to the shards)")
    num_workers: int | None = option(
        None, "DataLoader worker processes per rank (default 2 on cuda, 0 on cpu, where the ranks "
        "already use every core)")
    reset_attention_mask: bool = option(
        True, "let attention cross document boundaries (default: documents are masked apart at "
        "each EOS)", negative="--no-reset-attention-mask")
    reset_position_ids: bool = option(
        True, "keep positions running across documents (default: restart at each document)",
        negative="--no-reset-position-ids")
    eod_mask_loss: bool = option(
        False, "no loss at positions whose input is EOS (SODA trains on all positions)")
    data_check: str = option(
        "full", "check shards before training: full scans token ids of shards up to "
        "--data-check-max-gib (and samples larger ones), quick only checks files",
        choices=("full", "quick", "none"))
    data_check_max_gib: float = option(4.0)

    def validate(self, device: str) -> None:
        if self.data_path and self.train_data_path:
            raise ConfigError("give --data-path (with --split) or --train-data-path, not both")
        if not self.data_path and not self.train_data_path:
            raise ConfigError("no training data: pass --data-path (or --train-data-path)")
        if self.num_workers is None:
            self.num_workers = 2 if device == "cuda" else 0
        if self.num_workers < 0:
            raise ConfigError("--num-workers must be >= 0")
