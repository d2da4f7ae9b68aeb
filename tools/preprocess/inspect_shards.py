#!/usr/bin/env python
"""Validate a ``.idx``/``.bin`` pair and print stats and readable documents.

python tools/preprocess/inspect_shards.py data/soda_speech --tokenizer tokenizer.json --docs 0 1
"""

from megatron_soda.data.inspect import inspect_main as main

if __name__ == "__main__":
    raise SystemExit(main())
