#!/usr/bin/env python
"""Token-stage benchmark: tokens/s from cached codes + transcripts to Megatron shards.

Writes a synthetic codes cache (random 8-codebook codes, English transcripts, 1-4
utterances of 3-15 s per recording, the layout the codec stage writes), then, in the same
run and interleaved repeat by repeat, turns it into ``.bin``/``.idx`` shards (both
interleave variants of every recording) two ways:

* ``megatron_soda``: the real token stage (``tokenize_cached_units``);
* ``soda_hf``: SODA's original method: each document as one string with every audio token
  as its private-use character ``chr(0xE000 + cb*2048 + code)``, tokenised by the extended
  HF ``tokenizer.json`` written by ``export_hf_tokenizer``, one ``encode`` call per
  document, then written with megatron-core's ``IndexedDatasetBuilder``;
* ``soda_hf_batch`` (optional, ``--hf-batch``): the same, with ``encode_batch`` over each
  chunk's documents (the Rust library's own threads).

Both read the same cache files, and the written token ids are checked to be identical.
Imports, tokenizer loading and one warm-up pass of each method are outside the timing.

    .venv/bin/python benchmarks/bench_tokens.py --recordings 400 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from bench_paths import DEFAULT_TOKENIZER
from load_meter import QUIET_CORES, OthersLoad

from megatron_soda.format import DEFAULT_NUM_CODEBOOKS

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from megatron_soda.data.codes_cache import UnitCache
    from megatron_soda.format import TokenLayout
    from megatron_soda.tokenizer import SodaTokenizer

WORDS = (
    "the north wind and sun were disputing which was stronger when a traveler came along "
    "wrapped in warm cloak they agreed that one who first succeeded making take his off "
    "should be considered than other then blew as hard he could but more closely did fold "
    "around him at last gave up attempt shined out warmly immediately took so obliged to "
    "confess of two four score seven years ago our fathers brought forth on this continent "
    "new nation conceived liberty dedicated proposition all men are created equal"
).split()


def make_cache(
    directory: str, recordings: int, chunk_recordings: int = 64, seed: int = 0
) -> tuple[UnitCache, float, int]:
    """A complete codes cache (one unit); returns (UnitCache, audio seconds, utterances)."""
    from megatron_soda.data.codes_cache import (
        Chunk,
        EncodedRecording,
        EncodedUtterance,
        UnitCache,
        write_chunk,
    )

    shutil.rmtree(directory, ignore_errors=True)
    cache = UnitCache(directory, {"cache_codebooks": DEFAULT_NUM_CODEBOOKS, "bench": "tokens"})
    cache.open_for_writing()
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    seconds, utts, k = 0.0, 0, 0
    for c0 in range(0, recordings, chunk_recordings):
        chunk = Chunk()
        for r in range(c0, min(recordings, c0 + chunk_recordings)):
            rec = EncodedRecording(f"rec{r:06d}", "bench.jsonl")
            for u in range(rng.randint(1, 4)):
                dur = rng.uniform(3.0, 15.0)
                frames = int(np.ceil(dur * 12.5))
                text = " ".join(rng.choice(WORDS) for _ in range(max(1, int(dur * 2.5))))
                text = text[0].upper() + text[1:] + "."
                codes = nrng.integers(0, 2048, size=(8, frames), dtype=np.int16)
                rec.utterances.append(EncodedUtterance(f"{rec.id}-{u}", text, dur, codes))
                seconds += dur
                utts += 1
            chunk.recordings.append(rec)
            chunk.attempted += len(rec.utterances)
        write_chunk(cache.chunk_path(k), chunk, 8)
        k += 1
    cache.mark_complete(k)
    return cache, seconds, utts


def run_ours(cache: UnitCache, tokenizer: SodaTokenizer, prefix: str) -> int:
    from megatron_soda.data.tokenize_stage import OutputSet, tokenize_cached_units

    out = OutputSet(prefix, 0.0)
    tokenize_cached_units([cache], tokenizer, "both", out)
    out.finalize()
    return sum(w.tokens for w in out.writers.values())


def _pua_string(lay: TokenLayout, codes: np.ndarray, pua_base: int) -> str:
    """Audio codes -> SODA's private-use characters (``pua_base``: hf_export.PUA_BASE),
    frame-major (vectorised, so the baseline pays for tokenisation, not for a Python loop over
    characters)."""
    idx = (codes[: lay.num_codebooks].astype(np.uint32) + pua_base).T
    idx += (np.arange(lay.num_codebooks, dtype=np.uint32) * lay.codebook_size)[None, :]
    return idx.astype("<u4").tobytes().decode("utf-32-le")


def soda_documents(cache: UnitCache, tokenizer: SodaTokenizer) -> Iterator[list[str]]:
    """SODA strings of every document (text-first and audio-first), in our order."""
    from megatron_soda.format import AUDIO_END, AUDIO_START, TEXT_END, TEXT_START
    from megatron_soda.tokenizer.hf_export import PUA_BASE

    lay = tokenizer.layout
    bos, eos = tokenizer.special_name(lay.bos_id), tokenizer.special_name(lay.eos_id)
    for chunk in cache.chunks():
        docs = []
        for rec in chunk.recordings:
            spans = [
                (
                    TEXT_START + u.text + TEXT_END,
                    AUDIO_START + _pua_string(lay, u.codes, PUA_BASE) + AUDIO_END,
                )
                for u in rec.utterances
            ]
            docs.append(bos + "".join(t + a for t, a in spans) + eos)
            docs.append(bos + "".join(a + t for t, a in spans) + eos)
        yield docs


def run_soda(
    cache: UnitCache, tokenizer: SodaTokenizer, hf: Tokenizer, prefix: str, batch: bool
) -> int:
    """``hf``: the extended ``tokenizers.Tokenizer`` (loaded outside the timed region)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    total = 0
    for docs in soda_documents(cache, tokenizer):
        if batch:
            encs = hf.encode_batch(docs, add_special_tokens=False)
        else:
            encs = [hf.encode(d, add_special_tokens=False) for d in docs]
        for e in encs:
            ids = np.asarray(e.ids, dtype=np.int32)
            builder.add_document(ids, [ids.size])
            total += ids.size
    builder.finalize(prefix + ".idx")
    return total


