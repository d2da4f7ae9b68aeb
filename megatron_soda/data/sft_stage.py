"""Stage 2 of preprocessing for speech-to-speech pairs: cached codes -> S2ST fine-tuning
documents (:mod:`megatron_soda.format.sft`) -> shards with their loss-start sidecar.

The codec stage is the pretraining one, unchanged: a pair is a recording of two utterances,
source then target, whose texts are the document's text spans (``<language>xx</language>`` +
text; :mod:`megatron_soda.data.readers.s2st`).  One document per pair (no interleave variants);
a pair whose clip the codec stage rejected is already in the error report and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from megatron_soda.data.codes_cache import EncodedRecording, UnitCache
from megatron_soda.data.readers.s2st import SOURCE_SUFFIX, TARGET_SUFFIX
from megatron_soda.data.records import InputError, unexpected
from megatron_soda.data.tokenize_stage import OutputSet, tokenize_cached
from megatron_soda.format.sft import SFT_FORMAT, s2st_ids
from megatron_soda.tokenizer import SodaTokenizer


def sft_record(prompt_end: str, documents: int) -> dict:
    """The ``sft`` record of ``PREFIX.stats.json``."""
    return {"format": SFT_FORMAT, "prompt_end": prompt_end, "documents": documents}


def _add_pair(out: OutputSet, lay, prompt_end: str, rec: EncodedRecording, t_ids: list) -> None:
    utts = rec.utterances
    if len(utts) != 2 or not (utts[0].id.endswith(SOURCE_SUFFIX) and utts[1].id.endswith(TARGET_SUFFIX)):
        return  # one clip was rejected by the codec stage (its error is in the report)
    bad = [(u, ids) for u, ids in zip(utts, t_ids) if isinstance(ids, Exception)]
    try:
        if bad:
            raise bad[0][1]
        doc, start = s2st_ids(lay, utts[0].codes, t_ids[0], t_ids[1], utts[1].codes, prompt_end)
        counts = lay.count_kinds(doc)
        side = out.side(rec.id)
    except Exception as e:  # costs this pair only
        reason = unexpected(e, rec.source, rec.id)
        out.errors.append(InputError(rec.source, rec.id, reason, stage="tokenize"))
        return
    st = out.stats[side]
    st.recordings += 1
    st.utterances += 2
    st.audio_seconds += utts[0].seconds + utts[1].seconds
    out.writers[side].add(doc, start)
    st.add_document(SFT_FORMAT, counts, doc.size)


def tokenize_cached_pairs(
    caches: Iterable[UnitCache], tokenizer: SodaTokenizer, prompt_end: str, out: OutputSet
) -> None:
    """One S2ST document (and its loss start) per cached pair, in input order."""
    lay = tokenizer.layout
    tokenize_cached(caches, tokenizer, out,
                    lambda rec, t_ids: _add_pair(out, lay, prompt_end, rec, t_ids))
