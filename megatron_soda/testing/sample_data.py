"""Deterministic small-but-real speech corpora for the quickstart, tests, benchmarks and
scaling studies: espeak-ng reads public-domain text (``sample_text.py``) in varied
voices, and the audio is written in the four public input formats the preprocessing
tool reads (SODA_SPEC section 3):

* ``jsonl``: ``speech.jsonl`` manifest (``id``, ``audio`` relative to the manifest,
  ``text``, ``recording_id`` and, for one-file recordings, ``start``/``end`` seconds)
  over ``audio/`` files in mixed formats (wav 24k, flac 44.1k stereo, ogg 16k, mp3
  22.05k, 8-bit wav 16k);
* ``webdataset``: Emilia's layout, ``emilia/EN-B000000.tar`` with ``<key>.mp3`` and
  ``<key>.json`` per utterance;
* ``parquet``: YODAS's layout, ``yodas/part-00000.parquet``, one row per recording with
  an HF-``Audio``-like ``{bytes, path}`` struct and timed ``utterances``;
* ``text``: ``text.jsonl`` with ``{"text": ...}`` documents.

Same seed, counts and text source give byte-identical files on one machine (libsndfile's
random Ogg serial number is rewritten).  Corrupt and unusual inputs: ``bad_inputs.py``.
A test and demo fixture (see :mod:`megatron_soda.testing`), not part of the product.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    import pyarrow as pa

from megatron_soda.testing import sample_text

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "webdataset", "parquet", "text")
OUTPUTS = ("speech.jsonl", "audio", "emilia", "yodas", "text.jsonl", "sample.json")
BASE_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
               "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3")
# (extension, libsndfile format, subtype, sample rate, channels)
JSONL_KINDS = (("wav", "WAV", "PCM_16", 24000, 1), ("flac", "FLAC", "PCM_16", 44100, 2),
               ("ogg", "OGG", "VORBIS", 16000, 1), ("mp3", "MP3", "MPEG_LAYER_III", 22050, 1),
               ("wav", "WAV", "PCM_U8", 16000, 1))
EMILIA_KIND = ("mp3", "MP3", "MPEG_LAYER_III", 24000, 1)
YODAS_KINDS = (("flac", "FLAC", "PCM_16", 16000, 1), ("mp3", "MP3", "MPEG_LAYER_III", 24000, 1))
EMILIA_SPEAKERS_PER_SHARD = 8
YODAS_ROWS_PER_PART = 32
TAR_MTIME = 946684800  # 2000-01-01, fixed so tars are reproducible


# ----------------------------------------------------------------------------- audio

def speak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """espeak-ng's reading of ``text`` as float32 mono samples and their sample rate."""
    cmd = ["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch)]
    try:
        raw = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=True).stdout
    except FileNotFoundError as exc:
        raise RuntimeError("espeak-ng not found: install it (apt-get install espeak-ng)") from exc
    sr = struct.unpack_from("<I", raw, 24)[0]
    pcm = raw[raw.index(b"data") + 8:]
    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(x) > 0.005)
    if loud.size == 0:
        return x, sr
    margin = int(0.05 * sr)
    return x[max(loud[0] - margin, 0): loud[-1] + margin], sr


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """soxr HQ resampling to float32 (identity when the rates match)."""
    import soxr

    return x if sr_in == sr_out else soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def ogg_set_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the bitstream serial number (and page CRCs) of a single-stream Ogg file.

    libsndfile draws the serial from a time-seeded generator, the one nondeterministic
    byte range in its Ogg/Vorbis output.
    """
    out, pos = bytearray(data), 0
    while pos + 27 <= len(out) and out[pos:pos + 4] == b"OggS":
        nseg = out[pos + 26]
        size = 27 + nseg + sum(out[pos + 27:pos + 27 + nseg])
        struct.pack_into("<I", out, pos + 14, serial & 0xFFFFFFFF)
        struct.pack_into("<I", out, pos + 22, 0)
        crc = 0
        for b in out[pos:pos + size]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ b]
        struct.pack_into("<I", out, pos + 22, crc)
        pos += size
    return bytes(out)


def encode(x: np.ndarray, sr: int, kind: tuple, serial: int = 1) -> bytes:
    """Encode mono float samples as ``kind`` = (ext, format, subtype, sr, channels)."""
    if kind[4] == 2:  # a second, delayed and quieter channel: really stereo
        x = np.stack([x, 0.8 * np.concatenate([np.zeros(11, x.dtype), x[:-11]])], axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=kind[1], subtype=kind[2])
    data = buf.getvalue()
    return ogg_set_serial(data, serial) if kind[1] == "OGG" else data


def _render(job: dict) -> dict:
    """Synthesize one recording (worker process): encoded audio plus timings."""
    kind, sr, spk = job["kind"], job["kind"][3], job["speaker"]
    utts = []
    for text in job["texts"]:
        x, src_sr = speak(text, spk["voice"], spk["speed"], spk["pitch"])
        x = np.clip(x * spk["gain"], -1.0, 1.0)
        utts.append(resample(x.astype(np.float32), src_sr, sr))
    if not job["long"]:
        return {"audio": [encode(u, sr, kind, job["serial"] + i) for i, u in enumerate(utts)],
                "durations": [len(u) / sr for u in utts]}
    pieces, offsets, pos = [], [], 0
    for gap, u in zip(job["gaps"], utts + [None]):
        pieces.append(np.zeros(int(round(gap * sr)), np.float32))
        pos += len(pieces[-1])
        if u is not None:
            pieces.append(u.astype(np.float32))
            offsets.append((pos / sr, (pos + len(u)) / sr))
            pos += len(u)
    return {"audio": [encode(np.concatenate(pieces), sr, kind, job["serial"])],
            "offsets": offsets, "duration": pos / sr}


# ----------------------------------------------------------------------------- plan

def _speaker(rng: np.random.Generator) -> dict:
    return {"voice": f"{BASE_VOICES[rng.integers(len(BASE_VOICES))]}+{VARIANTS[rng.integers(len(VARIANTS))]}",
            "speed": int(rng.integers(140, 186)), "pitch": int(rng.integers(30, 71)),
            "gain": round(float(rng.uniform(0.5, 1.0)), 3)}


def video_id(seed: int, index: int) -> str:
    """A YouTube-like 11-character id, a function of (seed, index)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    n = int.from_bytes(hashlib.sha256(f"soda-sample-{seed}-{index}".encode()).digest()[:10], "big")
    return "".join(alphabet[(n >> (6 * i)) % 62] for i in range(11))


