"""``librispeech``: LibriSpeech-style folders (openslr.org/12 and corpora laid out like it):
``<spk>/<chapter>/<spk>-<chapter>.trans.txt`` holding lines
``<spk>-<chapter>-<utt> TRANSCRIPT``, next to ``<spk>-<chapter>-<utt>.flac``.

The work unit is one ``*.trans.txt`` (a directory contributes all of them, sorted); one chapter
is one document, its utterances in the file's order (LibriSpeech lists them in reading order).
Each utterance is a whole file; a missing flac is reported by the audio stage with its id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from megatron_soda.data.readers import ReaderOptions
from megatron_soda.data.records import AudioRef, InputError, Recording, Utterance

AUDIO_EXTENSIONS = (".flac", ".wav")


def read_librispeech(
    path: str, options: ReaderOptions | None = None
) -> Iterator[Recording | InputError]:
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    chapter = name[: -len(".trans.txt")] if name.endswith(".trans.txt") else name
    rec = Recording(chapter, path)
    try:
        with open(path, "rb") as f:
            lines = list(enumerate(f, 1))
    except OSError as e:
        yield InputError(path, "<file>", f"transcript file unreadable ({e})")
        return
    for lineno, raw in lines:
        try:  # one line's bad bytes are that line's error
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield InputError(path, f"line {lineno}", f"invalid UTF-8 at byte {e.start}")
            continue
        if not line.strip():
            continue
        uid, _, text = line.strip().partition(" ")
        if not text.strip():
            yield InputError(path, f"{uid} (line {lineno})", "line has no transcript")
            continue
        audio = next(
            (
                os.path.join(folder, uid + ext)
                for ext in AUDIO_EXTENSIONS
                if os.path.isfile(os.path.join(folder, uid + ext))
            ),
            os.path.join(folder, uid + AUDIO_EXTENSIONS[0]),
        )
        ref = AudioRef(path=audio, name=os.path.relpath(audio, os.path.dirname(folder)))
        rec.utterances.append(Utterance(uid, text.strip(), ref))
    if rec.utterances:
        yield rec