def same_tokens(a: str, b: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    da, db = IndexedDataset(a), IndexedDataset(b)
    if len(da) != len(db):
        return False
    return all(np.array_equal(da[i], db[i]) for i in range(len(da)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recordings", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="base tokenizer.json")
    p.add_argument("--hf-batch", action="store_true", help="also time encode_batch")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "soda_bench_tokens"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from tokenizers import Tokenizer

    from megatron_soda.data import tokenize_stage  # noqa: F401  (imports megatron.core, ~3 s)
    from megatron_soda.tokenizer import SodaTokenizer
    from megatron_soda.tokenizer.hf_export import export_hf_tokenizer

    os.makedirs(args.workdir, exist_ok=True)
    tok = SodaTokenizer(args.tokenizer, num_codebooks=DEFAULT_NUM_CODEBOOKS)
    hf_dir = os.path.join(args.workdir, "hf")
    export_hf_tokenizer(tok, hf_dir)
    hf = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    t0 = time.perf_counter()
    cache, seconds, utts = make_cache(os.path.join(args.workdir, "cache"), args.recordings)
    print(
        f"cache: {args.recordings} recordings, {utts} utterances, {seconds / 3600:.2f} h audio "
        f"({time.perf_counter() - t0:.1f}s to write)"
    )
    runs = {
        "megatron_soda": lambda pre: run_ours(cache, tok, pre),
        "soda_hf": lambda pre: run_soda(cache, tok, hf, pre, batch=False),
    }
    if args.hf_batch:
        runs["soda_hf_batch"] = lambda pre: run_soda(cache, tok, hf, pre, batch=True)
    for name, run in runs.items():  # warm-up (page cache, first-call costs), not timed
        run(os.path.join(args.workdir, name))
    walls: dict[str, list[float]] = {k: [] for k in runs}
    others: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, int] = {}
    for rep in range(args.repeats):
        names = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in names:
            for ext in (".bin", ".idx"):  # a fresh output, as in a real run
                if os.path.exists(os.path.join(args.workdir, name) + ext):
                    os.remove(os.path.join(args.workdir, name) + ext)
            with OthersLoad() as load:
                t = time.perf_counter()
                tokens[name] = runs[name](os.path.join(args.workdir, name))
                walls[name].append(time.perf_counter() - t)
            others[name].append(round(load.cores, 2))
            print(
                f"repeat {rep}: {name} {walls[name][-1]:.3f}s [others used {load.cores:.2f} cores]",
                flush=True,
            )
    identical = {
        name: same_tokens(os.path.join(args.workdir, "megatron_soda"), os.path.join(args.workdir, name))
        for name in runs
        if name != "megatron_soda"
    }  # fmt: skip
    ours_med = statistics.median(walls["megatron_soda"])
    table = []
    for name, ws in walls.items():
        tps = [tokens[name] / w for w in ws]
        table.append(
            {
                "name": name,
                "tokens": tokens[name],
                "wall_s": [round(w, 3) for w in ws],
                "others_cores": others[name],
                "tokens_per_s_median": round(statistics.median(tps)),
                "tokens_per_s_min": round(min(tps)),
                "tokens_per_s_max": round(max(tps)),
                "ours_speedup_median": round(statistics.median(ws) / ours_med, 1),
                "tokens_per_s_quiet": [
                    round(x) for x, o in zip(tps, others[name]) if o < QUIET_CORES
                ],
                "ours_speedup_range": [
                    round(min(ws) / max(walls["megatron_soda"]), 1),
                    round(max(ws) / min(walls["megatron_soda"]), 1),
                ],
            }
        )
    print(f"\n{'method':<16}{'tokens':>12}{'tokens/s (med, min-max)':>36}{'ours x faster':>16}")
    for d in table:
        rate = f"{d['tokens_per_s_median']:,} ({d['tokens_per_s_min']:,}-{d['tokens_per_s_max']:,})"
        print(f"{d['name']:<16}{d['tokens']:>12,}{rate:>36}{d['ours_speedup_median']:>15}x")
    print(f"identical token ids: {identical}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "recordings": args.recordings,
                    "utterances": utts,
                    "audio_hours": round(seconds / 3600, 3),
                    "repeats": args.repeats,
                    "results": table,
                    "identical_ids": identical,
                },
                f,
                indent=2,
            )
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
