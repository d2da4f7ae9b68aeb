#!/usr/bin/env python
"""Fine-tune SODA's HF export on SFT shards with DeepSpeed ZeRO or plain torch
(``soda-finetune-deepspeed``; see ``--help`` and docs/finetuning.md)."""

from megatron_soda.finetune.deepspeed_main import main

if __name__ == "__main__":
    raise SystemExit(main())
