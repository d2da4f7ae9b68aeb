"""Benchmark items -> prepared records: audio members encoded with the preprocessing codec path
(``audio.io.load_audio`` then ``MimiCodec.encode``, the same pieces and padding as the codec stage,
so the same file gets the same codes), text members tokenized, both laid out as the authors
prompt them (:mod:`megatron_soda.tasks.sequences`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from megatron_soda.audio.io import load_audio
from megatron_soda.audio.sources import AudioError
from megatron_soda.tasks.items import ChoiceItem, Member, PairItem
from megatron_soda.tasks.prepared import sequence_record
from megatron_soda.tasks.sequences import audio_sequence, continuation_sequence, text_sequence
from megatron_soda.tokenizer import SodaTokenizer


class ItemFailure(Exception):
    """One item could not be prepared; the message names it and says why."""


def codec_encoder(codec: Any) -> Callable[[Member], np.ndarray]:
    """``member -> codes [num_codebooks, frames]`` with ``codec`` (a :class:`MimiCodec`)."""

    def encode(member: Member) -> np.ndarray:
        wave = load_audio(member.audio, name=member.name or None)
        if wave.size == 0:
            raise AudioError(f"{member.name}: no audio samples")
        return codec.encode([wave])[0]

    return encode


def member_record(member: Member, tok: SodaTokenizer,
                  encode_audio: Callable[[Member], np.ndarray] | None) -> dict[str, Any]:
    if member.text is not None:
        if not member.text.strip():
            raise ItemFailure(f"{member.name}: empty text")
        return sequence_record(text_sequence(tok, member.text), "text")
    if encode_audio is None:
        raise ItemFailure(f"{member.name}: an audio item needs a codec (--codec)")
    return sequence_record(audio_sequence(tok, encode_audio(member)), "audio")


def item_record(item: PairItem | ChoiceItem, tok: SodaTokenizer,
                encode_audio: Callable[[Member], np.ndarray] | None) -> dict[str, Any]:
    """The prepared JSON record of one item; raises :class:`ItemFailure` naming the item."""
    try:
        if isinstance(item, PairItem):
            return {
                "id": item.id,
                "subtask": item.subtask,
                "positive": member_record(item.positive, tok, encode_audio),
                "negative": member_record(item.negative, tok, encode_audio),
            }
        choices = []
        for ending in item.endings:
            seq, chars = continuation_sequence(tok, item.context, ending)
            choices.append({**sequence_record(seq, "text"), "chars": chars})
        return {"id": item.id, "subtask": item.subtask, "label": item.label, "choices": choices}
    except ItemFailure as e:
        raise ItemFailure(f"item {item.id}: {e}") from None
    except (AudioError, ValueError, OSError) as e:
        raise ItemFailure(f"item {item.id}: {e}") from None


def item_records(items: Iterable[Any], tok: SodaTokenizer,
                 encode_audio: Callable[[Member], np.ndarray] | None
                 ) -> Iterator[dict[str, Any] | ItemFailure]:
    """Records, or an :class:`ItemFailure` per bad item (readers' own errors passed through
    as failures); never stops at a bad item."""
    for item in items:
        if not isinstance(item, PairItem | ChoiceItem):
            yield ItemFailure(str(item))
            continue
        try:
            yield item_record(item, tok, encode_audio)
        except ItemFailure as e:
            yield e
