"""A tiny CVSS-layout speech-to-speech translation set made with espeak-ng, for tests and demos.

``make_cvss_sample(out_dir, n_pairs, lang, split)`` writes the layout
:mod:`megatron_soda.data.readers.cvss` reads (CVSS-T: the target spoken by a voice of its own)::

    out_dir/cvss_t/<lang>/<split>.tsv                      <clip>.mp3 TAB English translation
    out_dir/cvss_t/<lang>/<split>/<clip>.mp3.wav           English target speech (24 kHz WAV)
    out_dir/source/<lang>/covost_v2.<lang>_en.tsv          path sentence translation client_id split
    out_dir/source/<lang>/clips/<clip>.mp3                 French or German source speech (MP3)

Pass ``--input out_dir/cvss_t --input-format cvss --cvss-source-root out_dir/source --split
<split>`` to preprocessing.  Synthesis is memoised per process (the same sentence and voice are
spoken once), so repeated samples in one test session cost file writes only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from megatron_soda.testing.sample_data import encode, resample, speak

SENTENCES = {
    "fr": [("Bonjour à tous.", "Hello everyone."), ("Le chat dort.", "The cat is sleeping."),
           ("Il fait beau.", "The weather is nice."), ("Merci beaucoup.", "Thank you very much."),
           ("Où est la gare?", "Where is the station?"), ("J'aime le pain.", "I like bread.")],
    "de": [("Guten Morgen.", "Good morning."), ("Die Katze schläft.", "The cat is sleeping."),
           ("Es ist kalt.", "It is cold."), ("Vielen Dank.", "Thank you very much."),
           ("Wo ist der Bahnhof?", "Where is the station?"), ("Ich mag Brot.", "I like bread.")],
}
SOURCE_RATE, TARGET_RATE = 24000, 24000
MP3 = ("mp3", "MP3", "MPEG_LAYER_III", SOURCE_RATE, 1)


@lru_cache(maxsize=256)
def _spoken(text: str, voice: str, rate: int) -> np.ndarray:
    x, sr = speak(text, voice=voice, speed=190)
    return resample(x, sr, rate)


@dataclass
class CvssSample:
    cvss_root: str
    source_root: str
    lang: str
    split: str
    pairs: list[dict] = field(default_factory=list)  # s2st-jsonl rows, absolute audio paths

    def write_jsonl(self, path: str) -> str:
        """The same pairs as an ``s2st-jsonl`` file (audio paths relative to it)."""
        base = os.path.dirname(os.path.abspath(path))
        with open(path, "w", encoding="utf-8") as f:
            for p in self.pairs:
                row = {**p, "source_audio": os.path.relpath(p["source_audio"], base),
                       "target_audio": os.path.relpath(p["target_audio"], base)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path


def make_cvss_sample(out_dir: str | os.PathLike, n_pairs: int = 4, lang: str = "fr",
                     split: str = "train") -> CvssSample:
    """Write ``n_pairs`` pairs (at most 6) of ``lang`` (``fr`` or ``de``) -> English."""
    if lang not in SENTENCES:
        raise ValueError(f"lang must be one of {tuple(SENTENCES)}, got {lang!r}")
    if not 1 <= n_pairs <= len(SENTENCES[lang]):
        raise ValueError(f"n_pairs must be in 1..{len(SENTENCES[lang])}, got {n_pairs}")
    out = os.path.abspath(out_dir)
    cvss_lang = os.path.join(out, "cvss_t", lang)
    src_lang = os.path.join(out, "source", lang)
    for d in (os.path.join(cvss_lang, split), os.path.join(src_lang, "clips")):
        os.makedirs(d, exist_ok=True)
    sample = CvssSample(os.path.join(out, "cvss_t"), os.path.join(out, "source"), lang, split)
    cvss_rows, covost_rows = [], ["path\tsentence\ttranslation\tclient_id\tsplit"]
    for i, (src_text, tgt_text) in enumerate(SENTENCES[lang][:n_pairs]):
        clip = f"common_voice_{lang}_{1000 + i}.mp3"
        src_path = os.path.join(src_lang, "clips", clip)
        tgt_path = os.path.join(cvss_lang, split, clip + ".wav")
        with open(src_path, "wb") as f:
            f.write(encode(_spoken(src_text, lang, SOURCE_RATE), SOURCE_RATE, MP3))
        with open(tgt_path, "wb") as f:  # CVSS-T: another voice for each target
            f.write(encode(_spoken(tgt_text, "en-us" if i % 2 else "en-gb", TARGET_RATE), TARGET_RATE,
                           ("wav", "WAV", "PCM_16", TARGET_RATE, 1)))
        cvss_rows.append(f"{clip}\t{tgt_text}")
        covost_rows.append(f"{clip}\t{src_text}\t{tgt_text}\tspeaker{i}\t{split}")
        sample.pairs.append({"id": clip[: -len(".mp3")], "source_audio": src_path,
                             "source_text": src_text, "source_lang": lang,
                             "target_audio": tgt_path, "target_text": tgt_text})
    with open(os.path.join(cvss_lang, f"{split}.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(cvss_rows) + "\n")
    with open(os.path.join(src_lang, f"covost_v2.{lang}_en.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(covost_rows) + "\n")
    return sample
