"""The run's inputs, checked before anything is built: the tokenizer (with the number of
codebooks the artifacts carry) and the data shards."""

from __future__ import annotations

import os

import torch

from megatron_soda.config import ConfigError, TrainConfig
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError


def _data_num_codebooks(config: TrainConfig) -> int | None:
    """The codebook count recorded by the shards (PREFIX.stats.json); None if none records it.
    Shards that disagree are refused."""
    from megatron_soda.format import shard_layout
    from megatron_soda.training.data import all_prefixes

    found: dict[int, str] = {}
    for prefix in all_prefixes(config.data):
        layout = shard_layout(prefix)
        if layout is not None:
            found.setdefault(layout.num_codebooks, prefix)
    if len(found) > 1:
        raise ConfigError("the data shards were made with different numbers of codebooks: "
                          + ", ".join(f"{p} has {n}" for n, p in sorted(found.items())))
    return next(iter(found), None)


def load_tokenizer(config: TrainConfig) -> SodaTokenizer:
    """A tokenizer directory (e.g. a checkpoint's ``tokenizer/``) carries its layout; for a base
    ``tokenizer.json`` the codebook count is ``--num-codebooks``, else the data's, else the
    format's default.  A ``--num-codebooks`` that contradicts the directory is refused here, one
    that contradicts the data by the shard check."""
    from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

    path, flag = config.model.tokenizer, config.model.num_codebooks
    try:
        if os.path.isdir(path):
            return SodaTokenizer.load(path, num_codebooks=flag)
        num_codebooks = flag or _data_num_codebooks(config) or DEFAULT_NUM_CODEBOOKS
        return SodaTokenizer.load(path, num_codebooks=num_codebooks)
    except (ValueError, OSError) as e:  # a malformed file, an impossible layout: one line, not a traceback
        if isinstance(e, (ConfigError, TokenizerError)):
            raise
        raise ConfigError(f"--tokenizer {path}: {e}") from None


def check_data(config: TrainConfig, tokenizer: SodaTokenizer) -> dict:
    """Shard checks on rank 0; the verdict is broadcast so that every rank stops together.
    Returns the codec the speech shards share (``codec``, ``codec_fingerprint``,
    ``codec_random``; empty if none records one), for the checkpoints to record.  When the
    default ``--split`` leaves a prefix no validation documents, rank 0 says so and every rank
    trains without validation: ``config.data.split`` becomes the default without its
    validation part (megatron would loop forever on the empty split)."""
    from megatron_soda.config.data import DEFAULT_SPLIT
    from megatron_soda.training.data import all_prefixes, blends
    from megatron_soda.training.data_checks import (
        DataError,
        check_blend_provenance,
        check_prefix,
        check_split,
        without_validation,
    )

    data = config.data
    verdict: list = [None, {}, []]  # error, shared codec, prefixes the default split leaves no validation
    if torch.distributed.get_rank() == 0:
        try:
            verdict[1] = check_blend_provenance(list(all_prefixes(data)))
            b = blends(data)
            split_prefixes = set(b["blend"][0]) if "blend" in b else set()  # --split divides these
            for prefix in all_prefixes(data):
                summary = check_prefix(prefix, tokenizer, data.data_check, data.data_check_max_gib)
                if prefix in split_prefixes and summary and not check_split(prefix, summary["sequences"], data.split):
                    verdict[2].append(f"{prefix} ({summary['sequences']} documents)")
        except (ValueError, OSError) as e:
            verdict[0] = str(e)
    torch.distributed.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise DataError(verdict[0])
    if verdict[2]:
        data.split = without_validation(DEFAULT_SPLIT)
        if torch.distributed.get_rank() == 0:
            print(f"warning: the default --split {DEFAULT_SPLIT} leaves no validation documents in "
                  f"{', '.join(verdict[2])}: training without validation (pass held-out data with "
                  "--valid-data-path, or a --split of your own)", flush=True)
    return verdict[1]
