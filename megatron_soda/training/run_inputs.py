"""The run's inputs, checked before anything is built: the tokenizer (with the number of
codebooks the artifacts carry) and the data shards."""

from __future__ import annotations

import os

import torch

from megatron_soda.config import ConfigError, TrainConfig
from megatron_soda.tokenizer import SodaTokenizer, TokenizerError


def _data_num_codebooks(config: TrainConfig) -> int | None:
    """The codebook count recorded by the shards (PREFIX.stats.json); None if none records it.
    The shards' records are compared by the blend check (one comparison, here before the
    tokenizer exists): a blend of different codebook counts is refused here, any other
    disagreement as the data check would refuse it."""
    from megatron_soda.format import shard_layout
    from megatron_soda.training.data import all_prefixes
    from megatron_soda.training.data_checks import DataError, blend_provenance

    agreed, _, mismatch = blend_provenance(all_prefixes(config.data))
    if mismatch is not None:
        counts = mismatch.codebook_counts()
        if counts is None:
            raise DataError(mismatch.message())
        (a, _), (b, _) = mismatch.first, mismatch.other
        raise ConfigError(f"the data shards were made with different numbers of codebooks: {a} has "
                          f"{counts[0]}, {b} has {counts[1]}")
    if "layout" not in agreed:
        return None
    layout = shard_layout(agreed["layout"][0])  # the layout's own check: a malformed one is named
    return None if layout is None else layout.num_codebooks


def load_tokenizer(config: TrainConfig) -> SodaTokenizer:
    """A tokenizer directory (e.g. a checkpoint's ``tokenizer/``) carries its layout; for a base
    ``tokenizer.json`` the codebook count is ``--num-codebooks``, else the data's, else the
    format's default.  A ``--num-codebooks`` that contradicts the directory is refused here, one
    that contradicts the data by the shard check."""
    from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

    path, flag = config.model.tokenizer, config.model.num_codebooks
    if not os.path.isdir(path) and not flag:  # the shards' errors name the shards, not --tokenizer
        flag = _data_num_codebooks(config) or DEFAULT_NUM_CODEBOOKS
    try:
        return SodaTokenizer.load(path, num_codebooks=flag)
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
    validation part (megatron would loop forever on the empty split).  ``--sft`` needs SFT shards
    (:func:`megatron_soda.training.sft_data.check_sft_prefixes`)."""
    from megatron_soda.config.data import DEFAULT_SPLIT
    from megatron_soda.training.data import all_prefixes, blends
    from megatron_soda.training.data_checks import (
        DataError,
        check_prefixes,
        check_split,
        without_validation,
    )
    from megatron_soda.training.sft_data import check_sft_prefixes

    data = config.data
    verdict: list = [None, {}, []]  # error, shared codec, prefixes the default split leaves no validation
    if torch.distributed.get_rank() == 0:
        try:
            verdict[1], summaries = check_prefixes(all_prefixes(data), tokenizer, data.data_check,
                                                   data.data_check_max_gib)
            if warning := check_sft_prefixes(all_prefixes(data), config.sft.sft):
                print(warning, flush=True)
            b = blends(data)
            split_prefixes = set(b["blend"][0]) if "blend" in b else set()  # --split divides these
            for prefix, summary in summaries.items():
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
