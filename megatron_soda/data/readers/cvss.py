"""``cvss``: CVSS (google-research-datasets/cvss, CVSS-C or CVSS-T) as published, paired with its
source side, CoVoST 2 over Common Voice (release 4).

CVSS, per X->en pair (its README: each ``cvss_{c,t}_<lang>_en_v1.0.tar.gz`` holds ``train``,
``dev`` and ``test`` directories of translation speech and ``train.tsv``/``dev.tsv``/``test.tsv``
of normalized translation text, paired with Common Voice by the audio file names)::

    CVSS_ROOT/<lang>/<split>.tsv              <clip>.mp3 TAB translation   (no header)
    CVSS_ROOT/<lang>/<split>/<clip>.mp3.wav   the target (translation) speech

The source side, under ``--cvss-source-root SRC`` (Common Voice clips and the CoVoST 2 TSV with
the transcripts, header ``path sentence translation client_id split``)::

    SRC/<lang>/covost_v2.<lang>_en.tsv  (or SRC/covost_v2.<lang>_en.tsv)
    SRC/<lang>/clips/<clip>.mp3         (or SRC/clips/<clip>.mp3)

The work unit is one CVSS ``<split>.tsv``; a directory ``--input`` contributes the
``<split>.tsv`` (``--split train|dev|test``) of each language directory under it.  ``<lang>`` is
CVSS's code or CoVoST's (``sv``/``sv-SE``, ``zh``/``zh-CN``); the document's language tag is
CoVoST's, as the authors' (potsawee/tokenize-audio ``cvss-mimi/combine_cvss_mimi.py`` lines 24-27
list ``sv-SE`` and ``zh-CN``).  Each row is one pair (:func:`~megatron_soda.data.readers.s2st.pair_recording`);
a row without both columns, without a transcript in the CoVoST TSV, or without either clip is one
error naming the clip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.readers.s2st import missing_clip, pair_recording
from megatron_soda.data.records import InputError

# CoVoST 2's 21 X->en source languages (their codes), CVSS's code where it differs.
COVOST_LANGUAGES = ("ar", "ca", "cy", "de", "es", "et", "fa", "fr", "id", "it", "ja", "lv", "mn",
                    "nl", "pt", "ru", "sl", "sv-SE", "ta", "tr", "zh-CN")
_FROM_CVSS = {"sv": "sv-SE", "zh": "zh-CN"}
SPLITS = ("train", "dev", "test")
TARGET_SUFFIX = ".wav"  # CVSS names a target clip after its source clip: <clip>.mp3.wav


def covost_code(lang: str) -> str | None:
    """CoVoST's code of a CVSS/CoVoST language directory name (None: not one of the 21)."""
    code = _FROM_CVSS.get(lang, lang)
    return code if code in COVOST_LANGUAGES else None


def is_unit(path: str, split: str) -> bool:
    """Whether a file under a directory ``--input`` is a CVSS unit of ``split``."""
    return (os.path.basename(path) == f"{split}.tsv"
            and covost_code(os.path.basename(os.path.dirname(os.path.abspath(path)))) is not None)


def _source_dirs(source_root: str, lang: str, code: str) -> list[str]:
    return [os.path.join(source_root, d) for d in dict.fromkeys((lang, code))] + [source_root]


def covost_tsv(source_root: str, lang: str) -> str | None:
    """The CoVoST 2 TSV of a language under the source root (None: not found)."""
    code = covost_code(lang) or lang
    for d in _source_dirs(source_root, lang, code):
        p = os.path.join(d, f"covost_v2.{code}_en.tsv")
        if os.path.isfile(p):
            return p
    return None


def _lines(path: str) -> Iterator[tuple[int, str | None]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield lineno, None


def _transcripts(tsv: str) -> dict[str, str]:
    """CoVoST TSV: clip path -> source sentence (rows that do not parse are left out: their
    pairs are reported as having no transcript)."""
    out: dict[str, str] = {}
    lines = _lines(tsv)
    _, header = next(lines, (0, None))
    cols = (header or "").split("\t")
    if "path" not in cols or "sentence" not in cols:
        raise ValueError(f"{tsv}: not a CoVoST 2 TSV (its header {cols[:5]} lacks path/sentence)")
    ip, isent = cols.index("path"), cols.index("sentence")
    for _, line in lines:
        fields = None if line is None else line.split("\t")
        if fields and len(fields) == len(cols):
            out[fields[ip]] = fields[isent]
    return out


def read_cvss(path: str, options: ReaderOptions | None = None) -> Iterator:
    lang_dir = os.path.dirname(os.path.abspath(path))
    lang = os.path.basename(lang_dir)
    split = os.path.basename(path)[: -len(".tsv")] if path.endswith(".tsv") else os.path.basename(path)
    code = covost_code(lang)
    source_root = options.source_root if options else None
    if code is None:
        yield InputError(path, "<file>", f"{lang!r} is none of CVSS's 21 source languages "
                         f"{COVOST_LANGUAGES} (expected CVSS_ROOT/<lang>/<split>.tsv)")
        return
    if not source_root:
        yield InputError(path, "<file>", "--input-format cvss needs --cvss-source-root (the Common "
                         "Voice clips and CoVoST 2 TSVs)")
        return
    tsv = covost_tsv(source_root, lang)
    if tsv is None:
        yield InputError(path, "<file>", f"no covost_v2.{code}_en.tsv under {source_root} (or "
                         f"{source_root}/{lang})")
        return
    try:
        sentences = _transcripts(tsv)
    except (OSError, ValueError) as e:
        yield InputError(path, "<file>", str(e))
        return
    clip_dirs = [os.path.join(d, "clips") for d in _source_dirs(source_root, lang, code)]
    for lineno, line in _lines(path):
        item = f"line {lineno}"
        if line is None:
            yield InputError(path, item, "invalid UTF-8")
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0]:
            yield InputError(path, item, f"expected 2 tab-separated columns (clip, translation), "
                             f"got {len(fields)}")
            continue
        clip, translation = fields
        item = f"{clip} (line {lineno})"
        sentence = sentences.get(clip)
        if sentence is None:
            yield InputError(path, item, f"no transcript of {clip} in {tsv}")
            continue
        source = next((os.path.join(d, clip) for d in clip_dirs if os.path.isfile(os.path.join(d, clip))),
                      os.path.join(clip_dirs[0], clip))
        target = os.path.join(lang_dir, split, clip + TARGET_SUFFIX)
        if why := missing_clip(source, target):
            yield InputError(path, item, why)
            continue
        pair_id = clip[: -len(".mp3")] if clip.endswith(".mp3") else clip
        yield pair_recording(pair_id, path, source, code, sentence, target, translation,
                             source_name=os.path.relpath(source, source_root),
                             target_name=os.path.relpath(target, os.path.dirname(lang_dir)))
