"""Corrupt and unusual inputs for the preprocessing tool, in the layouts of
:mod:`~megatron_soda.testing.sample_data` (jsonl manifest, Emilia tar, YODAS parquet), plus
``expected.json`` saying which items must fail and why.  Same bytes on every run on one machine.
"""

from __future__ import annotations

import json
import os
import struct
import tarfile
from pathlib import Path

import numpy as np

from megatron_soda.testing.sample_data import (
    EMILIA_KIND,
    YODAS_KINDS,
    clear_outputs,
    encode,
    jdump,
    resample,
    speak,
    tar_add,
    video_id,
    write_yodas_parquet,
)

_BAD_SPEAKER = {"voice": "en-us+m3", "speed": 165, "pitch": 50, "gain": 0.8}
_BAD_TEXTS = ("Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
              "Rough winds do shake the darling buds of May, And summer's lease hath all too short a date.",
              "Sometime too hot the eye of heaven shines, And often is his gold complexion dimm'd;",
              "Café au lait, naïve façade, Straße, 東京の夜 and a few emoji 🎵😀 for good measure.",
              "A long pause.")


def _utterance(text: str, sr: int) -> np.ndarray:
    x, src_sr = speak(text, _BAD_SPEAKER["voice"], _BAD_SPEAKER["speed"], _BAD_SPEAKER["pitch"])
    return resample(x * np.float32(_BAD_SPEAKER["gain"]), src_sr, sr)


def _float_wav(x: np.ndarray, sr: int) -> bytes:
    """A float32 wav written by hand (libsndfile's PEAK chunk would embed the time)."""
    data = x.astype("<f4").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 3, 1, sr, 4 * sr, 4, 32) + b"data" + struct.pack("<I", len(data))
            + data)


_WAV16 = ("wav", "WAV", "PCM_16", 0, 1)
_FLAC16 = ("flac", "FLAC", "PCM_16", 0, 1)
# (id, audio file, text, expect, code, detail); id None: the raw line is written as given
_BAD_LINES = (
    ("good_wav", "good.wav", 0, "ok", "good", "24 kHz 16-bit wav"),
    ("good_flac", "good.flac", 1, "ok", "good", "16 kHz flac"),
    ("missing_file", "does_not_exist.wav", 0, "error", "missing_file", "audio path does not exist"),
    ("empty_file", "empty.wav", 0, "error", "empty_file", "0-byte file"),
    ("truncated_wav", "truncated.wav", 0, "error", "truncated_wav",
     "RIFF/data sizes in the header exceed the file; libsndfile silently decodes the half that is "
     "present (sf.info(...).extra_info says 'data : N (should be M)'), so check the header"),
    ("truncated_flac", "truncated.flac", 1, "error", "truncated_flac",
     "flac cut at 40%: libsndfile raises 'flac decoder lost sync'"),
    ("not_audio", "not_audio.wav", 0, "error", "not_audio", "text renamed .wav: format not recognised"),
    ("nan_samples", "nan.wav", 0, "error", "nan_samples", "float32 wav, every sample NaN"),
    (None, b'{"id": "invalid_json", "audio": "audio/good.wav", "text": ', None, "error", "invalid_json",
     "not JSON"),
    (None, b'{"id": "invalid_utf8", "audio": "audio/good.wav", "text": "caf\xe9 \xff\xfe", '
     b'"recording_id": "invalid_utf8"}', None, "error", "invalid_utf8", "not UTF-8 (latin-1 byte, 0xff 0xfe)"),
    ("missing_text", "good.wav", None, "error", "missing_text", "no 'text' field"),
    ("offset_out_of_range", "good.wav", 0, "error", "offset_out_of_range",
     "start/end (30 s, 34 s) lie beyond the end of the 4.4 s file"),
    ("stereo_44k", "stereo_44k.wav", 2, "ok", "stereo_44k", "stereo 44.1 kHz 16-bit wav"),
    ("pcm_u8", "pcm_u8.wav", 2, "ok", "pcm_u8", "8-bit unsigned 8 kHz wav"),
    ("silence_10min", "silence_10min.flac", 4, "ok", "long_silence",
     "10 minutes of digital silence (16 kHz flac): valid, longer than 60 s"),
    ("non_ascii_text", "non_ascii.wav", 3, "ok", "non_ascii_text", "accents, CJK and emoji in the transcript"),
)


def _bad_line(uid: str | None, audio, text: int | None) -> bytes:
    if uid is None:
        return audio
    obj = {"id": uid, "audio": f"audio/{audio}", "text": _BAD_TEXTS[text] if text is not None else None,
           "recording_id": uid}
    if text is None:
        del obj["text"]
    if uid == "offset_out_of_range":
        obj["start"], obj["end"] = 30.0, 34.0
    return jdump(obj).encode("utf-8")


