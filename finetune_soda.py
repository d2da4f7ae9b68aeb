"""Fine-tune SODA on SFT shards (prompt-loss masking) with megatron-core; the authors' S2ST
recipe is the default (docs/finetuning.md).  Launch with torchrun, as pretrain_soda.py:

    torchrun --nproc_per_node N finetune_soda.py --load SODA_HF_DIR --save ckpt_sft/ \
        --data-path cvss_sft/shard --micro-batch-size 4 --train-iters 26700 --bf16
"""

if __name__ == "__main__":  # required: dist_checkpointing starts helper processes
    # imported here, not at the top: a spawned helper (megatron's checkpoint-results manager, a
    # data-loader worker) imports this file again as ``__mp_main__``, and needs none of it
    from megatron_soda.finetune.megatron_sft import main

    main()
