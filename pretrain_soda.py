"""Pretrain SODA models on megatron-core.  Launch with torchrun (``python pretrain_soda.py ...``
without it runs one process); see --help.

    torchrun --nproc_per_node N pretrain_soda.py --model-size 600m --tokenizer tokenizer.json \
        --data-path 0.95 SPEECH_PREFIX 0.05 TEXT_PREFIX --micro-batch-size 4 \
        --global-batch-size 512 --train-iters 238000 --bf16 --save ckpt/
"""

if __name__ == "__main__":  # required: dist_checkpointing starts helper processes
    # imported here, not at the top: a spawned helper (megatron's checkpoint-results manager, a
    # data-loader worker) imports this file again as ``__mp_main__``, and needs none of it
    from megatron_soda.training.main import main

    main()
