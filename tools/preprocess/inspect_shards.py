#!/usr/bin/env python
"""Validate a ``.idx``/``.bin`` pair and print stats and readable documents.

python tools/preprocess/inspect_shards.py data/soda_speech --tokenizer tokenizer.json --docs 0 1
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron_soda.data.inspect import inspect_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(inspect_main())