def make_bad_inputs(out_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """Write corrupt and unusual inputs into ``out_dir``; returns (and writes as
    ``expected.json``) which jsonl lines, tar keys and parquet rows must fail and why.

    ``expect`` is ``"error"`` (the tool must report the item and go on) or ``"ok"``
    (unusual but valid: it must be processed).  Lines count from 1, rows from 0.
    """
    out = Path(out_dir)
    clear_outputs(out, ("speech.jsonl", "audio", "emilia", "yodas", "expected.json"), overwrite)
    (out / "audio").mkdir()
    good = [_utterance(t, 24000) for t in _BAD_TEXTS[:4]]
    wav = encode(good[0], 24000, _WAV16)
    flac = encode(_utterance(_BAD_TEXTS[1], 16000), 16000, _FLAC16)
    files = {
        "good.wav": wav, "good.flac": flac, "empty.wav": b"",
        "truncated.wav": wav[: 44 + (len(wav) - 44) // 2], "truncated.flac": flac[: int(len(flac) * 0.4)],
        "not_audio.wav": b"This is a text file renamed to .wav, not audio.\n" * 40,
        "nan.wav": _float_wav(np.full(16000, np.nan, np.float32), 16000),
        "stereo_44k.wav": encode(resample(good[2], 24000, 44100), 44100, _WAV16[:4] + (2,)),
        "pcm_u8.wav": encode(resample(good[2], 24000, 8000), 8000, ("wav", "WAV", "PCM_U8", 8000, 1)),
        "silence_10min.flac": encode(np.zeros(600 * 16000, np.float32), 16000, _FLAC16),
        "non_ascii.wav": encode(good[3], 24000, _WAV16),
    }
    for name, data in files.items():
        (out / "audio" / name).write_bytes(data)
    (out / "speech.jsonl").write_bytes(b"".join(_bad_line(*c[:3]) + b"\n" for c in _BAD_LINES))
    expected: dict = {"jsonl": {"path": "speech.jsonl", "lines": [
        {"line": i + 1, "id": c[0], "expect": c[3], "code": c[4], "detail": c[5]}
        for i, c in enumerate(_BAD_LINES)]}}

    (out / "emilia").mkdir()
    items, spk = [], "EN_B00000_S00000"
    with tarfile.open(out / "emilia" / "EN-B000000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for k in range(3):
            key, bad = f"{spk}_W{k:06d}", k == 1
            data = b"ID3\x03\0\0\0\0\0\0" + b"\x13\x37garbage" * 400 if bad else encode(good[k], 24000, EMILIA_KIND)
            meta = {"id": key, "wav": f"EN_B00000/{spk}/mp3/{key}.mp3", "text": " " + _BAD_TEXTS[k],
                    "duration": len(good[k]) / 24000, "speaker": spk, "language": "en", "dnsmos": 3.3}
            tar_add(tar, f"{key}.mp3", data)
            tar_add(tar, f"{key}.json", jdump(meta).encode("utf-8"))
            items.append({"key": key, "expect": "error" if bad else "ok", "code": "corrupt_mp3" if bad else "good",
                          "detail": "ID3 header then garbage, no MPEG frames" if bad else "24 kHz mp3"})
    expected["webdataset"] = {"paths": ["emilia/EN-B000000.tar"], "items": items}

    rows, row_expect = [], []
    for r, kind in enumerate((YODAS_KINDS[0], YODAS_KINDS[1], YODAS_KINDS[0])):
        vid, sr, bad = video_id(-1, r), kind[3], r == 1
        pad = np.zeros(sr // 2, np.float32)
        x = np.concatenate([pad, resample(good[r], 24000, sr), pad])
        s, e = len(pad) / sr, (len(x) - len(pad)) / sr
        utt = {"utt_id": f"{vid}-00000-{round(s * 100):08d}-{round(e * 100):08d}", "text": _BAD_TEXTS[r],
               "start": s, "end": e}
        data = b"\0garbage, not audio\xff" * 300 if bad else encode(x, sr, kind)
        rows.append({"id": vid, "audio": {"bytes": data, "path": f"{vid}.{kind[0]}"}, "utterances": [utt],
                     "duration": len(x) / sr})
        row_expect.append({"row": r, "id": vid, "utt_ids": [utt["utt_id"]], "expect": "error" if bad else "ok",
                           "code": "garbage_audio_bytes" if bad else "good",
                           "detail": "audio.bytes is not an audio file" if bad else f"{kind[0]} {sr} Hz"})
    write_yodas_parquet(out / "yodas" / "part-00000.parquet", rows)
    expected["parquet"] = {"paths": ["yodas/part-00000.parquet"], "rows": row_expect}
    text = json.dumps(expected, indent=2, ensure_ascii=False) + "\n"
    (out / "expected.json").write_text(text, encoding="utf-8")
    return expected
