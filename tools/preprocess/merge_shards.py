#!/usr/bin/env python
"""Merge the outputs of ``preprocess_data.py --num-shards K --shard-index I`` runs.

python tools/preprocess/merge_shards.py --output-prefix data/soda_speech --num-shards 8
"""

from megatron_soda.data.cli import merge_main as main

if __name__ == "__main__":
    raise SystemExit(main())