def _plan(fmt: str, fi: int, seed: int, n_rec: int, n_utt: int, utts: list[str], base: int) -> list[dict]:
    """Jobs of one speech format; its own rng and its own quarter of the utterance stream."""
    rng = np.random.default_rng([seed, fi])
    cursor = base + fi * (len(utts) // 4)
    jobs = []
    for r in range(n_rec):
        texts = [utts[(cursor + i) % len(utts)] for i in range(n_utt)]
        cursor += n_utt
        if fmt == "jsonl":
            kind, long = JSONL_KINDS[r % len(JSONL_KINDS)], r % 2 == 1
        elif fmt == "webdataset":
            kind, long = EMILIA_KIND, False
        else:
            kind, long = YODAS_KINDS[r % len(YODAS_KINDS)], True
        job = {"fmt": fmt, "rec": r, "texts": texts, "speaker": _speaker(rng), "kind": kind,
               "long": long, "serial": zlib.crc32(f"{fmt}-{seed}-{r}".encode()),
               "gaps": [round(float(g), 3) for g in rng.uniform(0.3, 1.2, n_utt + 1)] if long else None}
        if fmt == "webdataset":
            job["dnsmos"] = [round(float(v), 4) for v in rng.uniform(3.0, 3.7, n_utt)]
        jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------- writers

def tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add ``data`` as member ``name`` with a fixed time and mode (reproducible tars)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


def jdump(obj: dict) -> str:
    """One JSON line, non-ASCII text kept."""
    return json.dumps(obj, ensure_ascii=False)


def yodas_schema() -> pa.Schema:
    """The arrow schema of a YODAS-like parquet part."""
    import pyarrow as pa

    utt = pa.struct([("utt_id", pa.string()), ("text", pa.string()),
                     ("start", pa.float64()), ("end", pa.float64())])
    return pa.schema([("id", pa.string()),
                      ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      ("utterances", pa.list_(utt)), ("duration", pa.float64())])


def write_yodas_parquet(path: Path, rows: list[dict]) -> None:
    """``rows`` (one per recording) as one YODAS-like parquet part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=yodas_schema()), path)


class _Writer:
    """Writes rendered recordings, in plan order, into the three speech layouts."""

    def __init__(self, out: Path, seed: int, num_recordings: int, formats: tuple[str, ...]):
        self.out, self.seed, self.n_rec = out, seed, num_recordings
        self.stats = {f: {"recordings": 0, "utterances": 0, "seconds": 0.0, "audio_seconds": 0.0,
                          "paths": []} for f in formats if f != "text"}
        self.manifest = open(out / "speech.jsonl", "w", encoding="utf-8") if "jsonl" in formats else None
        self.tar: tarfile.TarFile | None = None
        self.rows: list[dict] = []

    def add(self, job: dict, res: dict) -> None:
        st = self.stats[job["fmt"]]
        st["recordings"] += 1
        st["utterances"] += len(job["texts"])
        if "offsets" in res:
            st["seconds"] += sum(e - s for s, e in res["offsets"])
            st["audio_seconds"] += res["duration"]
        else:
            st["seconds"] += sum(res["durations"])
            st["audio_seconds"] += sum(res["durations"])
        getattr(self, job["fmt"])(job, res, st)

    def _save(self, rel: str, data: bytes) -> None:
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.out / rel).write_bytes(data)

    def jsonl(self, job: dict, res: dict, st: dict) -> None:
        rid, ext = f"rec{job['rec']:05d}", job["kind"][0]
        for k, text in enumerate(job["texts"]):
            row = {"id": f"{rid}_u{k:04d}", "audio": f"audio/{rid}.{ext}", "text": text, "recording_id": rid}
            if job["long"]:
                row["start"], row["end"] = res["offsets"][k]
            else:
                row["audio"] = f"audio/{rid}/{rid}_u{k:04d}.{ext}"
                self._save(row["audio"], res["audio"][k])
            self.manifest.write(jdump(row) + "\n")
        if job["long"]:
            self._save(f"audio/{rid}.{ext}", res["audio"][0])
        st["audio_files"] = st.get("audio_files", 0) + len(res["audio"])

    def webdataset(self, job: dict, res: dict, st: dict) -> None:
        shard, spk = divmod(job["rec"], EMILIA_SPEAKERS_PER_SHARD)
        if spk == 0:
            self.close_tar()
            rel = f"emilia/EN-B{shard:06d}.tar"
            (self.out / "emilia").mkdir(exist_ok=True)
            self.tar = tarfile.open(self.out / rel, "w", format=tarfile.GNU_FORMAT)
            st["paths"].append(rel)
        speaker = f"EN_B{shard:05d}_S{spk:05d}"
        for k, (text, data, dur) in enumerate(zip(job["texts"], res["audio"], res["durations"])):
            key = f"{speaker}_W{k:06d}"
            meta = {"id": key, "wav": f"EN_B{shard:05d}/{speaker}/mp3/{key}.mp3", "text": " " + text,
                    "duration": dur, "speaker": speaker, "language": "en", "dnsmos": job["dnsmos"][k]}
            tar_add(self.tar, f"{key}.mp3", data)
            tar_add(self.tar, f"{key}.json", jdump(meta).encode("utf-8"))

    def parquet(self, job: dict, res: dict, st: dict) -> None:
        vid = video_id(self.seed, job["rec"])
        utts = [{"utt_id": f"{vid}-{k:05d}-{round(s * 100):08d}-{round(e * 100):08d}", "text": text,
                 "start": s, "end": e} for k, (text, (s, e)) in enumerate(zip(job["texts"], res["offsets"]))]
        self.rows.append({"id": vid, "audio": {"bytes": res["audio"][0], "path": f"{vid}.{job['kind'][0]}"},
                          "utterances": utts, "duration": res["duration"]})
        if len(self.rows) == YODAS_ROWS_PER_PART or job["rec"] == self.n_rec - 1:
            rel = f"yodas/part-{len(st['paths']):05d}.parquet"
            write_yodas_parquet(self.out / rel, self.rows)
            st["paths"].append(rel)
            self.rows = []

    def close_tar(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def close(self) -> dict:
        self.close_tar()
        if self.manifest is not None:
            self.manifest.close()
        if "jsonl" in self.stats:  # many audio files: list the manifest, count the files and kinds
            st = self.stats["jsonl"]
            st["paths"], st["audio_files"] = ["speech.jsonl"], st.get("audio_files", 0)
            kinds = {JSONL_KINDS[r % len(JSONL_KINDS)] for r in range(self.n_rec)}
            st["audio_kinds"] = sorted(f"{k[0]}/{k[2]}/{k[3]}Hz/{k[4]}ch" for k in kinds)
        for st in self.stats.values():
            st["seconds"], st["audio_seconds"] = round(st["seconds"], 3), round(st["audio_seconds"], 3)
        return self.stats


def clear_outputs(out: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Remove the earlier outputs ``names`` in ``out`` (refused unless ``overwrite``); create ``out``."""
    present = [n for n in names if (out / n).exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds {present}; pass overwrite=True (--overwrite)")
    for n in present:
        shutil.rmtree(out / n) if (out / n).is_dir() else (out / n).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _map(fn, jobs: list, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as ex:
        yield from ex.map(fn, jobs, chunksize=1)


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    import pyarrow
    import soxr

    try:
        espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        espeak = "missing"
    return {"espeak-ng": " ".join(espeak.split()[3:4]) or espeak.strip(),
            "libsndfile": sf.__libsndfile_version__, "soxr": soxr.__version__,
            "pyarrow": pyarrow.__version__, "numpy": np.__version__}


def make_sample_corpus(out_dir: str | os.PathLike, num_recordings: int = 8,
                       utterances_per_recording: int = 6, seed: int = 0,
                       formats: tuple[str, ...] | list[str] = FORMATS,
                       text_documents: int | None = None, text_source: str = "auto",
                       text_dir: str | os.PathLike | None = None, workers: int | None = None,
                       overwrite: bool = False) -> dict:
    """Write a sample corpus into ``out_dir``; returns (and writes as ``sample.json``) a summary.

    ``num_recordings`` recordings of ``utterances_per_recording`` utterances (~6.5 s each)
    for EACH speech format in ``formats``; ``text_documents`` (default
    ``4 * num_recordings``) documents for ``text``.  ``text_source``: ``auto`` | ``sdist``
    | ``fallback`` (see ``sample_text.load_paragraphs``).  ``workers`` defaults to all CPUs.
    """
    formats = tuple(formats)
    if set(formats) - set(FORMATS):
        raise ValueError(f"unknown formats {sorted(set(formats) - set(FORMATS))}; choose from {FORMATS}")
    if num_recordings < 0 or utterances_per_recording < 1:
        raise ValueError("need num_recordings >= 0 and utterances_per_recording >= 1")
    out = Path(out_dir)
    clear_outputs(out, OUTPUTS, overwrite)
    paragraphs, source = sample_text.load_paragraphs(text_source, text_dir)
    utts = sample_text.split_utterances(paragraphs)
    per_format = num_recordings * utterances_per_recording
    if per_format > len(utts):
        log.warning("%d utterances per format but the text has %d: the text repeats (the full "
                    "text: text_source='sdist')", per_format, len(utts))
    base = int(np.random.default_rng(seed).integers(len(utts)))
    jobs = [j for fi, fmt in enumerate(FORMATS[:3]) if fmt in formats
            for j in _plan(fmt, fi, seed, num_recordings, utterances_per_recording, utts, base)]
    writer = _Writer(out, seed, num_recordings, formats)
    try:
        for job, res in zip(jobs, _map(_render, jobs, workers or len(os.sched_getaffinity(0)))):
            writer.add(job, res)
    finally:
        stats = writer.close()
    if "text" in formats:
        n_docs = 4 * num_recordings if text_documents is None else text_documents
        start = int(np.random.default_rng([seed, 3]).integers(len(paragraphs)))
        docs = sample_text.text_documents(paragraphs, n_docs, start)
        (out / "text.jsonl").write_text("".join(jdump({"text": d}) + "\n" for d in docs), encoding="utf-8")
        stats["text"] = {"paths": ["text.jsonl"], "documents": len(docs), "characters": sum(map(len, docs))}
    summary = {"generator": __name__, "seed": seed,
               "num_recordings": num_recordings, "utterances_per_recording": utterances_per_recording,
               "text_source": source, "text_repeats": per_format > len(utts) // 4, "formats": stats,
               "total_seconds": round(sum(s.get("seconds", 0.0) for s in stats.values()), 3),
               "versions": _versions()}
    (out / "sample.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
