"""``s2st-jsonl``: speech-to-speech translation pairs, one JSON object a line:
``{"id"?, "source_audio", "source_text", "source_lang", "target_audio", "target_text",
"target_lang"?}`` (audio paths may be relative to the file's directory; ``target_lang`` defaults
to ``en``).

A pair is one :class:`Recording` of two utterances, the source then the target (ids
``<pair>#source`` and ``<pair>#target``), whose texts are the document's text spans
(:func:`megatron_soda.format.sft.text_span`: ``<language>xx</language>`` + text, tokenized as one
string as the authors do).  So the codec stage and its cache take pairs unchanged, and the SFT
token stage (:mod:`megatron_soda.data.sft_stage`) builds one S2ST document per pair.  Both clips
are checked to exist here: a pair with a missing clip is one error, not half a document.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.common import manifest_lines
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance
from megatron_soda.format.sft import text_span

SOURCE_SUFFIX, TARGET_SUFFIX = "#source", "#target"
_FIELDS = ("source_audio", "source_text", "source_lang", "target_audio", "target_text")


def pair_recording(
    pair_id: str, file: str, source_audio: str, source_lang: str, source_text: str,
    target_audio: str, target_text: str, target_lang: str = "en",
    source_name: str = "", target_name: str = "",
) -> Recording:
    """One pair as the stages take it (see the module docstring)."""
    rec = Recording(pair_id, file)
    rec.utterances.append(Utterance(pair_id + SOURCE_SUFFIX, text_span(source_lang, source_text),
                                    AudioRef(path=source_audio, name=source_name or source_audio)))
    rec.utterances.append(Utterance(pair_id + TARGET_SUFFIX, text_span(target_lang, target_text),
                                    AudioRef(path=target_audio, name=target_name or target_audio)))
    return rec


def missing_clip(source_audio: str, target_audio: str) -> str | None:
    """Why a pair cannot be used for want of a clip (None: both are regular files)."""
    for what, path in (("source", source_audio), ("target", target_audio)):
        if not os.path.isfile(path):
            return f"{what} clip {path} not found"
    return None


def read_s2st_jsonl(path: str, options: ReaderOptions | None = None) -> Iterator[Recording | InputError]:
    def pair(uid: str, obj: dict, local: Callable[[str], str]) -> Recording:
        for key in (*_FIELDS, "target_lang"):
            value = obj.get(key, "en" if key == "target_lang" else None)
            if not isinstance(value, str) or (not value and key != "source_text" and key != "target_text"):
                raise ValueError(f"missing or non-string {key!r}")
        src, tgt = local(obj["source_audio"]), local(obj["target_audio"])
        if why := missing_clip(src, tgt):
            raise ValueError(why)
        return pair_recording(uid, path, src, obj["source_lang"], obj["source_text"], tgt,
                              obj["target_text"], obj.get("target_lang", "en"),
                              source_name=f"{obj['source_audio']} ({uid})",
                              target_name=f"{obj['target_audio']} ({uid})")

    return manifest_lines(path, pair)
