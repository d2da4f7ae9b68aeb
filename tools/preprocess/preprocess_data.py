#!/usr/bin/env python
"""Preprocess audio (+ transcripts) and text into SODA Megatron shards.

    python tools/preprocess/preprocess_data.py --input data/speech.jsonl --input-format jsonl \
        --output-prefix data/soda_speech --tokenizer tokenizer.json --codec random:tiny \
        --num-codebooks 8 --interleave both --workers 2

See ``--help`` and docs/preprocessing.md.
"""

from megatron_soda.data.cli import preprocess_main as main

if __name__ == "__main__":
    raise SystemExit(main())
