#!/usr/bin/env python
"""Merge the outputs of ``preprocess_data.py --num-shards K --shard-index I`` runs.

python tools/preprocess/merge_shards.py --output-prefix data/soda_speech --num-shards 8
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron_soda.data.cli import merge_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(merge_main())
